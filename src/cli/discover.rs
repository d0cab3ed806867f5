//! `dowser discover`: a Configuration tried on this machine, with no cluster.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use dowser_discovery_api::{
    FieldError, Progress, Properties, Snapshot, details::Selected, progress::State,
};
use futures::StreamExt;
use kube::ResourceExt;

use crate::{
    crd::{Configuration, DiscoveryRound},
    device_instance::{DeviceInstance, instance_for},
    handlers, validate,
};

#[derive(clap::Args, Debug)]
pub struct DiscoverArgs {
    /// The Configuration file (YAML, as for `kubectl apply -f`; `-` reads standard input).
    /// Documents of other kinds in the file are skipped.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Keep discovering and print the devices again whenever they change.
    #[arg(long)]
    pub watch: bool,
    /// Node name used for devices that belong to one node (their Instance name includes it).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// A value for a property that comes from a Secret or ConfigMap (repeatable), since
    /// there is no cluster to read it from: `--property PASSWORD=secret`.
    #[arg(long = "property", value_name = "NAME=VALUE")]
    pub properties: Vec<String>,
    /// Give up on a discovery round after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// Exit code for invalid input.
const INVALID: i32 = 1;

pub async fn run(args: DiscoverArgs) -> anyhow::Result<i32> {
    let text = read_input(&args.file)?;
    let shown = args.file.display().to_string();
    let docs = validate::yaml_documents(&text)
        .map_err(|e| anyhow::anyhow!("{shown} is not valid YAML: {e}"))?;
    let mut configs = Vec::new();
    let mut invalid = false;
    for doc in docs
        .iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some("Configuration"))
    {
        let name = doc
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>")
            .to_string();
        let checked = validate::configuration(doc).and_then(|c| {
            let selected = c.spec.discovery.selected().map_err(|e| vec![e])?;
            let errors = handlers::validate(selected, "spec.discovery");
            if errors.is_empty() {
                Ok(c)
            } else {
                Err(errors)
            }
        });
        match checked {
            Ok(c) => configs.push(c),
            Err(errors) => {
                invalid = true;
                report_invalid(&shown, &name, &errors);
            }
        }
    }
    if invalid {
        return Ok(INVALID);
    }
    if configs.is_empty() {
        eprintln!(
            "error: {shown} has no Configuration (apiVersion: dowser.dev/v1alpha1, kind: Configuration)"
        );
        return Ok(INVALID);
    }
    let overrides = parse_overrides(&args.properties)?;
    let mut resolved = Vec::new();
    for c in &configs {
        match resolve_properties(c, &overrides) {
            Ok(p) => resolved.push(p),
            Err(errors) => {
                invalid = true;
                report_invalid(&shown, c.metadata.name.as_deref().unwrap_or(""), &errors);
            }
        }
    }
    if invalid {
        return Ok(INVALID);
    }
    let node = args.node.clone().unwrap_or_else(hostname);
    if args.watch {
        anyhow::ensure!(
            configs.len() == 1,
            "--watch takes a file with one Configuration ({shown} has {})",
            configs.len()
        );
        return watch(&configs[0], resolved.remove(0), &node, &args).await;
    }
    let mut all = Vec::new();
    for (config, props) in configs.iter().zip(resolved) {
        let started = Instant::now();
        let (snapshot, counts) = once(config, props, args.timeout).await?;
        eprintln!(
            "{} found {} device{} in {:.2} s",
            config.metadata.name.as_deref().unwrap_or(""),
            snapshot.len(),
            if snapshot.len() == 1 { "" } else { "s" },
            started.elapsed().as_secs_f64()
        );
        if let Some(why) = counts.as_ref().and_then(why) {
            eprintln!("  {why}");
        }
        for problem in snapshot.problems() {
            eprintln!("  problem: {problem}");
        }
        all.extend(previews(config, &node, &snapshot));
    }
    print(&all, args.output)?;
    Ok(0)
}

/// Writes output; a reader that went away (`| head`) is not an error.
fn ignore_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

fn report_invalid(file: &str, name: &str, errors: &[FieldError]) {
    eprintln!("error: {file}: The Configuration \"{name}\" is invalid:");
    for e in errors {
        eprintln!("  * {e}");
    }
}

