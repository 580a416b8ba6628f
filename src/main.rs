//! The `millrace` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use millrace::server::{self, ServerConfig, DEFAULT_LISTEN};

#[derive(Parser)]
#[command(name = "millrace", version, about = "A SQL-first streaming database")]
struct Cli {
    #[command(subcommand)]
    command: CommandLine,
}

#[derive(Subcommand)]
enum CommandLine {
    /// Start the server.
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, env = "MILLRACE_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Directory for the catalog and table contents.
        #[arg(long, env = "MILLRACE_DATA_DIR", default_value = "./millrace-data")]
        data_dir: PathBuf,
        /// Log filter: error, warn, info, debug, trace, or a tracing directive.
        #[arg(long, env = "MILLRACE_LOG", default_value = "info")]
        log_level: String,
        /// SQL file to run once the server is up; existing objects are kept.
        #[arg(long)]
        init_sql: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        CommandLine::Serve {
            listen,
            data_dir,
            log_level,
            init_sql,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_new(&log_level)
                .with_context(|| format!("invalid --log-level {log_level:?}"))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            runtime.block_on(async move {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = tx.send(true);
                });
                server::run(
                    ServerConfig {
                        listen,
                        data_dir,
                        init_sql,
                    },
                    rx,
                )
                .await
                .context("millrace serve failed")
            })
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
