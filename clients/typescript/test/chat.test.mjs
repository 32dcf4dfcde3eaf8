// The SDK and the generated chat module against a real switchboard-server running the
// built-in example app: typed send/request/subscribe/on, payloads checked before they
// are sent, and typed errors from the server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, SwitchboardError } from "../dist/src/index.js";
import { chat } from "../dist/examples/chat/chat.js";
import { startServer, eventually } from "./support.mjs";

test("two clients chat through the generated module", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const alice = new Client({ url: server.ws });
  const bob = new Client({ url: server.ws });
  t.after(() => {
    alice.close();
    bob.close();
  });
  const a = chat(alice);
  const b = chat(bob);
  const info = await alice.ready();
  assert.equal(info.app, "chat");
  assert.equal(alice.state, "open");

  const got = [];
  a.on.ROOM_MESSAGE((payload, meta) => got.push({ payload, meta }));
  const sub = await a.subscribe.JOIN_ROOM({ roomId: "lobby" });
  assert.equal(sub.topic, "room:lobby");
  await b.subscribe.JOIN_ROOM({ roomId: "lobby" });
  const ack = await b.request.SEND_MESSAGE({ roomId: "lobby", text: "hi alice" });
  assert.equal(ack.topic, "room:lobby");
  await eventually("alice's delivery", 5000, () => got.length === 1);
  assert.equal(got[0].payload.text, "hi alice");
  assert.equal(got[0].meta.topic, "room:lobby");
  assert.equal(got[0].meta.publisher, (await bob.ready()).user.id);
});

test("an invalid payload fails before it is sent, and server refusals are typed", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ url: server.ws });
  t.after(() => client.close());
  const app = chat(client);
  await client.ready();
  // Fails the generated schema (the pattern): nothing reaches the server.
  assert.throws(() => app.send.SEND_MESSAGE({ roomId: "NOT OK", text: "x" }), { name: "ZodError" });
  await assert.rejects(app.request.JOIN_ROOM({ roomId: "x".repeat(40) }), { name: "ZodError" });
  // A route the app does not have: the server's own refusal, as a SwitchboardError.
  const refused = await client.request("NO_SUCH_ROUTE", {}).catch((e) => e);
  assert.ok(refused instanceof SwitchboardError, String(refused));
  assert.equal(refused.code, "UNIMPLEMENTED");
  assert.equal(refused.retryable, false);
  // Publishing to a topic that needs a subscription first.
  const precondition = await app.request.SEND_MESSAGE({ roomId: "lobby", text: "x" }).catch((e) => e);
  assert.equal(precondition.code, "FAILED_PRECONDITION", String(precondition));
  // A timeout is the client's own DEADLINE_EXCEEDED, and an abort is CANCELLED.
  const controller = new AbortController();
  const aborted = client.request("__heartbeat", {}, { signal: controller.signal });
  controller.abort();
  await assert.rejects(aborted, { code: "CANCELLED" });
});
