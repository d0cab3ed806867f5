//! `dowser convert`: Akri Configurations (`akri.sh/v0`) as dowser Configurations.
//!
//! [`convert`] maps one Akri Configuration and says, in notes, what it could not carry over
//! or only approximated; it reads and writes YAML values only. [`run`] is the command: it
//! reads the documents, checks each converted Configuration with dowser's own validation
//! and prints them on stdout, the notes on stderr.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    fmt::Display,
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::Context;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The Akri Configurations (YAML, one or more documents). Absent or `-`: standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
}

/// Why a document is not an Akri Configuration that can be converted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

/// Exit code for input that is not Akri Configurations.
const INVALID: i32 = 1;

const AKRI_API_VERSION: &str = "akri.sh/v0";
const DOWSER_API_VERSION: &str = "dowser.dev/v1alpha1";
const DETAILS: &str = "spec.discoveryHandler.discoveryDetails";
const PROPERTIES: &str = "spec.discoveryHandler.discoveryProperties";
/// The key Akri's Helm chart puts in a broker's resources, replaced by Akri's controller
/// with the device's resource. dowser adds that request itself.
const PLACEHOLDER: &str = "{{PLACEHOLDER}}";
/// Akri's OPC UA handler's discovery URL when none is given.
const OPCUA_DEFAULT_URL: &str = "opc.tcp://localhost:4840/";
/// An annotation kubectl writes with the whole object: the Akri one, so not carried over.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub fn run(args: ConvertArgs) -> anyhow::Result<i32> {
    let (source, text) = read_input(args.file.as_ref())?;
    let docs = match documents(&text) {
        Ok(docs) => docs,
        Err(e) => {
            eprintln!("error: {source} is not valid YAML: {e}");
            return Ok(INVALID);
        }
    };
    if docs.is_empty() {
        eprintln!(
            "error: {source} has no Akri Configuration (apiVersion: {AKRI_API_VERSION}, kind: Configuration)"
        );
        return Ok(INVALID);
    }
    let mut converted = Vec::new();
    let mut notes = Vec::new();
    let mut failed = false;
    for (i, doc) in docs.iter().enumerate() {
        match convert(doc).and_then(|(config, n)| check(&config).map(|()| (config, n))) {
            Ok((config, n)) => {
                converted.push(config);
                notes.extend(n);
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {source}: document {}: {e}", i + 1);
            }
        }
    }
    // Nothing is printed unless every document converts: `| kubectl apply -f -` must not
    // apply part of a set.
    if failed {
        return Ok(INVALID);
    }
    let yaml = converted
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n");
    match std::io::stdout().write_all(yaml.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    for note in notes {
        eprintln!("{note}");
    }
    Ok(0)
}

fn read_input(file: Option<&PathBuf>) -> anyhow::Result<(String, String)> {
    match file {
        Some(path) if path.as_os_str() != "-" => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            Ok(("standard input".to_string(), text))
        }
    }
}

/// Every YAML document of `text`, empty ones skipped.
fn documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A converted Configuration checked as `kubectl apply` and dowser would check it.
fn check(config: &Value) -> Result<(), Error> {
    let json = serde_json::to_value(config)
        .map_err(|e| Error(format!("the converted Configuration is not JSON: {e}")))?;
    crate::validate::configuration(&json).map(drop).map_err(|errors| {
        let name = config["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = config["metadata"]["namespace"].as_str().unwrap_or_default();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        Error(format!(
            "{namespace}/{name}: the converted Configuration would not be valid (fix the Akri Configuration and convert again): {}",
            errors.join("; ")
        ))
    })
}

/// What was lost or approximated, one line each: `<namespace>/<name>: <field>: <text>`.
struct Notes {
    id: String,
    lines: Vec<String>,
}

impl Notes {
    fn add(&mut self, path: impl Display, text: impl Display) {
        self.lines.push(format!("{}: {path}: {text}", self.id));
    }
}

/// One Akri Configuration as a dowser Configuration, and the notes on what did not map
/// exactly (each `<namespace>/<name>: <Akri field>: <what happened, what to do>`).
pub fn convert(akri: &Value) -> Result<(Value, Vec<String>), Error> {
    let api_version = akri.get("apiVersion").and_then(Value::as_str);
    let kind = akri.get("kind").and_then(Value::as_str);
    if api_version != Some(AKRI_API_VERSION) || kind != Some("Configuration") {
        return Err(Error(format!(
            "not an Akri Configuration (apiVersion: {}, kind: {}): expected apiVersion: {AKRI_API_VERSION}, kind: Configuration",
            api_version.unwrap_or("<none>"),
            kind.unwrap_or("<none>")
        )));
    }
    let metadata = akri.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error("the Akri Configuration has no metadata.name".into()))?;
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let id = format!("{namespace}/{name}");
    let spec = akri
        .get("spec")
        .and_then(Value::as_mapping)
        .ok_or_else(|| Error(format!("{id}: the Akri Configuration has no spec")))?;
    let handler = spec
        .get("discoveryHandler")
        .and_then(Value::as_mapping)
        .ok_or_else(|| Error(format!("{id}: spec.discoveryHandler is missing")))?;
    let handler_name = handler
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error(format!(
                "{id}: spec.discoveryHandler.name is missing: an Akri Configuration names its discovery handler (onvif, opcua, udev, debugEcho...)"
            ))
        })?;
    let details = match handler.get("discoveryDetails") {
        None | Some(Value::Null) => "",
        Some(Value::String(text)) => text.as_str(),
        Some(_) => {
            return Err(Error(format!(
                "{id}: {DETAILS} must be a string (YAML text that the handler parses)"
            )));
        }
    };
    let mut notes = Notes {
        id: id.clone(),
        lines: Vec::new(),
    };
    for key in keys(handler) {
        if !matches!(key, "name" | "discoveryDetails" | "discoveryProperties") {
            notes.add(
                format!("spec.discoveryHandler.{key}"),
                "no dowser equivalent: left out",
            );
        }
    }

    let discovery = match handler_name {
        "opcua" => built_in(handler_name, details, &mut notes, opcua),
        "onvif" => built_in(handler_name, details, &mut notes, onvif),
        "udev" => built_in(handler_name, details, &mut notes, udev),
        _ => None,
    }
    .unwrap_or_else(|| external(handler_name, details));

    let mut out_spec = Mapping::new();
    out_spec.insert("discovery".into(), discovery);
    let properties = properties(
        handler.get("discoveryProperties"),
        handler_name,
        namespace,
        &mut notes,
    );
    if !properties.is_empty() {
        out_spec.insert("properties".into(), Value::Sequence(properties));
    }
    if let Some(capacity) = capacity(spec.get("capacity"), &mut notes) {
        out_spec.insert("capacity".into(), capacity.into());
    }
    let broker = broker_spec(spec.get("brokerSpec"), &mut notes);
    let pods = broker
        .as_ref()
        .is_some_and(|b| b.get("brokerPodSpec").is_some());
    if let Some(broker) = broker {
        out_spec.insert("brokerSpec".into(), broker);
    }
    for key in ["instanceServiceSpec", "configurationServiceSpec"] {
        match spec.get(key) {
            None | Some(Value::Null) => {}
            Some(service) if pods => {
                out_spec.insert(key.into(), service.clone());
            }
            Some(_) => notes.add(
                format!("spec.{key}"),
                if spec.get("brokerSpec").is_some_and(|b| !b.is_null()) {
                    "left out: dowser makes Services for broker Pods only, and this Configuration runs broker Jobs"
                } else {
                    "left out: a Service selects broker pods, and this Configuration has no brokerSpec"
                },
            ),
        }
    }
    let broker_properties = broker_properties(spec.get("brokerProperties"), &mut notes);
    if !broker_properties.is_empty() {
        out_spec.insert("brokerProperties".into(), Value::Mapping(broker_properties));
    }
    for key in keys(spec) {
        if !matches!(
            key,
            "discoveryHandler"
                | "capacity"
                | "brokerSpec"
                | "instanceServiceSpec"
                | "configurationServiceSpec"
                | "brokerProperties"
        ) {
            notes.add(format!("spec.{key}"), "no dowser equivalent: left out");
        }
    }

    let mut out_meta = Mapping::new();
    out_meta.insert("name".into(), name.into());
    out_meta.insert("namespace".into(), namespace.into());
    if let Some(labels) = metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_mapping)
        && !labels.is_empty()
    {
        out_meta.insert("labels".into(), Value::Mapping(labels.clone()));
    }
    if let Some(annotations) = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
    {
        let kept: Mapping = annotations
            .iter()
            .filter(|(k, _)| k.as_str() != Some(LAST_APPLIED))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            out_meta.insert("annotations".into(), Value::Mapping(kept));
        }
    }

    let mut out = Mapping::new();
    out.insert("apiVersion".into(), DOWSER_API_VERSION.into());
    out.insert("kind".into(), "Configuration".into());
    out.insert("metadata".into(), Value::Mapping(out_meta));
    out.insert("spec".into(), Value::Mapping(out_spec));
    Ok((Value::Mapping(out), notes.lines))
}

