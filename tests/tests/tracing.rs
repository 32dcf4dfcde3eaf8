//! One trace across replicas, in a real Jaeger: a client publishes with a
//! `traceparent` on replica A, a subscriber on replica B receives it, an RPC goes to a
//! backend that continues the trace; Jaeger's query API then shows every span, their
//! parent links and both instances. And the operator's reconcile span, with a child per
//! applied object, exported over OTLP/HTTP.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};
use switchboard_tests::{
    Client, ControlPlane, Jaeger, NatsServer, cargo_bin, chat_app, eventually, http_get,
};
use tokio::process::{Child, Command};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The OTEL_* environment a user would set: export everything, quickly.
fn otel_env(jaeger: &Jaeger) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_grpc.clone()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ]
}

/// A `switchboard-server` replica of the chat app, exporting traces.
async fn replica(jaeger: &Jaeger, nats: &NatsServer, name: &str) -> (Child, SocketAddr) {
    let (ws, admin) = (free_addr(), free_addr());
    let child = Command::new(cargo_bin("switchboard-server"))
        .args(["--nats-url", &nats.url()])
        .arg(format!("--listen={ws}"))
        .arg(format!("--admin-listen={admin}"))
        .env("POD_NAME", name)
        .envs(otel_env(jaeger))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("switchboard-server starts");
    eventually("a replica's /readyz", 30, || async {
        tokio::net::TcpStream::connect(admin).await.ok()?;
        (http_get(admin, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    (child, ws)
}

async fn stop(mut child: Child) {
    let pid = child.id().expect("running").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let exit = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("waited");
    assert!(exit.success(), "{exit}");
}

/// A trace's spans by operation name, each with its parent span id and process tags.
struct Trace(Value);

impl Trace {
    fn spans(&self, operation: &str) -> Vec<&Value> {
        self.0["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["operationName"] == operation)
            .collect()
    }

    fn one(&self, operation: &str, instance: &str) -> &Value {
        let found: Vec<_> = self
            .spans(operation)
            .into_iter()
            .filter(|s| self.process_tag(s, "service.instance.id").as_deref() == Some(instance))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {operation} on {instance}: {:#}",
            self.0
        );
        found[0]
    }

    fn parent(span: &Value) -> Option<&str> {
        span["references"]
            .as_array()?
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")?["spanID"]
            .as_str()
    }

    fn tag(span: &Value, key: &str) -> Option<String> {
        span["tags"]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| match &t["value"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    }

    fn process_tag(&self, span: &Value, key: &str) -> Option<String> {
        let process = &self.0["processes"][span["processID"].as_str()?];
        if key == "service.name" {
            return process["serviceName"].as_str().map(str::to_owned);
        }
        Self::tag(process, key)
    }
}

fn is_child(child: &Value, parent: &Value) -> bool {
    Trace::parent(child) == parent["spanID"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_message_across_replicas_and_into_a_backend() -> anyhow::Result<()> {
    let jaeger = Jaeger::start().await?;
    let nats = NatsServer::start().await;
    let (a, a_ws) = replica(&jaeger, &nats, "chat-a").await;
    let (b, b_ws) = replica(&jaeger, &nats, "chat-b").await;

    // A backend in another "language": its own tracer, continuing the caller's trace.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(jaeger.otlp_grpc.clone())
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder_empty()
                .with_service_name("test-backend")
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let backend = nats.client().await;
    let mut requests = backend
        .subscribe("sb.default.chat.rpc.profile.fetch")
        .await?;
    nats.wait_for_subscription("sb.default.chat.rpc.profile.fetch")
        .await;
    let tracer = provider.tracer("test-backend");
    let answering = tokio::spawn(async move {
        let Some(m) = requests.next().await else {
            return;
        };
        let carrier: HashMap<String, String> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
            .collect();
        let parent = TraceContextPropagator::new().extract(&carrier);
        let mut span = tracer.start_with_context("profile.fetch", &parent);
        let reply = json!({"userId": "bob", "displayName": "Bob"});
        if let Some(to) = m.reply {
            let _ = backend.publish(to, reply.to_string().into()).await;
            let _ = backend.flush().await;
        }
        span.end();
    });

    // Bob on B, alice on A, in one room; alice publishes with her own trace context.
    let mut bob = Client::connect(&format!("ws://{b_ws}/ws")).await;
    let mut alice = Client::connect(&format!("ws://{a_ws}/ws")).await;
    for (c, id) in [(&mut bob, "jb"), (&mut alice, "ja")] {
        let ack = c.call("JOIN_ROOM", id, json!({"roomId": "traced"})).await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
    }
    let trace_id = random_hex(16);
    let (send_parent, rpc_parent) = (random_hex(8), random_hex(8));
    alice
        .send(json!({
            "type": "SEND_MESSAGE",
            "meta": {"traceparent": format!("00-{trace_id}-{send_parent}-01")},
            "payload": {"roomId": "traced", "text": "follow me"},
        }))
        .await;
    let got = bob.recv().await;
    assert_eq!(got["payload"]["text"], "follow me", "{got}");
    assert_eq!(alice.recv().await["type"], "ROOM_MESSAGE");
    alice
        .send(json!({
            "type": "FETCH_PROFILE",
            "meta": {"correlationId": "p1", "traceparent": format!("00-{trace_id}-{rpc_parent}-01")},
            "payload": {"userId": "bob"},
        }))
        .await;
    let profile = alice.recv().await;
    assert_eq!(profile["type"], "PROFILE", "{profile}");
    answering.await?;
    // The SDK blocks while it exports, on a thread of its own.
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    drop((alice, bob));
    // A drain flushes each replica's spans on its way out.
    stop(a).await;
    stop(b).await;

    let trace = Trace(jaeger.trace(&trace_id, 9).await?);
    // The publish on A ...
    let messages = trace.spans("ws.message");
    let send = messages
        .iter()
        .find(|s| Trace::tag(s, "message.type").as_deref() == Some("SEND_MESSAGE"))
        .expect("the SEND_MESSAGE span");
    assert_eq!(Trace::parent(send), Some(send_parent.as_str()), "{send:#}");
    assert_eq!(
        trace.process_tag(send, "service.instance.id").as_deref(),
        Some("chat-a")
    );
    assert_eq!(
        trace.process_tag(send, "service.name").as_deref(),
        Some("switchboard-server")
    );
    let publish = trace.one("publish", "chat-a");
    assert!(is_child(publish, send));
    let bus_publish = trace.one("bus.publish", "chat-a");
    assert!(is_child(bus_publish, publish));
    // ... crosses NATS to B, where it is delivered to bob.
    let receive = trace.one("bus.receive", "chat-b");
    assert!(is_child(receive, bus_publish), "{receive:#}");
    assert_eq!(Trace::tag(receive, "source").as_deref(), Some("replica"));
    let deliver_b = trace.one("deliver", "chat-b");
    assert!(is_child(deliver_b, receive));
    assert_eq!(Trace::tag(deliver_b, "recipients").as_deref(), Some("1"));
    let deliver_a = trace.one("deliver", "chat-a");
    assert!(is_child(deliver_a, publish));

    // The RPC: message → rpc.request → the backend's own span.
    let fetch = messages
        .iter()
        .find(|s| Trace::tag(s, "message.type").as_deref() == Some("FETCH_PROFILE"))
        .expect("the FETCH_PROFILE span");
    assert_eq!(Trace::parent(fetch), Some(rpc_parent.as_str()));
    let rpc = trace.one("rpc.request", "chat-a");
    assert!(is_child(rpc, fetch));
    assert_eq!(
        Trace::tag(rpc, "rpc.subject").as_deref(),
        Some("profile.fetch")
    );
    assert_eq!(Trace::tag(rpc, "outcome").as_deref(), Some("ok"));
    let backend_span = trace.spans("profile.fetch");
    assert_eq!(backend_span.len(), 1, "{:#}", trace.0);
    assert!(is_child(backend_span[0], rpc));
    assert_eq!(
        trace
            .process_tag(backend_span[0], "service.name")
            .as_deref(),
        Some("test-backend")
    );
    Ok(())
}

#[tokio::test]
async fn the_operator_exports_a_span_per_reconcile() -> anyhow::Result<()> {
    let jaeger = Jaeger::start().await?;
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;
    let admin = free_addr();
    let operator = Command::new(cargo_bin("switchboard-operator"))
        .args(["run", &format!("--admin-listen={admin}")])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("POD_NAME", "operator-0")
        .envs(otel_env(&jaeger))
        // The HTTP option (the replicas above use gRPC).
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp_http)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    kube::Api::<switchboard_spec::crd::RealtimeApp>::namespaced(client.clone(), "default")
        .create(&Default::default(), &chat_app())
        .await?;
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client, "default");
    eventually("the Deployment", 30, || async {
        deployments.get_opt("chat").await.ok().flatten()
    })
    .await;
    stop(operator).await;

    let found = eventually("a reconcile trace in Jaeger", 30, || async {
        let v = jaeger
            .get("/api/traces?service=switchboard-operator&operation=reconcile&limit=50")
            .await
            .ok()?;
        v["data"].as_array()?.iter().find_map(|t| {
            let trace = Trace(t.clone());
            let reconcile = trace.spans("reconcile").into_iter().find(|s| {
                Trace::tag(s, "app").as_deref() == Some("chat")
                    && Trace::tag(s, "outcome").as_deref() == Some("applied")
            })?;
            let applies = trace
                .spans("apply")
                .into_iter()
                .filter(|s| is_child(s, reconcile))
                .count();
            (applies >= 3).then(|| (Trace::tag(reconcile, "generation"), applies))
        })
    })
    .await;
    assert_eq!(found.0.as_deref(), Some("1"));
    Ok(())
}
