//! A real nats-server (from `hack/tools.sh`, on PATH) on loopback ports it picks itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::http_get;

/// A real nats-server on loopback ports, stopped on drop.
pub struct NatsServer {
    child: Option<tokio::process::Child>,
    /// 0 until the first start, where nats-server picks free ports itself (no race
    /// with other tests); a restart reuses them.
    pub port: u16,
    pub monitor: u16,
    dir: PathBuf,
}

impl NatsServer {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sb-nats-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            monitor: 0,
            dir,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let port = |p: u16| {
            if p == 0 {
                "-1".to_owned()
            } else {
                p.to_string()
            }
        };
        let child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port(self.port), "-m", &port(self.monitor)])
            .arg("--ports_file_dir")
            .arg(&self.dir)
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
                if let (Some(p), Some(m)) = (port_of("nats"), port_of("monitoring")) {
                    (self.port, self.monitor) = (p, m);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nats-server did not report its ports in {}",
            self.dir.display()
        );
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
        self.spawn().await;
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
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
