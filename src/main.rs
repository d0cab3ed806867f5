use clap::Parser;
use dowser::cli::{Cli, LogFormat, run};
use tracing_subscriber::EnvFilter;

/// One malloc arena for all threads (glibc makes one per thread that allocates, up to 8 per
/// core). With 1,000 Instances the controller held 21 MiB of anonymous memory of which
/// 1.4 MiB was live heap (heap profile): the rest were freed pages kept in the arenas of the
/// threads that had parsed the lists. One arena brought it to 11 MiB; the agent's figure did
/// not change, nor did its speed noticeably (its threads spend their time waiting).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() {
    one_malloc_arena();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime");
    runtime.block_on(async_main());
}

async fn async_main() {
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
