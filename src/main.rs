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
    /// Run Nexmark queries from the built-in generator into views and
    /// report throughput, CPU efficiency and peak memory.
    Bench {
        /// Nexmark events (all types) per query.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Queries to run, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        queries: Vec<String>,
        /// Skip checking each view against a batch computation.
        #[arg(long)]
        no_verify: bool,
        /// Run one query in this process and print its result as JSON.
        #[arg(long, hide = true)]
        single: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        CommandLine::Bench {
            events,
            queries,
            no_verify,
            single,
        } => bench(events, queries, !no_verify, single),
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

fn bench(
    events: u64,
    queries: Vec<String>,
    verify: bool,
    single: Option<String>,
) -> anyhow::Result<()> {
    use millrace::bench::{markdown_table, query_names, run_single, BenchResult};
    if let Some(q) = single {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = runtime.block_on(run_single(&q, events, verify))?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let queries = if queries.is_empty() {
        query_names().into_iter().map(String::from).collect()
    } else {
        queries
    };
    let exe = std::env::current_exe()?;
    let mut results: Vec<BenchResult> = Vec::new();
    for q in &queries {
        eprintln!("running {q} over {events} events...");
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--single", q, "--events", &events.to_string()]);
        if !verify {
            cmd.arg("--no-verify");
        }
        let out = cmd.output()?;
        if !out.status.success() {
            anyhow::bail!("{q} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let result: BenchResult = serde_json::from_str(line)
            .with_context(|| format!("{q}: unreadable result {line:?}"))?;
        eprintln!(
            "{q}: {:.0} rows/s, {:.0} rows per CPU-second, peak {:.0} MiB, verified: {}",
            result.rows_per_second(),
            result.rows_per_cpu_second(),
            result.peak_rss_mib,
            result.verified
        );
        results.push(result);
    }
    println!("{}", markdown_table(&results));
    if verify && results.iter().any(|r| !r.verified) {
        anyhow::bail!("a view did not match its batch computation");
    }
    Ok(())
}
