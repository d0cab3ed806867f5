//! The chart's Grafana dashboard (`deploy/helm/dowser/dashboards/`) and Prometheus alerts
//! (`deploy/helm/dowser/rules/`): promtool checks the rules file and runs its unit tests
//! (`tests/monitoring/`), the chart renders that very file, the dashboard is complete and its
//! queries are valid PromQL, and every metric and label the rules, their unit tests and the
//! dashboard name is one a real agent and controller serve on `/metrics`.
//!
//! promtool comes from `DOWSER_PROMTOOL` (tests/test.sh sets it), else from
//! `tests/cluster/build-promtool.sh` (built from the Prometheus Go modules, cached).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use common::{
    agent::Agent,
    cluster::{Cluster, INSTALL_NAMESPACE, repo},
    controller::ControllerProcess,
    plant::{apply, device, modbus_config},
    settle,
};
use serde_json::Value;

const RULES: &str = "deploy/helm/dowser/rules/dowser.rules.yaml";
const RULE_TESTS: &str = "tests/monitoring/dowser.rules.test.yaml";
const DASHBOARD: &str = "deploy/helm/dowser/dashboards/dowser.json";
const CHART: &str = "deploy/helm/dowser";

/// The agents' job as the rules file names it; the chart replaces this matcher.
const AGENT_JOB: &str = r#"job="dowser-agent-metrics""#;

/// Labels a scrape adds to every series of a target: Prometheus' `job` and `instance`, and
/// those of the Prometheus Operator's ServiceMonitor and PodMonitor (`namespace`, `pod`,
/// `container`, `endpoint`, `service`); cAdvisor's series carry `namespace`, `pod` and
/// `container` too.
const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "endpoint",
    "service",
];

/// The only series of other exporters that the rules and the dashboard use, and why.
const OTHER_METRICS: [(&str, &str); 2] = [
    (
        "up",
        "Prometheus' series of each scrape target: DowserAgentDown, DowserAgentsAbsent",
    ),
    (
        "container_memory_working_set_bytes",
        "the kubelet's cAdvisor: the dashboard's memory panel (dowser exports no memory metric)",
    ),
];

// ---- tools ----------------------------------------------------------------------------

/// promtool: `DOWSER_PROMTOOL`, else the cached build of `tests/cluster/build-promtool.sh`.
fn promtool() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = match std::env::var_os("DOWSER_PROMTOOL") {
            Some(p) => PathBuf::from(p),
            None => {
                let out = Command::new(repo().join("tests/cluster/build-promtool.sh"))
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run tests/cluster/build-promtool.sh");
                assert!(
                    out.status.success(),
                    "promtool is needed and DOWSER_PROMTOOL is not set; \
                     tests/cluster/build-promtool.sh failed to build it (Go and the Go module \
                     proxy are needed; tests/test.sh runs it)"
                );
                let stdout = String::from_utf8_lossy(&out.stdout);
                PathBuf::from(stdout.lines().last().expect("a bin directory")).join("promtool")
            }
        };
        assert!(
            path.is_file(),
            "promtool not found at {} (DOWSER_PROMTOOL): build it with \
             tests/cluster/build-promtool.sh, which prints its directory",
            path.display()
        );
        path
    })
    .clone()
}