fn parse_overrides(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // The text is not repeated: a value typed without its name may be a secret.
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--property takes NAME=VALUE; --property number {} has no '=' (not shown: it may hold a secret)",
                        i + 1
                    )
                })
        })
        .collect()
}

/// Literal properties, plus the `--property` values standing in for Secrets and ConfigMaps.
fn resolve_properties(
    config: &Configuration,
    overrides: &BTreeMap<String, String>,
) -> Result<Properties, Vec<FieldError>> {
    let mut props = Properties::new();
    let mut errors = Vec::new();
    for (i, p) in config.spec.properties.iter().enumerate() {
        if let Some(v) = overrides.get(&p.name) {
            props.insert(p.name.clone(), v.clone());
            continue;
        }
        if let Some(v) = &p.value {
            props.insert(p.name.clone(), v.clone());
            continue;
        }
        let Some(from) = &p.value_from else { continue };
        let (kind, key_ref) = match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(r), _) => ("Secret", r),
            (None, Some(r)) => ("ConfigMap", r),
            (None, None) => continue,
        };
        if !key_ref.optional {
            errors.push(FieldError::new(
                format!("spec.properties[{i}]"),
                format!(
                    "{} comes from key {:?} of {kind} {:?}, and dowser discover runs without a cluster: pass --property {}=VALUE",
                    p.name, key_ref.key, key_ref.name, p.name
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(props)
    } else {
        Err(errors)
    }
}

fn selected(config: &Configuration) -> Selected<'_> {
    config
        .spec
        .discovery
        .selected()
        .expect("validated Configurations select one handler")
}

/// Without an agent, an external handler is found where Akri's layout puts it:
/// `$DISCOVERY_HANDLERS_DIRECTORY/<name>.sock`.
fn find_external(config: &Configuration) -> anyhow::Result<()> {
    #[cfg(feature = "external")]
    if let dowser_discovery_api::details::Selected::External(details) = selected(config) {
        let dir = std::env::var_os(dowser_handler_sdk::DIRECTORY_ENV)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dowser_handler_sdk::DEFAULT_DIRECTORY.into());
        let socket = dir.join(format!("{}.sock", details.name));
        if !socket.exists() {
            anyhow::bail!(
                "no discovery handler named {:?} serves {} (a handler serves <dir>/<name>.sock of \
                 its {} directory; set {} to the directory it uses)",
                details.name,
                socket.display(),
                dowser_handler_sdk::DIRECTORY_ENV,
                dowser_handler_sdk::DIRECTORY_ENV,
            );
        }
        crate::external::REGISTRATIONS.add(crate::external::Registration {
            name: details.name.clone(),
            endpoint: socket.display().to_string(),
            network: false,
            shared: details.shared.unwrap_or(false),
        });
    }
    #[cfg(not(feature = "external"))]
    let _ = config;
    Ok(())
}

/// What a round's counts add to the number of devices found: why none were, or what else
/// the round left out (`None` when there is nothing to add).
fn why(counts: &DiscoveryRound) -> Option<String> {
    let more = counts.found == 0 || counts.failed > 0 || !counts.dropped.is_empty();
    more.then(|| counts.verdict())
}

/// One round; with its counts when the handler reports them.
async fn once(
    config: &Configuration,
    props: Properties,
    timeout: u64,
) -> anyhow::Result<(Snapshot, Option<DiscoveryRound>)> {
    find_external(config)?;
    let handler = selected(config);
    let mut indicator = Indicator::new(config, true);
    let mut stream = handlers::discover(handler, props.with_progress(indicator.progress()))?;
    let next = tokio::time::timeout(Duration::from_secs(timeout), async {
        let mut tick = tokio::time::interval(Indicator::EVERY);
        loop {
            tokio::select! {
                next = stream.next() => break next,
                _ = tick.tick() => indicator.update(),
            }
        }
    })
    .await;
    indicator.clear();
    match next {
        Err(_) => anyhow::bail!("discovery did not finish within {timeout} s (--timeout)"),
        Ok(None) => anyhow::bail!("the {} handler stopped without a result", handler.name()),
        Ok(Some(result)) => {
            let snapshot = result?;
            Ok((snapshot, indicator.counts()))
        }
    }
}