/// The string keys of a mapping, in order.
fn keys(map: &Mapping) -> impl Iterator<Item = &str> {
    map.keys().filter_map(Value::as_str)
}

/// A scalar as the string Akri reads (items, values: strings in Akri's types).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `discovery: {external: {name, details}}`: the handler of that name, registered with the
/// agent, gets the details as they were.
fn external(name: &str, details: &str) -> Value {
    let mut inner = Mapping::new();
    inner.insert("name".into(), name.into());
    if !details.is_empty() {
        inner.insert("details".into(), details.into());
    }
    let mut discovery = Mapping::new();
    discovery.insert("external".into(), Value::Mapping(inner));
    Value::Mapping(discovery)
}

/// `discovery: {<name>: ...}` from the details of one of Akri's handlers that dowser has
/// built in, or None (with a note) when they stay with Akri's handler as `external`.
fn built_in(
    name: &str,
    text: &str,
    notes: &mut Notes,
    map: fn(&Mapping, &mut Notes) -> Option<Mapping>,
) -> Option<Value> {
    let details = match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => m,
        Ok(Value::Null) => Mapping::new(),
        Ok(_) => {
            notes.add(
                DETAILS,
                format!("is not a YAML mapping: {}", keep_for_akri(name)),
            );
            return None;
        }
        Err(e) => {
            notes.add(
                DETAILS,
                format!("cannot be read as YAML ({e}): {}", keep_for_akri(name)),
            );
            return None;
        }
    };
    let mapped = map(&details, notes)?;
    let mut discovery = Mapping::new();
    discovery.insert(name.into(), Value::Mapping(mapped));
    Some(Value::Mapping(discovery))
}

fn keep_for_akri(name: &str) -> String {
    format!(
        "the Configuration keeps the details for Akri's {name} discovery handler (discovery.external, name {name}): run that handler beside the dowser agent, or change the details and convert again"
    )
}

/// Notes every key of `details` not in `known`.
fn unknown_keys(details: &Mapping, known: &[&str], notes: &mut Notes) {
    for key in keys(details) {
        if !known.contains(&key) {
            notes.add(format!("{DETAILS}.{key}"), "no dowser equivalent: left out");
        }
    }
}

/// An Akri filter list, `{action: Include|Exclude, items: [...]}`: exact values.
struct AkriFilter {
    exclude: bool,
    items: Vec<String>,
}

impl AkriFilter {
    fn read(v: &Value) -> Option<Self> {
        let map = v.as_mapping()?;
        let exclude = match map.get("action").and_then(Value::as_str) {
            None | Some("Include") => false,
            Some("Exclude") => true,
            Some(_) => return None,
        };
        let items = match map.get("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items.iter().map(scalar).collect::<Option<_>>()?,
            Some(_) => return None,
        };
        Some(Self { exclude, items })
    }

    /// The dowser filter keeping the same values: each item an anchored, escaped regular
    /// expression (case-insensitive when Akri compares so).
    fn to_dowser(&self, case_insensitive: bool) -> Value {
        let patterns: Vec<Value> = self
            .items
            .iter()
            .map(|item| {
                let flag = if case_insensitive && item.chars().any(|c| c.is_ascii_alphabetic()) {
                    "(?i)"
                } else {
                    ""
                };
                Value::String(format!("{flag}^{}$", regex::escape(item)))
            })
            .collect();
        let mut filter = Mapping::new();
        let list = if self.exclude { "exclude" } else { "include" };
        filter.insert(list.into(), Value::Sequence(patterns));
        Value::Mapping(filter)
    }
}

/// The dowser filter of the Akri filter list `details[key]`, or None when it has none (no
/// list, an `Exclude` without items) or cannot have one (noted). `what`: the things
/// filtered, in the plural.
fn filter(
    details: &Mapping,
    key: &str,
    what: &str,
    case_insensitive: bool,
    notes: &mut Notes,
) -> Option<Value> {
    let value = details.get(key).filter(|v| !v.is_null())?;
    let Some(list) = AkriFilter::read(value) else {
        notes.add(
            format!("{DETAILS}.{key}"),
            format!(
                "is not an Akri filter list ({{action: Include|Exclude, items: [...]}}): left out, so {what} are not filtered by it; write the dowser filter ({{include: [...], exclude: [...]}} of regular expressions) yourself"
            ),
        );
        return None;
    };
    if list.items.is_empty() {
        if !list.exclude {
            notes.add(
                format!("{DETAILS}.{key}"),
                format!(
                    "action Include with no items keeps no {what} in Akri: left out, so dowser keeps all {what}; list the ones to keep"
                ),
            );
        }
        return None;
    }
    Some(list.to_dowser(case_insensitive))
}

/// Akri's OPC UA details: `opcuaDiscoveryMethod: {standard: {discoveryUrls}}`,
/// `applicationNames`.
fn opcua(details: &Mapping, notes: &mut Notes) -> Option<Mapping> {
    let mut out = Mapping::new();
    let standard = details
        .get("opcuaDiscoveryMethod")
        .and_then(|m| m.get("standard"));
    if standard.is_none() {
        notes.add(
            format!("{DETAILS}.opcuaDiscoveryMethod"),
            format!(
                "has no standard method, which Akri's OPC UA handler needs: discoveryUrls set to Akri's default, {OPCUA_DEFAULT_URL}; check it"
            ),
        );
    }
    let urls: Vec<Value> = match standard
        .and_then(|s| s.get("discoveryUrls"))
        .and_then(Value::as_sequence)
    {
        Some(urls) if !urls.is_empty() => {
            urls.iter().filter_map(scalar).map(Value::String).collect()
        }
        // Akri's default: the local discovery server of the node.
        _ => vec![OPCUA_DEFAULT_URL.into()],
    };
    out.insert("discoveryUrls".into(), Value::Sequence(urls));
    if let Some(names) = filter(details, "applicationNames", "servers", false, notes) {
        out.insert("applicationNames".into(), names);
    }
    unknown_keys(
        details,
        &["opcuaDiscoveryMethod", "applicationNames"],
        notes,
    );
    Some(out)
}

