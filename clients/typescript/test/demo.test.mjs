// The demo page in a real browser (Debian's chromium, driven by playwright-core): two
// pages on replica A post to a board and see each other; A stops (SIGTERM) while a
// client on replica B keeps posting; A starts again on the same port; both pages
// reconnect on their own and show every note, the missed ones included, once each.
// A screenshot is saved as test-artifacts/demo.png. And the bundle the server embeds
// (server/demo/demo.js) is what this package builds.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Client } from "../dist/src/index.js";
import { chat } from "../dist/examples/chat/chat.js";
import { startNats, startServer, eventually, ready, repoRoot } from "./support.mjs";

const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const notesOf = (page) => page.$$eval("#notes li", (items) => items.map((li) => li.textContent.split(": ").slice(1).join(": ")));

test("two pages chat, lose the server, and get back everything they missed", async (t) => {
  const nats = await startNats();
  t.after(() => nats.stop());
  const replica = (listen, instance) =>
    startServer({ listen, args: ["--nats-url", nats.url, "--instance", instance] });
  let a = await replica("127.0.0.1:0", "a");
  const b = await replica("127.0.0.1:0", "b");
  t.after(() => Promise.all([a.stop("SIGKILL"), b.stop("SIGKILL")]));
  await Promise.all([ready(a), ready(b)]);
  const page0 = new URL(a.ws.replace("ws://", "http://").replace("/ws", "/?board=demo"));

  const browser = await chromium.launch({ executablePath: browserPath, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const pages = await Promise.all([browser.newPage(), browser.newPage()]);
  for (const page of pages) {
    page.on("pageerror", (e) => console.error("page error:", e));
    await page.goto(page0.href);
    await page.waitForSelector("body[data-ready=true]", { timeout: 15_000 });
  }
  assert.equal(await pages[0].textContent("#members"), "2");

  await pages[0].fill("#text", "hello from page one");
  await pages[0].press("#text", "Enter");
  for (const page of pages) {
    await eventually("the first note on both pages", 10_000, async () => (await notesOf(page)).length === 1);
  }

  // A stops; meanwhile someone on B keeps posting.
  await a.stop("SIGTERM");
  const other = new Client({ url: b.ws });
  t.after(() => other.close());
  const poster = chat(other);
  await other.ready();
  for (const text of ["while you were away 1", "while you were away 2", "while you were away 3"]) {
    await poster.request.POST_NOTE({ boardId: "demo", text });
  }

  // A comes back on the same port; the pages reconnect by themselves.
  a = await replica(new URL(page0).host, "a");
  await ready(a);
  const expected = ["hello from page one", "while you were away 1", "while you were away 2", "while you were away 3"];
  for (const page of pages) {
    await page.waitForSelector("body[data-state=open]", { timeout: 20_000 });
    await eventually("the missed notes", 15_000, async () => (await notesOf(page)).length >= expected.length);
    assert.deepEqual(await notesOf(page), expected);
    await eventually("the recovery shown", 5000, async () => (await page.textContent("#recovery")).includes("recovered everything"));
  }
  await eventually("both pages counted again", 5000, async () => (await pages[1].textContent("#members")) === "2");
  const artifacts = join(repoRoot, "clients/typescript/test-artifacts");
  mkdirSync(artifacts, { recursive: true });
  await pages[1].screenshot({ path: join(artifacts, "demo.png"), fullPage: true });
});

test("the demo bundle the server embeds is built from this package", () => {
  const out = join(mkdtempSync(join(tmpdir(), "sb-demo-")), "demo.js");
  execFileSync(
    join(repoRoot, "clients/typescript/node_modules/.bin/esbuild"),
    ["demo/main.ts", "--bundle", "--format=esm", "--minify", "--target=es2022", "--tsconfig=tsconfig.json", `--outfile=${out}`, "--log-level=warning"],
    { cwd: join(repoRoot, "clients/typescript") },
  );
  const embedded = readFileSync(join(repoRoot, "server/demo/demo.js"), "utf8");
  assert.ok(readFileSync(out, "utf8") === embedded, "server/demo/demo.js is stale: run bash hack/generate.sh");
});
