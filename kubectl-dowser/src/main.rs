//! `kubectl dowser`: the kubectl plugin of dowser. kubectl runs `kubectl-dowser` from the
//! PATH for `kubectl dowser ...`.
//!
//! - `tree [CONFIG]`: a Configuration, its Instances, the nodes that see each, their slots
//!   and holders, and the broker Pods, Jobs and Services, in one screen;
//! - `approve INSTANCE...`: a DeviceApproval for each device, as whoever runs it;
//! - `revoke INSTANCE...`: their DeviceApprovals deleted;
//! - `why [CONFIG]`: per node, why devices are or are not found (the counts of each
//!   agent's latest discovery round).
//!
//! The rules and the text are pure ([`tree`], [`approve`], [`why`], [`output`]); this file
//! reads and writes the cluster.

mod approve;
mod output;
mod tree;
mod why;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dowser::{
    crd::{CONFIGURATION_LABEL, Configuration, DeviceApproval, Instance},
    naming,
};
use k8s_openapi::api::{authentication::v1::SelfSubjectReview, core::v1::Node};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams, Preconditions},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

use approve::Decision;
use output::{Format, Style};

/// dowser from kubectl: see what a Configuration found and runs, and approve the devices it
/// found.
#[derive(Parser, Debug)]
#[command(name = "kubectl-dowser", bin_name = "kubectl dowser", version)]
struct Cli {
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else the Pod's
    /// service account).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's, else default).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Output format: `wide` says more on each line; `json` and `yaml` print the objects
    /// involved as a List.
    #[arg(short = 'o', long, global = true, value_enum)]
    output: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration → its Instances (device, approval) → nodes that see each → slots and
    /// their holders → broker Pods, Jobs and Services with their state; and discovery's
    /// health on each node.
    Tree {
        /// The Configuration (default: every one in the namespace).
        config: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Approve devices of a Configuration whose approval is Manual: creates a
    /// DeviceApproval for each Instance's current identity, recording you as the approver.
    /// Takes the ClusterRole dowser-approver.
    Approve {
        /// The Instances (`kubectl get dwi`).
        #[arg(required = true, value_name = "INSTANCE")]
        instances: Vec<String>,
        /// Why, for the record.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Revoke the approval of devices: deletes their DeviceApprovals (their brokers go).
    /// Takes the ClusterRole dowser-approver.
    Revoke {
        /// The Instances.
        #[arg(required = true, value_name = "INSTANCE")]
        instances: Vec<String>,
    },
    /// Per node, why devices are or are not found: the targets the latest discovery round
    /// tried, which answered, which a filter left out (by the field of the details), which
    /// failed; nodes the nodeSelector selects where no agent reports; errors and problems.
    Why {
        /// The Configuration (default: every one in the namespace).
        config: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (client, context_namespace) = client(&cli).await?;
    let namespace = cli.namespace.clone().unwrap_or(context_namespace);
    let style = Style {
        colour: output::colour(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ),
        all_namespaces: false,
    };
    match cli.command {
        Command::Tree {
            config,
            all_namespaces,
        } => {
            let style = Style {
                all_namespaces,
                ..style
            };
            let scope = (!all_namespaces).then_some(namespace.as_str());
            tree(&client, scope, config.as_deref(), cli.output, style).await
        }
        Command::Approve { instances, reason } => {
            approve(
                &client,
                &namespace,
                &instances,
                reason.as_deref(),
                cli.output,
            )
            .await
        }
        Command::Revoke { instances } => revoke(&client, &namespace, &instances, cli.output).await,
        Command::Why {
            config,
            all_namespaces,
        } => {
            let style = Style {
                all_namespaces,
                ..style
            };
            let scope = (!all_namespaces).then_some(namespace.as_str());
            why(&client, scope, config.as_deref(), cli.output, style).await
        }
    }
}

/// A client as kubectl would make it: `--kubeconfig`, `--context`, else the usual places.
async fn client(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer().await?,
    };
    let agent = format!("kubectl-dowser/{}", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent)?,
    ));
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

/// An error from the API server as kubectl prints it.
fn server_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                "Unknown"
            } else {
                &s.reason
            };
            format!("Error from server ({reason}): {}", s.message)
        }
        other => format!("error: {other}"),
    }
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Lists what the selector selects; on a refusal (403), says on stderr what is left out
/// and goes on without it, so that someone who may read only part of it sees that part.
async fn list_or_warn<K>(
    client: &Client,
    namespace: Option<&str>,
    selector: &str,
    what: &str,
) -> anyhow::Result<Vec<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let lp = ListParams::default().labels(selector);
    match api::<K>(client, namespace).list(&lp).await {
        Ok(l) => Ok(l.items),
        Err(e) if is_forbidden(&e) => {
            eprintln!("warning: {what} left out: {}", server_error(&e));
            Ok(vec![])
        }
        Err(e) => Err(anyhow::anyhow!(server_error(&e))),
    }
}