/// helm, from the Kubernetes binaries the tests use.
fn helm() -> PathBuf {
    common::cluster::k8s_bin_dir().join("helm")
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn yaml_file(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rules() -> Vec<serde_yaml::Value> {
    yaml_file(RULES)["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alert_names() -> Vec<String> {
    rules()
        .iter()
        .map(|r| {
            r["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_string()
        })
        .collect()
}

fn str_of<'a>(v: &'a serde_yaml::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

// ---- PromQL: what a query names --------------------------------------------------------

/// The metric names a PromQL expression selects, each with its matchers' labels (and the
/// value of an equality matcher), and the labels of its `by`, `without`, `on`, `ignoring`
/// and `group_left`/`group_right` clauses. Grafana's variables (`$__rate_interval`) are
/// skipped.
#[derive(Debug, Default)]
struct Names {
    metrics: BTreeMap<String, BTreeSet<(String, Option<String>)>>,
    grouping: BTreeSet<String>,
}

const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary operators, modifiers and aggregations (which may stand before `by`, not `(`).
const KEYWORDS: [&str; 22] = [
    "and",
    "or",
    "unless",
    "atan2",
    "offset",
    "bool",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The end of the identifier starting at `i`.
fn ident_end(s: &[char], mut i: usize) -> usize {
    while i < s.len() && is_ident(s[i]) {
        i += 1;
    }
    i
}

fn skip_space(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// A string literal starting at `i` (its quote): its value and the index after it.
fn string_at(s: &[char], i: usize) -> (String, usize) {
    let quote = s[i];
    let mut value = String::new();
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == '\\' && quote != '`' && j + 1 < s.len() {
            j += 1;
        }
        value.push(s[j]);
        j += 1;
    }
    assert!(
        j < s.len(),
        "unterminated string in {}",
        String::from_iter(s)
    );
    (value, j + 1)
}

/// The matchers of a selector whose `{` is at `i`; returns the index after its `}`.
fn matchers_at(s: &[char], i: usize, into: &mut BTreeSet<(String, Option<String>)>) -> usize {
    let mut j = i + 1;
    loop {
        j = skip_space(s, j);
        while j < s.len() && s[j] == ',' {
            j = skip_space(s, j + 1);
        }
        assert!(j < s.len(), "unterminated selector");
        if s[j] == '}' {
            return j + 1;
        }
        assert!(is_ident_start(s[j]), "a label name at {j}");
        let end = ident_end(s, j);
        let label: String = s[j..end].iter().collect();
        j = skip_space(s, end);
        let op_end = j + if s[j] == '=' && s.get(j + 1) != Some(&'~') {
            1
        } else {
            2
        };
        let op: String = s[j..op_end].iter().collect();
        assert!(
            ["=", "!=", "=~", "!~"].contains(&op.as_str()),
            "matcher {op}"
        );
        j = skip_space(s, op_end);
        let (value, after) = string_at(s, j);
        into.insert((label, (op == "=").then_some(value)));
        j = after;
    }
}

fn promql_names(expr: &str) -> Names {
    let s: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string_at(&s, i).1;
        } else if c == '[' {
            // A range or subquery: durations and Grafana variables.
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            i = ident_end(&s, i + 1);
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let end = ident_end(&s, i);
            let word: String = s[i..end].iter().collect();
            let next = skip_space(&s, end);
            i = end;
            if GROUPING.contains(&word.as_str()) {
                if s.get(next) == Some(&'(') {
                    let close = next + s[next..].iter().position(|&c| c == ')').unwrap();
                    let list: String = s[next + 1..close].iter().collect();
                    names.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = close + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || s.get(next) == Some(&'(') {
                // An operator, an aggregation or a function.
            } else {
                let matchers = names.metrics.entry(word).or_default();
                if s.get(next) == Some(&'{') {
                    i = matchers_at(&s, next, matchers);
                }
            }
        } else if c == '{' {
            let mut matchers = BTreeSet::new();
            i = matchers_at(&s, i, &mut matchers);
            names
                .metrics
                .entry(String::new())
                .or_default()
                .extend(matchers);
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_promql_scanner_finds_metrics_and_labels() {
    let n = promql_names(
        r#"max by (namespace, pod) (rate(a_total{x="1", y=~"2|3"}[$__rate_interval])) and on (pod) group_left () (b or c_d:e{z!="it's"}) > 0.5e3 offset 5m"#,
    );
    let metrics: Vec<&str> = n.metrics.keys().map(String::as_str).collect();
    assert_eq!(metrics, ["a_total", "b", "c_d:e"]);
    assert_eq!(
        n.metrics["a_total"],
        BTreeSet::from([("x".into(), Some("1".into())), ("y".into(), None)])
    );
    assert_eq!(
        n.metrics["c_d:e"],
        BTreeSet::from([("z".to_string(), None)])
    );
    assert_eq!(
        n.grouping,
        BTreeSet::from(["namespace".to_string(), "pod".to_string()])
    );
}

// ---- promtool on the rules ---------------------------------------------------------------

#[test]
fn promtool_checks_the_rules_file() {
    let out = run(&promtool(), &["check", "rules", RULES]);
    let all = text(&out);
    assert!(out.status.success(), "promtool check rules {RULES}:\n{all}");
    let count = rules().len();
    assert!(
        all.contains(&format!("SUCCESS: {count} rules found")),
        "{all}"
    );
    for rule in rules() {
        let name = str_of(&rule, "alert");
        assert!(rule["for"].as_str().is_some(), "{name} has no `for`");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|a| a.len() > 20),
                "{name} has no {key}"
            );
        }
    }
}

/// Every alert has a case where it fires and one where it does not, and `promtool test
/// rules` passes them all.
#[test]
fn promtool_runs_the_unit_tests_of_every_alert() {
    let tests = yaml_file(RULE_TESTS);
    let files: Vec<PathBuf> = tests["rule_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| {
            repo()
                .join("tests/monitoring")
                .join(f.as_str().unwrap())
                .canonicalize()
                .unwrap()
        })
        .collect();
    assert_eq!(files, [repo().join(RULES).canonicalize().unwrap()]);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for group in tests["tests"].as_sequence().unwrap() {
        for case in group["alert_rule_test"].as_sequence().unwrap() {
            let name = str_of(case, "alertname").to_string();
            if case["exp_alerts"].as_sequence().unwrap().is_empty() {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for alert in alert_names() {
        assert!(
            fires.contains(&alert),
            "no test of {RULE_TESTS} fires {alert}"
        );
        assert!(
            quiet.contains(&alert),
            "no test of {RULE_TESTS} keeps {alert} quiet"
        );
    }

    let out = run(&promtool(), &["test", "rules", RULE_TESTS]);
    let all = text(&out);
    assert!(
        out.status.success(),
        "promtool test rules {RULE_TESTS}:\n{all}"
    );
    assert!(all.contains("SUCCESS"), "{all}");

    // And promtool does compare: the same tests expecting one alert less fail.
    let mut wrong = tests.clone();
    wrong["rule_files"] = serde_yaml::to_value([repo().join(RULES)]).unwrap();
    let case = wrong["tests"][0]["alert_rule_test"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|c| !c["exp_alerts"].as_sequence().unwrap().is_empty())
        .unwrap();
    case["exp_alerts"] = serde_yaml::Value::Sequence(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.test.yaml");
    std::fs::write(&path, serde_yaml::to_string(&wrong).unwrap()).unwrap();
    let out = run(&promtool(), &["test", "rules", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
}

/// `helm template` of the chart, as objects.
fn chart(release: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, CHART, "-n", INSTALL_NAMESPACE];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = run(&helm(), &args);
    assert!(out.status.success(), "helm {args:?}: {}", text(&out));
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The PrometheusRule is the rules file with the agents' job of the release's monitor (or
/// monitoring.rules.agentSelector), and promtool accepts what the chart renders.
#[test]
fn the_chart_renders_the_rules_file_with_the_agents_job() {
    let source = std::fs::read_to_string(repo().join(RULES)).unwrap();
    assert!(source.contains(AGENT_JOB));
    let dir = tempfile::tempdir().unwrap();
    let ns = INSTALL_NAMESPACE;
    let cases: [(&str, &[&str], String); 4] = [
        ("dowser", &[], AGENT_JOB.to_string()),
        (
            "dowser",
            &["metrics.serviceMonitor.enabled=true"],
            AGENT_JOB.to_string(),
        ),
        (
            "plant",
            &["metrics.podMonitor.enabled=true"],
            format!(r#"job="{ns}/plant-dowser", container="agent""#),
        ),
        (
            "dowser",
            &[r#"monitoring.rules.agentSelector=job="kubernetes-pods"\, container="agent""#],
            r#"job="kubernetes-pods", container="agent""#.to_string(),
        ),
    ];
    for (i, (release, sets, selector)) in cases.iter().enumerate() {
        let mut all = vec!["monitoring.rules.enabled=true"];
        all.extend(sets.iter());
        let objs = chart(release, &all);
        let rule = objs
            .iter()
            .find(|o| o["kind"] == "PrometheusRule")
            .unwrap_or_else(|| panic!("no PrometheusRule with {all:?}"));
        let expected: Value = serde_yaml::from_str(&source.replace(AGENT_JOB, selector)).unwrap();
        assert_eq!(rule["spec"]["groups"], expected["groups"], "with {all:?}");
        let rendered = dir.path().join(format!("rendered-{i}.yaml"));
        std::fs::write(&rendered, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
        let out = run(&promtool(), &["check", "rules", rendered.to_str().unwrap()]);
        assert!(out.status.success(), "{all:?}: {}", text(&out));
    }
    // Off by default.
    assert!(
        !chart("dowser", &[])
            .iter()
            .any(|o| o["kind"] == "PrometheusRule")
    );
}

// ---- the dashboard -------------------------------------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn panels(d: &Value) -> &Vec<Value> {
    d["panels"].as_array().expect("panels")
}

/// Each query of the dashboard: (panel title, expr, legend format).
fn queries(d: &Value) -> Vec<(String, String, String)> {
    panels(d)
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| {
                (
                    p["title"].as_str().unwrap_or_default().to_string(),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                    t["legendFormat"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn the_dashboard_is_complete_and_its_queries_are_promql() {
    let d = dashboard();
    assert_eq!(d["uid"], "dowser");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let datasource = &d["templating"]["list"][0];
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let uid = format!("${{{}}}", datasource["name"].as_str().unwrap());

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            p["description"].as_str().is_some_and(|t| !t.is_empty()),
            "{title}: no description"
        );
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id taken");
        assert_eq!(p["datasource"]["uid"], uid.as_str(), "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}");
        }
        // On the 24-column grid, no two panels overlap.
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
    }

    // Every query is PromQL that Prometheus accepts: promtool checks them as recording rules.
    let records: Vec<Value> = queries(&d)
        .iter()
        .enumerate()
        .map(|(i, (_, expr, _))| {
            serde_json::json!({
                "record": format!("dowser_dashboard:query_{i}"),
                "expr": expr.replace("$__rate_interval", "2m"),
            })
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": records}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = run(&promtool(), &["check", "rules", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_chart_renders_the_dashboard_for_grafanas_sidecar() {
    let objs = chart("dowser", &["monitoring.dashboards.enabled=true"]);
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "dowser-dashboards")
        .expect("the dashboards ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["namespace"], INSTALL_NAMESPACE);
    let json: Value = serde_json::from_str(cm["data"]["dowser.json"].as_str().unwrap()).unwrap();
    assert_eq!(json, dashboard());
}

// ---- against what dowser exports ------------------------------------------------------------

/// The samples of a `/metrics` text: each name with its label names and their values.
fn exported(text: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let names = promql_names(line.split_once(' ').map_or(line, |(s, _)| s));
        for (metric, matchers) in names.metrics {
            let labels = out.entry(metric).or_default();
            for (label, value) in matchers {
                labels.entry(label).or_default().extend(value);
            }
        }
    }
    out
}

/// Checks the names of one query (rule or panel) against the exported samples; returns the
/// labels its results can carry (for annotations and legends), or what is wrong.
fn check_query(
    what: &str,
    expr: &str,
    exported: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
) -> Result<BTreeSet<String>, String> {
    let other: BTreeSet<&str> = OTHER_METRICS.iter().map(|(m, _)| *m).collect();
    let names = promql_names(expr);
    if names.metrics.is_empty() {
        return Err(format!("{what}: no metric in {expr}"));
    }
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for (metric, matchers) in &names.metrics {
        let Some(labels) = exported.get(metric) else {
            if other.contains(metric.as_str()) {
                continue;
            }
            return Err(format!(
                "{what}: {metric} is not on the agent's or the controller's /metrics"
            ));
        };
        available.extend(labels.keys().cloned());
        for (label, value) in matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let values = labels
                .get(label)
                .ok_or_else(|| format!("{what}: {metric} has no label {label}"))?;
            if let Some(v) = value
                && !values.contains(v)
            {
                return Err(format!(
                    "{what}: {metric}{{{label}={v:?}}} is never exported ({values:?})"
                ));
            }
        }
    }
    if let Some(label) = names.grouping.iter().find(|l| !available.contains(*l)) {
        return Err(format!("{what}: no label {label} to group by"));
    }
    Ok(available)
}

/// Starts an agent (with a device it discovers) and a controller on a real control plane and
/// returns their `/metrics` samples.
async fn real_metrics() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let kubelet = cluster.fake_kubelet("node-a", &[]);
    let agent = Agent::start(&cluster, &kubelet);
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&cluster, scratch.path());
    let sim = device("127.0.0.1:0").await;
    apply(&client, modbus_config("line3", sim.addr.port(), None)).await;

    // Per-Configuration samples appear once a round has ended.
    let agent_metrics = settle(
        90,
        "the agent's /metrics with the devices of line3",
        || format!("--- agent\n{}", agent.log()),
        || async {
            let (_, body) = agent.get("/metrics");
            let found = exported(&body);
            let round = found.contains_key("dowser_agent_discovery_round_seconds");
            (found
                .get("dowser_agent_devices")
                .is_some_and(|l| l.contains_key("configuration"))
                && round)
                .then_some(body.clone())
                .ok_or(body)
        },
    )
    .await;
    let controller_metrics = settle(
        60,
        "the controller's /metrics as leader",
        || format!("--- controller\n{}", controller.log()),
        || async {
            let (_, body) = controller.get("/metrics");
            body.contains("dowser_controller_leader 1")
                .then_some(body.clone())
                .ok_or(body)
        },
    )
    .await;
    let mut all = exported(&agent_metrics);
    all.extend(exported(&controller_metrics));
    all
}

/// Every metric, label and label value the rules, their unit tests and the dashboard name is
/// one that a running agent or controller exports (or a scrape adds, or one of
/// [`OTHER_METRICS`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_tests_and_dashboard_name_only_what_dowser_exports() {
    let _serial = common::serial().await;
    let exported = real_metrics().await;
    for metric in exported.keys() {
        assert!(metric.starts_with("dowser_"), "{metric}");
    }
    // A misspelt metric, label or label value is caught.
    for wrong in [
        "dowser_agent_device",
        r#"dowser_agent_devices{configuraton="line3"}"#,
        r#"dowser_controller_reconcile_errors_total{error="brokers"}"#,
        "sum by (node) (dowser_agent_devices)",
    ] {
        assert!(
            check_query("a typo", wrong, &exported).is_err(),
            "{wrong} passed"
        );
    }

    // The rules, and the labels their annotations print.
    let labels = regex::Regex::new(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    for rule in rules() {
        let name = str_of(&rule, "alert");
        let available =
            check_query(name, str_of(&rule, "expr"), &exported).unwrap_or_else(|e| panic!("{e}"));
        for (_, annotation) in rule["annotations"].as_mapping().unwrap() {
            for c in labels.captures_iter(annotation.as_str().unwrap()) {
                assert!(
                    available.contains(&c[1]),
                    "{name}: its annotations print $labels.{}, which its series lack",
                    &c[1]
                );
            }
        }
    }

    // The unit tests' series: dowser's own labels, all of them, and a scrape's.
    let tests = yaml_file(RULE_TESTS);
    for group in tests["tests"].as_sequence().unwrap() {
        for series in group["input_series"].as_sequence().unwrap() {
            let text = str_of(series, "series");
            let names = promql_names(text);
            let (metric, matchers) = names.metrics.iter().next().unwrap();
            let labels: BTreeSet<&str> = matchers.iter().map(|(l, _)| l.as_str()).collect();
            let own: BTreeSet<&str> = labels
                .iter()
                .copied()
                .filter(|l| !TARGET_LABELS.contains(l))
                .collect();
            if metric == "up" {
                assert!(own.is_empty(), "{text}");
                continue;
            }
            let Some(real) = exported.get(metric) else {
                panic!("{RULE_TESTS}: {metric} is not exported");
            };
            // A namespace label of dowser's own stands for the Configuration's namespace.
            let real_own: BTreeSet<&str> = real
                .keys()
                .map(String::as_str)
                .filter(|l| !TARGET_LABELS.contains(l))
                .collect();
            assert_eq!(own, real_own, "{RULE_TESTS}: {text}");
            for l in real.keys() {
                assert!(
                    labels.contains(l.as_str()),
                    "{RULE_TESTS}: {text} lacks {l}"
                );
            }
            for (label, value) in matchers {
                if let (Some(v), Some(values)) = (value, real.get(label))
                    && !TARGET_LABELS.contains(&label.as_str())
                    && label != "configuration"
                {
                    assert!(values.contains(v), "{RULE_TESTS}: {text}: {label}={v}");
                }
            }
        }
    }

    // The dashboard's queries, and the labels their legends print.
    let legend = regex::Regex::new(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}").unwrap();
    for (title, expr, format) in queries(&dashboard()) {
        let available = check_query(&title, &expr, &exported).unwrap_or_else(|e| panic!("{e}"));
        for c in legend.captures_iter(&format) {
            assert!(
                available.contains(&c[1]),
                "{title}: its legend prints {}, which its series lack",
                &c[1]
            );
        }
    }
}
