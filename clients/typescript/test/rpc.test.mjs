// Requests through the generated module to a real backend over a real nats-server: the
// typed answer, the backend's own error as a typed RPC_ERROR, and a retryable
// UNAVAILABLE (no backend yet) retried until one answers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, JSONCodec } from "nats";
import { Client, SwitchboardError } from "../dist/src/index.js";
import { chat } from "../dist/examples/chat/chat.js";
import { startNats, startServer, ready } from "./support.mjs";

const codec = JSONCodec();

/** The example chat app's profile backend, as an app team would write it. */
function answerProfiles(nc) {
  const sub = nc.subscribe("sb.default.chat.rpc.profile.fetch", { queue: "profiles" });
  (async () => {
    for await (const msg of sub) {
      const { userId } = codec.decode(msg.data);
      msg.respond(
        codec.encode(
          userId === "nobody"
            ? { error: { code: "NOT_FOUND", message: `no profile for ${userId}` } }
            : { userId, displayName: `User ${userId}` },
        ),
      );
    }
  })();
  return sub;
}

test("requests reach a backend over NATS and come back typed", async (t) => {
  const nats = await startNats();
  t.after(() => nats.stop());
  const server = await startServer({ args: ["--nats-url", nats.url] });
  t.after(() => server.stop());
  await ready(server);
  const client = new Client({ url: server.ws, backoff: { initialMs: 50, maxMs: 200 } });
  t.after(() => client.close());
  const app = chat(client);
  await client.ready();

  // No backend yet: UNAVAILABLE, retryable, so `retries` waits for one to come.
  const first = await app.request.FETCH_PROFILE({ userId: "bob" }).catch((e) => e);
  assert.ok(first instanceof SwitchboardError, String(first));
  assert.equal(first.code, "UNAVAILABLE");
  assert.equal(first.retryable, true);

  const nc = await connect({ servers: nats.url.replace("nats://", "") });
  t.after(() => nc.close());
  const retried = app.request.FETCH_PROFILE({ userId: "carol" }, { retries: 50 });
  answerProfiles(nc);
  await nc.flush();
  assert.deepEqual(await retried, { userId: "carol", displayName: "User carol" });

  const profile = await app.request.FETCH_PROFILE({ userId: "bob" });
  assert.equal(profile.displayName, "User bob");
  const missing = await app.request.FETCH_PROFILE({ userId: "nobody" }).catch((e) => e);
  assert.equal(missing.code, "NOT_FOUND", String(missing));
  assert.equal(missing.retryable, false);
});
