//! `switchboard-loadgen`: load generator for Switchboard's benchmarks.
//!
//! ```text
//! switchboard-loadgen fanout --url ws://127.0.0.1:8080/ws --subscribers 1000 --rate 200 --duration 10
//! switchboard-loadgen recovery --url ws://127.0.0.1:8080/ws --missed 1000
//! switchboard-loadgen deflate --url ws://127.0.0.1:8080/ws --server-pid $(pgrep switchboard-ser)
//! ```
//!
//! Prints one JSON line with the figures on stdout and a summary on stderr. Exit code:
//! 0 when deliveries are complete (within `--max-loss`), 1 when they are not or the run
//! failed, 2 for bad arguments (including a URL that is not loopback without
//! `--allow-remote`). See bench/README.md.

mod deflate;
mod fanout;
mod hist;
mod recovery;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchboard-loadgen", version, about)]
/// Load generator for Switchboard's benchmarks (loopback targets only, unless
/// --allow-remote).
struct Cli {
    /// Tokio worker threads [default: one per CPU].
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N subscribers join one room; one publisher sends into it at a fixed rate; every
    /// delivery is counted and timed.
    Fanout(fanout::Args),
    /// A subscriber misses N publications on a topic with history, then recovers them
    /// with `meta.since`; the recovery is timed.
    Recovery(recovery::Args),
    /// Subscribers without and then with permessage-deflate: wire bytes and server CPU
    /// per delivery.
    Deflate(deflate::Args),
}

/// What a scenario prints: a summary (stderr), one JSON line (stdout), and whether the
/// run met its bar.
struct Printed {
    summary: String,
    line: Result<String, serde_json::Error>,
    ok: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::Fanout(args) => fanout::run(args).await.map(|r| Printed {
                summary: r.to_string(),
                line: serde_json::to_string(&r),
                ok: r.ok,
            }),
            Scenario::Deflate(args) => deflate::run(args).await.map(|r| Printed {
                summary: r.to_string(),
                line: serde_json::to_string(&r),
                ok: r.ok,
            }),
            Scenario::Recovery(args) => recovery::run(args).await.map(|r| Printed {
                summary: r.to_string(),
                line: serde_json::to_string(&r),
                ok: true,
            }),
        }
    });
    // Connections still open are dropped with the runtime.
    rt.shutdown_background();
    match result {
        Ok(printed) => {
            eprint!("{}", printed.summary);
            match printed.line {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("error: cannot encode the report: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if printed.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) if e.is::<fanout::UsageError>() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
