//! The install journey end to end, on real control-plane binaries, the way a user takes
//! it: `helm install` the chart; the operator binary runs beside the cluster (no kubelet
//! runs pods here) with the chart's own service-account token and the arguments of the
//! chart's Deployment; `kubectl apply` the example chat app and `kubectl wait`; two
//! `switchboard-server` processes start from the exact ConfigMap the operator wrote (as
//! its pods would) on a real nats-server, and WebSocket clients join, chat across the
//! replicas, call RPC and see one replica drain; then `kubectl patch` rolls the
//! Deployment, `kubectl scale` reaches it, and deleting the app collects its children.
//! Finally the apiserver's audit log shows the chart's RBAC rules are exactly what the
//! operator used.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::Api;
use serde_json::{Value, json};
use switchboard_operator::resources::CONFIG_HASH_ANNOTATION;
use switchboard_tests::{
    Client, ControlPlane, NatsServer, cargo_bin, eventually, http_get, template_annotation,
};
use tokio::process::{Child, Command};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/switchboard");
const CHAT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../manifests/examples/chat.yaml"
);
const OPERATOR_USER: &str = "system:serviceaccount:switchboard-system:switchboard-operator";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

async fn wait_ready(admin: SocketAddr, what: &str) {
    eventually(what, 30, || async {
        tokio::net::TcpStream::connect(admin).await.ok()?;
        (http_get(admin, "/readyz").await.0 == 200).then_some(())
    })
    .await;
}

/// The operator as its Deployment would run it: the chart's args and env, the chart's
/// service account; only the admin address moves to loopback.
async fn start_operator(cp: &ControlPlane, client: &kube::Client) -> anyhow::Result<Child> {
    let token = cp
        .kubectl(&[
            "create",
            "token",
            "switchboard-operator",
            "--namespace=switchboard-system",
            "--duration=1h",
        ])
        .await?;
    let kubeconfig = cp.kubeconfig_with_token("operator", token.trim())?;
    let deployment = Api::<Deployment>::namespaced(client.clone(), "switchboard-system")
        .get("switchboard-operator")
        .await?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].clone())
        .expect("the chart's Deployment has a container");
    let admin = free_addr();
    let args: Vec<String> = container
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("--admin-listen=") {
                format!("--admin-listen={admin}")
            } else {
                a
            }
        })
        .collect();
    let env = container
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)));
    let child = Command::new(cargo_bin("switchboard-operator"))
        .args(&args)
        .envs(env)
        .env("RUST_LOG", "warn")
        .env("POD_NAME", "switchboard-operator-0")
        .env("POD_NAMESPACE", "switchboard-system")
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_ready(admin, "the operator's /readyz").await;
    Ok(child)
}

/// A `switchboard-server` as a pod of the app runs it: the ConfigMap's file as `--app`.
struct Replica {
    child: Child,
    ws: SocketAddr,
}

impl Replica {
    async fn start(app: &Path, nats_url: &str, name: &str) -> Self {
        let (ws, admin) = (free_addr(), free_addr());
        let child = Command::new(cargo_bin("switchboard-server"))
            .arg("--app")
            .arg(app)
            .args(["--nats-url", nats_url])
            .arg(format!("--listen={ws}"))
            .arg(format!("--admin-listen={admin}"))
            .env("POD_NAME", name)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("switchboard-server starts");
        wait_ready(admin, "a replica's /readyz").await;
        Self { child, ws }
    }

    async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/ws", self.ws)).await
    }
}

/// `kubectl patch rtapp chat --type=merge -p PATCH`, as a user edits the app.
async fn patch_chat(cp: &ControlPlane, patch: &str) -> anyhow::Result<()> {
    cp.kubectl(&["patch", "rtapp", "chat", "--type=merge", "-p", patch])
        .await?;
    Ok(())
}

fn config_hash(d: &Deployment) -> Option<String> {
    template_annotation(d, CONFIG_HASH_ANNOTATION)
}

