use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchboard_operator::controller::{self, Context};
use switchboard_operator::leader::{self, LeaderElector, LeaseConfig};
use switchboard_operator::resources::Defaults;
use switchboard_ops::shutdown::Shutdown;
use switchboard_ops::{admin, telemetry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Server image for apps that set no spec.image.
    #[arg(
        long,
        env = "SWITCHBOARD_SERVER_IMAGE",
        default_value = "switchboard-server:0.1.0"
    )]
    server_image: String,
    /// This replica's name, in Events and as the Lease holder. Default: $POD_NAME,
    /// else the host name.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// Watch only these namespaces (repeat the flag, or comma-separate); default: all.
    #[arg(
        long = "watch-namespace",
        env = "SWITCHBOARD_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Reconcile only while holding a Lease, so several replicas can run for
    /// availability without both reconciling.
    #[arg(long, env = "SWITCHBOARD_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "switchboard-operator")]
    lease_name: String,
    /// Seconds a leader's claim holds without renewal; the leader renews every
    /// duration/7.5 and steps down after duration*2/3 without a renewal (client-go's
    /// 15/10/2 s ratios).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_duration_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => switchboard_operator::crd::crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Run(args) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let instance = switchboard_ops::instance::instance_name(args.instance.as_deref(), || {
        "switchboard-operator".into()
    });
    // The reconcile span is log context too, so it keeps the crate's own target.
    let telemetry = telemetry::init("switchboard-operator", &instance, &["switchboard_operator"])?;
    let result = operate(args, instance).await;
    // In-flight reconciles have finished: their spans reach the collector.
    telemetry.shutdown().await;
    result
}

async fn operate(args: RunArgs, instance: String) -> anyhow::Result<()> {
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster config or $KUBECONFIG)")?;
    // The operator's own OTEL_* settings are passed on to every server pod.
    let otel_env = std::env::vars()
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .collect();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Defaults {
            server_image: args.server_image,
            otel_env,
        },
        instance.clone(),
    ));

    let watch = args.watch_namespaces;
    // SIGTERM (the kubelet) or SIGINT (a terminal) starts a graceful stop: in-flight
    // reconciles finish and the Lease is released. A second signal exits at once.
    let stop = Shutdown::default();
    stop.on_signals()
        .context("cannot install signal handlers")?;
    let (begin, now) = (stop.begin.clone(), stop.now.clone());
    tokio::spawn(async move {
        begin.cancelled().await;
        info!("stopping");
        now.cancelled().await;
        warn!("second signal: exiting now");
        std::process::exit(1);
    });
    let shutdown = stop.begin.clone();
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::accept_loop(
        admin_listener,
        ctx.metrics.clone(),
        admin_stop.clone(),
    ));
    info!(admin = %args.admin_listen, leader_elect = args.leader_elect, namespaces = ?watch, "operator started");

    if args.leader_elect {
        let duration = Duration::from_secs(args.lease_duration_seconds);
        let config = LeaseConfig {
            lease_duration: duration,
            renew_deadline: duration * 2 / 3,
            retry_period: duration * 2 / 15,
            ..LeaseConfig::new(args.lease_namespace, args.lease_name, instance)
        };
        let metrics = ctx.metrics.clone();
        leader::run(
            LeaderElector::new(client, config),
            &metrics,
            shutdown,
            |lost| controller::run(ctx.clone(), &watch, lost),
        )
        .await;
    } else {
        tokio::spawn(ready_when_api_answers(client, ctx.clone()));
        ctx.metrics.set_leader(true);
        controller::run(ctx.clone(), &watch, shutdown).await;
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    info!("operator stopped");
    Ok(())
}

/// Without leader election nothing else talks to the API before the first app shows
/// up, so readiness asks the API server's version until it answers.
async fn ready_when_api_answers(client: kube::Client, ctx: Arc<Context>) {
    loop {
        match client.apiserver_version().await {
            Ok(v) => {
                info!(version = %v.git_version, "connected to the Kubernetes API");
                ctx.metrics.set_api_reachable();
                return;
            }
            Err(e) => warn!(error = %e, "the Kubernetes API does not answer yet"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
