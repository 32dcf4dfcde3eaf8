// The AsyncAPI document of every example app (`switchboard-server asyncapi --app F`)
// is valid for the official parser and describes every route and topic rule. (That the
// copies under examples/ are current is the server's own drift test.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { Parser } from "@asyncapi/parser";
import { examplesDir, exampleApps, serverBin } from "./support.mjs";

const parser = new Parser();

for (const app of exampleApps()) {
  test(`the AsyncAPI document of ${app.name} is valid and complete`, async () => {
    const text = execFileSync(serverBin(), ["asyncapi", "--app", app.file], { encoding: "utf8" });
    const { document, diagnostics } = await parser.parse(text);
    const errors = diagnostics.filter((d) => d.severity === 0);
    assert.deepEqual(errors, [], `parser errors for ${app.name}`);
    assert.ok(document, "the parser returned a document");
    assert.equal(document.version(), "3.0.0");

    const operations = document.operations().all().map((o) => o.id());
    for (const route of app.routes) {
      assert.ok(operations.includes(route), `operation for route ${route}`);
      const op = document.operations().get(route);
      assert.equal(op.action(), "receive");
      assert.ok(op.reply(), `route ${route} has a reply`);
    }
    const addresses = document.channels().all().map((c) => c.address());
    assert.ok(addresses.includes("/ws"));
    for (const pattern of app.topics) {
      assert.ok(addresses.includes(pattern), `channel for topic ${pattern}`);
    }
  });
}

test("every checked-in example document has its app", () => {
  const apps = exampleApps().map((a) => a.name).sort();
  const dirs = readdirSync(examplesDir).filter((d) => !d.startsWith(".")).sort();
  assert.deepEqual(dirs, apps);
});