#[tokio::test]
async fn install_apply_serve_scale_roll_delete() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let client = cp.client().await?;

    // 1. helm install; leader election on, as with more than one operator replica.
    cp.helm(&[
        "install",
        "switchboard",
        CHART,
        "--namespace=switchboard-system",
        "--create-namespace",
        "--set=leaderElection.enabled=true",
        "--set=leaderElection.leaseDurationSeconds=5",
    ])
    .await?;
    // The garbage collector learns kinds at start: after the chart installed the CRD.
    cp.start_controller_manager()?;
    let mut operator = start_operator(&cp, &client).await?;

    // 2. kubectl apply the example app; wait until the operator has applied it.
    cp.kubectl(&["apply", "-f", CHAT]).await?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Degraded=false",
        "rtapp/chat",
        "--timeout=60s",
    ])
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let first_hash = config_hash(&deployments.get("chat").await?).expect("config hash");
    let service = Api::<Service>::namespaced(client.clone(), "default")
        .get("chat")
        .await?;
    assert_eq!(
        service.spec.and_then(|s| s.session_affinity).as_deref(),
        Some("ClientIP")
    );

    // 3. Two replicas from the ConfigMap the operator wrote, on one nats-server.
    let config = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get("chat-config")
        .await?;
    let app_file = std::env::temp_dir().join(format!("sb-e2e-{}.yaml", std::process::id()));
    std::fs::write(&app_file, &config.data.expect("data")["app.yaml"])?;
    let nats = NatsServer::start().await;
    let a = Replica::start(&app_file, &nats.url(), "chat-a").await;
    let mut b = Replica::start(&app_file, &nats.url(), "chat-b").await;
    let _ = std::fs::remove_file(&app_file);

    // Join on both; a message sent on A reaches the member on B.
    let mut alice = a.client().await;
    let mut bob = b.client().await;
    for (c, id) in [(&mut alice, "ja"), (&mut bob, "jb")] {
        let ack = c.call("JOIN_ROOM", id, json!({"roomId": "lobby"})).await;
        assert_eq!(ack["type"], "$ws:ack", "{ack}");
    }
    // An ack of a join means every replica's publishes reach the member: no waiting.
    alice
        .tell(
            "SEND_MESSAGE",
            json!({"roomId": "lobby", "text": "hello from A"}),
        )
        .await;
    let got = bob.recv().await;
    assert_eq!(got["type"], "ROOM_MESSAGE", "{got}");
    assert_eq!(got["payload"]["text"], "hello from A", "{got}");
    let own = alice.recv().await; // SEND_MESSAGE does not exclude the sender
    assert_eq!(own["type"], "ROOM_MESSAGE", "{own}");

    // RPC to a backend over NATS.
    let backend = nats.client().await;
    let mut requests = backend
        .subscribe("sb.default.chat.rpc.profile.fetch")
        .await?;
    backend.flush().await?;
    let answering = tokio::spawn(async move {
        use futures_util::StreamExt;
        if let Some(m) = requests.next().await {
            let ask: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let user = ask["userId"].as_str().unwrap_or_default().to_owned();
            let reply = json!({"userId": user, "displayName": format!("User {user}")});
            if let Some(to) = m.reply {
                let _ = backend.publish(to, reply.to_string().into()).await;
                let _ = backend.flush().await;
            }
        }
    });
    nats.wait_for_subscription("sb.default.chat.rpc.profile.fetch")
        .await;
    let profile = alice
        .call("FETCH_PROFILE", "p1", json!({"userId": "bob"}))
        .await;
    assert_eq!(profile["type"], "PROFILE", "{profile}");
    assert_eq!(profile["payload"]["displayName"], "User bob", "{profile}");
    answering.await?;

    // Drain B (SIGTERM, as the kubelet would): bob is told, then closed with 1001.
    let pid = b.child.id().expect("running").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await?;
    let (frames, code) = bob.frames_until_close(Duration::from_secs(40)).await;
    assert!(
        frames.iter().any(|f| f["type"] == "$ws:drain"),
        "{frames:?}"
    );
    assert_eq!(code, 1001);
    let exit = tokio::time::timeout(Duration::from_secs(40), b.child.wait()).await??;
    assert!(exit.success(), "{exit}");
    alice.assert_alive().await;

    // 4. Edit the spec: NATS for several replicas; the Deployment rolls (new hash).
    patch_chat(
        &cp,
        r#"{"spec":{"nats":{"url":"nats://nats.default.svc:4222"}}}"#,
    )
    .await?;
    let rolled = eventually("the Deployment to roll", 30, || async {
        deployments
            .get("chat")
            .await
            .ok()
            .and_then(|d| config_hash(&d))
            .filter(|h| *h != first_hash)
    })
    .await;
    assert_ne!(rolled, first_hash);

    // kubectl scale reaches the Deployment; more than one replica gets a PDB.
    cp.kubectl(&["scale", "rtapp/chat", "--replicas=4"]).await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    eventually("4 replicas and a PDB", 30, || async {
        let d = deployments.get("chat").await.ok()?;
        (d.spec?.replicas == Some(4)).then_some(())?;
        pdbs.get_opt("chat").await.ok()?
    })
    .await;
    // Autoscaling on, then off: the HPA comes and goes; back to one replica, the PDB goes.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    patch_chat(
        &cp,
        r#"{"spec":{"autoscaling":{"minReplicas":2,"maxReplicas":6}}}"#,
    )
    .await?;
    eventually("an HPA", 30, || async { hpas.get_opt("chat").await.ok()? }).await;
    // With autoscaling, an Ingress too: both come and go under the chart's RBAC.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    patch_chat(&cp, r#"{"spec":{"ingress":{"host":"chat.example.com"}}}"#).await?;
    eventually("an Ingress", 30, || async {
        ingresses.get_opt("chat").await.ok()?
    })
    .await;
    patch_chat(
        &cp,
        r#"{"spec":{"autoscaling":null,"replicas":1,"ingress":null}}"#,
    )
    .await?;
    eventually("the HPA, PDB and Ingress to go", 30, || async {
        let gone = hpas.get_opt("chat").await.ok()?.is_none()
            && pdbs.get_opt("chat").await.ok()?.is_none()
            && ingresses.get_opt("chat").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    // A JWT Secret that does not exist: Degraded, with the field named.
    patch_chat(&cp, r#"{"spec":{"auth":{"jwt":{"algorithms":["HS256"],"secretRef":{"name":"chat-jwt","key":"secret"}}}}}"#).await?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Degraded=true",
        "rtapp/chat",
        "--timeout=30s",
    ])
    .await?;
    let reason = cp
        .kubectl(&[
            "get",
            "rtapp",
            "chat",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Degraded")].reason}"#,
        ])
        .await?;
    assert_eq!(reason, "MissingSecret");

    // 5. Delete the app: its children are garbage-collected.
    cp.kubectl(&["delete", "rtapp", "chat", "--wait=true"])
        .await?;
    eventually("the children to be collected", 90, || async {
        let left = [
            deployments.get_opt("chat").await.ok()?.is_some(),
            Api::<Service>::namespaced(client.clone(), "default")
                .get_opt("chat")
                .await
                .ok()?
                .is_some(),
            Api::<ConfigMap>::namespaced(client.clone(), "default")
                .get_opt("chat-config")
                .await
                .ok()?
                .is_some(),
        ];
        (!left.contains(&true)).then_some(())
    })
    .await;

    // 6. The chart's RBAC is what the operator used: nothing refused, nothing spare.
    let pid = operator.id().expect("running").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await?;
    let exit = tokio::time::timeout(Duration::from_secs(30), operator.wait()).await??;
    assert!(exit.success(), "{exit}");
    let (used, refused) = calls_by(&cp.audit_log(), OPERATOR_USER)?;
    assert!(
        refused.is_empty(),
        "the apiserver refused the operator: {refused:?}"
    );
    let mut granted = permissions(
        Api::<ClusterRole>::all(client.clone())
            .get("switchboard-operator")
            .await?
            .rules,
    );
    granted.extend(permissions(
        Api::<Role>::namespaced(client.clone(), "switchboard-system")
            .get("switchboard-operator-leader")
            .await?
            .rules,
    ));
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "used but not granted: {missing:?}");
    // A repeated Event is patched into a series; this journey raises no repeats.
    let unexercised = BTreeSet::from([("events.k8s.io".into(), "events".into(), "patch".into())]);
    let spare: BTreeSet<_> = granted.difference(&used).cloned().collect();
    assert_eq!(spare, unexercised, "granted but never used");
    Ok(())
}

