use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchboard_ops::telemetry;
use switchboard_server::codegen::catalog::Catalog;
use switchboard_server::codegen::{asyncapi, typescript};
use switchboard_server::config::{CodegenTarget, Command};
use switchboard_server::{Cli, Server, ServerConfig, Shutdown};

/// Exit code for a bad flag or an invalid app, as clap uses for usage errors.
const USAGE: u8 = 2;

/// How long the runtime may take, after the drain, to wind down background tasks (NATS
/// reconnect timers and the like) before the process exits anyway.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve());
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

async fn serve() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init("switchboard-server", &cli.instance_name(), &[]) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(USAGE);
        }
    };
    let code = serve_with(cli).await;
    // After the drain: the last spans of this pod reach the collector.
    telemetry.shutdown().await;
    code
}

async fn serve_with(cli: Cli) -> ExitCode {
    let (source, yaml) = match cli.app_source() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot read --app {}: {e}",
                cli.app
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            return ExitCode::from(USAGE);
        }
    };
    let app = match switchboard_spec::load(&yaml) {
        Ok(app) => app,
        Err(errors) => {
            eprintln!("error: {source} is not a valid RealtimeApp:");
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(USAGE);
        }
    };
    if let Some(command) = &cli.command {
        return describe(command, &Catalog::new(&app));
    }
    let config = ServerConfig {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        app,
        secrets_dir: cli.secrets_dir.clone(),
        instance: cli.instance_name(),
        nats_url: cli.nats_url.clone(),
        demo: cli.serves_demo(),
    };
    if cli.check {
        return match check_secrets(&config) {
            Ok(()) => {
                warn_trailing_newlines(&config);
                println!("{source}: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(USAGE)
            }
        };
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check`: the files the app's secrets name are there and usable (JWT keys, the
/// TLS pair), as the server would load them at start.
fn check_secrets(config: &ServerConfig) -> anyhow::Result<()> {
    switchboard_server::auth::Authenticator::load(
        config.app.jwt.as_ref(),
        config.app.spec.auth.anonymous,
        &config.secrets_dir,
    )?;
    if let Some(tls) = &config.app.spec.tls {
        switchboard_server::tls::TlsListener::load(tls, &config.secrets_dir)
            .context("spec.tls.secretRef")?;
    }
    Ok(())
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let shutdown = Shutdown::default();
    shutdown
        .on_signals()
        .context("cannot install signal handlers")?;
    let server = Server::bind(config).await?;
    server.run(shutdown).await
}

/// `--check` warns (exit still 0) about an HMAC key file ending in a newline: `echo key >
/// file` puts one there, and the server uses the bytes as they are, so tokens signed with
/// the key as typed would fail with "bad signature". (PEM files end in one by design.)
fn warn_trailing_newlines(config: &ServerConfig) {
    let Some(r) = config.app.jwt.as_ref().and_then(|j| j.secret_ref.as_ref()) else {
        return;
    };
    let path = config.secrets_dir.join(&r.name).join(&r.key);
    if std::fs::read(&path).is_ok_and(|b| b.ends_with(b"\n")) {
        eprintln!(
            "warning: {} ends in a newline, which is part of the HMAC key (use printf, not echo)",
            path.display()
        );
    }
}

/// Runs a subcommand that describes the app instead of serving it.
fn describe(command: &Command, catalog: &Catalog<'_>) -> ExitCode {
    let written = match command {
        Command::Asyncapi => {
            let text = asyncapi::render(catalog);
            std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
                .context("cannot write the document to stdout")
        }
        Command::Codegen {
            target: CodegenTarget::Typescript { out },
        } => {
            let path = out.join(typescript::file_name(catalog));
            std::fs::create_dir_all(out)
                .and_then(|()| std::fs::write(&path, typescript::module(catalog)))
                .with_context(|| format!("cannot write {}", path.display()))
                .map(|()| eprintln!("wrote {}", path.display()))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
