//! The objects one RealtimeApp owns, built as pure functions of the app (and so
//! unit-testable without a cluster): ConfigMap, Deployment, Service,
//! PodDisruptionBudget, HorizontalPodAutoscaler, Ingress.
//!
//! They are written as the YAML a person would write (`json!`) and then typed, so a
//! field name mistake fails the build of the object, not silently on the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_spec::crd::RealtimeApp;
use switchboard_spec::{AppManifest, ManifestMetadata, SecretKeyRef};

/// Where things live inside a server pod.
pub const CONFIG_DIR: &str = "/etc/switchboard/app";
pub const CONFIG_FILE: &str = "app.yaml";
pub const SECRETS_DIR: &str = "/etc/switchboard/secrets";
/// The keys of a `kubernetes.io/tls` Secret, as `spec.tls.secretRef` is read.
const TLS_CERT_KEY: &str = "tls.crt";
const TLS_KEY_KEY: &str = "tls.key";
pub const WS_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 9090;
/// Seconds the pod waits in preStop so endpoints stop sending it new clients before the
/// drain starts.
pub const PRE_STOP_SECONDS: i64 = 5;
/// The pod annotation whose change rolls the Deployment when the config changes.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/config-hash";
/// The label that selects an app's pods.
pub const APP_LABEL: &str = "switchboard.dev/app";

/// Operator-wide settings that shape the objects.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Image when `spec.image` is absent.
    pub server_image: String,
    /// `OTEL_*` variables passed to every server pod (the operator's own settings).
    pub otel_env: Vec<(String, String)>,
}

/// Everything the builders need, derived once per reconcile.
pub struct Plan<'a> {
    pub app: &'a RealtimeApp,
    pub name: String,
    pub namespace: String,
    /// The server's config file: the manifest the server reads with `--app`.
    pub config: String,
    pub config_hash: String,
    pub defaults: &'a Defaults,
}

