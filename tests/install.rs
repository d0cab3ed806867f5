//! Installing dowser: the kustomize base and the Helm chart in `deploy/`, the README's
//! install commands run as written against a real apiserver, the Pod Security level of each
//! component, what each identity must not be able to do, and the Dockerfile agreeing with
//! the manifests. (That the identities may do enough is proved by the agent and controller
//! tests, which run with their tokens.)

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    cluster::{Cluster, INSTALL_NAMESPACE, PROPERTIES_BINDING, repo},
    readme,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The directory with kubectl and helm.
fn bin_dir() -> PathBuf {
    common::cluster::k8s_bin_dir()
}

/// Runs a tool and returns stdout, or panics with stderr.
fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {}: {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Objects of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kustomize() -> Vec<Value> {
    objects(&run(&bin_dir().join("kubectl"), &["kustomize", "deploy"]))
}

const CHART: &str = "deploy/helm/dowser";

/// `helm template dowser deploy/helm/dowser -n dowser-system` with these `--set`s.
fn helm_template(sets: &[&str]) -> Result<Vec<Value>, String> {
    helm_template_with("", sets)
}

/// [`helm_template`] with a values file too (YAML, given on stdin), unless it is empty.
fn helm_template_with(values: &str, sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", "dowser", CHART, "-n", INSTALL_NAMESPACE];
    if !values.is_empty() {
        args.extend(["-f", "-"]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm_with_stdin(&args, values);
    if out.status.success() {
        Ok(objects(&String::from_utf8_lossy(&out.stdout)))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs helm with `stdin` as its standard input.
fn helm_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    common::cluster::kubectl_output(
        Command::new(bin_dir().join("helm"))
            .args(args)
            .current_dir(repo()),
        stdin,
    )
}

fn chart(sets: &[&str]) -> Vec<Value> {
    helm_template(sets).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"))
}

fn chart_with(values: &str, sets: &[&str]) -> Vec<Value> {
    helm_template_with(values, sets)
        .unwrap_or_else(|e| panic!("helm template {sets:?} with\n{values}: {e}"))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container(workload: &Value) -> &Value {
    &pod_spec(workload)["containers"][0]
}

fn env(workload: &Value, name: &str) -> Option<String> {
    container(workload)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

fn mounts(workload: &Value) -> Vec<String> {
    container(workload)["volumeMounts"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["mountPath"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[test]
fn helm_lint_passes() {
    let out = run(&bin_dir().join("helm"), &["lint", "--strict", CHART]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // With external handlers, and refusing a wrong one.
    let lint = |values: &str| helm_with_stdin(&["lint", "--strict", CHART, "-f", "-"], values);
    let out = lint(TWO_HANDLERS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("0 chart(s) failed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lint("externalHandlers: [{name: modbus-tcp, builtIn: zigbee}]");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && all.contains("/externalHandlers/0/builtIn"),
        "{all}"
    );
}

#[test]
fn the_chart_carries_the_generated_crds_and_the_package_version() {
    let dir = repo().join(CHART).join("crds");
    for crd in dowser::crd::crds() {
        let path = dir.join(dowser::crd::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == dowser::crd::crd_file(&crd),
            "{} is stale: run `cargo run -- crds --dir {CHART}/crds` and commit the result",
            path.display()
        );
    }
    let meta: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["appVersion"], cargo_version());
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(kustomization["images"][0]["newTag"], cargo_version());
}

/// The rules of the chart's roles are those of the kustomize base (the e2e tests prove the
/// base's), with the chart's name prefix for release `dowser`.
#[test]
fn kustomize_and_helm_grant_the_same_rules() {
    let base = kustomize();
    let helm = chart(&["agent.propertyNamespaces={default}"]);
    for (kind, name) in [
        ("ClusterRole", "dowser-agent"),
        ("ClusterRole", "dowser-agent-properties"),
        ("ClusterRole", "dowser-controller"),
        ("Role", "dowser-controller-lease"),
    ] {
        assert_eq!(
            find(&base, kind, name)["rules"],
            find(&helm, kind, name)["rules"],
            "{kind} {name}"
        );
    }
    for (kind, name) in [
        ("ClusterRoleBinding", "dowser-agent"),
        ("ClusterRoleBinding", "dowser-controller"),
        ("RoleBinding", "dowser-controller-lease"),
    ] {
        for field in ["roleRef", "subjects"] {
            assert_eq!(
                find(&base, kind, name)[field],
                find(&helm, kind, name)[field],
                "{kind} {name}: {field}"
            );
        }
    }
    // Kustomize installs the properties role unbound (the README binds it per namespace).
    assert!(
        !base
            .iter()
            .any(|o| o["roleRef"]["name"] == "dowser-agent-properties")
    );
    let binding = find(&helm, "RoleBinding", "dowser-agent-properties");
    assert_eq!(binding["metadata"]["namespace"], "default");
}

/// Requests and limits: the chart's defaults are the kustomize base's, whose agent limit
/// comes from the README's measurements (section "Memory and supported devices").
#[test]
fn kustomize_and_helm_set_the_same_resources() {
    let base = kustomize();
    let helm = chart(&[]);
    for (kind, name) in [
        ("DaemonSet", "dowser-agent"),
        ("Deployment", "dowser-controller"),
    ] {
        assert_eq!(
            container(find(&base, kind, name))["resources"],
            container(find(&helm, kind, name))["resources"],
            "{kind} {name}"
        );
    }
    let limit =
        container(find(&base, "DaemonSet", "dowser-agent"))["resources"]["limits"]["memory"]
            .as_str()
            .unwrap()
            .to_string();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("limited to {limit}")),
        "the README's memory section does not state the agent's limit {limit}"
    );
}

/// The chart keeps its own list of handlers (`dowser.handlers` in `_helpers.tpl`, with a
/// `handlers.<name>` value each): it must be the binary's, in the binary's order.
#[test]
fn the_chart_knows_every_handler_of_the_binary() {
    let all = dowser::handlers::BUILT_IN;
    let agent = find(&chart(&[]), "DaemonSet", "dowser-agent").clone();
    assert_eq!(env(&agent, "DOWSER_HANDLERS"), Some(all.join(",")));
    for name in all {
        let off = format!("handlers.{name}.enabled=false");
        let agent = find(
            &chart(&[&off, "agent.hostNetwork=true"]),
            "DaemonSet",
            "dowser-agent",
        )
        .clone();
        let rest: Vec<&str> = all.iter().copied().filter(|h| h != name).collect();
        assert_eq!(
            env(&agent, "DOWSER_HANDLERS"),
            Some(rest.join(",")),
            "{off}"
        );
    }
    // externalHandlers[].builtIn: every handler `dowser handler` runs, which is every one but
    // external itself.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let runnable: Vec<&str> = all.iter().copied().filter(|h| *h != "external").collect();
    assert_eq!(
        schema["definitions"]["externalHandler"]["properties"]["builtIn"]["enum"],
        json!(runnable)
    );
    assert_eq!(all.last(), Some(&"external"));
}

#[test]
fn chart_values_change_what_they_claim_to() {
    // Defaults: every handler, host network, the mounts each handler needs, nothing else.
    let objs = chart(&[]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    let controller = find(&objs, "Deployment", "dowser-controller");
    assert_eq!(
        env(agent, "DOWSER_HANDLERS").as_deref(),
        Some("modbus,opcua,ble,serial,mdns,udev,onvif,bacnet,external")
    );
    assert_eq!(pod_spec(agent)["hostNetwork"], true);
    assert_eq!(pod_spec(agent)["dnsPolicy"], "ClusterFirstWithHostNet");
    let mut m = mounts(agent);
    m.sort();
    assert_eq!(
        m,
        [
            "/dev",
            "/run/dbus",
            "/run/udev",
            "/tmp",
            "/var/lib/dowser/handlers",
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/pod-resources"
        ]
    );
    assert_eq!(container(agent)["securityContext"]["privileged"], false);
    assert_eq!(
        container(agent)["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        env(agent, "DOWSER_AGENT_MODE").as_deref(),
        Some("devicePlugin")
    );
    assert_eq!(
        env(controller, "DOWSER_BROKER_DEVICES").as_deref(),
        Some("devicePlugin")
    );
    assert!(!objs.iter().any(|o| o["kind"] == "DeviceClass"));
    assert_eq!(controller["spec"]["replicas"], 2);
    let image = format!("ghcr.io/dowser-dev/dowser:{}", cargo_version());
    assert_eq!(container(agent)["image"], image.as_str());
    assert_eq!(container(controller)["image"], image.as_str());
    assert_eq!(env(agent, "DOWSER_LOG_FORMAT").as_deref(), Some("json"));
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "ServiceMonitor" || o["kind"] == "PodMonitor")
    );
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"] == "dowser-agent-properties"),
        "Secrets are readable only when asked for"
    );

    // DRA: the mode reaches the agent with the kubelet's plugin directories and the CDI
    // directory mounted, and the DeviceClass is installed; the kustomize overlay agrees.
    let objs = chart(&[
        "agent.mode=dra",
        "handlers.ble.enabled=false",
        "handlers.serial.enabled=false",
        "handlers.udev.enabled=false",
    ]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    assert_eq!(env(agent, "DOWSER_AGENT_MODE").as_deref(), Some("dra"));
    let controller = find(&objs, "Deployment", "dowser-controller");
    assert_eq!(
        env(controller, "DOWSER_BROKER_DEVICES").as_deref(),
        Some("dra")
    );
    assert_eq!(
        env(agent, "DOWSER_PLUGINS_REGISTRY_DIR").as_deref(),
        Some("/var/lib/kubelet/plugins_registry")
    );
    let mut m = mounts(agent);
    m.sort();
    assert_eq!(
        m,
        [
            "/tmp",
            "/var/lib/dowser/handlers",
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/plugins",
            "/var/lib/kubelet/plugins_registry",
            "/var/lib/kubelet/pod-resources",
            "/var/run/cdi",
        ]
    );
    let class = find(&objs, "DeviceClass", "dowser.dev");
    assert_eq!(
        class["spec"]["selectors"][0]["cel"]["expression"],
        r#"device.driver == "dowser.dev""#
    );
    let overlay = objects(&run(
        &bin_dir().join("kubectl"),
        &["kustomize", "deploy-dra/"],
    ));
    let agent = find(&overlay, "DaemonSet", "dowser-agent");
    assert_eq!(env(agent, "DOWSER_AGENT_MODE").as_deref(), Some("dra"));
    let controller = find(&overlay, "Deployment", "dowser-controller");
    assert_eq!(
        env(controller, "DOWSER_BROKER_DEVICES").as_deref(),
        Some("dra")
    );
    let mut m = mounts(agent);
    m.sort();
    assert!(
        [
            "/var/lib/kubelet/plugins",
            "/var/lib/kubelet/plugins_registry",
            "/var/run/cdi"
        ]
        .iter()
        .all(|p| m.iter().any(|x| x == p)),
        "{m:?}"
    );
    assert_eq!(
        find(&overlay, "DeviceClass", "dowser.dev")["spec"],
        class["spec"]
    );
    let err = helm_template(&["agent.mode=dynamic"]).unwrap_err();
    assert!(err.contains("/agent/mode"), "{err}");

    // Handlers: each toggle removes the handler and what the node gives it.
    let objs = chart(&[
        "handlers.ble.enabled=false",
        "handlers.serial.enabled=false",
        "handlers.mdns.enabled=false",
        "handlers.udev.enabled=false",
        "handlers.onvif.enabled=false",
        "handlers.bacnet.enabled=false",
        "agent.hostNetwork=false",
    ]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    assert_eq!(
        env(agent, "DOWSER_HANDLERS").as_deref(),
        Some("modbus,opcua,external")
    );
    assert_eq!(pod_spec(agent)["hostNetwork"], Value::Null);
    let mut m = mounts(agent);
    m.sort();
    assert_eq!(
        m,
        [
            "/tmp",
            "/var/lib/dowser/handlers",
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/pod-resources"
        ]
    );
    let volumes = pod_spec(agent)["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 4, "{volumes:?}");
    // OPC UA's in-memory certificate store goes with the handler.
    let agent = find(
        &chart(&["handlers.opcua.enabled=false"]),
        "DaemonSet",
        "dowser-agent",
    )
    .clone();
    assert!(!mounts(&agent).contains(&"/tmp".to_string()));
    let agent = find(
        &chart(&["handlers.ble.enabled=false"]),
        "DaemonSet",
        "dowser-agent",
    )
    .clone();
    assert!(!mounts(&agent).contains(&"/run/dbus".to_string()));
    assert!(mounts(&agent).contains(&"/dev".to_string()));
    assert_eq!(
        env(&agent, "DOWSER_HANDLERS").as_deref(),
        Some("modbus,opcua,serial,mdns,udev,onvif,bacnet,external")
    );
    // The device nodes and the udev database stay while serial or udev needs them.
    let only_udev = find(
        &chart(&["handlers.serial.enabled=false"]),
        "DaemonSet",
        "dowser-agent",
    )
    .clone();
    assert!(mounts(&only_udev).contains(&"/dev".to_string()));
    assert!(mounts(&only_udev).contains(&"/run/udev".to_string()));

    // Clear errors for what cannot work.
    let err = helm_template(&["agent.hostNetwork=false"]).unwrap_err();
    assert!(
        err.contains("handlers.mdns needs agent.hostNetwork=true"),
        "{err}"
    );
    let err = helm_template(&["logFormat=yaml"]).unwrap_err();
    assert!(err.contains("logFormat"), "{err}");
    let err = helm_template(&["handlers.zigbee.enabled=true"]).unwrap_err();
    assert!(err.contains("zigbee"), "{err}");

    // Images, logs, placement, sizes, the controller's knobs.
    let objs = chart(&[
        "image.repository=registry.plant.local/dowser",
        "image.tag=9.9.9",
        "logFormat=text",
        "logLevel=debug",
        "agent.nodeSelector.site/line=line-3",
        "agent.tolerations[0].key=plant",
        "agent.tolerations[0].operator=Exists",
        "agent.resources.limits.memory=32Mi",
        "agent.port=9999",
        "controller.replicas=3",
        "controller.leaseDurationSeconds=30",
        "controller.nodeSelector.role=infra",
    ]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    let controller = find(&objs, "Deployment", "dowser-controller");
    for w in [agent, controller] {
        assert_eq!(container(w)["image"], "registry.plant.local/dowser:9.9.9");
        assert_eq!(env(w, "DOWSER_LOG_FORMAT").as_deref(), Some("text"));
        assert_eq!(env(w, "DOWSER_LOG").as_deref(), Some("debug"));
    }
    assert_eq!(
        pod_spec(agent)["nodeSelector"],
        json!({"site/line": "line-3"})
    );
    assert_eq!(
        pod_spec(agent)["tolerations"],
        json!([{"key": "plant", "operator": "Exists"}])
    );
    assert_eq!(
        container(agent)["resources"]["limits"]["memory"],
        json!("32Mi")
    );
    assert_eq!(
        env(agent, "DOWSER_HEALTH_ADDR").as_deref(),
        Some("0.0.0.0:9999")
    );
    assert_eq!(container(agent)["ports"][0]["containerPort"], 9999);
    assert_eq!(controller["spec"]["replicas"], 3);
    assert!(
        container(controller)["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--lease-duration-seconds=30"))
    );
    assert_eq!(
        pod_spec(controller)["nodeSelector"],
        json!({"role": "infra"})
    );

    // Secrets and ConfigMaps: per namespace, or everywhere when asked.
    let objs = chart(&["agent.propertyNamespaces={plant-3,plant-4}"]);
    let bindings: Vec<&Value> = objs
        .iter()
        .filter(|o| o["roleRef"]["name"] == "dowser-agent-properties")
        .collect();
    assert_eq!(bindings.len(), 2);
    assert!(bindings.iter().all(|b| b["kind"] == "RoleBinding"));
    let namespaces: Vec<&Value> = bindings
        .iter()
        .map(|b| &b["metadata"]["namespace"])
        .collect();
    assert_eq!(namespaces, [&json!("plant-3"), &json!("plant-4")]);
    let objs = chart(&["agent.propertyNamespaces={*}"]);
    let binding = find(&objs, "ClusterRoleBinding", "dowser-agent-properties");
    assert_eq!(binding["subjects"][0]["name"], "dowser-agent");

    // Prometheus Operator objects (their CRDs are not in the test cluster: rendered only).
    let objs = chart(&["metrics.serviceMonitor.enabled=true"]);
    let monitor = find(&objs, "ServiceMonitor", "dowser");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    for (component, port) in [("agent", 9580), ("controller", 8081)] {
        let svc = find(&objs, "Service", &format!("dowser-{component}-metrics"));
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
        assert_eq!(
            svc["spec"]["selector"]["app.kubernetes.io/component"],
            component
        );
        assert_eq!(
            svc["metadata"]["labels"]["app.kubernetes.io/name"],
            monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        );
    }
    assert!(!objs.iter().any(|o| o["kind"] == "PodMonitor"));
    let objs = chart(&["metrics.podMonitor.enabled=true"]);
    let monitor = find(&objs, "PodMonitor", "dowser");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        container(find(&objs, "DaemonSet", "dowser-agent"))["ports"][0]["name"]
    );
    assert!(!objs.iter().any(|o| o["kind"] == "ServiceMonitor"));
}

/// Two external handlers: one of dowser's own, and one of Akri's images.
const TWO_HANDLERS: &str = r#"
externalHandlers:
  - name: modbus-tcp
    builtIn: modbus
    shared: true
    args: [--registration-socket, /var/lib/dowser/handlers/agent-registration.sock]
  - name: debug-echo
    image: ghcr.io/project-akri/akri/debug-echo-discovery:v0.13.8
    env:
      - {name: DEBUG_ECHO_INSTANCES_SHARED, value: "false"}
      - {name: RUST_LOG, value: info}
"#;

const HANDLERS_DIR: &str = "/var/lib/dowser/handlers";

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// `dowser <sub> --help`.
fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dowser"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DaemonSets of `externalHandlers`.
fn handler_daemonsets(objs: &[Value]) -> Vec<&Value> {
    objs.iter()
        .filter(|o| {
            o["kind"] == "DaemonSet"
                && o["metadata"]["labels"]["app.kubernetes.io/component"] == "discovery-handler"
        })
        .collect()
}

/// A DaemonSet running `dowser handler`: its arguments and environment are the binary's.
fn assert_runs_dowser_handler(ds: &Value) {
    let help = help("handler");
    let args = strings(&container(ds)["args"]);
    assert_eq!(args[0], "handler");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(a), "`dowser handler` has no option {a}");
    }
    for e in container(ds)["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        // DOWSER_LOG is read by main.rs, the others are named in the help.
        assert!(
            name == "DOWSER_LOG" || help.contains(name),
            "`dowser handler` reads no {name}"
        );
    }
}

#[test]
fn external_handlers_are_a_daemonset_each_beside_the_agent() {
    let objs = chart_with(TWO_HANDLERS, &[]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    let handlers = handler_daemonsets(&objs);
    assert_eq!(handlers.len(), 2);
    let modbus = find(&objs, "DaemonSet", "dowser-handler-modbus-tcp");
    let echo = find(&objs, "DaemonSet", "dowser-handler-debug-echo");

    // dowser's modbus handler, from the chart's image, registered as the entry's name.
    assert_eq!(
        container(modbus)["image"],
        format!("ghcr.io/dowser-dev/dowser:{}", cargo_version()).as_str()
    );
    assert_eq!(
        strings(&container(modbus)["args"]),
        [
            "handler",
            "modbus",
            "--register-as",
            "modbus-tcp",
            "--shared",
            "--registration-socket",
            "/var/lib/dowser/handlers/agent-registration.sock"
        ]
    );
    assert_eq!(container(modbus)["command"], Value::Null);
    assert_eq!(env(modbus, "DOWSER_LOG_FORMAT").as_deref(), Some("json"));
    assert_runs_dowser_handler(modbus);

    // Akri's image as it is: its own entrypoint and arguments, the environment given.
    assert_eq!(
        container(echo)["image"],
        "ghcr.io/project-akri/akri/debug-echo-discovery:v0.13.8"
    );
    assert_eq!(container(echo)["args"], Value::Null);
    assert_eq!(container(echo)["command"], Value::Null);
    assert_eq!(
        env(echo, "DEBUG_ECHO_INSTANCES_SHARED").as_deref(),
        Some("false")
    );
    assert_eq!(env(echo, "RUST_LOG").as_deref(), Some("info"));
    assert_eq!(env(echo, "DOWSER_LOG"), None);

    for (ds, name) in [(modbus, "modbus-tcp"), (echo, "debug-echo")] {
        // Their own pods, told apart from the agent's and from each other's.
        let labels = &ds["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/component"], "discovery-handler");
        assert_eq!(labels["dowser.dev/handler"], name);
        assert_eq!(ds["spec"]["selector"]["matchLabels"], *labels);
        assert_eq!(ds["metadata"]["labels"]["dowser.dev/handler"], name);
        // The agent's directory, at the same path, and where it is.
        assert_eq!(
            env(ds, "DISCOVERY_HANDLERS_DIRECTORY").as_deref(),
            Some(HANDLERS_DIR)
        );
        assert_eq!(mounts(ds), [HANDLERS_DIR]);
        assert_eq!(
            volume(ds, "discovery-handlers"),
            volume(agent, "discovery-handlers")
        );
        assert_eq!(
            volume(ds, "discovery-handlers")["hostPath"],
            json!({"path": HANDLERS_DIR, "type": "DirectoryOrCreate"})
        );
        // On the agent's nodes.
        assert_eq!(pod_spec(ds)["tolerations"], pod_spec(agent)["tolerations"]);
        assert_eq!(pod_spec(ds)["tolerations"], json!([{"operator": "Exists"}]));
        assert_eq!(pod_spec(ds)["nodeSelector"], Value::Null);
        // Root for the directory, and nothing else.
        assert_eq!(
            container(ds)["securityContext"],
            json!({
                "runAsUser": 0,
                "runAsGroup": 0,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            })
        );
        assert_eq!(
            pod_spec(ds)["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod_spec(ds)["hostNetwork"], Value::Null);
        assert_eq!(pod_spec(ds)["automountServiceAccountToken"], false);
        assert_eq!(
            container(ds)["resources"],
            json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}})
        );
        assert_eq!(ds["metadata"]["namespace"], INSTALL_NAMESPACE);
    }
    // Without entries, none.
    assert!(handler_daemonsets(&chart(&[])).is_empty());
}

/// Every option of an entry.
const HANDLER_OPTIONS: &str = r#"
externalHandlers:
  - name: plant-mdns
    builtIn: mdns
    hostNetwork: true
  - name: usb
    builtIn: udev
  - name: rtu
    builtIn: serial
    privileged: true
    nodeSelector: {site/line: line-3}
    tolerations: []
    volumes: [{name: lines, hostPath: {path: /dev}}]
    volumeMounts: [{name: lines, mountPath: /dev}]
  - name: custom
    image: registry.plant.local/zigbee-handler:2.0
    command: [/zigbee-handler]
    args: [--verbose]
    securityContext: {readOnlyRootFilesystem: false, capabilities: {add: [NET_ADMIN]}}
    resources: {limits: {memory: 32Mi}}
    affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zigbee, operator: Exists}]}]}}}
  - name: servers
    builtIn: opcua
