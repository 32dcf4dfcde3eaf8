/**
 * Template values in topics (docs/PROTOCOL.md, "Values in topics").
 *
 * Topics use a NATS-safe alphabet, so a value that fills a template variable (a user id
 * like `auth0|64f1…`, an email) is encoded into one segment: every UTF-8 byte outside
 * `[A-Za-z0-9_@+-]`, `=` included, becomes `=` and two uppercase hex digits. The
 * encoding is canonical: one value has exactly one segment, and
 * {@link decodeTopicSegment} refuses any other spelling. The server applies it when it
 * renders a topic from a payload or a token claim, so a client needs it only to build
 * or read a topic itself (to match `meta.topic` of a delivery, say).
 */

const HEX = "0123456789ABCDEF";

/** Bytes a value keeps as they are: the topic alphabet without the escape `=`. */
function isPlain(b: number): boolean {
  return (
    (b >= 0x30 && b <= 0x39) || // 0-9
    (b >= 0x41 && b <= 0x5a) || // A-Z
    (b >= 0x61 && b <= 0x7a) || // a-z
    b === 0x5f || // _
    b === 0x40 || // @
    b === 0x2b || // +
    b === 0x2d // -
  );
}

/** The value of an uppercase hex digit; -1 for anything else, a missing one included. */
function hexDigit(c: string | undefined): number {
  return c === undefined ? -1 : HEX.indexOf(c);
}

/** `value` as one topic segment. */
export function encodeTopicSegment(value: string): string {
  let out = "";
  for (const b of new TextEncoder().encode(value)) {
    out += isPlain(b) ? String.fromCharCode(b) : `=${HEX[b >> 4]}${HEX[b & 0xf]}`;
  }
  return out;
}

/**
 * The value {@link encodeTopicSegment} made `segment` from, or `undefined` for a
 * spelling it could not have made (lowercase or short escapes, an escaped plain byte,
 * a character outside the alphabet, bytes that are not UTF-8).
 */
export function decodeTopicSegment(segment: string): string | undefined {
  const bytes: number[] = [];
  for (let i = 0; i < segment.length; ) {
    const c = segment.charCodeAt(i);
    if (c === 0x3d) {
      const hi = hexDigit(segment[i + 1]);
      const lo = hexDigit(segment[i + 2]);
      if (hi < 0 || lo < 0) return undefined;
      const b = (hi << 4) | lo;
      if (isPlain(b)) return undefined;
      bytes.push(b);
      i += 3;
    } else if (isPlain(c)) {
      bytes.push(c);
      i += 1;
    } else {
      return undefined;
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    return undefined;
  }
}

/** A topic from its segments, each value encoded: `topicOf("user", "auth0|64f1")`. */
export function topicOf(...values: string[]): string {
  return values.map(encodeTopicSegment).join(":");
}
