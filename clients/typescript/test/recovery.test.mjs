// Recovery with no loss across a drain: a subscriber on replica A of the example chat
// app (boards keep history, on a real nats-server with JetStream), a publisher on B
// posting all along; A is stopped with SIGTERM. The SDK reconnects to B on its own
// after $ws:drain's reconnectAfterMs, resubscribes with meta.since, and ends holding
// every note exactly once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../dist/src/index.js";
import { chat } from "../dist/examples/chat/chat.js";
import { startNats, startServer, eventually, ready, sleep } from "./support.mjs";

test("a subscriber recovers every publication across a drain", async (t) => {
  const nats = await startNats();
  t.after(() => nats.stop());
  const a = await startServer({ args: ["--nats-url", nats.url, "--instance", "a"] });
  const b = await startServer({ args: ["--nats-url", nats.url, "--instance", "b"] });
  t.after(() => Promise.all([a.stop("SIGKILL"), b.stop("SIGKILL")]));
  await Promise.all([ready(a), ready(b)]);

  const subscriber = new Client({ url: [a.ws, b.ws], backoff: { initialMs: 50, maxMs: 500 } });
  const publisher = new Client({ url: b.ws });
  t.after(() => {
    subscriber.close();
    publisher.close();
  });
  const states = [];
  subscriber.onState((s) => states.push(s));
  const notes = [];
  const app = chat(subscriber);
  app.on.BOARD_NOTE((note, meta) => notes.push({ text: note.text, offset: meta.offset }));
  const subscription = await app.subscribe.OPEN_BOARD({ boardId: "ops" });
  assert.equal(subscription.topic, "board:ops");
  assert.equal((await subscriber.ready()).instance, "a");

  const post = chat(publisher);
  const total = 30;
  const posting = (async () => {
    for (let i = 1; i <= total; i++) {
      await post.request.POST_NOTE({ boardId: "ops", text: `n${i}` });
      await sleep(120);
    }
  })();
  await eventually("the first notes on A", 10_000, () => notes.length >= 5);
  await a.stop("SIGTERM");
  await posting;

  await eventually("every note", 20_000, () => notes.length >= total);
  await sleep(300);
  assert.deepEqual(
    notes.map((n) => n.text),
    Array.from({ length: total }, (_, i) => `n${i + 1}`),
    "every note once, in order",
  );
  const offsets = notes.map((n) => n.offset);
  assert.ok(offsets.every((o, i) => i === 0 || o > offsets[i - 1]), `offsets increase: ${offsets}`);
  assert.equal(subscriber.info.instance, "b", "reconnected to B");
  assert.equal(subscription.recovered, true, `recovered (reason ${subscription.reason})`);
  assert.ok(states.includes("reconnecting") && states.at(-1) === "open", states.join(" → "));
});
