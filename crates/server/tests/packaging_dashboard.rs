//! The Grafana dashboard (packaging/grafana/shoes-vz.json) and the Prometheus alert rules
//! (packaging/prometheus/shoes-vz-alerts.yml) against the metrics the server exports: every
//! series they name exists (or is announced), and the dashboard shows every exported family.
//! Their PromQL is parsed and evaluated by a real Prometheus in `.ci/ops-checks.sh`.

use serde_json::Value;
use shoes_vz_server::exposition::ExpositionFormat;
use shoes_vz_server::metrics::{FailureReason, FleetGauges, Metrics, Phase};
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

/// Metrics the dashboard and the alerts use before the server exports them: announced with
/// exactly these names (issue 12: operator API, cordon, failure reasons). Once one is
/// exported, the test below says to drop it from this list.
const ANNOUNCED: [&str; 0] = [];

fn repo_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Exported families as (name, type), from the Prometheus text format's TYPE lines.
fn exported_families() -> Vec<(String, String)> {
    let metrics = Metrics::default();
    // Labelled families appear once they have a series.
    metrics.count_request("AddInstance", tonic::Code::Ok);
    metrics.observe_phase(Phase::Clone, 1);
    // Families with labels show once they have a child.
    metrics.count_auth_refused("agent");
    metrics.count_failure(FailureReason::Job);
    let text = metrics.render_as(&FleetGauges::default(), ExpositionFormat::PrometheusText);
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Every series name a query may select: families, and histograms' _bucket/_sum/_count.
fn selectable_series() -> HashSet<String> {
    let mut names = HashSet::new();
    for (name, kind) in exported_families() {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

/// The `shoesvz_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("shoesvz_")
        .map(|(start, _)| {
            text[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&repo_file("packaging/grafana/shoes-vz.json")).expect("dashboard is JSON")
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect()
}

fn dashboard_queries(dashboard: &Value) -> String {
    let mut queries = String::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push_str(target["expr"].as_str().expect("expr"));
            queries.push('\n');
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(definition) = variable["definition"].as_str() {
            queries.push_str(definition);
            queries.push('\n');
        }
    }
    queries
}

#[test]
fn dashboard_and_alerts_name_only_exported_or_announced_series() {
    let selectable = selectable_series();
    for announced in ANNOUNCED {
        assert!(
            !selectable.contains(announced),
            "{announced} is exported now: drop it from ANNOUNCED in {}",
            file!()
        );
    }
    for (file, text) in [
        (
            "packaging/grafana/shoes-vz.json",
            dashboard_queries(&dashboard()),
        ),
        (
            "packaging/prometheus/shoes-vz-alerts.yml",
            repo_file("packaging/prometheus/shoes-vz-alerts.yml"),
        ),
        (
            "packaging/prometheus/shoes-vz-alerts.test.yml",
            repo_file("packaging/prometheus/shoes-vz-alerts.test.yml"),
        ),
    ] {
        for name in metric_names(&text) {
            assert!(
                selectable.contains(&name) || ANNOUNCED.contains(&name.as_str()),
                "{file} names {name}, which the server does not export"
            );
        }
    }
}

#[test]
fn dashboard_shows_every_exported_family() {
    let used = metric_names(&dashboard_queries(&dashboard()));
    for (name, kind) in exported_families() {
        let shown = used.contains(&name)
            || (kind == "histogram" && used.iter().any(|u| u.starts_with(&format!("{name}_"))));
        assert!(
            shown,
            "{name} ({kind}) is on no panel of packaging/grafana/shoes-vz.json"
        );
    }
    for announced in ANNOUNCED {
        assert!(used.contains(announced), "{announced} is on no panel");
    }
}

#[test]
fn dashboard_is_importable_with_any_prometheus_data_source() {
    let dashboard = dashboard();
    assert!(
        dashboard["id"].is_null(),
        "an import must not carry a database id"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "panel {id} is wider than the grid");
        for column in x..x + w {
            for row in y..y + h {
                assert!(cells.insert((column, row)), "panel {id} overlaps another");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {id}");
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                expr.contains("job=\"$job\"") && expr.contains("instance=~\"$instance\""),
                "panel {id} ignores the job/server selection: {expr}"
            );
        }
    }
}