/// Shortest and longest probe window of dowser's ONVIF handler, in milliseconds.
const PROBE_WINDOW_MS: (i64, i64) = (100, 30_000);

/// Akri's ONVIF details: `ipAddresses`, `macAddresses`, `scopes`, `uuids` filter lists and
/// `discoveryTimeoutSeconds`.
fn onvif(details: &Mapping, notes: &mut Notes) -> Option<Mapping> {
    let mut out = Mapping::new();
    if let Some(scopes) = filter(details, "scopes", "cameras", false, notes) {
        if scopes.get("exclude").is_some() {
            notes.add(
                format!("{DETAILS}.scopes"),
                "Exclude became scopes.exclude, which drops a camera only when all its scopes are excluded (Akri drops it when any is): list the scopes to keep in scopes.include instead if excluded cameras have other scopes too",
            );
        }
        out.insert("scopes".into(), scopes);
    }
    // Akri compares addresses case-insensitively (IPv6).
    if let Some(ips) = filter(details, "ipAddresses", "cameras", true, notes) {
        out.insert("ipAddresses".into(), ips);
    }
    for (key, what) in [("macAddresses", "MAC address"), ("uuids", "UUID")] {
        let Some(list) = details.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        // An Exclude list without items filters nothing: nothing is lost.
        if AkriFilter::read(list).is_some_and(|l| l.exclude && l.items.is_empty()) {
            continue;
        }
        notes.add(
            format!("{DETAILS}.{key}"),
            format!(
                "no dowser equivalent (dowser's ONVIF handler does not filter by {what}): left out, so cameras are not filtered by {what}; filter by ipAddresses, scopes, manufacturers or models instead"
            ),
        );
    }
    if let Some(timeout) = details
        .get("discoveryTimeoutSeconds")
        .filter(|v| !v.is_null())
    {
        let path = format!("{DETAILS}.discoveryTimeoutSeconds");
        match timeout.as_i64() {
            Some(seconds) if seconds > 0 => {
                let ms = seconds.saturating_mul(1000);
                let window = ms.clamp(PROBE_WINDOW_MS.0, PROBE_WINDOW_MS.1);
                if window != ms {
                    notes.add(
                        path,
                        format!(
                            "{seconds} s is longer than dowser's longest probe window: probeWindowMs set to {window}"
                        ),
                    );
                }
                out.insert("probeWindowMs".into(), window.into());
            }
            _ => notes.add(
                path,
                "is not a positive number of seconds: left out, so probeWindowMs is dowser's default (1500)",
            ),
        }
    }
    unknown_keys(
        details,
        &[
            "ipAddresses",
            "macAddresses",
            "scopes",
            "uuids",
            "discoveryTimeoutSeconds",
        ],
        notes,
    );
    Some(out)
}

/// Akri's udev details: `udevRules` (a device matching any rule is found), `groupRecursive`,
/// `permissions`. None (with a note) when the rules cannot be expressed with dowser's udev
/// fields.
fn udev(details: &Mapping, notes: &mut Notes) -> Option<Mapping> {
    let rules: Vec<String> = match details.get("udevRules").and_then(Value::as_sequence) {
        Some(rules) if !rules.is_empty() => rules.iter().filter_map(scalar).collect(),
        _ => {
            notes.add(
                format!("{DETAILS}.udevRules"),
                format!("is missing or empty: {}", keep_for_akri("udev")),
            );
            return None;
        }
    };
    let mut approximations = Vec::new();
    let mut selections = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("{DETAILS}.udevRules[{i}]");
        match udev_selection(rule) {
            Ok((selection, approximated)) => {
                selections.push(selection);
                approximations.extend(approximated.into_iter().map(|n| (path.clone(), n)));
            }
            Err(why) => {
                notes.add(path, format!("{why}: {}", keep_for_akri("udev")));
                return None;
            }
        }
    }
    let selection = match merge_selections(selections) {
        Ok(selection) => selection,
        Err(why) => {
            notes.add(
                format!("{DETAILS}.udevRules"),
                format!("{why}: {}", keep_for_akri("udev")),
            );
            return None;
        }
    };
    for (path, text) in approximations {
        notes.add(path, text);
    }

    let mut out = Mapping::new();
    let mut attributes = Vec::new();
    let mut parent_attributes = Vec::new();
    let mut properties = Vec::new();
    for (slot, patterns) in &selection {
        match slot {
            Slot::Subsystems => {
                let names = patterns.include.iter().cloned().map(Value::String);
                out.insert("subsystems".into(), Value::Sequence(names.collect()));
            }
            Slot::DeviceNodes => {
                out.insert("deviceNodes".into(), Value::Mapping(patterns.to_filter()));
            }
            Slot::Drivers => {
                out.insert("drivers".into(), Value::Mapping(patterns.to_filter()));
            }
            Slot::Attribute(name) => attributes.push(patterns.named(name)),
            Slot::ParentAttribute(name) => parent_attributes.push(patterns.named(name)),
            Slot::Property(name) => properties.push(patterns.named(name)),
        }
    }
    for (key, list) in [
        ("attributes", attributes),
        ("parentAttributes", parent_attributes),
        ("properties", properties),
    ] {
        if !list.is_empty() {
            out.insert(key.into(), Value::Sequence(list));
        }
    }

    // Akri makes each device found an Instance, unless groupRecursive.
    let group_recursive = match details.get("groupRecursive") {
        None | Some(Value::Null) => false,
        Some(v) => v.as_bool().unwrap_or_else(|| {
            notes.add(
                format!("{DETAILS}.groupRecursive"),
                "is not true or false: read as false (groupBy: Device)",
            );
            false
        }),
    };
    if group_recursive {
        notes.add(
            format!("{DETAILS}.groupRecursive"),
            "true became groupBy: Parent: the devices kept under one parent (a USB interface, a platform device) are one device, where Akri grouped a device with the devices found below it; check the Instances with dowser discover",
        );
        out.insert("groupBy".into(), "Parent".into());
    } else {
        out.insert("groupBy".into(), "Device".into());
    }
    if let Some(permissions) = details.get("permissions").and_then(scalar)
        && !matches!(permissions.as_str(), "rw" | "rwm")
    {
        notes.add(
            format!("{DETAILS}.permissions"),
            format!(
                "no dowser equivalent: dowser gives brokers every device node read-write, so {permissions:?} is not kept; restrict access in the broker's securityContext if needed"
            ),
        );
    }
    unknown_keys(
        details,
        &["udevRules", "groupRecursive", "permissions"],
        notes,
    );
    Some(out)
}

/// A field of dowser's udev details that one udev rule key maps to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    /// `SUBSYSTEM==`: the names (not patterns) in `include`.
    Subsystems,
    /// `KERNEL`: the device node.
    DeviceNodes,
    /// `DRIVERS==` (and `DRIVER==`, approximated).
    Drivers,
    /// `ATTR{name}`.
    Attribute(String),
    /// `ATTRS{name}`.
    ParentAttribute(String),
    /// `ENV{name}`.
    Property(String),
}