"#;

#[test]
fn external_handler_options_change_what_they_claim_to() {
    let objs = chart_with(
        HANDLER_OPTIONS,
        &[
            "image.repository=registry.plant.local/dowser",
            "image.tag=9.9.9",
            "handlers.external.directory=/var/lib/akri",
        ],
    );
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    assert_eq!(handler_daemonsets(&objs).len(), 5);
    for ds in handler_daemonsets(&objs) {
        assert_eq!(
            env(ds, "DISCOVERY_HANDLERS_DIRECTORY").as_deref(),
            Some("/var/lib/akri")
        );
        assert!(mounts(ds).contains(&"/var/lib/akri".to_string()));
        if ds["metadata"]["name"] != "dowser-handler-custom" {
            assert_eq!(container(ds)["image"], "registry.plant.local/dowser:9.9.9");
            assert_runs_dowser_handler(ds);
        }
    }
    assert_eq!(
        env(agent, "DISCOVERY_HANDLERS_DIRECTORY").as_deref(),
        Some("/var/lib/akri")
    );

    // The node's network.
    let mdns = find(&objs, "DaemonSet", "dowser-handler-plant-mdns");
    assert_eq!(pod_spec(mdns)["hostNetwork"], true);
    assert_eq!(pod_spec(mdns)["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        !container(mdns)["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--shared"))
    );

    // A built-in handler gets from the node what the agent would give it.
    let usb = find(&objs, "DaemonSet", "dowser-handler-usb");
    let mut m = mounts(usb);
    m.sort();
    assert_eq!(m, ["/dev", "/run/udev", "/var/lib/akri"]);
    assert!(
        container(usb)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["mountPath"] != "/var/lib/akri")
            .all(|m| m["readOnly"] == true)
    );
    assert_eq!(volume(usb, "dev"), volume(agent, "dev"));
    assert_eq!(volume(usb, "udev"), volume(agent, "udev"));
    assert_eq!(
        container(usb)["terminationMessagePath"],
        "/tmp/termination-log"
    );
    let servers = find(&objs, "DaemonSet", "dowser-handler-servers");
    assert_eq!(volume(servers, "tmp"), volume(agent, "tmp"));

    // Privileged, on chosen nodes, its own /dev rather than the one it would get.
    let rtu = find(&objs, "DaemonSet", "dowser-handler-rtu");
    let sc = &container(rtu)["securityContext"];
    assert_eq!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], true);
    assert_eq!(sc["capabilities"], Value::Null);
    assert_eq!(
        pod_spec(rtu)["nodeSelector"],
        json!({"site/line": "line-3"})
    );
    assert_eq!(pod_spec(rtu)["tolerations"], Value::Null);
    let mut m = mounts(rtu);
    m.sort();
    assert_eq!(m, ["/dev", "/run/udev", "/var/lib/akri"]);
    assert_eq!(volume(rtu, "lines")["hostPath"], json!({"path": "/dev"}));
    assert_eq!(pod_spec(rtu)["volumes"].as_array().unwrap().len(), 3);

    // An image of one's own: its command, arguments, security changes and resources.
    let custom = find(&objs, "DaemonSet", "dowser-handler-custom");
    assert_eq!(
        container(custom)["image"],
        "registry.plant.local/zigbee-handler:2.0"
    );
    assert_eq!(strings(&container(custom)["command"]), ["/zigbee-handler"]);
    assert_eq!(strings(&container(custom)["args"]), ["--verbose"]);
    assert_eq!(
        container(custom)["securityContext"],
        json!({
            "runAsUser": 0,
            "runAsGroup": 0,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        })
    );
    assert_eq!(
        container(custom)["resources"],
        json!({"limits": {"memory": "32Mi"}})
    );
    assert_eq!(
        pod_spec(custom)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["key"],
        "zigbee"
    );
    assert_eq!(mounts(custom), ["/var/lib/akri"]);
}

