//! Every manifest in `manifests/examples` is what it claims to be. Each RealtimeApp
//! passes the spec compiler the server and operator share, and a real kube-apiserver
//! with the CRD installed takes every document as `kubectl apply --server-side` would
//! send it, with strict field validation. Each app's JWT Secret comes with the examples.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::pinned_kind;
use serde_json::Value;
use switchboard_tests::ControlPlane;

/// One YAML document of an example file.
struct Manifest {
    file: String,
    text: String,
    value: Value,
}

impl Manifest {
    fn str_at(&self, pointer: &str) -> anyhow::Result<&str> {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .with_context(|| format!("{}: no string at {pointer}", self.file))
    }
}

/// Every `*.yaml` under manifests/examples, each a single document (the server's
/// `--app` reads one document, so the examples keep to that everywhere).
fn examples() -> anyhow::Result<Vec<Manifest>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path)?;
            let value = serde_saphyr::from_str(&text)
                .with_context(|| format!("{file} is not one valid YAML document"))?;
            Ok(Manifest { file, text, value })
        })
        .collect()
}

#[test]
fn every_example_app_compiles() -> anyhow::Result<()> {
    let examples = examples()?;
    let mut apps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for m in &examples {
        match m.str_at("/kind")? {
            "RealtimeApp" => {
                let app = switchboard_spec::load(&m.text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", m.file))?;
                apps.insert(app.name.clone());
                // Each key must come with the examples, or the app cannot start from them alone.
                for r in app
                    .spec
                    .auth
                    .jwt
                    .iter()
                    .flat_map(|j| j.secret_ref.iter().chain(&j.public_key_ref))
                {
                    secrets.insert((m.file.clone(), r.name.clone(), r.key.clone()));
                }
            }
            "Secret" => {}
            other => bail!("{}: unexpected kind {other}", m.file),
        }
    }
    for expected in ["chat", "notifications", "quotes"] {
        assert!(
            apps.contains(expected),
            "no example app {expected}: {apps:?}"
        );
    }
    for (file, name, key) in secrets {
        let provided = examples.iter().any(|s| {
            s.value["kind"] == "Secret"
                && s.value["metadata"]["name"] == name.as_str()
                && (s.value["stringData"].get(&key).is_some()
                    || s.value["data"].get(&key).is_some())
        });
        assert!(
            provided,
            "{file} reads Secret {name} key {key}, which no example provides"
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted_by_a_real_apiserver() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    cp.install_crd(&switchboard_operator::crd::crd()?).await?;

    let apply = PatchParams::apply("examples-test").validation_strict();
    for m in examples()? {
        let (group, version) = match m.str_at("/apiVersion")?.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), m.str_at("/apiVersion")?.to_owned()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, m.str_at("/kind")?);
        let (resource, _) = pinned_kind(&client, &gvk)
            .await
            .with_context(|| format!("{}: the apiserver does not serve {gvk:?}", m.file))?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
        let name = m.str_at("/metadata/name")?;
        let object: DynamicObject = serde_json::from_value(m.value.clone())?;
        api.patch(name, &apply, &Patch::Apply(&object))
            .await
            .with_context(|| format!("{}: the apiserver refused it", m.file))?;

        // The apiserver stored everything the file says: no field pruned (payload
        // schemas live in preserve-unknown-fields blocks) or changed.
        if gvk.kind == "RealtimeApp" {
            let stored = api.get(name).await?;
            if let Some(at) = lost(&m.value["spec"], &stored.data["spec"], "spec") {
                bail!(
                    "{}: the apiserver did not store the spec as written: {at}",
                    m.file
                );
            }
        }
    }
    Ok(())
}

/// The first place where `stored` lost or changed something `file` says, as a path.
/// Keys only `stored` has are fine: the apiserver fills in the CRD's defaults.
fn lost(file: &Value, stored: &Value, at: &str) -> Option<String> {
    match (file, stored) {
        (Value::Object(f), Value::Object(s)) => f.iter().find_map(|(k, v)| {
            let at = format!("{at}.{k}");
            match s.get(k) {
                Some(sv) => lost(v, sv, &at),
                None => Some(format!("{at}: pruned")),
            }
        }),
        (Value::Array(f), Value::Array(s)) if f.len() == s.len() => f
            .iter()
            .zip(s)
            .enumerate()
            .find_map(|(i, (fv, sv))| lost(fv, sv, &format!("{at}[{i}]"))),
        _ if file == stored => None,
        _ => Some(format!("{at}: {file} became {stored}")),
    }
}
