// Reconnecting within documented bounds: backoff with full jitter, a server that
// refuses every upgrade, closes that no reconnect can fix, and token refresh before
// expiry (no 4401, no reconnect).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client, backoffDelay, DEFAULT_BACKOFF } from "../dist/src/index.js";
import { startServer, eventually, sleep } from "./support.mjs";

test("backoff draws are uniform below a doubling bound capped at maxMs", () => {
  const top = () => 0.999999;
  assert.equal(backoffDelay(0, {}, () => 0), 0);
  assert.equal(backoffDelay(0, {}, top), DEFAULT_BACKOFF.initialMs - 1);
  assert.equal(backoffDelay(3, { initialMs: 100, maxMs: 10_000 }, top), 799);
  assert.equal(backoffDelay(20, { initialMs: 100, maxMs: 400 }, top), 399);
  for (let attempt = 0; attempt < 40; attempt++) {
    const d = backoffDelay(attempt);
    assert.ok(d >= 0 && d < DEFAULT_BACKOFF.maxMs, `${attempt}: ${d}`);
  }
});

test("against a server that refuses every upgrade, retries stay within the backoff bound", async (t) => {
  const attempts = [];
  const http = createServer((_, res) => res.writeHead(404).end());
  http.on("upgrade", (_req, socket) => {
    attempts.push(Date.now());
    socket.end("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n");
  });
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  t.after(() => http.close());
  const { port } = http.address();
  const client = new Client({ url: `ws://127.0.0.1:${port}/ws`, backoff: { initialMs: 100, maxMs: 400 } });
  await sleep(2500);
  assert.equal(client.state, "connecting", "never opened");
  client.close();
  const seen = attempts.length;
  assert.ok(seen >= 6, `${seen} attempts in 2.5 s`);
  const gaps = attempts.slice(1).map((at, i) => at - attempts[i]);
  // Each gap is the draw (below 400 ms) plus the failed handshake; allow 150 ms of it.
  assert.ok(gaps.every((g) => g < 400 + 150), `gaps ${gaps}`);
  await sleep(600);
  assert.equal(attempts.length, seen, "no attempt after close()");
  assert.equal(client.state, "closed");
});

test("a message over maxPayloadBytes closes 1009, and the client stays closed", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ url: server.ws, backoff: { initialMs: 10, maxMs: 20 } });
  t.after(() => client.close());
  const info = await client.ready();
  client.send("SEND_MESSAGE", { roomId: "lobby", text: "x".repeat(info.limits.maxPayloadBytes + 1) });
  await eventually("closed", 5000, () => client.state === "closed");
  await sleep(200);
  assert.equal(client.state, "closed");
});

const SECRET = "a-test-key-of-at-least-thirty-two-bytes!";
const APP = `
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeApp
metadata: {name: refresh}
spec:
  auth: {anonymous: false, jwt: {algorithms: [HS256], secretRef: {name: jwt, key: secret}, leewaySeconds: 0}}
  topics: [{pattern: "room:{id}"}]
  routes:
    - {type: JOIN, payload: {type: object, required: [id], properties: {id: {type: string}}}, subscribe: {topic: "room:{id}"}}
`;

function token(sub, lifetimeMs) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor((Date.now() + lifetimeMs) / 1000) })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

test("a token callback refreshes before expiry: the connection outlives the first token", async (t) => {
  const server = await refreshApp(t);
  let minted = 0;
  const states = [];
  const client = new Client({
    url: server.ws,
    token: () => {
      minted++;
      return token("alice", 3000);
    },
    refreshBeforeExpiryMs: 2000,
  });
  t.after(() => client.close());
  client.onState((s) => states.push(s));
  const info = await client.ready();
  assert.equal(info.user.id, "alice");
  // The first token expires 3 s after it was minted; wait past it.
  await sleep(4500);
  assert.equal(client.state, "open");
  assert.deepEqual(states, ["open"], "never reconnected");
  assert.ok(minted >= 3, `${minted} tokens minted`);
  const ack = await client.request("JOIN", { id: "x" });
  assert.equal(ack.payload.topic, "room:x");
});

async function refreshApp(t) {
  const dir = mkdtempSync(join(tmpdir(), "sb-ts-refresh-"));
  mkdirSync(join(dir, "secrets/jwt"), { recursive: true });
  writeFileSync(join(dir, "secrets/jwt/secret"), SECRET);
  writeFileSync(join(dir, "app.yaml"), APP);
  const server = await startServer({ app: join(dir, "app.yaml"), args: ["--secrets-dir", join(dir, "secrets")] });
  t.after(() => server.stop());
  return server;
}

test("after a 4401 a token callback reconnects with a fresh token; a fixed token stays closed", async (t) => {
  const server = await refreshApp(t);
  const states = [];
  // Refreshing only long after expiry, so the server's 4401 comes first.
  const client = new Client({
    url: server.ws,
    token: () => token("alice", 1500),
    refreshBeforeExpiryMs: -60_000,
    backoff: { initialMs: 10, maxMs: 50 },
  });
  t.after(() => client.close());
  client.onState((s) => states.push(s));
  await client.ready();
  const room = await client.subscribe("JOIN", { id: "x" });
  await eventually("a reconnect after 4401", 8000, () => states.includes("reconnecting") && client.state === "open");
  assert.equal(room.topic, "room:x");
  const ack = await client.request("JOIN", { id: "y" });
  assert.equal(ack.payload.topic, "room:y");

  const fixed = new Client({ url: server.ws, token: token("bob", 1500), backoff: { initialMs: 10, maxMs: 50 } });
  t.after(() => fixed.close());
  await fixed.ready();
  await eventually("closed after 4401", 8000, () => fixed.state === "closed");
});
