//! The chart's Grafana dashboard (`charts/switchboard/dashboards/switchboard.json`): well
//! formed, built only from metrics the binaries really export, and shipped by the chart
//! as a ConfigMap that Grafana's dashboard sidecar picks up. And the README's metrics
//! tables: exactly the metrics, kinds and labels the binaries export.
//!
//! "Exported" is read from the binaries themselves, never from a list kept by hand: the
//! `# TYPE` lines of a fresh `switchboard-server` process's /metrics (the built-in app,
//! no traffic) and of the operator's registry. Every labelled series is created at
//! start-up, so a metric missing there is missing, not merely quiet.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;

use serde_json::Value;
use switchboard_tests::{cargo_bin, eventually, http_get, run_tool};
use tokio::net::TcpStream;
use tokio::process::Command;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/switchboard/dashboards/switchboard.json"
);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/switchboard");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows included, and the panels a collapsed row keeps inside itself.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The `switchboard_*` identifiers in a PromQL expression. String literals (label
/// values, regexes) are skipped, so `{reason="switchboard_x"}` names no metric.
fn metric_names(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut prev = ' ';
    while let Some((i, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            // Skip to the closing quote; backslash escapes apply except in backticks.
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' && c != '`' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
            prev = c;
            continue;
        }
        if !is_ident(prev) && expr[i..].starts_with("switchboard_") {
            let end = expr[i..]
                .find(|d: char| !is_ident(d))
                .map_or(expr.len(), |n| i + n);
            names.push(expr[i..end].to_owned());
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            prev = 'x';
            continue;
        }
        prev = c;
    }
    names
}

/// The series names the `# TYPE` lines of an exposition promise, as PromQL sees them.
fn exported_series(exposition: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            // The text format names a counter's family without `_total` (OpenMetrics)
            // or with it (Prometheus 0.0.4); its samples always end in `_total`.
            "counter" if name.ends_with("_total") => &[""],
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        series.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    series
}

/// Two loopback ports nothing listens on right now (both held while choosing, so they
/// differ).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
    };
    let (a, b) = (bind(), bind());
    let addr =
        |l: &std::net::TcpListener| l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    (addr(&a), addr(&b))
}

/// `/metrics` of a fresh `switchboard-server` serving its built-in app.
async fn server_exposition() -> String {
    let (ws, admin) = free_ports();
    let mut child = Command::new(cargo_bin("switchboard-server"))
        .args([
            "--listen",
            &ws.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--instance", "dashboard-test"])
        // The built-in app, alone: no app file, no NATS, nothing from the caller's shell.
        .env_remove("SWITCHBOARD_APP")
        .env_remove("NATS_URL")
        .env("SWITCHBOARD_SECRETS_DIR", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start switchboard-server: {e}"));
    eventually("switchboard-server's admin port", 20, || {
        let exited = child.try_wait();
        async move {
            if let Ok(Some(status)) = exited {
                panic!("switchboard-server exited early: {status}");
            }
            TcpStream::connect(admin).await.ok()
        }
    })
    .await;
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let _ = child.kill().await;
    body
}

#[tokio::test]
async fn every_dashboard_query_uses_metrics_the_binaries_export() {
    let server = server_exposition().await;
    let operator = switchboard_operator::metrics::Metrics::new().encode();
    let mut exported = exported_series(&server);
    let from_server = exported.len();
    exported.extend(exported_series(&operator));
    // A parse that found nothing would make every check below vacuous.
    assert!(
        from_server > 20,
        "too few series from the server:\n{server}"
    );
    assert!(
        exported.len() > from_server,
        "no series from the operator:\n{operator}"
    );

    let dashboard = dashboard();
    // Where each query sits, for the failure message: panel titles, then variables.
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in panels(&dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                queries.push((format!("panel {}", p["title"]), expr.to_owned()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] == "query"
            && let Some(q) = v["query"].as_str()
        {
            queries.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    assert!(queries.len() > 30, "too few queries found: {queries:?}");

    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{place} queries no switchboard metric: {expr}"
        );
        for name in names {
            if !exported.contains(&name) {
                missing.entry(name).or_default().insert(place.clone());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the binaries do not export:\n{}\nexported:\n{}",
        missing
            .iter()
            .map(|(m, places)| format!(
                "  {m} in {}",
                places.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n"),
        exported.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

/// A metric as exposed or documented: its kind and its label names.
type Described = BTreeMap<String, (String, BTreeSet<String>)>;

/// Every metric family of an exposition, named as PromQL queries it (counters with
/// `_total`), with its kind and the label names of its samples (`le` aside).
fn described_by_exposition(exposition: &str) -> Described {
    let mut families = Described::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                let name = match kind {
                    "counter" if !name.ends_with("_total") => format!("{name}_total"),
                    _ => name.to_owned(),
                };
                families.insert(name, (kind.to_owned(), BTreeSet::new()));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = ["", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .filter_map(|s| sample.strip_suffix(s))
            .find(|f| families.contains_key(*f))
            .map(str::to_owned);
        let Some(family) = family else { continue };
        if let Some(labels) = line[name_end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
            .map(|(l, _)| l)
        {
            for pair in labels.split("\",") {
                if let Some((key, _)) = pair.split_once('=')
                    && key != "le"
                    && let Some((_, keys)) = families.get_mut(&family)
                {
                    keys.insert(key.trim().to_owned());
                }
            }
        }
    }
    families
}

/// The rows of the README's metrics tables: `| `name{label,…}` | kind | meaning |`.
fn described_by_readme(readme: &str) -> Described {
    let mut rows = Described::new();
    for line in readme.lines() {
        let Some(rest) = line.strip_prefix("| `switchboard_") else {
            continue;
        };
        let mut cells = rest.split('|');
        let (Some(metric), Some(kind)) = (cells.next(), cells.next()) else {
            continue;
        };
        let metric = format!("switchboard_{}", metric.trim().trim_end_matches('`'));
        let (name, labels) = match metric.split_once('{') {
            Some((name, labels)) => (
                name.to_owned(),
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .collect(),
            ),
            None => (metric, BTreeSet::new()),
        };
        rows.insert(name, (kind.trim().to_owned(), labels));
    }
    rows
}

#[tokio::test]
async fn the_readme_metrics_tables_list_exactly_what_the_binaries_export() {
    let readme = std::fs::read_to_string(README).unwrap_or_else(|e| panic!("{README}: {e}"));
    let documented = described_by_readme(&readme);
    let mut exported = described_by_exposition(&server_exposition().await);
    let from_server = exported.len();
    exported.extend(described_by_exposition(
        &switchboard_operator::metrics::Metrics::new().encode(),
    ));
    assert!(
        from_server > 20 && exported.len() > from_server,
        "too few metrics parsed: {exported:?}"
    );
    assert!(
        documented.len() > 20,
        "too few README rows parsed: {documented:?}"
    );
    let show = |d: &Described| {
        d.iter()
            .map(|(n, (k, l))| format!("  {n} {k} {l:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let undocumented: Described = exported
        .iter()
        .filter(|(n, e)| documented.get(*n) != Some(*e))
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    let stale: Described = documented
        .iter()
        .filter(|(n, d)| exported.get(*n) != Some(*d))
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "the README's metrics tables disagree with the binaries.\nexported, not documented so:\n{}\ndocumented, not exported so:\n{}",
        show(&undocumented),
        show(&stale)
    );
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no `datasource` variable of type prometheus: {variables:?}"
    );

    let mut ids = HashSet::new();
    let mut rows = 0;
    for p in panels(&dashboard) {
        let title = &p["title"];
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title} has no id"));
        assert!(
            ids.insert(id),
            "panel id {id} is used twice (again by {title})"
        );
        if p["type"] == "row" {
            rows += 1;
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} has no target");
        // Queries go to the chosen data source, never to one fixed at export time.
        for holder in std::iter::once(p).chain(targets) {
            assert_eq!(
                holder["datasource"]["uid"], "${datasource}",
                "panel {title} does not use the datasource variable"
            );
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {title} has an empty query");
            assert!(
                !expr.contains("rate(") || expr.contains("[$__rate_interval]"),
                "panel {title}: rate windows should be $__rate_interval: {expr}"
            );
        }
    }
    assert_eq!(
        rows, 7,
        "rows: Connections, Messages, Delivery, Bus, RPC, Drain, Operator"
    );
}

#[test]
fn metric_names_are_found_outside_string_literals_only() {
    assert_eq!(
        metric_names(
            r#"sum by (reason) (rate(switchboard_connections_closed_total{pod=~"switchboard_x", reason='a\'b'}[$__rate_interval])) / switchboard_connections_max"#
        ),
        [
            "switchboard_connections_closed_total",
            "switchboard_connections_max"
        ]
    );
    assert!(metric_names("my_switchboard_metric").is_empty());
}

/// `helm template` of the chart with `args` added.
async fn render(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["template", "sb", CHART, "--namespace", "apps"];
    all.extend(args);
    let text = run_tool("helm", &all)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

fn dashboard_config_maps(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["data"]["switchboard.json"].is_string())
        .collect()
}

#[tokio::test]
async fn the_chart_ships_the_dashboard_to_grafana_s_sidecar_when_asked() {
    assert!(
        dashboard_config_maps(&render(&[]).await).is_empty(),
        "the dashboard is off by default"
    );

    let objects = render(&["--set", "dashboard.enabled=true"]).await;
    let found = dashboard_config_maps(&objects);
    assert_eq!(found.len(), 1, "{objects:?}");
    let cm = found[0];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{cm}");
    assert_eq!(cm["metadata"]["namespace"], "apps", "{cm}");
    let json = cm["data"]["switchboard.json"].as_str().unwrap_or_default();
    let shipped: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}:\n{json}"));
    assert_eq!(
        shipped,
        dashboard(),
        "the ConfigMap holds another dashboard"
    );

    let objects = render(&[
        "--set",
        "dashboard.enabled=true",
        "--set",
        "dashboard.label=example.com/dashboard",
        "--set",
        "dashboard.labelValue=switchboard",
        "--set",
        "dashboard.namespace=monitoring",
        "--set",
        "dashboard.annotations.grafana_folder=Switchboard",
    ])
    .await;
    let cm = dashboard_config_maps(&objects)[0];
    let meta = &cm["metadata"];
    assert_eq!(
        meta["labels"]["example.com/dashboard"], "switchboard",
        "{cm}"
    );
    assert!(meta["labels"]["grafana_dashboard"].is_null(), "{cm}");
    assert_eq!(meta["namespace"], "monitoring", "{cm}");
    assert_eq!(meta["annotations"]["grafana_folder"], "Switchboard", "{cm}");

    let err = run_tool(
        "helm",
        &["template", "sb", CHART, "--set", "dashboard.labl=x"],
    )
    .await
    .expect_err("an unknown dashboard value is refused")
    .to_string();
    assert!(err.contains("labl"), "{err}");
}