type Permission = (String, String, String);

/// (apiGroup, resource[/subresource], verb) of every resource request `user` made, and
/// those the apiserver refused.
fn calls_by(audit_log: &Path, user: &str) -> anyhow::Result<(BTreeSet<Permission>, Vec<String>)> {
    let mut used = BTreeSet::new();
    let mut refused = Vec::new();
    for line in std::fs::read_to_string(audit_log)?.lines() {
        let event: Value = serde_json::from_str(line)?;
        if event["user"]["username"] != user {
            continue;
        }
        let Some(object) = event.get("objectRef") else {
            continue; // /version, discovery: non-resource URLs
        };
        let mut resource = object["resource"].as_str().unwrap_or_default().to_owned();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let permission = (
            object["apiGroup"].as_str().unwrap_or_default().to_owned(),
            resource,
            event["verb"].as_str().unwrap_or_default().to_owned(),
        );
        let code = &event["responseStatus"]["code"];
        if *code == 403 {
            refused.push(format!("{permission:?}"));
        }
        // A server-side apply that creates its object (201) is authorized as create too.
        if permission.2 == "patch" && *code == 201 {
            used.insert((permission.0.clone(), permission.1.clone(), "create".into()));
        }
        used.insert(permission);
    }
    Ok((used, refused))
}

fn permissions(rules: Option<Vec<PolicyRule>>) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}