/// The include (`==`) and exclude (`!=`) patterns of one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Patterns {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Patterns {
    fn to_filter(&self) -> Mapping {
        let mut filter = Mapping::new();
        for (key, list) in [("include", &self.include), ("exclude", &self.exclude)] {
            if !list.is_empty() {
                let list = list.iter().cloned().map(Value::String).collect();
                filter.insert(key.into(), Value::Sequence(list));
            }
        }
        filter
    }

    fn named(&self, name: &str) -> Value {
        let mut filter = Mapping::new();
        filter.insert("name".into(), name.into());
        filter.extend(self.to_filter());
        Value::Mapping(filter)
    }
}

/// What one udev rule selects, as dowser's udev fields.
type Selection = BTreeMap<Slot, Patterns>;

/// One `KEY{attribute}<op>"value"` of a udev rule.
#[derive(Debug, PartialEq, Eq)]
struct RuleKey<'a> {
    field: &'a str,
    attribute: Option<&'a str>,
    op: &'a str,
    value: &'a str,
    /// The key as written.
    text: &'a str,
}

/// The keys of a udev rule (`KEY=="value", KEY{attr}!="value", ...`).
fn parse_rule(rule: &str) -> Result<Vec<RuleKey<'_>>, String> {
    let unreadable = |at: &str| format!("cannot read the udev rule {rule:?} at {at:?}");
    let mut keys = Vec::new();
    let mut rest = rule.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let field_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        if field_len == 0 {
            return Err(unreadable(start));
        }
        let field = &rest[..field_len];
        rest = &rest[field_len..];
        let mut attribute = None;
        if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| unreadable(start))?;
            attribute = Some(&r[..end]);
            rest = &r[end + 1..];
        }
        rest = rest.trim_start();
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| unreadable(start))?;
        rest = rest[op.len()..].trim_start();
        let quoted = rest.strip_prefix('"').ok_or_else(|| unreadable(start))?;
        let end = quoted.find('"').ok_or_else(|| unreadable(start))?;
        let value = &quoted[..end];
        rest = &quoted[end + 1..];
        let text = start[..start.len() - rest.len()].trim();
        keys.push(RuleKey {
            field,
            attribute,
            op,
            value,
            text,
        });
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(unreadable(rest));
        }
    }
    if keys.is_empty() {
        return Err("the udev rule is empty".into());
    }
    Ok(keys)
}

/// Subsystems of the devices whose kernel names start so, for a rule without `SUBSYSTEM==`.
const KERNEL_NAME_SUBSYSTEMS: &[(&str, &str)] = &[
    ("video", "video4linux"),
    ("v4l-subdev", "video4linux"),
    ("media", "media"),
    ("tty", "tty"),
    ("hidraw", "hidraw"),
    ("gpiochip", "gpio"),
    ("event", "input"),
    ("mouse", "input"),
    ("js", "input"),
    ("i2c-", "i2c-dev"),
    ("spidev", "spidev"),
    ("pcmC", "sound"),
    ("controlC", "sound"),
    ("sd", "block"),
];

/// The subsystem of devices whose kernel name matches the glob, when its fixed start says.
fn kernel_subsystem(glob: &str) -> Option<&'static str> {
    let literal = &glob[..glob.find(['*', '?', '[', '\\']).unwrap_or(glob.len())];
    KERNEL_NAME_SUBSYSTEMS
        .iter()
        .find(|(prefix, _)| literal.starts_with(prefix))
        .map(|(_, subsystem)| *subsystem)
}

/// What one udev rule selects as dowser's udev fields, with notes on what is approximated;
/// or why it cannot be expressed.
fn udev_selection(rule: &str) -> Result<(Selection, Vec<String>), String> {
    let keys = parse_rule(rule)?;
    let mut selection = Selection::new();
    let mut approximated = Vec::new();
    let mut kernel_names: Vec<&str> = Vec::new();
    for key in &keys {
        let text = key.text;
        let equal = match key.op {
            "==" => true,
            "!=" => false,
            _ => {
                return Err(format!(
                    "{text} assigns a value; dowser's udev fields only select devices"
                ));
            }
        };
        let alternatives: Vec<&str> = key.value.split('|').collect();
        let slot = match (key.field, key.attribute) {
            ("SUBSYSTEM", None) => {
                if !equal {
                    return Err(format!(
                        "{text} cannot be expressed: dowser's subsystems list the subsystems to look at"
                    ));
                }
                if let Some(pattern) = alternatives.iter().find(|a| !is_subsystem_name(a)) {
                    return Err(format!(
                        "{text} cannot be expressed: {pattern:?} is a pattern, and dowser's subsystems are names"
                    ));
                }
                Slot::Subsystems
            }
            ("KERNEL", None) => {
                if equal {
                    kernel_names.extend(&alternatives);
                }
                Slot::DeviceNodes
            }
            ("DRIVERS" | "DRIVER", None) => {
                if !equal {
                    return Err(format!(
                        "{text} cannot be expressed: dowser's drivers keep a device when any driver of it or its parents passes, so they cannot drop one that has this driver"
                    ));
                }
                if key.field == "DRIVER" {
                    approximated.push(format!(
                        "{text} became drivers, which also matches the drivers of the device's parents (as DRIVERS== does)"
                    ));
                }
                Slot::Drivers
            }
            ("ATTR" | "ATTRS" | "ENV", Some(name)) => {
                if !is_value_name(name) {
                    return Err(format!(
                        "{text} cannot be expressed: dowser takes {name:?} as a name, not a pattern"
                    ));
                }
                match key.field {
                    "ATTR" => Slot::Attribute(name.to_string()),
                    "ATTRS" => Slot::ParentAttribute(name.to_string()),
                    _ => Slot::Property(name.to_string()),
                }
            }
            (field, _) => {
                return Err(format!(
                    "{text} cannot be expressed: dowser's udev handler has no {field} key (it selects by SUBSYSTEM, KERNEL, DRIVERS, ATTR, ATTRS and ENV)"
                ));
            }
        };
        let patterns: Vec<String> = match slot {
            Slot::Subsystems => alternatives.iter().map(|a| a.to_string()).collect(),
            Slot::DeviceNodes => alternatives
                .iter()
                .map(|a| format!("^/dev/(?:.*/)?{}$", glob_regex(a)))
                .collect(),
            _ => alternatives
                .iter()
                .map(|a| format!("^{}$", glob_regex(a)))
                .collect(),
        };
        let entry = selection.entry(slot).or_default();
        if equal {
            if !entry.include.is_empty() {
                return Err(format!(
                    "{text} cannot be expressed: the rule matches this key twice with ==, and a dowser filter keeps a value when any of its patterns matches"
                ));
            }
            entry.include = patterns;
        } else {
            entry.exclude.extend(patterns);
        }
    }
    if let Entry::Vacant(slot) = selection.entry(Slot::Subsystems) {
        let inferred: BTreeSet<&str> = kernel_names
            .iter()
            .map(|k| kernel_subsystem(k))
            .collect::<Option<BTreeSet<&str>>>()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                "the rule has no SUBSYSTEM==, which dowser's udev handler needs (its subsystems field), and no KERNEL== of a known device name to tell it from; add SUBSYSTEM== to the rule".to_string()
            })?;
        let list: Vec<&str> = inferred.into_iter().collect();
        let kernel = keys
            .iter()
            .find(|k| k.field == "KERNEL" && k.op == "==")
            .map_or("", |k| k.text);
        approximated.push(format!(
            "{kernel} comes without SUBSYSTEM==, which dowser needs: subsystems set to [{}], the subsystem of devices named so; check it, or add SUBSYSTEM== to the rule",
            list.join(", ")
        ));
        slot.insert(Patterns {
            include: list.into_iter().map(String::from).collect(),
            exclude: Vec::new(),
        });
    }
    Ok((selection, approximated))
}

