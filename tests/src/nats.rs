//! A real nats-server (from `hack/tools.sh`, on PATH) on loopback ports, with JetStream.
//!
//! The ports lie below the kernel's ephemeral range. A client reconnecting to a port
//! in that range while nothing listens there can be given that very port as its own
//! source port (a TCP self-connect on loopback), which then holds it: a restarted
//! nats-server could not bind it again. Below the range no client socket ever sits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::http_get;

/// A real nats-server on loopback ports, stopped on drop.
pub struct NatsServer {
    child: Option<tokio::process::Child>,
    /// Chosen free at the first start; a restart reuses them.
    pub port: u16,
    pub monitor: u16,
    dir: PathBuf,
    /// Off only to test what happens on a NATS without it.
    jetstream: bool,
    /// A config file (`-c`), for authorization and TLS; its listen addresses are
    /// overridden by the flags.
    config: Option<PathBuf>,
    /// Environment variables the config refers to (`$NAME`), e.g. passwords.
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// With JetStream, as history needs.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Core NATS only, as a server started without `-js` is.
    pub async fn start_without_jetstream() -> Self {
        Self::start_with(false).await
    }

    /// With JetStream and the nats-server config `config` (written into the server's
    /// directory as `nats.conf`, so it may name files put there with [`Self::dir_for`]),
    /// `env` set for the `$NAME`s it uses.
    pub async fn start_with_config(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = Self::dir_for();
        let file = dir.join("nats.conf");
        std::fs::write(&file, config).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_in(dir, true, Some(file), env).await
    }

    /// A fresh directory for the next server's files (its config, certificates).
    pub fn dir_for() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sb-nats-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn start_with(jetstream: bool) -> Self {
        Self::start_in(Self::dir_for(), jetstream, None, Vec::new()).await
    }

    async fn start_in(
        dir: PathBuf,
        jetstream: bool,
        config: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Self {
        let mut server = Self {
            child: None,
            port: 0,
            monitor: 0,
            dir,
            jetstream,
            config,
            env,
        };
        // Another process may take a port between the check and nats-server's bind.
        for _ in 0..5 {
            (server.port, server.monitor) = (unused_port(), unused_port());
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "nats-server did not start on free ports in {}",
            server.dir.display()
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts nats-server on `port` and `monitor`; false when it did not come up.
    async fn spawn(&mut self) -> bool {
        let mut command = tokio::process::Command::new("nats-server");
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
            ])
            .arg("--ports_file_dir")
            .arg(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        if self.jetstream {
            // File storage in the server's own directory: history survives a
            // restart, as on a real NATS deployment.
            command
                .arg("-js")
                .arg("-sd")
                .arg(self.dir.join("jetstream"));
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): it must be on PATH. Run `bash hack/tools.sh` and add the \
                     directory it prints to PATH (hack/test-all.sh does this)"
                )
            });
        let ports_file = self
            .dir
            .join(format!("nats-server_{}.ports", child.id().unwrap()));
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(ports) = serde_json::from_str::<Value>(&text)
            {
                let port_of = |key: &str| {
                    ports[key][0]
                        .as_str()
                        .and_then(|u| u.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                };
                if (port_of("nats"), port_of("monitoring")) == (Some(self.port), Some(self.monitor))
                {
                    return true;
                }
            }
            if self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill().await;
        false
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts it again on the same ports.
    pub async fn restart(&mut self) {
        self.kill().await;
        assert!(
            self.spawn().await,
            "nats-server did not restart on ports {} and {}",
            self.port,
            self.monitor
        );
    }

    /// Subjects every client connection of the server is subscribed to.
    pub async fn subscriptions(&self) -> Vec<String> {
        let (status, body) = http_get(
            SocketAddr::from(([127, 0, 0, 1], self.monitor)),
            "/connz?subs=1",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut subs: Vec<String> = v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        subs.sort();
        subs
    }

    /// Waits until the server itself lists a subscription on `subject` (a client's
    /// flush only means the SUB was written, not that the server processed it).
    pub async fn wait_for_subscription(&self, subject: &str) {
        for _ in 0..100 {
            if self.subscriptions().await.iter().any(|s| s == subject) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the NATS server never listed a subscription on {subject}");
    }

    /// A plain NATS client, as a backend would use.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }

    /// A client logged in as `user`; every error the server sends it (a permissions
    /// violation, say) arrives on the receiver.
    pub async fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .user_and_password(user.to_owned(), password.to_owned())
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .unwrap();
        (client, rx)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port below the ephemeral range that nothing listens on now.
fn unused_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low / 2);
    loop {
        let port = low + rand::random::<u16>() % (ephemeral_low - low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
