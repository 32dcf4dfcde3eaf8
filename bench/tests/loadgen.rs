//! Runs `switchboard-loadgen` against a real `switchboard-server` binary serving
//! `bench/apps/fanout.yaml` on free loopback ports, with tiny numbers: a check that the
//! load generator counts correctly, not a timed benchmark.
//!
//! The server binary comes from the target directory (`cargo build --bins` first;
//! `hack/test-all.sh` does).

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_tests::cargo_bin;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/apps/fanout.yaml");
const LOADGEN: &str = env!("CARGO_BIN_EXE_switchboard-loadgen");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `switchboard-server` serving the bench app; killed on drop.
struct Server {
    child: Child,
    ws: SocketAddr,
}

impl Server {
    fn start() -> Self {
        let (ws, admin) = (free_addr(), free_addr());
        let child = Command::new(cargo_bin("switchboard-server"))
            .args(["--app", APP])
            .arg(format!("--listen={ws}"))
            .arg(format!("--admin-listen={admin}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("switchboard-server starts");
        let server = Self { child, ws };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready(admin) {
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/readyz` answers 200.
fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: test\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut reply).is_ok()
        && reply.split(' ').nth(1) == Some("200")
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(LOADGEN)
        .args(args)
        .output()
        .expect("the loadgen runs")
}

/// The JSON report: the last line of stdout.
fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no report on stdout; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn the_bench_app_is_valid() {
    let out = Command::new(cargo_bin("switchboard-server"))
        .args(["--app", APP, "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fanout_counts_every_delivery() {
    let server = Server::start();
    // Two URLs for one server, one of them by name: subscribers alternate between them.
    let urls = format!("{},ws://localhost:{}/ws", server.url(), server.ws.port());
    let out = loadgen(&[
        "fanout",
        "--url",
        &urls,
        "--subscribers",
        "20",
        "--messages",
        "20",
        "--rate",
        "200",
        "--duration",
        "30",
        "--marker-bytes",
        "100",
    ]);
    let r = report(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{r}\n{stderr}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["connected"], 20, "{r}");
    assert_eq!(r["messages_published"], 20, "{r}");
    assert_eq!(r["deliveries_expected"], 400, "{r}");
    assert_eq!(r["deliveries_received"], 400, "{r}");
    assert_eq!(r["loss"], 0.0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
    assert_eq!(r["error_frames"], 0, "{r}");
    assert_eq!(r["other_frames"], 0, "{r}");
    assert!(r["latency_ms"]["max"].as_f64().unwrap() > 0.0, "{r}");
    let per_url: Vec<u64> = r["by_url"]
        .as_array()
        .unwrap_or_else(|| panic!("no by_url: {r}"))
        .iter()
        .map(|u| u["deliveries"].as_u64().unwrap())
        .collect();
    assert_eq!(per_url, [200, 200], "{r}");
    assert!(stderr.contains("deliveries 400 of 400"), "{stderr}");
}

#[test]
fn deflate_compares_plain_and_compressed_deliveries() {
    let server = Server::start();
    let out = loadgen(&[
        "deflate",
        "--url",
        &server.url(),
        "--subscribers",
        "5",
        "--messages",
        "20",
        "--rate",
        "200",
        "--server-pid",
        &server.child.id().to_string(),
    ]);
    let r = report(&out);
    assert!(
        out.status.success(),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["ok"], true, "{r}");
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r}");
    let wire = |i: usize| runs[i]["wire_bytes_per_delivery"].as_f64().unwrap();
    assert_eq!(runs[0]["deflate"], false);
    assert_eq!(runs[1]["deflate"], true);
    for run in runs {
        assert_eq!(run["deliveries"], 100, "{r}");
        assert!(run["server_cpu_us_per_delivery"].is_number(), "{r}");
    }
    assert!(wire(0) > 1000.0, "{r}");
    assert!(
        wire(1) < wire(0) * 0.8,
        "compressed frames are smaller: {r}"
    );
}

#[test]
fn short_deliveries_fail_the_run() {
    // The publish type is not a route of the app: every message gets an ERROR, nothing
    // is delivered, and the exit code says so.
    let server = Server::start();
    let out = loadgen(&[
        "fanout",
        "--url",
        &server.url(),
        "--subscribers",
        "3",
        "--messages",
        "5",
        "--rate",
        "100",
        "--publish-type",
        "NO_SUCH_ROUTE",
        "--drain-timeout",
        "0.5",
    ]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["deliveries_expected"], 15, "{r}");
    assert_eq!(r["deliveries_received"], 0, "{r}");
    assert_eq!(r["error_codes"]["UNIMPLEMENTED"], 5, "{r}");
}

#[test]
fn remote_urls_need_allow_remote() {
    // 192.0.2.0/24 is TEST-NET-1: refused before any connection is tried.
    let out = loadgen(&[
        "fanout",
        "--url",
        "ws://192.0.2.1:8080/ws",
        "--subscribers",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}