/// Akri finds the devices that match any of the rules; dowser's fields must all pass. Rules
/// that differ only in the values one key matches are one dowser filter with all of them.
fn merge_selections(mut selections: Vec<Selection>) -> Result<Selection, String> {
    let mut unique: Vec<Selection> = Vec::new();
    for s in selections.drain(..) {
        if !unique.contains(&s) {
            unique.push(s);
        }
    }
    if unique.len() == 1 {
        return Ok(unique.remove(0));
    }
    let slots: BTreeSet<Slot> = unique.iter().flat_map(|s| s.keys().cloned()).collect();
    let empty = Patterns::default();
    let differing: Vec<&Slot> = slots
        .iter()
        .filter(|slot| {
            let first = unique[0].get(*slot).unwrap_or(&empty);
            unique
                .iter()
                .any(|s| s.get(*slot).unwrap_or(&empty) != first)
        })
        .collect();
    let cannot = || {
        format!(
            "Akri finds the devices that match any of the {} rules, and they differ in more than the values of one key with ==; dowser's udev fields must all pass together",
            unique.len()
        )
    };
    let [slot] = differing.as_slice() else {
        return Err(cannot());
    };
    let patterns: Vec<&Patterns> = unique
        .iter()
        .map(|s| s.get(*slot).unwrap_or(&empty))
        .collect();
    if patterns.iter().any(|p| p.exclude != patterns[0].exclude) {
        return Err(cannot());
    }
    // A rule without include for the key keeps every value of it.
    let include = if patterns.iter().any(|p| p.include.is_empty()) {
        Vec::new()
    } else {
        let mut all: Vec<String> = Vec::new();
        for p in &patterns {
            for i in &p.include {
                if !all.contains(i) {
                    all.push(i.clone());
                }
            }
        }
        all
    };
    let exclude = patterns[0].exclude.clone();
    let slot = (*slot).clone();
    let mut merged = unique[0].clone();
    if include.is_empty() && exclude.is_empty() {
        merged.remove(&slot);
    } else {
        merged.insert(slot, Patterns { include, exclude });
    }
    Ok(merged)
}

/// Whether `name` is a subsystem name as dowser's `subsystems` takes it.
fn is_subsystem_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
}

/// Whether `name` is an attribute or property name as dowser's udev filters take it.
fn is_value_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

/// A udev glob (`*`, `?`, `[...]`, `[!...]`, `\` escapes) as a regular expression of the
/// same strings (unanchored).
fn glob_regex(glob: &str) -> String {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => match bracket(&chars[i + 1..]) {
                Some((class, used)) => {
                    out.push_str(&class);
                    i += used;
                }
                None => out.push_str(r"\["),
            },
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push_str(&regex::escape(&chars[i].to_string()));
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    out
}

/// The bracket expression after a `[`, as a regex class, and how many characters it takes
/// up to and with its `]`; None when it is not closed (the `[` is then a character).
fn bracket(rest: &[char]) -> Option<(String, usize)> {
    let mut class = String::from("[");
    let mut start = 0;
    if matches!(rest.first(), Some('!' | '^')) {
        class.push('^');
        start = 1;
    }
    // A `]` first in the set is one of its characters.
    let end = start + 1 + rest.get(start + 1..)?.iter().position(|&c| c == ']')?;
    let body = &rest[start..end];
    let mut k = 0;
    while k < body.len() {
        if k + 2 < body.len() && body[k + 1] == '-' {
            class.push_str(&regex::escape(&body[k].to_string()));
            class.push('-');
            class.push_str(&regex::escape(&body[k + 2].to_string()));
            k += 3;
        } else {
            class.push_str(&regex::escape(&body[k].to_string()));
            k += 1;
        }
    }
    class.push(']');
    Some((class, end + 1))
}

/// Whether `name` is a property name dowser takes: an environment variable name.
fn is_property_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `name` is a Secret or ConfigMap name (a DNS subdomain).
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The dowser name of an Akri ONVIF credential property, and whether it is one at all.
fn onvif_credential(name: &str) -> Option<Option<&'static str>> {
    match name {
        "username_default" => Some(Some("USERNAME")),
        "password_default" => Some(Some("PASSWORD")),
        "device_credential_list" | "device_credential_ref_list" => Some(None),
        _ if name.starts_with("username_") || name.starts_with("password_") => Some(None),
        _ => None,
    }
}

/// Akri's `discoveryProperties` as dowser's `properties`.
fn properties(
    list: Option<&Value>,
    handler: &str,
    namespace: &str,
    notes: &mut Notes,
) -> Vec<Value> {
    let Some(list) = list.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let Some(list) = list.as_sequence() else {
        notes.add(PROPERTIES, "is not a list: left out");
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("{PROPERTIES}[{i}]");
        let Some(akri_name) = item.get("name").and_then(Value::as_str) else {
            notes.add(path, "has no name: left out");
            continue;
        };
        let mut name = akri_name.to_string();
        if handler == "onvif" {
            match onvif_credential(akri_name) {
                Some(Some(renamed)) => {
                    notes.add(
                        &path,
                        format!(
                            "{akri_name} became {renamed}, the name dowser's ONVIF handler reads it by (and brokers get it as)"
                        ),
                    );
                    name = renamed.to_string();
                }
                Some(None) => {
                    notes.add(
                        &path,
                        format!(
                            "{akri_name}: no dowser equivalent (dowser's ONVIF handler uses one USERNAME and PASSWORD for every camera): left out; set USERNAME and PASSWORD in the properties"
                        ),
                    );
                    continue;
                }
                None => {}
            }
        }
        if !is_property_name(&name) {
            notes.add(
                &path,
                format!(
                    "{name:?} is not a dowser property name (an environment variable name: A-Z, 0-9 and _, as brokers get it): left out; add it under a name in capitals if the handler reads one"
                ),
            );
            continue;
        }
        if !names.insert(name.clone()) {
            notes.add(
                &path,
                format!("{name} is given twice: the first one is kept"),
            );
            continue;
        }
        let mut property = Mapping::new();
        property.insert("name".into(), name.into());
        // Akri ignores valueFrom when there is a value.
        if let Some(value) = item.get("value").and_then(scalar) {
            property.insert("value".into(), value.into());
            out.push(Value::Mapping(property));
            continue;
        }
        let from = item.get("valueFrom");
        let source = ["secretKeyRef", "configMapKeyRef"]
            .into_iter()
            .find_map(|kind| Some((kind, from?.get(kind)?.as_mapping()?)));
        let Some((kind, reference)) = source else {
            notes.add(
                &path,
                "has neither a value nor a valueFrom with a secretKeyRef or configMapKeyRef: left out",
            );
            continue;
        };
        let object = if kind == "secretKeyRef" {
            "Secret"
        } else {
            "ConfigMap"
        };
        let path = format!("{path}.valueFrom.{kind}");
        let ref_name = reference.get("name").and_then(Value::as_str).unwrap_or("");
        let key = reference.get("key").and_then(scalar).unwrap_or_default();
        if !is_object_name(ref_name) || key.is_empty() {
            notes.add(
                &path,
                format!(
                    "needs the name of a {object} and a key in it: left out; add the property to the converted Configuration"
                ),
            );
            continue;
        }
        // Akri reads a key of namespace `default` unless told otherwise; dowser reads the
        // Configuration's own namespace.
        let ref_namespace = reference
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if ref_namespace != namespace {
            notes.add(
                format!("{path}.namespace"),
                format!(
                    "dowser reads {object}s in the Configuration's namespace ({namespace}), not {ref_namespace}: copy {object} {ref_name} to namespace {namespace}"
                ),
            );
        }
        let mut out_ref = Mapping::new();
        out_ref.insert("name".into(), ref_name.into());
        out_ref.insert("key".into(), key.into());
        if reference.get("optional").and_then(Value::as_bool) == Some(true) {
            out_ref.insert("optional".into(), true.into());
        }
        let mut value_from = Mapping::new();
        value_from.insert(kind.into(), Value::Mapping(out_ref));
        property.insert("valueFrom".into(), Value::Mapping(value_from));
        out.push(Value::Mapping(property));
    }
    out
}

