//! The CustomResourceDefinition, generated from the shared spec types
//! (`switchboard_spec::RealtimeAppSpec` with its `crd` feature). `crds/realtimeapp.yaml` (copied into `charts/switchboard/crds/`)
//! is this function's output, checked in; a test fails when they differ.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;
use switchboard_spec::crd::RealtimeApp;

/// The CRD, made structural: Kubernetes forbids `additionalProperties` beside
/// `properties`, which schemars emits for `deny_unknown_fields` (the apiserver prunes
/// unknown fields instead, and the shared compiler reports them for local files).
pub fn crd() -> anyhow::Result<CustomResourceDefinition> {
    let mut value = serde_json::to_value(RealtimeApp::crd())?;
    strip_closed_objects(&mut value);
    Ok(serde_json::from_value(value)?)
}

/// The CRD as the YAML document `kubectl apply -f` takes.
pub fn crd_yaml() -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(&crd()?)?)
}

fn strip_closed_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties")
                && map.get("additionalProperties") == Some(&Value::Bool(false))
            {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(strip_closed_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_closed_objects),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/realtimeapp.yaml` is the generated source of truth, and the chart ships an
    /// identical copy (Helm installs CRDs only from the chart's own `crds/`). With
    /// `SWITCHBOARD_UPDATE_GENERATED` set (`bash hack/generate.sh` sets it) both are
    /// rewritten instead of compared.
    #[test]
    fn checked_in_crds_match_the_generated_one() {
        let generated = crd_yaml().unwrap();
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        for file in [
            "crds/realtimeapp.yaml",
            "charts/switchboard/crds/realtimeapp.yaml",
        ] {
            let path = format!("{root}/{file}");
            if std::env::var_os("SWITCHBOARD_UPDATE_GENERATED").is_some() {
                std::fs::write(&path, &generated).unwrap();
            }
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                generated == checked_in,
                "{file} is stale: run `bash hack/generate.sh`"
            );
        }
    }

    #[test]
    fn the_crd_names_and_subresources_are_the_contract() {
        let crd = crd().unwrap();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("realtimeapps.switchboard.dev")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["rtapp".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        assert_eq!(
            sub.scale.as_ref().unwrap().spec_replicas_path,
            ".spec.replicas"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Replicas", "Ready", "Endpoint", "Age"]);
        let text = serde_json::to_string(&crd).unwrap();
        assert!(!text.contains(r#""additionalProperties":false"#));
        assert!(text.contains("x-kubernetes-preserve-unknown-fields"));
        assert!(text.contains("exactly one action"));
    }
}
