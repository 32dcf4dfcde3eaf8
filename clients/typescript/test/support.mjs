// What the tests share: where the repository's example apps and the server binary are.
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../..");
export const examplesDir = resolve(here, "../examples");

/** The switchboard-server binary: $SWITCHBOARD_SERVER, else the workspace's debug build. */
export function serverBin() {
  const bin = process.env.SWITCHBOARD_SERVER ?? join(repoRoot, "target/debug/switchboard-server");
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: run cargo build -p switchboard-server (or set SWITCHBOARD_SERVER)`);
  }
  return bin;
}

/** The RealtimeApps in manifests/examples: name, file, route types and topic patterns. */
export function exampleApps() {
  const dir = join(repoRoot, "manifests/examples");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".yaml"))
    .flatMap((f) =>
      parseAllDocuments(readFileSync(join(dir, f), "utf8"))
        .map((d) => d.toJS())
        .filter((m) => m?.kind === "RealtimeApp")
        .map((m) => ({
          file: join(dir, f),
          name: m.metadata.name,
          routes: (m.spec.routes ?? []).map((r) => r.type),
          topics: (m.spec.topics ?? []).map((t) => t.pattern),
        })),
    );
}
