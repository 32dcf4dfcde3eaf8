// permessage-deflate with a real browser's WebSocket (Debian's chromium, driven by
// playwright-core): the browser negotiates it, compresses what it sends (the server
// inflates with the browser's context kept across messages), and inflates what the
// server compressed once for the topic. The server's metrics show both directions.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./support.mjs";

const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const APP = `
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: deflate, namespace: tests}
spec:
  auth: {anonymous: true}
  compression: {enabled: true, thresholdBytes: 256}
  topics:
    - pattern: "feed:{feedId}"
  routes:
    - type: FOLLOW
      payload: {type: object, required: [feedId], properties: {feedId: {type: string}}}
      subscribe: {topic: "feed:{feedId}"}
    - type: POST
      payload: {type: object, required: [feedId, body], properties: {feedId: {type: string}, body: {type: string}}}
      publish: {topic: "feed:{feedId}", emit: POSTED}
`;

const metric = (text, name) => {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
};

test("a browser negotiates permessage-deflate and both directions are compressed", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "sb-ts-deflate-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "app.yaml"), APP);
  const server = await startServer({ app: join(dir, "app.yaml") });
  t.after(() => server.stop("SIGKILL"));

  const browser = await chromium.launch({ executablePath: browserPath, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const body = "a long and repetitive note, ".repeat(40);
  const seen = await page.evaluate(
    async ({ url, body }) => {
      const ws = new WebSocket(url, ["switchboard.v1"]);
      const frames = [];
      const next = (type) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${type} within 10 s: ${JSON.stringify(frames)}`)), 10_000);
          const look = () => {
            const i = frames.findIndex((f) => f.type === type);
            if (i >= 0) {
              clearTimeout(timer);
              resolve(frames.splice(i, 1)[0]);
            } else setTimeout(look, 10);
          };
          look();
        });
      ws.onmessage = (e) => frames.push(JSON.parse(e.data));
      await next("$ws:open");
      const send = (type, payload, correlationId) => ws.send(JSON.stringify({ type, payload, meta: { correlationId } }));
      send("FOLLOW", { feedId: "news" }, "f");
      await next("$ws:ack");
      const posted = [];
      for (let i = 0; i < 3; i++) {
        send("POST", { feedId: "news", body: `${i}: ${body}` }, `p${i}`);
        posted.push((await next("POSTED")).payload.body);
      }
      const extensions = ws.extensions;
      ws.close();
      return { extensions, posted };
    },
    { url: server.ws, body },
  );
  assert.match(seen.extensions, /^permessage-deflate; server_no_context_takeover/);
  assert.deepEqual(seen.posted, [0, 1, 2].map((i) => `${i}: ${body}`));

  const text = await (await fetch(`${server.admin}/metrics`)).text();
  // $ws:open (over the 256-byte threshold, compressed for this connection) and the
  // three deliveries.
  assert.equal(metric(text, "switchboard_deflate_compressions_total"), 4, text);
  assert.equal(metric(text, "switchboard_deflate_frames_written_total"), 4, text);
  // The browser compressed every message it sent: FOLLOW and the three POSTs.
  assert.ok(metric(text, "switchboard_deflate_inflated_messages_total") >= 4, text);
  const raw = metric(text, 'switchboard_deflate_bytes_total{stage="raw"}');
  const compressed = metric(text, 'switchboard_deflate_bytes_total{stage="compressed"}');
  assert.ok(compressed * 3 < raw, `compressed ${compressed} of ${raw} bytes`);
});