/// The agent serves the registration socket in the handlers' directory only with the
/// external handler; the chart's default is the kustomize base's.
#[test]
fn the_agent_shares_the_handlers_directory_only_with_external_enabled() {
    let base = kustomize();
    let kustomize_agent = find(&base, "DaemonSet", "dowser-agent");
    let objs = chart(&[]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    assert_eq!(
        volume(agent, "discovery-handlers"),
        volume(kustomize_agent, "discovery-handlers")
    );
    assert!(mounts(kustomize_agent).contains(&HANDLERS_DIR.to_string()));
    assert!(mounts(agent).contains(&HANDLERS_DIR.to_string()));
    assert_eq!(
        env(agent, "DISCOVERY_HANDLERS_DIRECTORY").as_deref(),
        Some(HANDLERS_DIR)
    );

    let objs = chart(&["handlers.external.enabled=false"]);
    let agent = find(&objs, "DaemonSet", "dowser-agent");
    assert_eq!(env(agent, "DISCOVERY_HANDLERS_DIRECTORY"), None);
    assert!(!mounts(agent).contains(&HANDLERS_DIR.to_string()));
    assert!(
        !pod_spec(agent)["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "discovery-handlers")
    );
    assert!(
        !env(agent, "DOWSER_HANDLERS")
            .unwrap()
            .split(',')
            .any(|h| h == "external")
    );
    // Handlers with nothing to register with are refused.
    let err = helm_template_with(TWO_HANDLERS, &["handlers.external.enabled=false"]).unwrap_err();
    assert!(
        err.contains("externalHandlers need handlers.external.enabled=true"),
        "{err}"
    );
}

#[test]
fn invalid_external_handlers_are_refused_with_the_schemas_message() {
    let refused = |entry: &str| {
        helm_template_with(&format!("externalHandlers:\n  - {entry}\n"), &[]).expect_err(entry)
    };
    // Neither builtIn nor image.
    let err = refused("{name: plc}");
    for part in [
        "/externalHandlers/0",
        "missing property 'builtIn'",
        "missing property 'image'",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    // Both.
    let err = refused("{name: plc, builtIn: modbus, image: example.org/handler:1}");
    assert!(err.contains("/externalHandlers/0/image"), "{err}");
    assert!(err.contains("/externalHandlers/0/builtIn"), "{err}");
    // What belongs to the other kind.
    let err = refused("{name: plc, image: example.org/handler:1, shared: true}");
    assert!(err.contains("/externalHandlers/0/shared"), "{err}");
    let err = refused("{name: plc, builtIn: modbus, command: [/bin/sh]}");
    assert!(err.contains("/externalHandlers/0/command"), "{err}");
    // Names: a DNS label, given, once.
    let err = refused("{name: Line_3, builtIn: modbus}");
    assert!(
        err.contains("/externalHandlers/0/name") && err.contains("does not match pattern"),
        "{err}"
    );
    let err = refused("{builtIn: modbus}");
    assert!(err.contains("missing property 'name'"), "{err}");
    let err = refused(&format!("{{name: {}, builtIn: modbus}}", "a".repeat(64)));
    assert!(err.contains("/externalHandlers/0/name"), "{err}");
    let err = helm_template_with(
        "externalHandlers: [{name: plc, builtIn: modbus}, {name: plc, builtIn: opcua}]",
        &[],
    )
    .unwrap_err();
    assert!(err.contains(r#"two entries are named "plc""#), "{err}");
    // Handlers dowser has, and fields the chart knows.
    let err = refused("{name: plc, builtIn: external}");
    assert!(
        err.contains("/externalHandlers/0/builtIn") && err.contains("'modbus'"),
        "{err}"
    );
    let err = refused("{name: plc, builtIn: modbus, hostnetwork: true}");
    assert!(err.contains("'hostnetwork' not allowed"), "{err}");
    // mDNS multicast needs the node's network, as in the agent.
    let err = refused("{name: plc, builtIn: mdns}");
    assert!(
        err.contains("builtIn mdns needs hostNetwork: true"),
        "{err}"
    );
    let err = helm_template(&["handlers.external.directory=relative"]).unwrap_err();
    assert!(err.contains("/handlers/external/directory"), "{err}");
}

/// The kustomize users' external handler (`deploy/handlers/modbus-tcp.yaml`) and the example
/// Configuration that selects it.
fn external_handler_example() -> (Value, Value) {
    let handler = std::fs::read_to_string(repo().join("deploy/handlers/modbus-tcp.yaml")).unwrap();
    let daemonsets = objects(&handler);
    assert_eq!(daemonsets.len(), 1);
    let text =
        std::fs::read_to_string(repo().join("deploy/examples/external-handler.yaml")).unwrap();
    let configs = objects(&text);
    assert_eq!(configs.len(), 1);
    (daemonsets[0].clone(), configs[0].clone())
}

/// The kustomize users' example of an external handler is what the chart renders for the
/// same entry, and the Configuration selects it with details the modbus handler accepts.
#[test]
fn the_external_handler_example_matches_the_chart() {
    let (ds, config) = external_handler_example();
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], INSTALL_NAMESPACE);
    assert_runs_dowser_handler(&ds);
    let args = strings(&container(&ds)["args"]);
    let registered = args[args.iter().position(|a| *a == "--register-as").unwrap() + 1];
    let external = &config["spec"]["discovery"]["external"];
    assert_eq!(external["name"], registered);

    let chart = chart_with(
        "externalHandlers: [{name: modbus-tcp, builtIn: modbus, shared: true, hostNetwork: true}]",
        &[],
    );
    let rendered = find(&chart, "DaemonSet", "dowser-handler-modbus-tcp");
    assert_eq!(ds["metadata"]["name"], rendered["metadata"]["name"]);
    assert_eq!(container(&ds)["image"], container(rendered)["image"]);
    for field in ["args", "securityContext", "resources", "volumeMounts"] {
        assert_eq!(container(&ds)[field], container(rendered)[field], "{field}");
    }
    for field in [
        "volumes",
        "tolerations",
        "hostNetwork",
        "dnsPolicy",
        "automountServiceAccountToken",
        "securityContext",
    ] {
        assert_eq!(pod_spec(&ds)[field], pod_spec(rendered)[field], "{field}");
    }
    for e in container(&ds)["env"].as_array().unwrap() {
        assert_eq!(
            env(rendered, e["name"].as_str().unwrap()).as_deref(),
            e["value"].as_str(),
            "{e}"
        );
    }
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(ds["spec"]["selector"]["matchLabels"], *labels);
    for key in ["app.kubernetes.io/component", "dowser.dev/handler"] {
        assert_eq!(
            labels[key],
            rendered["spec"]["template"]["metadata"]["labels"][key]
        );
    }
    // The directory the kustomize agent serves its socket in.
    let base = kustomize();
    let agent = find(&base, "DaemonSet", "dowser-agent");
    assert_eq!(
        volume(&ds, "discovery-handlers"),
        volume(agent, "discovery-handlers")
    );

    // The details are what `discovery.modbus` takes.
    let mut modbus = config.clone();
    modbus["spec"]["discovery"] = json!({
        "modbus": serde_yaml::from_str::<Value>(external["details"].as_str().unwrap()).unwrap()
    });
    if let Err(errors) = dowser::validate::configuration(&modbus) {
        panic!("the example's details: {errors:?}");
    }
}

/// The manifests pass the binary options it has, and run the user the image has.
#[test]
fn the_manifests_and_the_dockerfile_agree_with_the_binary() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets a USER");
    let (uid, gid) = user.trim().split_once(':').unwrap();
    assert_ne!(uid, "0", "the image runs as a non-root user");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/dowser\"]"));
    // Base images are build arguments (a machine without a registry passes local ones);
    // the binary comes from the `build` stage unless BINARY=prebuilt says otherwise.
    let arg = |name: &str| {
        dockerfile
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("the Dockerfile has no ARG {name}"))
            .to_string()
    };
    assert_eq!(arg("BINARY"), "build");
    assert!(dockerfile.contains("FROM ${BINARY} AS binary"));
    assert!(dockerfile.contains("COPY --from=binary /out/dowser /usr/local/bin/dowser"));
    // The runtime image is plain Debian: the binary needs glibc only (libdbus is compiled
    // in, serial ports are read from sysfs), which the dynamic linker confirms.
    let runtime = dockerfile.rsplit("FROM ").next().unwrap();
    assert!(runtime.starts_with("${BASE_IMAGE}"));
    assert!(arg("BASE_IMAGE").starts_with("docker.io/library/debian:bookworm"));
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_dowser"))
        .output()
        .expect("ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let glibc = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
    ];
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
        assert!(
            glibc.iter().any(|g| lib.contains(g)),
            "dowser links {lib}, which the runtime image does not install:\n{ldd}"
        );
    }
    // The builder is at least the Rust version the workspace asks for.
    let rust = rust_version();
    assert!(dockerfile.contains("FROM ${BUILD_IMAGE} AS build"));
    assert_eq!(
        arg("BUILD_IMAGE"),
        format!("docker.io/library/rust:{rust}-bookworm"),
        "the builder image should be rust:{rust}-bookworm (Cargo.toml's rust-version)"
    );

    let help = |sub: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sets: [&[&str]; 2] = [&[], &["agent.propertyNamespaces={default}"]];
    let mut workloads = vec![];
    let base = kustomize();
    workloads.push((
        "kustomize",
        find(&base, "DaemonSet", "dowser-agent").clone(),
        find(&base, "Deployment", "dowser-controller").clone(),
    ));
    for s in sets {
        let objs = chart(s);
        workloads.push((
            "helm",
            find(&objs, "DaemonSet", "dowser-agent").clone(),
            find(&objs, "Deployment", "dowser-controller").clone(),
        ));
    }
    for (source, agent, controller) in &workloads {
        for (workload, sub) in [(agent, "agent"), (controller, "controller")] {
            let args = container(workload)["args"].as_array().unwrap();
            assert_eq!(args[0], sub, "{source}");
            let help = help(sub);
            for e in container(workload)["env"].as_array().unwrap() {
                let name = e["name"].as_str().unwrap();
                if name == "DOWSER_LOG" {
                    continue; // the log filter, read by main.rs
                }
                assert!(
                    help.contains(&format!("[env: {name}=")),
                    "{source} {sub}: the binary has no option from {name}"
                );
            }
            for a in &args[1..] {
                let flag = a.as_str().unwrap().split('=').next().unwrap();
                assert!(help.contains(flag), "{source} {sub}: no option {flag}");
            }
        }
        // The controller runs as the image's user; the agent as root, with nothing else.
        let sc = &pod_spec(controller)["securityContext"];
        assert_eq!(sc["runAsUser"].to_string(), uid, "{source}");
        assert_eq!(sc["runAsGroup"].to_string(), gid, "{source}");
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(pod_spec(agent)["securityContext"]["runAsUser"], 0);
        assert_eq!(
            env(agent, "NODE_NAME"),
            None,
            "NODE_NAME comes from the downward API"
        );
        let node = container(agent)["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "NODE_NAME")
            .unwrap();
        assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    }
}