/// The Configuration named, or every one in scope; else the exit status, once stderr has
/// said why: the one named cannot be read (failure), or there are none (success).
async fn configurations(
    client: &Client,
    command: &str,
    namespace: Option<&str>,
    config: Option<&str>,
) -> anyhow::Result<Result<Vec<Configuration>, ExitCode>> {
    let configs: Api<Configuration> = api(client, namespace);
    let configurations = match config {
        Some(arg) => {
            let Some(name) = approve::configuration_name(arg) else {
                anyhow::bail!("{command} takes a Configuration, not {arg:?}");
            };
            if namespace.is_none() {
                anyhow::bail!(
                    "a Configuration cannot be named across all namespaces: leave out -A or \
                     CONFIG"
                );
            }
            match configs.get(name).await {
                Ok(c) => vec![c],
                Err(e) => {
                    eprintln!("{}", server_error(&e));
                    return Ok(Err(ExitCode::FAILURE));
                }
            }
        }
        None => {
            configs
                .list(&ListParams::default())
                .await
                .map_err(|e| anyhow::anyhow!(server_error(&e)))?
                .items
        }
    };
    if configurations.is_empty() {
        match namespace {
            Some(ns) => eprintln!("No Configurations found in {ns} namespace."),
            None => eprintln!("No Configurations found."),
        }
        return Ok(Err(ExitCode::SUCCESS));
    }
    Ok(Ok(configurations))
}

