//! Harness for tests on real control-plane binaries: etcd, kube-apiserver and (on
//! demand) kube-controller-manager, from `hack/tools.sh`, found on PATH, on loopback
//! ports, with an admin kubeconfig.
//! Nothing is faked: the apiserver validates CRDs, CEL rules and subresources itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::process::{Child, Command};

/// The admin's bearer token (member of system:masters).
const ADMIN_TOKEN: &str = "switchboard-test-admin";

pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    /// Started on demand: only the garbage collector runs, for tests of deletion.
    controller_manager: Option<Child>,
    dir: PathBuf,
    /// A kubeconfig file for the admin, as `kubectl`, helm or the operator would use.
    pub kubeconfig: PathBuf,
    api_port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(bin: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot start {bin}: run `bash hack/tools.sh` and put the directory it prints on PATH")
        })
}

impl ControlPlane {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sb-cp-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(dir.join("certs"))?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn(
            "etcd",
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--log-level=error".into(),
            ],
            &dir.join("etcd.log"),
        )?;

        // Service-account tokens need a signing key; the apiserver makes its own
        // serving certificate in --cert-dir.
        let sa_key = dir.join("sa.pem");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .await
            .context("openssl is needed to make the service-account key")?;
        if !status.success() {
            bail!("openssl genrsa failed");
        }
        // Every request is audited (metadata only), so tests can compare what a
        // component really calls with the RBAC rules it ships with.
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"),
        )?;
        let apiserver = spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--cert-dir={}", dir.join("certs").display()),
                format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", sa_key.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                format!(
                    "--audit-policy-file={}",
                    dir.join("audit-policy.yaml").display()
                ),
                format!("--audit-log-path={}", dir.join("audit.log").display()),
                "--audit-log-format=json".into(),
                // Unbuffered: a test reads the log right after the calls it checks.
                "--audit-log-mode=blocking".into(),
            ],
            &dir.join("kube-apiserver.log"),
        )?;

        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, api_port, ADMIN_TOKEN)?;
        let cp = Self {
            etcd,
            apiserver,
            controller_manager: None,
            dir,
            kubeconfig,
            api_port,
        };
        cp.wait_ready().await?;
        Ok(cp)
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Starts kube-controller-manager with its garbage collector only (no kubelet, so
    /// nothing else has work). Start it after installing CRDs: the collector learns
    /// resource kinds from discovery when it starts, and rescans only every 30 s.
    pub fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let child = spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", self.kubeconfig.display()),
                "--controllers=garbage-collector-controller".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
            &self.dir.join("kube-controller-manager.log"),
        )?;
        self.controller_manager = Some(child);
        Ok(())
    }

    /// A kubeconfig authenticating with `token` (e.g. a service account's, from
    /// `kubectl create token`), to run a component with exactly its own permissions.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        write_kubeconfig(&path, self.api_port, token)?;
        Ok(path)
    }

    /// Runs `kubectl` with the admin kubeconfig; its stdout, or an error with stderr.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        run_tool("kubectl", &[&[kubeconfig.as_str()], args].concat()).await
    }

    /// Runs `helm` with the admin kubeconfig.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        run_tool("helm", &[args, &[kubeconfig.as_str()]].concat()).await
    }

    /// The apiserver's audit log: one JSON event a line, for every request.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Creates `crd` and waits until the apiserver serves it (Established).
    pub async fn install_crd(&self, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        crds.create(&PostParams::default(), crd).await?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        for _ in 0..100 {
            let established = crds
                .get(&name)
                .await?
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the CRD {name} never became Established")
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        for _ in 0..600 {
            let req = http_get("/readyz")?;
            if client
                .request_text(req)
                .await
                .is_ok_and(|t| t.trim() == "ok")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "kube-apiserver did not become ready; its log:\n{}",
            std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default()
        )
    }
}

fn write_kubeconfig(path: &Path, api_port: u16, token: &str) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    insecure-skip-tls-verify: true\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user, namespace: default}}\ncurrent-context: test\n"
        ),
    )?;
    Ok(())
}

/// Runs a tool from PATH (`hack/tools.sh` installs them); its stdout, or an error
/// carrying the command line and its stderr.
pub async fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| {
            format!("cannot run {program}: run `bash hack/tools.sh` and put the directory it prints on PATH")
        })?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn http_get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(cm) = self.controller_manager.as_mut() {
            let _ = cm.start_kill();
        }
        let _ = self.apiserver.start_kill();
        let _ = self.etcd.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Who holds the operator's leader Lease (`switchboard-operator` in `default`), if anyone.
pub async fn lease_holder(client: &kube::Client) -> Option<String> {
    kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "default")
        .get_opt("switchboard-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// An annotation of a Deployment's pod template (the operator's config hash lives there).
pub fn template_annotation(
    d: &k8s_openapi::api::apps::v1::Deployment,
    key: &str,
) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// The example chat app (`manifests/examples/chat.yaml`), as users apply it.
pub fn chat_app() -> switchboard_spec::crd::RealtimeApp {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/chat.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}