async fn watch(
    config: &Configuration,
    props: Properties,
    node: &str,
    args: &DiscoverArgs,
) -> anyhow::Result<i32> {
    find_external(config)?;
    let mut indicator = Indicator::new(config, false);
    let mut stream =
        handlers::discover(selected(config), props.with_progress(indicator.progress()))?;
    let mut last: Option<Snapshot> = None;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Indicator::EVERY);
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tick.tick() => {
                indicator.update();
                continue;
            }
            _ = &mut ctrl_c => {
                indicator.clear();
                return Ok(0);
            }
        };
        // The round is over: its line goes before the devices are printed.
        indicator.clear();
        let Some(result) = next else { return Ok(0) };
        match result {
            Ok(snapshot) => {
                if last.as_ref() == Some(&snapshot) {
                    continue;
                }
                let now = time_of_day();
                eprintln!("[{now}] {} device(s)", snapshot.len());
                if let Some(why) = indicator.counts().as_ref().and_then(why) {
                    eprintln!("  {why}");
                }
                for problem in snapshot.problems() {
                    eprintln!("  problem: {problem}");
                }
                print(&previews(config, node, &snapshot), args.output)?;
                last = Some(snapshot);
            }
            Err(e) => eprintln!("[{}] discovery failed: {e}", time_of_day()),
        }
    }
}

fn previews(config: &Configuration, node: &str, snapshot: &Snapshot) -> Vec<DeviceInstance> {
    let handler = selected(config).name();
    let shared = handlers::shared(selected(config)).unwrap_or(false);
    let namespace = config.namespace().unwrap_or_else(|| "default".to_string());
    snapshot
        .devices()
        .iter()
        .map(|d| {
            let mut preview = instance_for(config, shared, node, d);
            let seen = crate::dra::slices::Seen {
                instance: &preview.instance,
                handler,
            };
            preview.resource_slice_devices = (0..preview.instance.spec.capacity)
                .map(|slot| crate::dra::slices::device(&seen, &namespace, &preview.name, slot))
                .collect();
            preview
        })
        .collect()
}

fn print(previews: &[DeviceInstance], output: Output) -> anyhow::Result<()> {
    let text = render(previews, output)?;
    ignore_broken_pipe(std::io::stdout().lock().write_all(text.as_bytes()))
}

fn render(previews: &[DeviceInstance], output: Output) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    match output {
        Output::Json => {
            out = serde_json::to_string_pretty(previews)?;
            out.push('\n');
        }
        Output::Yaml => out = serde_yaml::to_string(previews)?,
        Output::Table => {
            if previews.is_empty() {
                writeln!(out, "No devices found.")?;
                return Ok(out);
            }
            let w_name = previews
                .iter()
                .map(|p| p.name.len())
                .max()
                .unwrap_or(0)
                .max(8);
            let w_dev = previews
                .iter()
                .map(|p| p.device_id.len())
                .max()
                .unwrap_or(0)
                .max(6);
            writeln!(out, "{:w_name$}  {:w_dev$}  RESOURCE", "INSTANCE", "DEVICE")?;
            for p in previews {
                writeln!(
                    out,
                    "{:w_name$}  {:w_dev$}  {}",
                    p.name, p.device_id, p.resources[0]
                )?;
                let plain: Vec<String> = p
                    .instance
                    .spec
                    .properties
                    .keys()
                    .filter_map(|k| p.env.get_key_value(k.as_str()))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !plain.is_empty() {
                    writeln!(out, "    {}", plain.join(" "))?;
                }
            }
            if let Some(first) = previews[0].instance.spec.properties.keys().next() {
                writeln!(
                    out,
                    "\nBrokers get these variables, the brokerProperties and the Configuration's properties, as they are and suffixed with the instance hash ({}).",
                    dowser_discovery_api::env::with_hash(first, &previews[0].hash)
                )?;
            }
        }
    }
    Ok(out)
}

/// What `dowser discover` shows on stderr while it waits for a round, only on a terminal that
/// can redraw a line (not piped, `TERM` set and not `dumb`; elsewhere it shows nothing and the
/// handler counts nothing): a spinner until the handler reports a round
/// ([`dowser_discovery_api::progress`]), then the targets tried of the total, the devices
/// found so far, the time elapsed and the time left at the rate so far.
struct Indicator {
    /// Always counting: the counts of a round say why devices are or are not found.
    progress: Progress,
    /// Whether the line is drawn (stderr is a terminal).
    drawn: bool,
    label: String,
    /// Spin while no round is reported (one round awaited); else show rounds only.
    spin: bool,
    bar: Option<indicatif::ProgressBar>,
    /// The round the bar shows; `None` for the spinner.
    showing: Option<u64>,
}

