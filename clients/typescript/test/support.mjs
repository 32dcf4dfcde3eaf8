// What the tests share: where the repository's example apps and the server binary are.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
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

/** Starts `switchboard-server` on ephemeral loopback ports; resolves once it serves. */
export async function startServer({ app, args = [], env = {}, listen = "127.0.0.1:0" } = {}) {
  const argv = ["--listen", listen, "--admin-listen", "127.0.0.1:0", ...args];
  if (app) argv.push("--app", app);
  const child = spawn(serverBin(), argv, {
    env: { ...process.env, RUST_LOG: "info", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const serving = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${log}`)), 20_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const line = log.split("\n").find((l) => l.includes("serving"));
      if (line) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    child.on("exit", (code) => reject(new Error(`the server exited with ${code}:\n${log}`)));
  });
  const field = (name) => serving.match(new RegExp(`${name}=(\\S+)`))[1];
  return {
    child,
    ws: `ws://${field("ws")}/ws`,
    admin: `http://${field("admin")}`,
    log: () => log,
    /** SIGTERM (a drain), resolving when the process has exited. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill(signal);
      await exited;
    },
  };
}

/** A real nats-server with JetStream (from hack/tools.sh, on PATH) on a random port. */
export async function startNats() {
  const dir = mkdtempSync(join(tmpdir(), "sb-ts-nats-"));
  const child = spawn("nats-server", ["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-js", "-sd", join(dir, "js"), "--ports_file_dir", dir], {
    stdio: "ignore",
  });
  const failed = new Promise((_, reject) =>
    child.on("error", (e) =>
      reject(new Error(`cannot start nats-server (${e.message}): run bash hack/tools.sh and put the directory it prints on PATH`)),
    ),
  );
  failed.catch(() => {});
  const portsFile = () => join(dir, `nats-server_${child.pid}.ports`);
  for (let i = 0; i < 200; i++) {
    await Promise.race([failed, sleep(0)]);
    if (existsSync(portsFile())) {
      const ports = JSON.parse(readFileSync(portsFile(), "utf8"));
      if (ports.nats?.[0]) {
        return {
          url: ports.nats[0],
          async stop() {
            const exited = new Promise((resolve) => child.once("exit", resolve));
            child.kill("SIGKILL");
            await exited;
            rmSync(dir, { recursive: true, force: true });
          },
        };
      }
    }
    await sleep(50);
  }
  child.kill("SIGKILL");
  throw new Error("nats-server did not report its ports");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value, failing after `ms`. */
export async function eventually(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** Waits until the server's /readyz answers 200 (its NATS bus and history stream in place). */
export async function ready(server) {
  await eventually(`${server.ws} ready`, 20_000, async () => {
    const r = await fetch(`${server.admin}/readyz`).catch(() => undefined);
    return r?.status === 200;
  });
}
