//! Command line and environment: everything `switchboard-server` is told at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The example chat app, served when no `--app` is given.
pub const EXAMPLE_APP: &str = include_str!("../../manifests/examples/chat.yaml");

/// Switchboard's WebSocket gateway: serves one RealtimeApp.
#[derive(Clone, Debug, Parser)]
#[command(name = "switchboard-server", version, about)]
pub struct Cli {
    /// Address of the WebSocket listener (path /ws).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// RealtimeApp manifest to serve (the file `kubectl apply` takes). Default: the
    /// built-in example chat app.
    #[arg(long, env = "SWITCHBOARD_APP", global = true)]
    pub app: Option<PathBuf>,

    /// Where Secrets named by secretRef/publicKeyRef are mounted: `<dir>/<name>/<key>`.
    #[arg(
        long,
        env = "SWITCHBOARD_SECRETS_DIR",
        default_value = "/etc/switchboard/secrets"
    )]
    pub secrets_dir: PathBuf,

    /// This replica's name, shown to clients and in connection ids. Default: the pod
    /// name ($POD_NAME), else the host name.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// NATS server to use as the bus between replicas; overrides the app's spec.nats.url.
    /// Without either, an in-process bus serves one replica.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// Check the app (spec, schemas, secrets) and exit: 0 when it would serve.
    #[arg(long)]
    pub check: bool,

    /// Serve the demo page of the example chat app at / beside /ws. On by default
    /// when serving the built-in app.
    #[arg(long, env = "SWITCHBOARD_DEMO")]
    pub demo: bool,

    /// Instead of serving, describe the app for its clients.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `switchboard-server` can do besides serving (README, "Clients").
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Print the app's AsyncAPI 3.0 document (also served at /asyncapi.json on the
    /// admin port).
    Asyncapi,
    /// Write a typed client module for the app.
    Codegen {
        #[command(subcommand)]
        target: CodegenTarget,
    },
}

/// What `codegen` writes.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum CodegenTarget {
    /// `<out>/<app>.ts`: Zod schemas, their types and a typed facade for
    /// `@switchboard/client`.
    Typescript {
        /// Directory to write into (created when missing).
        #[arg(long)]
        out: PathBuf,
    },
}

impl Cli {
    pub fn app_source(&self) -> Result<(String, String), std::io::Error> {
        match &self.app {
            Some(path) => Ok((path.display().to_string(), std::fs::read_to_string(path)?)),
            None => Ok(("built-in example app".to_owned(), EXAMPLE_APP.to_owned())),
        }
    }

    /// Whether to serve the demo page: asked for, or the built-in app is served.
    pub fn serves_demo(&self) -> bool {
        self.demo || self.app.is_none()
    }

    pub fn instance_name(&self) -> String {
        switchboard_ops::instance::instance_name(self.instance.as_deref(), || {
            format!("switchboard-{:08x}", rand::random::<u32>())
        })
    }
}

/// Everything [`crate::Server::bind`] needs.
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub app: switchboard_spec::CompiledApp,
    pub secrets_dir: PathBuf,
    pub instance: String,
    /// `--nats-url`, else `spec.nats.url`, else none (in-process bus).
    pub nats_url: Option<String>,
    /// Serve the demo page at `/` (see [`crate::demo`]).
    pub demo: bool,
}