/// Most brokers or pods per device that dowser allows.
const MAX_CAPACITY: i64 = crate::crd::MAX_CAPACITY as i64;

fn capacity(value: Option<&Value>, notes: &mut Notes) -> Option<i64> {
    let value = value.filter(|v| !v.is_null())?;
    match value.as_i64() {
        Some(c) if (1..=MAX_CAPACITY).contains(&c) => Some(c),
        Some(c) if c > MAX_CAPACITY => {
            notes.add(
                "spec.capacity",
                format!("{c} is more than dowser allows: set to {MAX_CAPACITY}"),
            );
            Some(MAX_CAPACITY)
        }
        _ => {
            notes.add(
                "spec.capacity",
                "is not a positive number: set to 1, dowser's default",
            );
            Some(1)
        }
    }
}

/// Akri's `brokerSpec` (the same shape), without the resource placeholder of Akri's chart.
fn broker_spec(value: Option<&Value>, notes: &mut Notes) -> Option<Value> {
    let mut broker = value.filter(|v| !v.is_null())?.clone();
    for (kind, containers) in [
        ("brokerPodSpec", &["brokerPodSpec", "containers"][..]),
        (
            "brokerJobSpec",
            &["brokerJobSpec", "template", "spec", "containers"][..],
        ),
    ] {
        let mut node = Some(&mut broker);
        for key in containers {
            node = node.and_then(|n| n.get_mut(*key));
        }
        let Some(Value::Sequence(containers)) = node else {
            continue;
        };
        for (i, container) in containers.iter_mut().enumerate() {
            if drop_placeholder(container) && i > 0 {
                let path = if kind == "brokerPodSpec" {
                    format!("spec.brokerSpec.brokerPodSpec.containers[{i}].resources")
                } else {
                    format!("spec.brokerSpec.brokerJobSpec.template.spec.containers[{i}].resources")
                };
                notes.add(
                    path,
                    "asked for the device ({{PLACEHOLDER}}); dowser asks for it for the first container, which also gets the device's environment: put this container first",
                );
            }
        }
    }
    Some(broker)
}

/// Takes Akri's `{{PLACEHOLDER}}` out of a container's requests and limits (and the maps
/// left empty); whether it was there.
fn drop_placeholder(container: &mut Value) -> bool {
    let Some(Value::Mapping(resources)) = container.get_mut("resources") else {
        return false;
    };
    let mut found = false;
    for list in ["requests", "limits"] {
        if let Some(Value::Mapping(quantities)) = resources.get_mut(list) {
            found |= quantities.shift_remove(PLACEHOLDER).is_some();
            if quantities.is_empty() {
                resources.shift_remove(list);
            }
        }
    }
    if resources.is_empty()
        && let Value::Mapping(c) = container
    {
        c.shift_remove("resources");
    }
    found
}