impl Indicator {
    /// How often the line is brought up to date.
    const EVERY: Duration = Duration::from_millis(100);

    fn new(config: &Configuration, spin: bool) -> Self {
        // indicatif's rule for drawing on stderr, asked once.
        let drawn = !indicatif::ProgressDrawTarget::stderr().is_hidden();
        Self {
            progress: Progress::enabled(),
            drawn,
            label: format!(
                "{} {}",
                selected(config).name(),
                config.metadata.name.as_deref().unwrap_or("")
            ),
            spin,
            bar: None,
            showing: None,
        }
    }

    /// The handle the handler reports on.
    fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The counts of the latest round, when the handler reports them.
    fn counts(&self) -> Option<DiscoveryRound> {
        let state = self.progress.state()?;
        Some(DiscoveryRound::of(&state, None, None))
    }

    fn update(&mut self) {
        if !self.drawn {
            return;
        }
        let running = self.progress.state().filter(|s| !s.finished);
        let Some(state) = running else {
            if self.spin && self.bar.is_none() {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_message(format!("{}: discovering…", self.label));
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bar = Some(bar);
            } else if self.showing.is_some() {
                self.clear();
            }
            return;
        };
        if self.showing != Some(state.round) {
            self.clear();
            let bar = indicatif::ProgressBar::new(state.total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:24}] {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(self.label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
            self.showing = Some(state.round);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(state.total);
            bar.set_position(state.tried);
            bar.set_message(progress_line(&state));
        }
    }

    /// Takes the line off the terminal.
    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.showing = None;
    }
}

/// `1234/65534 targets, 2 devices found, 2s elapsed, ETA 2m09s`.
fn progress_line(state: &State) -> String {
    let found = match state.found {
        1 => "1 device found".to_string(),
        n => format!("{n} devices found"),
    };
    if state.total == 0 {
        return format!(
            "waiting for answers, {found}, {} elapsed",
            short(state.elapsed)
        );
    }
    let eta = state
        .eta()
        .map_or_else(|| "ETA ?".to_string(), |d| format!("ETA {}", short(d)));
    format!(
        "{}/{} targets, {found}, {} elapsed, {eta}",
        state.tried,
        state.total,
        short(state.elapsed)
    )
}

/// A duration to the second, as `9s`, `2m09s` or `1h05m`.
fn short(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(total: u64, tried: u64, found: u64, elapsed_ms: u64) -> State {
        State {
            round: 1,
            total,
            tried,
            answered: found,
            failed: 0,
            dropped: Default::default(),
            found,
            elapsed: Duration::from_millis(elapsed_ms),
            finished: false,
        }
    }

    #[test]
    fn the_progress_line_has_targets_devices_elapsed_and_eta() {
        assert_eq!(
            progress_line(&state(65534, 1000, 2, 2000)),
            "1000/65534 targets, 2 devices found, 2s elapsed, ETA 2m09s"
        );
        assert_eq!(
            progress_line(&state(300, 0, 0, 150)),
            "0/300 targets, 0 devices found, 0s elapsed, ETA ?"
        );
        assert_eq!(
            progress_line(&state(4, 3, 1, 61_000)),
            "3/4 targets, 1 device found, 1m01s elapsed, ETA 20s"
        );
        // Before a probe's answers are in, there is nothing to count targets against.
        assert_eq!(
            progress_line(&state(0, 0, 0, 1400)),
            "waiting for answers, 0 devices found, 1s elapsed"
        );
    }

    #[test]
    fn durations_are_short() {
        for (secs, shown) in [
            (0.4, "0s"),
            (9.0, "9s"),
            (59.4, "59s"),
            (129.0, "2m09s"),
            (3599.0, "59m59s"),
            (3900.0, "1h05m"),
        ] {
            assert_eq!(short(Duration::from_secs_f64(secs)), shown);
        }
    }
}