/// The workspace's `rust-version` (Cargo.toml).
fn rust_version() -> String {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("rust-version = "))
        .expect("rust-version in Cargo.toml");
    line.trim_start_matches("rust-version = ")
        .trim_matches('"')
        .to_string()
}

/// `kubectl auth can-i` as a ServiceAccount of dowser-system: (verb, resource, namespace or
/// "" for all, expected).
fn assert_can_i(cluster: &Cluster, sa: &str, checks: &[(&str, &str, &str, bool)]) {
    let who = format!("--as=system:serviceaccount:{INSTALL_NAMESPACE}:{sa}");
    let mut wrong = vec![];
    for (verb, resource, ns, expected) in checks {
        // `resource/sub` names a subresource here (kubectl would read it as an object name).
        let (resource_only, sub) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(format!("--subresource={s}"))),
            None => (*resource, None),
        };
        let mut args = vec!["auth", "can-i", verb, resource_only, who.as_str()];
        if let Some(s) = &sub {
            args.push(s);
        }
        if ns.is_empty() {
            args.push("--all-namespaces");
        } else {
            args.extend(["-n", ns]);
        }
        let out = cluster.kubectl(&args, "");
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if (answer == "yes") != *expected {
            wrong.push(format!(
                "{sa} {verb} {resource} in {}: {answer} (expected {})",
                if ns.is_empty() { "all namespaces" } else { ns },
                if *expected { "yes" } else { "no" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// What each identity must not do, and a few things it must (the e2e tests prove the rest).
fn check_identities(cluster: &Cluster) {
    assert_can_i(
        cluster,
        "dowser-agent",
        &[
            ("patch", "instances.dowser.dev/status", "default", true),
            ("patch", "instances.dowser.dev", "default", true),
            ("get", "secrets", "default", true),
            ("watch", "configmaps", "default", true),
            // Secrets elsewhere, and listing them cluster-wide.
            ("get", "secrets", "kube-system", false),
            ("get", "secrets", INSTALL_NAMESPACE, false),
            ("list", "secrets", "", false),
            ("get", "configmaps", "kube-system", false),
            // Workloads and nodes are not its business.
            ("delete", "pods", "default", false),
            ("create", "pods", "default", false),
            ("get", "pods", "default", false),
            ("create", "pods/exec", "default", false),
            // Nodes: read, and only their status patched (stale dowser.dev/ resources
            // removed by a JSON patch); never updated, deleted or labelled.
            ("patch", "nodes/status", "", true),
            ("update", "nodes/status", "", false),
            ("patch", "nodes", "", false),
            ("update", "nodes", "", false),
            ("delete", "nodes", "", false),
            ("get", "nodes", "", false),
            ("create", "nodes", "", false),
            // Configurations belong to their authors.
            ("create", "configurations.dowser.dev", "default", false),
            ("patch", "configurations.dowser.dev", "default", false),
            ("delete", "configurations.dowser.dev", "default", false),
            ("create", "services", "default", false),
            ("create", "events.events.k8s.io", "default", false),
            (
                "patch",
                "leases.coordination.k8s.io",
                INSTALL_NAMESPACE,
                false,
            ),
            ("create", "serviceaccounts/token", INSTALL_NAMESPACE, false),
            ("escalate", "clusterroles", "", false),
            ("bind", "clusterroles", "", false),
            ("impersonate", "serviceaccounts", INSTALL_NAMESPACE, false),
            // DRA: its slices written, claims read (prepare), never changed; device
            // classes belong to the installer.
            ("create", "resourceslices.resource.k8s.io", "", true),
            ("patch", "resourceslices.resource.k8s.io", "", true),
            ("delete", "resourceslices.resource.k8s.io", "", true),
            ("watch", "resourceslices.resource.k8s.io", "", true),
            ("get", "resourceclaims.resource.k8s.io", "default", true),
            ("patch", "resourceclaims.resource.k8s.io", "default", false),
            (
                "update",
                "resourceclaims.resource.k8s.io/status",
                "default",
                false,
            ),
            ("delete", "resourceclaims.resource.k8s.io", "default", false),
            ("create", "deviceclasses.resource.k8s.io", "", false),
        ],
    );
    assert_can_i(
        cluster,
        "dowser-controller",
        &[
            ("create", "pods", "default", true),
            // DRA brokers' claim templates: made, never deleted (they go with their
            // Instance); claims themselves are the resource claim controller's.
            (
                "patch",
                "resourceclaimtemplates.resource.k8s.io",
                "default",
                true,
            ),
            (
                "delete",
                "resourceclaimtemplates.resource.k8s.io",
                "default",
                false,
            ),
            ("create", "resourceclaims.resource.k8s.io", "default", false),
            ("create", "resourceslices.resource.k8s.io", "", false),
            (
                "create",
                "leases.coordination.k8s.io",
                INSTALL_NAMESPACE,
                true,
            ),
            // Nodes: read, never written.
            ("patch", "nodes/status", "", false),
            ("update", "nodes/status", "", false),
            ("patch", "nodes", "", false),
            ("delete", "nodes", "", false),
            // No Secrets, ConfigMaps, exec or pod updates.
            ("get", "secrets", "default", false),
            ("list", "secrets", "", false),
            ("get", "configmaps", "default", false),
            ("create", "pods/exec", "default", false),
            ("update", "pods", "default", false),
            ("patch", "pods/status", "default", false),
            // Instances are the agents': it only deletes orphans and trims their status.
            ("create", "instances.dowser.dev", "default", false),
            ("patch", "instances.dowser.dev", "default", false),
            ("patch", "configurations.dowser.dev", "default", false),
            ("delete", "configurations.dowser.dev", "default", false),
            // Only its own Lease, only in its namespace.
            ("get", "leases.coordination.k8s.io", "kube-system", false),
            (
                "patch",
                "leases.coordination.k8s.io",
                "kube-node-lease",
                false,
            ),
            (
                "delete",
                "leases.coordination.k8s.io",
                INSTALL_NAMESPACE,
                false,
            ),
            ("create", "deployments.apps", "default", false),
            ("create", "events", "default", false),
            ("escalate", "clusterroles", "", false),
            ("bind", "clusterroles", "", false),
            ("impersonate", "serviceaccounts", INSTALL_NAMESPACE, false),
        ],
    );
    // resourceNames: its own Lease, and no other one even in its namespace.
    for (lease, expected) in [("dowser-controller", "yes"), ("kube-scheduler", "no")] {
        for verb in ["get", "patch"] {
            let out = cluster.kubectl(
                &[
                    "auth",
                    "can-i",
                    verb,
                    &format!("leases.coordination.k8s.io/{lease}"),
                    &format!("--as=system:serviceaccount:{INSTALL_NAMESPACE}:dowser-controller"),
                    "-n",
                    INSTALL_NAMESPACE,
                ],
                "",
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                expected,
                "controller {verb} Lease {lease}"
            );
        }
    }
}

/// Pod Security: the controller's pod is admitted where "restricted" is enforced; the agent's
/// is not (it needs host paths and the host network) — and is admitted in dowser-system.
fn check_pod_security(cluster: &Cluster, agent: &str, controller: &str) {
    let ns = "psa-restricted";
    let out = cluster.kubectl(&["create", "namespace", ns], "");
    assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"));
    cluster.kubectl_ok(&[
        "label",
        "--overwrite",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    for sa in [agent, controller] {
        let out = cluster.kubectl(&["-n", ns, "create", "serviceaccount", sa], "");
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists")
        );
    }
    let pod_of = |kind: &str, name: &str| {
        let w: Value = serde_json::from_str(&cluster.kubectl_ok(&[
            "-n",
            INSTALL_NAMESPACE,
            "get",
            kind,
            name,
            "-o",
            "json",
        ]))
        .unwrap();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("{name}-psa"), "namespace": ns},
            "spec": w["spec"]["template"]["spec"],
        })
    };
    let out = cluster.kubectl(
        &["create", "--dry-run=server", "-f", "-"],
        &pod_of("deployment", controller).to_string(),
    );
    assert!(
        out.status.success(),
        "the controller's pod is not Pod Security restricted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.kubectl(
        &["create", "--dry-run=server", "-f", "-"],
        &pod_of("daemonset", agent).to_string(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("violates PodSecurity"),
        "{stderr}"
    );
}

/// Waits until the workloads have pods on the fake node, admitted by the apiserver.
async fn pods_of(cluster: &Cluster, component: &str, count: usize) {
    let client = cluster.client().await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client, INSTALL_NAMESPACE);
    let selector = format!("app.kubernetes.io/component={component}");
    common::eventually(60, &format!("{count} {component} pods"), || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .ok()?;
        (list.items.len() == count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_kustomize_install_works_on_a_real_apiserver() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    let _node = cluster.fake_kubelet("node-a", &[]);
    readme::run(&cluster, &readme::block("kubectl apply -k deploy/"), None);
    // The harness grants the e2e tests' agents exactly what the README grants.
    let block = readme::block("kubectl apply -k deploy/").replace("\\\n", " ");
    assert!(block.contains(PROPERTIES_BINDING), "{block}");

    // Applying again changes nothing the server refuses.
    let out = cluster.kubectl_ok(&["apply", "-k", "deploy/", "--dry-run=server"]);
    assert!(out.contains("daemonset.apps/dowser-agent"), "{out}");
    // The DRA overlay too: the DeviceClass is valid for this API server.
    let out = cluster.kubectl_ok(&["apply", "-k", "deploy-dra/", "--dry-run=server"]);
    assert!(
        out.contains("deviceclass.resource.k8s.io/dowser.dev"),
        "{out}"
    );
    // The rollout is done: one agent on the node, two controllers.
    pods_of(&cluster, "agent", 1).await;
    pods_of(&cluster, "controller", 2).await;
    check_pod_security(&cluster, "dowser-agent", "dowser-controller");
    check_identities(&cluster);

    // The external handler example: its DaemonSet beside the agent, its Configuration.
    let (daemonset, _) = external_handler_example();
    let out = cluster.kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        &daemonset.to_string(),
    );
    assert!(
        out.status.success(),
        "the example's DaemonSet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        "deploy/examples/external-handler.yaml",
    ]);
    assert!(out.contains("configuration.dowser.dev/"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_helm_install_works_on_a_real_apiserver() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    let _node = cluster.fake_kubelet("node-a", &[]);
    let block = readme::block("helm install");
    readme::run(&cluster, &block, None);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/configurations.dowser.dev",
        "crd/instances.dowser.dev",
        "--timeout=60s",
    ]);
    pods_of(&cluster, "agent", 1).await;
    pods_of(&cluster, "controller", 2).await;

    // helm template | kubectl apply --dry-run=server, with the README's values and others.
    for sets in [
        vec!["agent.propertyNamespaces={default}"],
        vec!["agent.propertyNamespaces={*}", "logFormat=text"],
        vec![
            "handlers.mdns.enabled=false",
            "handlers.ble.enabled=false",
            "agent.hostNetwork=false",
            "controller.replicas=3",
        ],
        vec!["agent.mode=dra"],
    ] {
        let mut args = vec!["template", "dowser", CHART, "-n", INSTALL_NAMESPACE];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let rendered = run(&cluster.helm, &args);
        let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], &rendered);
        assert!(
            out.status.success(),
            "helm template {sets:?} | kubectl apply --dry-run=server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check_pod_security(&cluster, "dowser-agent", "dowser-controller");
    check_identities(&cluster);

    // External handlers: the server takes every option, and an upgrade starts one pod of
    // each beside the agent.
    for values in [TWO_HANDLERS, HANDLER_OPTIONS] {
        let rendered = helm_with_stdin(
            &[
                "template",
                "dowser",
                CHART,
                "-n",
                INSTALL_NAMESPACE,
                "-f",
                "-",
            ],
            values,
        );
        assert!(rendered.status.success());
        let out = cluster.kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            &String::from_utf8_lossy(&rendered.stdout),
        );
        assert!(
            out.status.success(),
            "helm template with\n{values}\n| kubectl apply --dry-run=server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values.path(), TWO_HANDLERS).unwrap();
    readme::run(
        &cluster,
        &format!(
            "helm upgrade dowser {CHART} -n {INSTALL_NAMESPACE} --reuse-values -f {}",
            values.path().display()
        ),
        None,
    );
    pods_of(&cluster, "discovery-handler", 2).await;
    pods_of(&cluster, "agent", 1).await;

    // The README's uninstall.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let uninstall = "helm uninstall dowser -n dowser-system";
    assert!(readme.contains(&format!("`{uninstall}`")));
    readme::run(&cluster, uninstall, None);
    let left = cluster.kubectl_ok(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        "app.kubernetes.io/instance=dowser",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left after uninstall: {left}");
}

/// The Grafana dashboard's ConfigMap and the PrometheusRule (their own tests are in
/// tests/monitoring.rs): off by default, rendered with their values, and `helm lint --strict`
/// passes with both on. The PrometheusRule's CRD is not in the test cluster: rendered only.
#[test]
fn monitoring_dashboards_and_rules_render_and_lint() {
    let objs = chart(&[]);
    assert!(!objs.iter().any(|o| o["kind"] == "PrometheusRule"));
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "dowser-dashboards")
    );

    let both = [
        "monitoring.dashboards.enabled=true",
        "monitoring.rules.enabled=true",
    ];
    let objs = chart(&both);
    let cm = find(&objs, "ConfigMap", "dowser-dashboards");
    assert_eq!(cm["metadata"]["namespace"], INSTALL_NAMESPACE);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value = serde_json::from_str(cm["data"]["dowser.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "dowser");
    let rule = find(&objs, "PrometheusRule", "dowser");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], INSTALL_NAMESPACE);
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(alerts.contains(&"DowserAgentDown"), "{alerts:?}");
    let out = helm_with_stdin(&["lint", "--strict", CHART, "--set", &both.join(",")], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("0 chart(s) failed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The sidecar's label and namespace, more labels and annotations.
    let objs = chart_with(
        r#"
monitoring:
  dashboards:
    enabled: true
    label: dashboards.example.com/grafana
    labelValue: plant
    namespace: grafana
    labels: {team: ot}
    annotations: {grafana_folder: dowser}
  rules:
    enabled: true
    labels: {release: kube-prometheus-stack}
"#,
        &[],
    );
    let cm = find(&objs, "ConfigMap", "dowser-dashboards");
    assert_eq!(cm["metadata"]["namespace"], "grafana");
    let labels = &cm["metadata"]["labels"];
    assert_eq!(labels["dashboards.example.com/grafana"], "plant");
    assert_eq!(labels["team"], "ot");
    assert!(labels.get("grafana_dashboard").is_none());
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "dowser");
    let rule = find(&objs, "PrometheusRule", "dowser");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "dowser"
    );

    // The agents' job follows the monitor that scrapes them, unless it is given.
    let up = |objs: &[Value]| -> String {
        let rule = find(objs, "PrometheusRule", "dowser");
        rule["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == "DowserAgentDown")
            .unwrap()["expr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        up(&chart(&["monitoring.rules.enabled=true"])),
        r#"up{job="dowser-agent-metrics"} == 0"#
    );
    assert_eq!(
        up(&chart(&[
            "monitoring.rules.enabled=true",
            "metrics.podMonitor.enabled=true"
        ])),
        format!(r#"up{{job="{INSTALL_NAMESPACE}/dowser", container="agent"}} == 0"#)
    );
    assert_eq!(
        up(&chart_with(
            "monitoring: {rules: {enabled: true, agentSelector: 'job=\"kubernetes-pods\", container=\"agent\"'}}",
            &[],
        )),
        r#"up{job="kubernetes-pods", container="agent"} == 0"#
    );
    // A selector that is no PromQL label matcher is refused by the schema.
    let err = helm_template(&[
        "monitoring.rules.enabled=true",
        "monitoring.rules.agentSelector=dowser-agent",
    ])
    .unwrap_err();
    assert!(err.contains("agentSelector"), "{err}");
}
