//! The `dowser` command line.

mod convert;
mod discover;
#[cfg(feature = "external")]
mod handler;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use convert::ConvertArgs;
pub use discover::DiscoverArgs;

/// dowser finds industrial and IoT devices from the nodes that can reach them and advertises
/// each one to Kubernetes as a schedulable resource.
#[derive(Parser, Debug)]
#[command(name = "dowser", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "DOWSER_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Try a Configuration on this machine, without a cluster: validate it as the cluster
    /// would, run its discovery once (or keep watching) and print the Instances it would
    /// create.
    Discover(DiscoverArgs),
    /// Convert Akri Configurations (akri.sh/v0) into dowser Configurations: the YAML on
    /// stdout, and on stderr one line for each field that did not map exactly.
    Convert(ConvertArgs),
    /// Run a built-in discovery handler in its own process: it serves the discovery protocol
    /// (wire-compatible with Akri's) and registers with the node's agent, which then runs
    /// Configurations that select it with `spec.discovery.external.name`.
    #[cfg(feature = "external")]
    Handler(handler::HandlerArgs),
    /// Run the node agent (DaemonSet): discovery, Instances, device plugins.
    Agent(crate::agent::AgentArgs),
    /// Run the controller (Deployment): broker workloads, Services, Configuration status.
    Controller(crate::controller::ControllerArgs),
    /// Print the CustomResourceDefinitions (or write them into a directory).
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Discover(args) => discover::run(args).await,
        Command::Convert(args) => convert::run(args),
        #[cfg(feature = "external")]
        Command::Handler(args) => handler::run(args).await,
        Command::Agent(args) => crate::agent::run(args).await,
        Command::Controller(args) => crate::controller::run(args).await,
        Command::Crds { dir } => {
            let crds = crate::crd::crds();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for crd in &crds {
                        let path = dir.join(crate::crd::crd_file_name(crd));
                        std::fs::write(&path, crate::crd::crd_file(crd))?;
                        eprintln!("wrote {}", path.display());
                    }
                }
                None => {
                    let docs: Vec<String> = crds.iter().map(crate::crd::crd_file).collect();
                    print!("{}", docs.join("---\n"));
                }
            }
            Ok(0)
        }
    }
}