async fn tree(
    client: &Client,
    namespace: Option<&str>,
    config: Option<&str>,
    format: Option<Format>,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let configurations = match configurations(client, "tree", namespace, config).await? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // One Configuration: what carries its label; several: what carries the label at all.
    let selector = match config {
        Some(_) => format!(
            "{CONFIGURATION_LABEL}={}",
            naming::configuration_label(&configurations[0].name_any())
        ),
        None => CONFIGURATION_LABEL.to_string(),
    };
    let objects = tree::Objects {
        instances: list_or_warn(client, namespace, &selector, "Instances").await?,
        pods: list_or_warn(client, namespace, &selector, "broker Pods").await?,
        jobs: list_or_warn(client, namespace, &selector, "broker Jobs").await?,
        services: list_or_warn(client, namespace, &selector, "Services").await?,
        configurations,
    };
    let text = match format {
        Some(f @ (Format::Json | Format::Yaml)) => {
            output::print_list(&output::list(&tree::involved(&objects)?)?, f)?
        }
        _ => {
            let lines = tree::lines(&tree::build(&objects), format == Some(Format::Wide));
            tree::render(&lines, &style, now())
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn why(
    client: &Client,
    namespace: Option<&str>,
    config: Option<&str>,
    format: Option<Format>,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let configurations = match configurations(client, "why", namespace, config).await? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(f @ (Format::Json | Format::Yaml)) = format {
        print!(
            "{}",
            output::print_list(&output::list(&configurations)?, f)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The Nodes show where the nodeSelector wants discovery but no agent reports; someone
    // who may not list them still sees every report.
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = match nodes.list(&ListParams::default()).await {
        Ok(l) => Some(l.items),
        Err(e) if is_forbidden(&e) => {
            eprintln!(
                "warning: nodes without a report left out: {}",
                server_error(&e)
            );
            None
        }
        Err(e) => return Err(anyhow::anyhow!(server_error(&e))),
    };
    let rows = why::rows(&configurations, nodes.as_deref());
    let several = config.is_none();
    print!(
        "{}",
        why::render(&rows, format == Some(Format::Wide), several, &style, now())
    );
    Ok(ExitCode::SUCCESS)
}

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The user name the API server knows the caller by (`kubectl auth whoami`).
async fn whoami(client: &Client) -> Result<String, kube::Error> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

/// What went wrong with one Instance: the message, and the hint on a refusal (once).
struct Failures {
    namespace: String,
    user: Option<String>,
    any: bool,
    hinted: bool,
}

impl Failures {
    fn api(&mut self, e: &kube::Error) {
        eprintln!("{}", server_error(e));
        self.any = true;
        if is_forbidden(e) && !self.hinted {
            self.hinted = true;
            eprintln!(
                "{}",
                approve::forbidden_hint(self.user.as_deref(), &self.namespace)
            );
        }
    }

    fn other(&mut self, message: &str) {
        eprintln!("{message}");
        self.any = true;
    }

    fn code(&self) -> ExitCode {
        if self.any {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// Prints a line of progress: on stdout, or on stderr when stdout carries a List.
fn progress(format: Option<Format>, line: &str) {
    match format {
        Some(Format::Json | Format::Yaml) => eprintln!("{line}"),
        _ => println!("{line}"),
    }
}

fn print_objects(format: Option<Format>, objects: &[DeviceApproval]) -> anyhow::Result<()> {
    if let Some(f @ (Format::Json | Format::Yaml)) = format {
        print!("{}", output::print_list(&output::list(objects)?, f)?);
    }
    Ok(())
}

async fn approve(
    client: &Client,
    namespace: &str,
    args: &[String],
    reason: Option<&str>,
    format: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let mut failures = Failures {
        namespace: namespace.to_string(),
        user: None,
        any: false,
        hinted: false,
    };
    let user = match whoami(client).await {
        Ok(u) if !u.is_empty() => u,
        Ok(_) => {
            failures.other("error: the API server did not say who you are (SelfSubjectReview)");
            return Ok(failures.code());
        }
        Err(e) => {
            failures.api(&e);
            return Ok(failures.code());
        }
    };
    failures.user = Some(user.clone());
    let instances: Api<Instance> = Api::namespaced(client.clone(), namespace);
    let configs: Api<Configuration> = Api::namespaced(client.clone(), namespace);
    let approvals: Api<DeviceApproval> = Api::namespaced(client.clone(), namespace);
    let mut done = vec![];
    for arg in args {
        let Some(name) = approve::instance_name(arg) else {
            failures.other(&format!("error: approve takes Instances, not {arg:?}"));
            continue;
        };
        let instance = match instances.get(name).await {
            Ok(i) => i,
            Err(e) => {
                failures.api(&e);
                continue;
            }
        };
        // Only to say why an Instance without identity cannot be approved.
        let config = configs
            .get_opt(&instance.spec.configuration_name)
            .await
            .ok()
            .flatten();
        let existing = match approvals.get_opt(name).await {
            Ok(a) => a,
            Err(e) => {
                failures.api(&e);
                continue;
            }
        };
        let decision =
            approve::decide(&instance, config.as_ref(), existing.as_ref(), &user, reason);
        let result = match &decision {
            Decision::Refuse(why) => {
                failures.other(&format!("error: {why}"));
                continue;
            }
            Decision::Unchanged { .. } => Ok(existing.clone()),
            Decision::Create(a) => approvals.create(&PostParams::default(), a).await.map(Some),
            Decision::Replace { old, new } => {
                // Only the approval read: one that changed meanwhile is someone else's act.
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: old.uid(),
                        resource_version: old.resource_version(),
                    }),
                    ..DeleteParams::default()
                };
                match approvals.delete(name, &dp).await {
                    Ok(_) => approvals
                        .create(&PostParams::default(), new)
                        .await
                        .map(Some),
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(object) => {
                progress(format, &approve::said(name, &decision));
                done.extend(object);
            }
            Err(e) => failures.api(&e),
        }
    }
    print_objects(format, &done)?;
    Ok(failures.code())
}

async fn revoke(
    client: &Client,
    namespace: &str,
    args: &[String],
    format: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let mut failures = Failures {
        namespace: namespace.to_string(),
        user: None,
        any: false,
        hinted: false,
    };
    let approvals: Api<DeviceApproval> = Api::namespaced(client.clone(), namespace);
    let mut done = vec![];
    for arg in args {
        let Some(name) = approve::instance_name(arg) else {
            failures.other(&format!("error: revoke takes Instances, not {arg:?}"));
            continue;
        };
        match approvals.delete(name, &DeleteParams::default()).await {
            Ok(deleted) => {
                progress(format, &approve::deleted(name));
                done.extend(deleted.left());
            }
            Err(e) => {
                if is_forbidden(&e) && failures.user.is_none() {
                    failures.user = whoami(client).await.ok();
                }
                failures.api(&e);
            }
        }
    }
    print_objects(format, &done)?;
    Ok(failures.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_go_anywhere_as_with_kubectl() {
        let cli = Cli::try_parse_from([
            "kubectl-dowser",
            "tree",
            "gated",
            "-n",
            "plant",
            "-o",
            "wide",
            "--context",
            "line3",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("plant"));
        assert_eq!(cli.output, Some(Format::Wide));
        assert_eq!(cli.context.as_deref(), Some("line3"));
        let cli = Cli::try_parse_from(["kubectl-dowser", "-A", "tree"]);
        assert!(cli.is_err(), "-A belongs to tree");
        let cli = Cli::try_parse_from(["kubectl-dowser", "tree", "-A", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Tree {
                all_namespaces: true,
                config: None
            }
        ));
        let cli = Cli::try_parse_from([
            "kubectl-dowser",
            "--kubeconfig",
            "/tmp/k",
            "approve",
            "a",
            "b",
            "--reason",
            "line 3",
        ])
        .unwrap();
        let Command::Approve { instances, reason } = cli.command else {
            panic!("not approve");
        };
        assert_eq!(instances, ["a", "b"]);
        assert_eq!(reason.as_deref(), Some("line 3"));
        assert!(Cli::try_parse_from(["kubectl-dowser", "approve"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-dowser", "tree", "-o", "name"]).is_err());
        let cli =
            Cli::try_parse_from(["kubectl-dowser", "why", "plc-line3", "-o", "wide"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Why { config: Some(ref c), all_namespaces: false } if c == "plc-line3"
        ));
    }
}
