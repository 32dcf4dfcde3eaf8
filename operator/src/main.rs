use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchboard_operator::controller::{self, Context};
use switchboard_operator::resources::Defaults;

/// Reconciles RealtimeApp resources into running Switchboard servers.
#[derive(Parser)]
#[command(name = "switchboard-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RealtimeApp CustomResourceDefinition (YAML).
    Crd,
    /// Run the controller (in a pod, or beside a cluster with $KUBECONFIG).
    Run {
        /// Server image for apps that set no spec.image.
        #[arg(
            long,
            env = "SWITCHBOARD_SERVER_IMAGE",
            default_value = "switchboard-server:0.1.0"
        )]
        server_image: String,
        /// This replica's name, in Events. Default: $POD_NAME, else the host name.
        #[arg(long, env = "POD_NAME")]
        instance: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => switchboard_operator::crd::crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Run {
            server_image,
            instance,
        } => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run(server_image, instance))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(server_image: String, instance: Option<String>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or $KUBECONFIG)")?;
    // The operator's own OTEL_* settings are passed on to every server pod.
    let otel_env = std::env::vars()
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .collect();
    let instance = instance
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "switchboard-operator".into());
    let ctx = Arc::new(Context::new(
        client,
        Defaults {
            server_image,
            otel_env,
        },
        instance,
    ));
    controller::run(ctx, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