/// Akri's `brokerProperties`, keys that are environment variable names dowser takes.
fn broker_properties(value: Option<&Value>, notes: &mut Notes) -> Mapping {
    let mut out = Mapping::new();
    let Some(map) = value.and_then(Value::as_mapping) else {
        return out;
    };
    for (key, value) in map {
        let key = scalar(key).unwrap_or_default();
        let path = format!("spec.brokerProperties.{key}");
        if !is_property_name(&key) {
            notes.add(
                path,
                "is not an environment variable name dowser takes (A-Z, 0-9 and _): left out; set it in the broker container's env instead",
            );
            continue;
        }
        match scalar(value) {
            Some(v) => {
                out.insert(key.into(), v.into());
            }
            None => notes.add(path, "is not a string: left out"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn akri(handler: &str, details: &str) -> Value {
        let mut doc = yaml(&format!(
            "apiVersion: akri.sh/v0\nkind: Configuration\nmetadata: {{name: c, namespace: plant}}\nspec:\n  discoveryHandler:\n    name: {handler}\n"
        ));
        doc["spec"]["discoveryHandler"]["discoveryDetails"] = details.into();
        doc
    }

    /// The converted Configuration, validated as dowser would, and the notes.
    fn converted(doc: &Value) -> (Value, Vec<String>) {
        let (config, notes) = convert(doc).unwrap();
        check(&config).unwrap();
        (config, notes)
    }

    fn matches(pattern: &str, value: &str) -> bool {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .unwrap()
            .is_match(value)
    }

    #[test]
    fn globs_become_regexes_of_the_same_strings() {
        let cases = [
            (
                "video[0-9]*",
                &["video0", "video12"][..],
                &["video", "videoX", "xvideo0"][..],
            ),
            ("tty?", &["ttyS"], &["tty", "ttyS0"]),
            ("ttyUSB[!0]", &["ttyUSB1"], &["ttyUSB0"]),
            ("a.b", &["a.b"], &["axb"]),
            ("[]x]", &["]", "x"], &["y"]),
            ("[a-c-]", &["b", "-"], &["d"]),
            ("x[", &["x["], &["x"]),
            (r"a\*", &["a*"], &["ab"]),
            ("a+b(c)", &["a+b(c)"], &["aab(c)"]),
        ];
        for (glob, yes, no) in cases {
            let regex = glob_regex(glob);
            for v in yes {
                assert!(matches(&regex, v), "{glob} -> {regex} must match {v}");
            }
            for v in no {
                assert!(!matches(&regex, v), "{glob} -> {regex} must not match {v}");
            }
        }
    }

    #[test]
    fn udev_rules_are_read_key_by_key() {
        let keys = parse_rule(r#"SUBSYSTEM=="video4linux", ATTRS{idVendor} != "046d",MODE="0666""#)
            .unwrap();
        let summary: Vec<_> = keys
            .iter()
            .map(|k| (k.field, k.attribute, k.op, k.value, k.text))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "SUBSYSTEM",
                    None,
                    "==",
                    "video4linux",
                    r#"SUBSYSTEM=="video4linux""#
                ),
                (
                    "ATTRS",
                    Some("idVendor"),
                    "!=",
                    "046d",
                    r#"ATTRS{idVendor} != "046d""#
                ),
                ("MODE", None, "=", "0666", r#"MODE="0666""#),
            ]
        );
        assert!(parse_rule(r#"KERNEL=="video0" SUBSYSTEM=="x""#).is_err());
        assert!(parse_rule(r#"KERNEL=="video0"#).is_err());
        assert!(parse_rule("").is_err());
    }

    #[test]
    fn kernel_alone_gives_device_nodes_and_the_subsystem_of_such_names() {
        let (config, notes) = converted(&akri(
            "udev",
            "groupRecursive: false\nudevRules:\n- KERNEL==\"video[0-9]*\"\npermissions: rwm\n",
        ));
        let udev = &config["spec"]["discovery"]["udev"];
        assert_eq!(udev["subsystems"], yaml("[video4linux]"));
        assert_eq!(
            udev["deviceNodes"],
            yaml(r#"{include: ["^/dev/(?:.*/)?video[0-9].*$"]}"#)
        );
        assert_eq!(udev["groupBy"], "Device");
        let pattern = udev["deviceNodes"]["include"][0].as_str().unwrap();
        assert!(matches(pattern, "/dev/video0"));
        assert!(!matches(pattern, "/dev/vbi0"));
        assert_eq!(
            notes,
            [
                "plant/c: spec.discoveryHandler.discoveryDetails.udevRules[0]: KERNEL==\"video[0-9]*\" comes without SUBSYSTEM==, which dowser needs: subsystems set to [video4linux], the subsystem of devices named so; check it, or add SUBSYSTEM== to the rule"
            ]
        );
    }

    #[test]
    fn every_supported_key_maps_to_its_field() {
        let (config, notes) = converted(&akri(
            "udev",
            r#"udevRules:
- SUBSYSTEM=="video4linux|media", KERNEL!="vbi*", DRIVERS=="uvcvideo", ATTR{name}=="C270*", ATTR{name}!="*Test*", ATTRS{idVendor}=="046d", ENV{ID_V4L_CAPABILITIES}==":capture:"
groupRecursive: true
"#,
        ));
        let udev = &config["spec"]["discovery"]["udev"];
        assert_eq!(
            udev,
            &yaml(
                r#"
subsystems: [video4linux, media]
deviceNodes: {exclude: ["^/dev/(?:.*/)?vbi.*$"]}
drivers: {include: ["^uvcvideo$"]}
attributes: [{name: name, include: ["^C270.*$"], exclude: ["^.*Test.*$"]}]
parentAttributes: [{name: idVendor, include: ["^046d$"]}]
properties: [{name: ID_V4L_CAPABILITIES, include: ["^:capture:$"]}]
groupBy: Parent
"#
            )
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "plant/c: spec.discoveryHandler.discoveryDetails.groupRecursive: true became groupBy: Parent"
            ),
            "{notes:?}"
        );
    }

    #[test]
    fn rules_that_differ_in_one_key_merge_and_others_stay_with_akri() {
        let (config, notes) = converted(&akri(
            "udev",
            "udevRules:\n- SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"0403\"\n- SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"10c4\"\n",
        ));
        assert_eq!(
            config["spec"]["discovery"]["udev"]["parentAttributes"],
            yaml(r#"[{name: idVendor, include: ["^0403$", "^10c4$"]}]"#)
        );
        assert!(notes.is_empty(), "{notes:?}");

        let details = "udevRules:\n- SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"0403\"\n- SUBSYSTEM==\"sound\", ATTRS{idVendor}==\"10c4\"\n";
        let (config, notes) = converted(&akri("udev", details));
        assert_eq!(
            config["spec"]["discovery"],
            yaml(&format!(
                "external: {{name: udev, details: {}}}",
                serde_json::to_string(details).unwrap()
            ))
        );
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("plant/c: spec.discoveryHandler.discoveryDetails.udevRules: Akri finds the devices that match any of the 2 rules"),
            "{notes:?}"
        );
    }

    #[test]
    fn inexpressible_rules_say_why() {
        for (rule, why) in [
            (
                r#"SUBSYSTEM=="tty", GROUP=="dialout""#,
                "GROUP==\"dialout\" cannot be expressed: dowser's udev handler has no GROUP key",
            ),
            (
                r#"SUBSYSTEM=="tty", MODE="0666""#,
                "MODE=\"0666\" assigns a value",
            ),
            (r#"SUBSYSTEM=="tty*""#, "\"tty*\" is a pattern"),
            (
                r#"SUBSYSTEM!="tty""#,
                "SUBSYSTEM!=\"tty\" cannot be expressed",
            ),
            (
                r#"SUBSYSTEM=="tty", DRIVERS!="ftdi_sio""#,
                "DRIVERS!=\"ftdi_sio\" cannot be expressed",
            ),
            (r#"ATTRS{idVendor}=="046d""#, "the rule has no SUBSYSTEM=="),
            (
                r#"SUBSYSTEM=="tty", ATTR{a}=="1", ATTR{a}=="2""#,
                "matches this key twice",
            ),
        ] {
            let details = format!("udevRules: [{}]", serde_json::to_string(rule).unwrap());
            let (config, notes) = converted(&akri("udev", &details));
            assert_eq!(
                config["spec"]["discovery"]["external"]["name"], "udev",
                "{rule}"
            );
            assert_eq!(notes.len(), 1, "{rule}: {notes:?}");
            assert!(notes[0].contains(why), "{rule}: {notes:?}");
            assert!(
                notes[0].contains("udevRules[0]: ") && notes[0].ends_with("run that handler beside the dowser agent, or change the details and convert again"),
                "{notes:?}"
            );
        }
    }

    #[test]
    fn akri_filter_lists_become_anchored_exact_filters() {
        let (config, notes) = converted(&akri(
            "opcua",
            "opcuaDiscoveryMethod:\n  standard:\n    discoveryUrls: [\"opc.tcp://10.0.7.3:4840/\"]\napplicationNames:\n  action: Include\n  items: [\"Line 3 (Press)\"]\n",
        ));
        let opcua = &config["spec"]["discovery"]["opcua"];
        assert_eq!(
            opcua["discoveryUrls"],
            yaml(r#"["opc.tcp://10.0.7.3:4840/"]"#)
        );
        let pattern = opcua["applicationNames"]["include"][0].as_str().unwrap();
        assert_eq!(pattern, r"^Line 3 \(Press\)$");
        assert!(matches(pattern, "Line 3 (Press)"));
        assert!(!matches(pattern, "Line 3 (Press) 2"));
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn opcua_without_urls_gets_akris_default_and_include_nothing_is_noted() {
        let (config, notes) = converted(&akri(
            "opcua",
            "opcuaDiscoveryMethod:\n  standard: {}\napplicationNames: {action: Include, items: []}\n",
        ));
        assert_eq!(
            config["spec"]["discovery"],
            yaml(r#"{opcua: {discoveryUrls: ["opc.tcp://localhost:4840/"]}}"#)
        );
        assert_eq!(
            notes,
            [
                "plant/c: spec.discoveryHandler.discoveryDetails.applicationNames: action Include with no items keeps no servers in Akri: left out, so dowser keeps all servers; list the ones to keep"
            ]
        );
    }

    #[test]
    fn onvif_maps_ip_addresses_scopes_and_the_timeout() {
        let (config, notes) = converted(&akri(
            "onvif",
            "ipAddresses: {action: Include, items: [\"fe80::1\", 10.0.9.20]}\nmacAddresses: {action: Exclude, items: []}\nuuids: {action: Include, items: [abc]}\nscopes: {action: Exclude, items: [\"onvif://www.onvif.org/location/lab\"]}\ndiscoveryTimeoutSeconds: 45\n",
        ));
        let onvif = &config["spec"]["discovery"]["onvif"];
        assert_eq!(
            onvif["ipAddresses"],
            yaml(r#"{include: ["(?i)^fe80::1$", "^10\\.0\\.9\\.20$"]}"#)
        );
        assert!(matches(
            onvif["ipAddresses"]["include"][0].as_str().unwrap(),
            "FE80::1"
        ));
        assert_eq!(
            onvif["scopes"],
            yaml(r#"{exclude: ["^onvif://www\\.onvif\\.org/location/lab$"]}"#)
        );
        assert_eq!(onvif["probeWindowMs"], 30000);
        let fields: Vec<&str> = notes
            .iter()
            .map(|n| n.split(": ").nth(1).unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.discoveryHandler.discoveryDetails.scopes",
                "spec.discoveryHandler.discoveryDetails.uuids",
                "spec.discoveryHandler.discoveryDetails.discoveryTimeoutSeconds",
            ]
        );
    }

    #[test]
    fn other_handlers_keep_their_details_unchanged() {
        let details = "descriptions:\n- foo0\n- foo1\n";
        let (config, notes) = converted(&akri("debugEcho", details));
        assert_eq!(
            config["spec"]["discovery"]["external"],
            yaml("{name: debugEcho, details: \"descriptions:\\n- foo0\\n- foo1\\n\"}")
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn details_that_are_not_yaml_stay_with_akris_handler() {
        let (config, notes) = converted(&akri("opcua", "opcuaDiscoveryMethod: [unclosed"));
        assert_eq!(config["spec"]["discovery"]["external"]["name"], "opcua");
        assert!(
            notes[0].contains("discoveryDetails: cannot be read as YAML"),
            "{notes:?}"
        );
    }

    #[test]
    fn properties_keep_their_source_and_say_where_it_must_be() {
        let mut doc = akri("debugEcho", "descriptions: [a]");
        doc["spec"]["discoveryHandler"]["discoveryProperties"] = yaml(
            r#"
- {name: TOKEN, valueFrom: {secretKeyRef: {name: creds, namespace: akri, key: token, optional: true}}}
- {name: MODE, value: fast}
- {name: SITE, valueFrom: {configMapKeyRef: {name: site, namespace: plant, key: id}}}
- {name: lower, value: x}
- {name: MODE, value: slow}
"#,
        );
        let (config, notes) = converted(&doc);
        assert_eq!(
            config["spec"]["properties"],
            yaml(
                r#"
- {name: TOKEN, valueFrom: {secretKeyRef: {name: creds, key: token, optional: true}}}
- {name: MODE, value: fast}
- {name: SITE, valueFrom: {configMapKeyRef: {name: site, key: id}}}
"#
            )
        );
        assert_eq!(
            notes,
            [
                "plant/c: spec.discoveryHandler.discoveryProperties[0].valueFrom.secretKeyRef.namespace: dowser reads Secrets in the Configuration's namespace (plant), not akri: copy Secret creds to namespace plant",
                "plant/c: spec.discoveryHandler.discoveryProperties[3]: \"lower\" is not a dowser property name (an environment variable name: A-Z, 0-9 and _, as brokers get it): left out; add it under a name in capitals if the handler reads one",
                "plant/c: spec.discoveryHandler.discoveryProperties[4]: MODE is given twice: the first one is kept",
            ]
        );
    }

    #[test]
    fn onvif_credentials_get_dowsers_names() {
        let mut doc = akri("onvif", "");
        doc["spec"]["discoveryHandler"]["discoveryProperties"] = yaml(
            r#"
- {name: username_default, value: admin}
- {name: password_default, valueFrom: {secretKeyRef: {name: cam, namespace: plant, key: password}}}
- {name: username_5f5a69c2, value: other}
"#,
        );
        let (config, notes) = converted(&doc);
        let names: Vec<&str> = config["spec"]["properties"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["USERNAME", "PASSWORD"]);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[2].contains("username_5f5a69c2: no dowser equivalent"),
            "{notes:?}"
        );
    }

    #[test]
    fn the_broker_loses_akris_placeholder_and_keeps_the_rest() {
        let mut doc = akri("debugEcho", "descriptions: [a]");
        doc["spec"]["brokerSpec"] = yaml(
            r#"
brokerPodSpec:
  containers:
  - name: broker
    image: nginx:stable
    resources:
      requests: {"{{PLACEHOLDER}}": "1"}
      limits: {"{{PLACEHOLDER}}": "1", memory: 30Mi}
"#,
        );
        doc["spec"]["capacity"] = 100.into();
        doc["spec"]["brokerProperties"] = yaml("{RESOLUTION_WIDTH: 800, bad-key: x}");
        let (config, notes) = converted(&doc);
        assert_eq!(
            config["spec"]["brokerSpec"],
            yaml(
                "brokerPodSpec: {containers: [{name: broker, image: \"nginx:stable\", resources: {limits: {memory: 30Mi}}}]}"
            )
        );
        assert_eq!(config["spec"]["capacity"], 64);
        assert_eq!(
            config["spec"]["brokerProperties"],
            yaml("{RESOLUTION_WIDTH: \"800\"}")
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("plant/c: spec.capacity: 100 is more than dowser allows"));
        assert!(notes[1].starts_with("plant/c: spec.brokerProperties.bad-key: "));
    }

    #[test]
    fn services_of_job_brokers_are_left_out() {
        let mut doc = akri("debugEcho", "descriptions: [a]");
        doc["spec"]["brokerSpec"] = yaml(
            "brokerJobSpec: {template: {spec: {containers: [{name: j, image: busybox}], restartPolicy: OnFailure}}}",
        );
        doc["spec"]["instanceServiceSpec"] = yaml("{ports: [{port: 80}]}");
        let (config, notes) = converted(&doc);
        assert!(config["spec"].get("instanceServiceSpec").is_none());
        assert_eq!(
            notes,
            [
                "plant/c: spec.instanceServiceSpec: left out: dowser makes Services for broker Pods only, and this Configuration runs broker Jobs"
            ]
        );
    }

    #[test]
    fn metadata_keeps_name_namespace_labels_and_annotations_only() {
        let mut doc = akri("debugEcho", "");
        doc["metadata"] = yaml(
            r#"
name: c
uid: 0b6f5d7e
resourceVersion: "42"
labels: {app: cams}
annotations: {team: ot, kubectl.kubernetes.io/last-applied-configuration: "{}"}
"#,
        );
        let (config, _) = converted(&doc);
        assert_eq!(
            config["metadata"],
            yaml("{name: c, namespace: default, labels: {app: cams}, annotations: {team: ot}}")
        );
    }

    #[test]
    fn what_is_not_an_akri_configuration_is_an_error() {
        let dowser = yaml(
            "{apiVersion: dowser.dev/v1alpha1, kind: Configuration, metadata: {name: c}, spec: {}}",
        );
        assert_eq!(
            convert(&dowser).unwrap_err().to_string(),
            "not an Akri Configuration (apiVersion: dowser.dev/v1alpha1, kind: Configuration): expected apiVersion: akri.sh/v0, kind: Configuration"
        );
        let instance = yaml("{apiVersion: akri.sh/v0, kind: Instance, metadata: {name: c}}");
        assert!(convert(&instance).is_err());
        let nameless = yaml(
            "{apiVersion: akri.sh/v0, kind: Configuration, metadata: {name: c}, spec: {discoveryHandler: {discoveryDetails: ''}}}",
        );
        assert_eq!(
            convert(&nameless).unwrap_err().to_string(),
            "default/c: spec.discoveryHandler.name is missing: an Akri Configuration names its discovery handler (onvif, opcua, udev, debugEcho...)"
        );
    }
}
