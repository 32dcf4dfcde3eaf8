// Template values in topic segments: the vectors the Rust spec crate checks too
// (spec/tests/corpus/topic-segments/vectors.json), so client and server agree.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { decodeTopicSegment, encodeTopicSegment, topicOf } from "../dist/src/index.js";
import { repoRoot } from "./support.mjs";

const vectors = JSON.parse(readFileSync(join(repoRoot, "spec/tests/corpus/topic-segments/vectors.json"), "utf8"));

test("every shared vector encodes and decodes both ways", () => {
  assert.ok(vectors.encoded.length >= 10);
  for (const { value, segment } of vectors.encoded) {
    assert.equal(encodeTopicSegment(value), segment, value);
    assert.equal(decodeTopicSegment(segment), value, segment);
  }
});

test("every refused spelling is refused", () => {
  for (const { segment, why } of vectors.refused) {
    assert.equal(decodeTopicSegment(segment), undefined, `${segment}: ${why}`);
  }
});

test("topicOf joins encoded segments", () => {
  assert.equal(topicOf("user", "auth0|64f1"), "user:auth0=7C64f1");
});