impl<'a> Plan<'a> {
    pub fn new(app: &'a RealtimeApp, defaults: &'a Defaults) -> anyhow::Result<Self> {
        let name = app.metadata.name.clone().unwrap_or_default();
        let namespace = app
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let manifest = AppManifest {
            api_version: Some("switchboard.dev/v1alpha1".into()),
            kind: Some("RealtimeApp".into()),
            metadata: ManifestMetadata {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
            },
            spec: app.spec.clone(),
        };
        let config = serde_saphyr::to_string(&manifest)?;
        let digest = Sha256::digest(config.as_bytes());
        let config_hash = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            app,
            name,
            namespace,
            config,
            config_hash,
            defaults,
        })
    }

    /// Labels on every owned object; the selector is the `APP_LABEL` one alone.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "switchboard-server".into()),
            ("app.kubernetes.io/instance".into(), self.name.clone()),
            (
                "app.kubernetes.io/managed-by".into(),
                "switchboard-operator".into(),
            ),
            (APP_LABEL.into(), self.name.clone()),
        ])
    }

    pub fn selector(&self) -> String {
        format!("{APP_LABEL}={}", self.name)
    }

    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name)
    }

    fn metadata(&self, name: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(),
            "ownerReferences": [self.app.controller_owner_ref(&())],
        })
    }

    /// Replicas the Deployment is told to run; `None` when an HPA owns the count.
    pub fn replicas(&self) -> Option<i32> {
        match &self.app.spec.autoscaling {
            Some(_) => None,
            None => Some(self.app.spec.replicas.unwrap_or(1)),
        }
    }

    /// The most replicas the app may run at once, for the PodDisruptionBudget.
    fn max_replicas(&self) -> i32 {
        match &self.app.spec.autoscaling {
            Some(a) => a.max_replicas,
            None => self.app.spec.replicas.unwrap_or(1),
        }
    }

    pub fn service_port(&self) -> i32 {
        self.app
            .spec
            .service
            .as_ref()
            .and_then(|s| s.port)
            .unwrap_or(80)
    }

    /// Where clients connect: the Ingress's host when there is one, else the Service.
    pub fn endpoint(&self) -> String {
        let spec = &self.app.spec;
        if let Some(ingress) = &spec.ingress {
            let scheme = if ingress.tls_secret_name.is_some() {
                "wss"
            } else {
                "ws"
            };
            return format!("{scheme}://{}/ws", ingress.host);
        }
        let scheme = if spec.tls.is_some() { "wss" } else { "ws" };
        format!(
            "{scheme}://{}.{}.svc:{}/ws",
            self.name,
            self.namespace,
            self.service_port()
        )
    }

    /// Every Secret key the server reads, with the spec field that names it: the
    /// operator checks each exists before rolling out (a missing one would crash-loop
    /// the pods) and mounts each Secret at `SECRETS_DIR/<name>`.
    pub fn secret_keys(&self) -> Vec<(String, SecretKeyRef)> {
        let spec = &self.app.spec;
        let mut keys = Vec::new();
        if let Some(jwt) = &spec.auth.jwt {
            for (field, r) in [
                ("secretRef", &jwt.secret_ref),
                ("publicKeyRef", &jwt.public_key_ref),
            ] {
                if let Some(r) = r {
                    keys.push((format!("spec.auth.jwt.{field}"), r.clone()));
                }
            }
        }
        if let Some(tls) = &spec.tls {
            for key in [TLS_CERT_KEY, TLS_KEY_KEY] {
                keys.push((
                    "spec.tls.secretRef".to_owned(),
                    SecretKeyRef {
                        name: tls.secret_ref.name.clone(),
                        key: key.to_owned(),
                    },
                ));
            }
        }
        if let Some(nats) = &spec.nats {
            for (field, r) in nats.secret_refs() {
                keys.push((format!("spec.nats.{field}"), r.clone()));
            }
        }
        keys
    }

    /// The Secrets to mount, each once.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .secret_keys()
            .into_iter()
            .map(|(_, r)| r.name)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn config_map(&self) -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(&self.config_map_name()),
            "data": {CONFIG_FILE: self.config},
        }))?)
    }

    pub fn deployment(&self) -> anyhow::Result<Deployment> {
        let spec = &self.app.spec;
        let pod = spec.pod.clone().unwrap_or_default();
        let grace = i64::from(spec.drain.grace_period_seconds) + PRE_STOP_SECONDS + 5;
        let mut env = vec![
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
            json!({"name": "SWITCHBOARD_APP", "value": format!("{CONFIG_DIR}/{CONFIG_FILE}")}),
            json!({"name": "SWITCHBOARD_SECRETS_DIR", "value": SECRETS_DIR}),
            json!({"name": "SWITCHBOARD_LISTEN", "value": format!("0.0.0.0:{WS_PORT}")}),
            json!({"name": "SWITCHBOARD_ADMIN_LISTEN", "value": format!("0.0.0.0:{ADMIN_PORT}")}),
        ];
        if let Some(nats) = &spec.nats {
            env.push(json!({"name": "NATS_URL", "value": nats.url}));
        }
        for (k, v) in &self.defaults.otel_env {
            env.push(json!({"name": k, "value": v}));
        }
        let mut volumes =
            vec![json!({"name": "config", "configMap": {"name": self.config_map_name()}})];
        let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
        for (i, name) in self.secret_names().iter().enumerate() {
            let volume = format!("secret-{i}");
            volumes.push(json!({"name": volume, "secret": {"secretName": name}}));
            mounts.push(json!({"name": volume, "mountPath": format!("{SECRETS_DIR}/{name}"), "readOnly": true}));
        }
        let mut annotations = pod.annotations.clone();
        annotations.insert(CONFIG_HASH_ANNOTATION.into(), self.config_hash.clone());
        let probe = |path: &str, period: i32, failures: i32| json!({"httpGet": {"path": path, "port": "admin"}, "periodSeconds": period, "failureThreshold": failures});
        let mut deployment_spec = json!({
            "selector": {"matchLabels": {APP_LABEL: self.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": self.labels(), "annotations": annotations},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {APP_LABEL: self.name}},
                    }],
                    "nodeSelector": pod.node_selector,
                    "tolerations": pod.tolerations,
                    "volumes": volumes,
                    "containers": [{
                        "name": "server",
                        "image": spec.image.clone().unwrap_or_else(|| self.defaults.server_image.clone()),
                        "ports": [
                            {"name": "ws", "containerPort": WS_PORT},
                            {"name": "admin", "containerPort": ADMIN_PORT},
                        ],
                        "env": env,
                        "volumeMounts": mounts,
                        "resources": pod.resources.clone().unwrap_or_else(|| json!({})),
                        "startupProbe": probe("/healthz", 1, 30),
                        "livenessProbe": probe("/healthz", 10, 3),
                        "readinessProbe": probe("/readyz", 2, 1),
                        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
                        "securityContext": {
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        });
        if let Some(replicas) = self.replicas() {
            deployment_spec["replicas"] = json!(replicas);
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(&self.name),
            "spec": deployment_spec,
        }))?)
    }

    pub fn service(&self) -> anyhow::Result<Service> {
        let timeout = self
            .app
            .spec
            .service
            .as_ref()
            .and_then(|s| s.session_affinity_timeout_seconds)
            .unwrap_or(10_800);
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(&self.name),
            "spec": {
                "selector": {APP_LABEL: self.name},
                "ports": [{"name": "ws", "port": self.service_port(), "targetPort": "ws"}],
                // Sticky: a client's reconnects land on the pod that holds its state.
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}},
            },
        }))?)
    }

    /// Only while more than one replica may run: one pod may be evicted at a time.
    pub fn pod_disruption_budget(&self) -> anyhow::Result<Option<PodDisruptionBudget>> {
        if self.max_replicas() <= 1 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_value(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self.metadata(&self.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {APP_LABEL: self.name}}},
        }))?))
    }

    pub fn autoscaler(&self) -> anyhow::Result<Option<HorizontalPodAutoscaler>> {
        let Some(a) = &self.app.spec.autoscaling else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": self.metadata(&self.name),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
                "minReplicas": a.min_replicas.unwrap_or(1),
                "maxReplicas": a.max_replicas,
                "metrics": [{
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": a.target_cpu_utilization_percentage.unwrap_or(70),
                        },
                    },
                }],
            },
        }))?))
    }

    /// `spec.ingress`: `/ws` on the host, to the Service, with the timeouts a WebSocket
    /// needs at ingress-nginx (its defaults of 60 s would cut every quiet connection
    /// that the heartbeat does not keep busy enough) and HTTPS to pods that serve TLS.
    pub fn ingress(&self) -> anyhow::Result<Option<Ingress>> {
        let Some(ingress) = &self.app.spec.ingress else {
            return Ok(None);
        };
        let mut annotations: BTreeMap<String, String> = [
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
            ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if self.app.spec.tls.is_some() {
            annotations.insert(
                "nginx.ingress.kubernetes.io/backend-protocol".into(),
                "HTTPS".into(),
            );
        }
        annotations.extend(ingress.annotations.clone());
        let mut metadata = self.metadata(&self.name);
        metadata["annotations"] = json!(annotations);
        let mut spec = json!({
            "rules": [{
                "host": ingress.host,
                "http": {"paths": [{
                    "path": "/ws",
                    "pathType": "Exact",
                    "backend": {"service": {"name": self.name, "port": {"number": self.service_port()}}},
                }]},
            }],
        });
        if let Some(class) = &ingress.class_name {
            spec["ingressClassName"] = json!(class);
        }
        if let Some(secret) = &ingress.tls_secret_name {
            spec["tls"] = json!([{"hosts": [ingress.host], "secretName": secret}]);
        }
        Ok(Some(serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": metadata,
            "spec": spec,
        }))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = include_str!("../../manifests/examples/chat.yaml");

    fn app(edit: impl FnOnce(&mut RealtimeApp)) -> RealtimeApp {
        let mut app: RealtimeApp = serde_saphyr::from_str(CHAT).unwrap();
        app.metadata.namespace = Some("prod".into());
        app.metadata.uid = Some("uid-1".into());
        edit(&mut app);
        app
    }

    fn defaults() -> Defaults {
        Defaults {
            server_image: "switchboard-server:test".into(),
            otel_env: vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                "http://jaeger:4317".into(),
            )],
        }
    }

    #[test]
    fn the_config_map_holds_a_manifest_the_server_accepts() {
        let (app, d) = (app(|_| {}), defaults());
        let plan = Plan::new(&app, &d).unwrap();
        let cm = plan.config_map().unwrap();
        let text = &cm.data.unwrap()[CONFIG_FILE];
        let compiled = switchboard_spec::load(text).unwrap();
        assert_eq!(
            (compiled.name.as_str(), compiled.namespace.as_str()),
            ("chat", "prod")
        );
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("RealtimeApp", Some(true))
        );
    }

    #[test]
    fn the_deployment_is_hardened_probed_and_rolled_by_config_changes() {
        let d = defaults();
        let a = app(|a| a.spec.drain.grace_period_seconds = 20);
        let plan = Plan::new(&a, &d).unwrap();
        let dep = serde_json::to_value(plan.deployment().unwrap()).unwrap();
        let pod = &dep["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(dep["spec"]["replicas"], 1);
        assert_eq!(
            dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            0
        );
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
        assert_eq!(c["image"], "switchboard-server:test");
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(env.contains(&"POD_NAME") && env.contains(&"OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert!(!env.contains(&"NATS_URL"));
        let hash = &dep["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION];

        let changed = app(|a| a.spec.limits.max_payload_bytes = 1024);
        let plan2 = Plan::new(&changed, &d).unwrap();
        let dep2 = serde_json::to_value(plan2.deployment().unwrap()).unwrap();
        assert_ne!(
            hash,
            &dep2["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        );
    }

    #[test]
    fn jwt_secrets_are_mounted_read_only_where_the_server_looks() {
        let d = defaults();
        let a = app(|a| {
            a.spec.auth.jwt = Some(switchboard_spec::JwtSettings {
                algorithms: vec!["HS256".into()],
                secret_ref: Some(SecretKeyRef {
                    name: "chat-jwt".into(),
                    key: "secret".into(),
                }),
                ..Default::default()
            })
        });
        let dep = serde_json::to_value(Plan::new(&a, &d).unwrap().deployment().unwrap()).unwrap();
        let mounts = &dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
        assert!(mounts.as_array().unwrap().iter().any(|m| m["mountPath"]
            == "/etc/switchboard/secrets/chat-jwt"
            && m["readOnly"] == true));
    }

    #[test]
    fn the_tls_secret_is_mounted_once_beside_the_jwt_one_and_the_endpoint_says_wss() {
        let d = defaults();
        let a = app(|a| {
            a.spec.tls = Some(switchboard_spec::TlsSettings {
                secret_ref: switchboard_spec::SecretRef {
                    name: "chat-tls".into(),
                },
                min_version: None,
            });
        });
        let plan = Plan::new(&a, &d).unwrap();
        let keys: Vec<_> = plan
            .secret_keys()
            .into_iter()
            .filter(|(field, _)| field == "spec.tls.secretRef")
            .map(|(_, r)| r.key)
            .collect();
        assert_eq!(keys, ["tls.crt", "tls.key"]);
        assert_eq!(
            plan.secret_names()
                .iter()
                .filter(|n| *n == "chat-tls")
                .count(),
            1
        );
        let dep = serde_json::to_value(plan.deployment().unwrap()).unwrap();
        let mounts = &dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
        assert!(mounts.as_array().unwrap().iter().any(|m| m["mountPath"]
            == "/etc/switchboard/secrets/chat-tls"
            && m["readOnly"] == true));
        assert!(plan.endpoint().starts_with("wss://chat.prod.svc:"));
    }

    #[test]
    fn an_ingress_only_when_asked_with_websocket_timeouts_and_https_to_tls_pods() {
        let d = defaults();
        assert!(
            Plan::new(&app(|_| {}), &d)
                .unwrap()
                .ingress()
                .unwrap()
                .is_none()
        );
        let a = app(|a| {
            a.spec.ingress = Some(switchboard_spec::IngressSettings {
                host: "chat.example.com".into(),
                class_name: Some("nginx".into()),
                tls_secret_name: Some("chat-public".into()),
                annotations: [(
                    "nginx.ingress.kubernetes.io/proxy-read-timeout".to_owned(),
                    "7200".to_owned(),
                )]
                .into(),
            });
            a.spec.tls = Some(switchboard_spec::TlsSettings::default());
        });
        let plan = Plan::new(&a, &d).unwrap();
        let ing = serde_json::to_value(plan.ingress().unwrap().unwrap()).unwrap();
        let annotations = &ing["metadata"]["annotations"];
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"],
            "7200"
        );
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"],
            "3600"
        );
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/backend-protocol"],
            "HTTPS"
        );
        assert_eq!(ing["spec"]["ingressClassName"], "nginx");
        assert_eq!(ing["spec"]["tls"][0]["secretName"], "chat-public");
        let path = &ing["spec"]["rules"][0]["http"]["paths"][0];
        assert_eq!(path["path"], "/ws");
        assert_eq!(path["backend"]["service"]["name"], "chat");
        assert_eq!(plan.endpoint(), "wss://chat.example.com/ws");
    }

    #[test]
    fn bus_secrets_are_mounted_once_each() {
        let r = |name: &str, key: &str| SecretKeyRef {
            name: name.into(),
            key: key.into(),
        };
        let a = app(|a| {
            a.spec.nats = Some(switchboard_spec::NatsSettings {
                url: "tls://n:4222".into(),
                auth: Some(switchboard_spec::NatsAuth {
                    nkey_seed_ref: Some(r("chat-nats", "seed")),
                    ..Default::default()
                }),
                tls: Some(switchboard_spec::NatsTls {
                    ca_ref: Some(r("nats-ca", "ca.crt")),
                    cert_ref: Some(r("chat-nats", "tls.crt")),
                    key_ref: Some(r("chat-nats", "tls.key")),
                }),
                ..Default::default()
            })
        });
        let dep = serde_json::to_value(Plan::new(&a, &defaults()).unwrap().deployment().unwrap())
            .unwrap();
        let mounts = dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .filter(|p| p.starts_with("/etc/switchboard/secrets/"))
            .collect::<Vec<_>>();
        assert_eq!(
            mounts,
            [
                "/etc/switchboard/secrets/chat-nats",
                "/etc/switchboard/secrets/nats-ca"
            ]
        );
    }

    #[test]
    fn the_service_is_sticky() {
        let (a, d) = (app(|_| {}), defaults());
        let svc = serde_json::to_value(Plan::new(&a, &d).unwrap().service().unwrap()).unwrap();
        assert_eq!(svc["spec"]["sessionAffinity"], "ClientIP");
        assert_eq!(
            svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    }

    #[test]
    fn pdb_and_hpa_only_when_they_mean_something() {
        let d = defaults();
        let single = app(|_| {});
        let plan = Plan::new(&single, &d).unwrap();
        assert!(plan.pod_disruption_budget().unwrap().is_none());
        assert!(plan.autoscaler().unwrap().is_none());
        let scaled = app(|a| {
            a.spec.nats = Some(switchboard_spec::NatsSettings {
                url: "nats://n:4222".into(),
                ..Default::default()
            });
            a.spec.autoscaling = Some(switchboard_spec::Autoscaling {
                min_replicas: Some(2),
                max_replicas: 10,
                target_cpu_utilization_percentage: None,
            });
        });
        let plan = Plan::new(&scaled, &d).unwrap();
        assert!(plan.pod_disruption_budget().unwrap().is_some());
        let hpa = serde_json::to_value(plan.autoscaler().unwrap().unwrap()).unwrap();
        assert_eq!(hpa["spec"]["maxReplicas"], 10);
        assert_eq!(plan.replicas(), None, "the HPA owns the replica count");
        let dep = serde_json::to_value(plan.deployment().unwrap()).unwrap();
        assert!(dep["spec"].get("replicas").is_none());
    }
}
