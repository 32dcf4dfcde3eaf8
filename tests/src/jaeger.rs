//! A real Jaeger v2 all-in-one (from `hack/tools.sh`, on PATH) on loopback ports, with an
//! explicit config: OTLP in (gRPC and HTTP), in-memory storage, the query API out.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::http_get;

pub struct Jaeger {
    _child: Child,
    dir: PathBuf,
    /// OTLP/gRPC receiver, as `OTEL_EXPORTER_OTLP_ENDPOINT` wants it.
    pub otlp_grpc: String,
    /// OTLP/HTTP receiver.
    pub otlp_http: String,
    query: std::net::SocketAddr,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Jaeger {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sb-jaeger-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        let (grpc, http, query, query_grpc) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("jaeger.log"))?;
        let child = Command::new("jaeger")
            .arg(format!("--config={}", config_path.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start jaeger: run `bash hack/tools.sh` and put the directory it prints on PATH",
            )?;
        let jaeger = Self {
            _child: child,
            dir,
            otlp_grpc: format!("http://127.0.0.1:{grpc}"),
            otlp_http: format!("http://127.0.0.1:{http}"),
            query: ([127, 0, 0, 1], query).into(),
        };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(jaeger.query).await.is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", grpc))
                    .await
                    .is_ok()
                && jaeger.get("/api/services").await.is_ok()
            {
                return Ok(jaeger);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "jaeger did not start; its log:\n{}",
            std::fs::read_to_string(jaeger.dir.join("jaeger.log")).unwrap_or_default()
        )
    }

    /// GETs a query API path and parses the JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.query, path).await;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The trace `trace_id` (32 hex digits) once it has at least `spans` spans, as the
    /// query API returns it (`data[0]`: `spans`, `processes`).
    pub async fn trace(&self, trace_id: &str, spans: usize) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        for _ in 0..150 {
            if let Ok(v) = self.get(&format!("/api/traces/{trace_id}")).await {
                let trace = v["data"][0].clone();
                if trace["spans"].as_array().is_some_and(|s| s.len() >= spans) {
                    return Ok(trace);
                }
                last = trace;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("trace {trace_id} never had {spans} spans; last seen: {last:#}")
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
