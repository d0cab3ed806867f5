use clap::Parser;
use dowser::cli::{Cli, LogFormat, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // The OPC UA stack logs every refused connection and its missing client certificate (not
    // needed: discovery uses security policy None) as errors; the handler reports what
    // matters itself, so the stack is quiet unless DOWSER_LOG asks for it.
    let filter = EnvFilter::try_from_env("DOWSER_LOG").unwrap_or_else(|_| {
        EnvFilter::new("warn,opcua_client=off,opcua_core=off,opcua_crypto=off,opcua_types=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
