use super::*;
use serde_json::json;

/// 2025-01-01T00:00:00Z.
const NOW: i64 = 1_735_689_600;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A Modbus sweep of line 3 as three nodes report it: one found the PLCs, one sees only
/// other vendors' devices, one cannot reach the subnet; node-d is selected but never
/// reported.
fn line3() -> Configuration {
    from(json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "plc-line3", "namespace": "plant"},
        "spec": {
            "discovery": {"modbus": {"targets": ["10.0.7.0/24"], "vendorNames": {"include": ["Acme"]}}},
            "nodeSelector": {"matchLabels": {"line": "3"}},
        },
        "status": {"nodes": [
            {"node": "node-a", "devices": 2, "lastRound": {
                "at": "2024-12-31T23:59:48Z", "durationMs": 1234,
                "tried": 254, "answered": 5, "found": 2, "failed": 1,
                "dropped": {"vendorNames": 2}}},
            {"node": "node-b", "devices": 0,
             "problems": ["10.0.7.9:502 answers with exception 0x04 to every unit"],
             "lastRound": {
                "at": "2024-12-31T23:59:30Z", "durationMs": 61000,
                "tried": 254, "answered": 3, "found": 0, "failed": 1,
                "dropped": {"productCodes": 1, "vendorNames": 1}}},
            {"node": "node-c", "devices": 0, "lastRound": {
                "at": "2024-12-31T23:58:00Z", "durationMs": 850,
                "tried": 254, "answered": 0, "found": 0, "failed": 0}},
        ]},
    }))
}

fn node(name: &str, line: &str) -> Node {
    from(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"line": line}}}))
}

fn entry(v: serde_json::Value) -> NodeDiscoveryStatus {
    from(v)
}

#[test]
fn every_node_that_reports_or_is_selected_gets_a_row() {
    let nodes = [
        node("node-a", "3"),
        node("node-d", "3"),
        node("node-e", "4"),
    ];
    let rows = rows(&[line3()], Some(&nodes));
    let names: Vec<&str> = rows.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b", "node-c", "node-d"]);
    assert!(rows[3].entry.is_none(), "selected, never reported");
    // Without the Nodes (not allowed to list them): the reports only.
    assert_eq!(rows_of(None).len(), 3);
}

fn rows_of(nodes: Option<&[Node]>) -> Vec<Row> {
    rows(&[line3()], nodes)
}

#[test]
fn the_verdict_names_what_to_change() {
    let rows = rows(&[line3()], Some(&[node("node-d", "3")]));
    let verdicts: Vec<(String, Health)> = rows.iter().map(|r| explain(r.entry.as_ref())).collect();
    assert_eq!(
        verdicts[0],
        (
            "2 devices found; 2 left out by vendorNames; 1 answered but could not be used".into(),
            Health::Good
        )
    );
    assert_eq!(
        verdicts[1],
        (
            "3 of 254 targets answered, none kept: 1 left out by productCodes, 1 left out by \
             vendorNames, 1 answered but could not be used; 1 problem (below)"
                .into(),
            Health::Waiting
        )
    );
    assert_eq!(
        verdicts[2],
        (
            "none of 254 targets answered: nothing listening, or no reply in time".into(),
            Health::Waiting
        )
    );
    assert_eq!(
        verdicts[3],
        (
            "no report: no dowser agent runs this Configuration on this node".into(),
            Health::Waiting
        )
    );
}

#[test]
fn errors_empty_rounds_and_handlers_without_counts_say_so() {
    let failing = entry(json!({"node": "n", "devices": 0, "error": "no serial port /dev/ttyUSB0"}));
    assert_eq!(
        explain(Some(&failing)),
        (
            "discovery fails: no serial port /dev/ttyUSB0".into(),
            Health::Bad
        )
    );
    let empty = entry(json!({"node": "n", "devices": 0,
                             "lastRound": {"tried": 0, "answered": 0, "found": 0, "failed": 0}}));
    assert!(explain(Some(&empty)).0.starts_with("nothing to try"));
    let external = entry(json!({"node": "n", "devices": 3}));
    assert_eq!(explain(Some(&external)), ("3 devices".into(), Health::Good));
    let starting = entry(json!({"node": "n", "devices": 0}));
    assert_eq!(explain(Some(&starting)).1, Health::Waiting);
    let unusable = entry(json!({"node": "n", "devices": 0,
                                "lastRound": {"tried": 4, "answered": 1, "found": 0, "failed": 0}}));
    assert_eq!(
        explain(Some(&unusable)).0,
        "1 of 4 targets answered, none is a device"
    );
}

#[test]
fn the_table_reads_like_kubectl() {
    let rows = rows(&[line3()], Some(&[node("node-d", "3")]));
    let text = render(&rows, false, false, &Style::default(), NOW);
    let want = "\
NODE     DEVICES   TRIED   ANSWERED   DROPPED                        FAILED   SINCE   WHY
node-a   2         254     5          vendorNames=2                  1        12s     2 devices found; 2 left out by vendorNames; 1 answered but could not be used
node-b   0         254     3          productCodes=1,vendorNames=1   1        30s     3 of 254 targets answered, none kept: 1 left out by productCodes, 1 left out by vendorNames, 1 answered but could not be used; 1 problem (below)
node-c   0         254     0          0                              0        2m      none of 254 targets answered: nothing listening, or no reply in time
node-d   -         -       -          -                              -        -       no report: no dowser agent runs this Configuration on this node

Problems to act on:
  node-b: 10.0.7.9:502 answers with exception 0x04 to every unit
";
    assert_eq!(text, want, "\n{text}");
}

#[test]
fn wide_adds_found_silent_and_took_and_all_namespaces_the_namespace() {
    let rows = rows(&[line3()], None);
    let style = Style {
        all_namespaces: true,
        ..Style::default()
    };
    let text = render(&rows, true, true, &style, NOW);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "CONFIGURATION",
            "NODE",
            "DEVICES",
            "TRIED",
            "ANSWERED",
            "DROPPED",
            "FAILED",
            "FOUND",
            "SILENT",
            "TOOK",
            "SINCE",
            "WHY"
        ]
    );
    let a: Vec<&str> = lines.next().unwrap().split_whitespace().take(12).collect();
    assert_eq!(
        a,
        [
            "plant",
            "plc-line3",
            "node-a",
            "2",
            "254",
            "5",
            "vendorNames=2",
            "1",
            "2",
            "249",
            "1.2s",
            "12s"
        ]
    );
    assert!(text.contains(" 1m01s "), "{text}");
    assert!(text.contains(" 850ms "), "{text}");
}

#[test]
fn colour_marks_the_verdict_only_on_a_terminal() {
    let rows = rows(&[line3()], None);
    let on = Style {
        colour: true,
        ..Style::default()
    };
    let text = render(&rows, false, false, &on, NOW);
    assert!(text.contains("\x1b[32m2 devices found"), "{text}");
    assert!(text.contains("\x1b[33mnone of 254"), "{text}");
    assert!(!render(&rows, false, false, &Style::default(), NOW).contains('\x1b'));
}
