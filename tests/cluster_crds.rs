//! The CRDs on a real kube-apiserver: accepted, explained, and enforcing the same rules with
//! the same messages as `dowser discover`.

mod common;

use common::cluster::Cluster;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Case {
    case: String,
    cluster: bool,
    path: String,
    message: String,
    spec: Value,
}

#[test]
fn crds_on_a_real_apiserver() {
    let cluster = Cluster::start();
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=dowser-test",
        "-f",
        crds,
    ]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/configurations.dowser.dev",
        "crd/instances.dowser.dev",
        "--timeout=60s",
    ]);

    // kubectl explain reads the field docs from the published schema.
    let explain = cluster.kubectl_eventually(
        &["explain", "configuration.spec.discovery.modbus.targets"],
        60,
    );
    assert!(explain.contains("Modbus TCP targets"), "{explain}");

    // The examples are accepted as they are.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
    let out = cluster.kubectl_ok(&["apply", "--dry-run=server", "-f", examples]);
    let files = std::fs::read_dir(examples)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(
        out.matches("created (server dry run)").count(),
        files,
        "{out}"
    );

    // Every mistake of the catalogue gets the verdict and message `dowser discover` gives.
    let cases: Vec<Case> =
        serde_yaml::from_str(include_str!("catalogue/invalid-configurations.yaml")).unwrap();
    let mut failures = Vec::new();
    for c in &cases {
        let object = json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "plc", "namespace": "default"},
            "spec": c.spec,
        });
        let out = cluster.kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            &object.to_string(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rejected = !out.status.success();
        let verdict_ok = rejected == c.cluster;
        // An unknown field is reported by the decoder, which names the path in the message.
        let message_ok = !rejected
            || (stderr.contains(&c.message)
                && (stderr.contains(&format!("{}: ", c.path)) || c.message.contains(&c.path)));
        if !(verdict_ok && message_ok) {
            failures.push(format!(
                "{}: expected {} with `{}: ...{}...`, kubectl said: {}",
                c.case,
                if c.cluster { "rejection" } else { "acceptance" },
                c.path,
                c.message,
                stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // A stored Configuration shows its columns, with the defaults the schema applies.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/modbus-tcp.yaml"
    );
    cluster.kubectl_ok(&["apply", "--server-side", "-f", example]);
    let table = cluster.kubectl_ok(&["get", "dwc"]);
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "CAPACITY",
        "INSTANCES",
        "BROKERS",
        "ACCEPTED",
        "READY",
        "AGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let stored = cluster.kubectl_ok(&["get", "dowser", "-o", "json"]);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    let modbus = &stored["items"][0]["spec"]["discovery"]["modbus"];
    assert_eq!(modbus["maxAddresses"], 4096, "{modbus}");
    assert_eq!(stored["items"][0]["spec"]["capacity"], 1);

    // The start-up check of the agent's DRA mode and the controller's `--broker-devices dra`
    // asks the API server's discovery: it tells a served API (resource.k8s.io/v1) from one
    // the server does not serve (v1beta1, off by default since 1.33, as v1 is on a 1.33
    // cluster), and says what to do instead.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use k8s_openapi::api::resource::{v1, v1beta1};
        let client = cluster.client().await;
        assert_eq!(
            dowser::apiserver::not_served::<v1::ResourceSlice>(&client)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            dowser::apiserver::not_served::<v1::ResourceClaimTemplate>(&client)
                .await
                .unwrap(),
            None
        );
        let refused = dowser::apiserver::require::<v1beta1::ResourceSlice>(&client, "use X")
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the API server does not serve resource.k8s.io/v1beta1: use X"
        );
    });
}
