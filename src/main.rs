//! The `millrace` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use millrace::bench::{BenchResult, Feed};
use millrace::server::{self, ServerConfig, DEFAULT_LISTEN};

/// jemalloc instead of the system allocator: operator state is millions of
/// small allocations, made and freed on different threads (join rows,
/// index keys, expiry entries), where glibc's malloc took about a quarter
/// of q7's time. Measured against glibc and mimalloc in
/// `docs/benchmarks.md` ("Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// The embedded store a new data directory gets: redb (default) or
        /// sled. An existing data directory keeps the store it has.
        #[arg(long, env = "MILLRACE_STATE_STORE", value_parser = ["redb", "sled"])]
        state_store: Option<String>,
        /// Milliseconds between checkpoints of the views' state and the
        /// sources' positions; 0 turns checkpoints off (views are then
        /// rebuilt on start, and views over sources start over).
        #[arg(long, env = "MILLRACE_CHECKPOINT_INTERVAL_MS", default_value_t = 250)]
        checkpoint_interval_ms: u64,
        /// SQL file to run once the server is up; existing objects are kept.
        #[arg(long)]
        init_sql: Option<PathBuf>,
        /// PEM certificate chain for TLS (`sslmode=require`); needs --tls-key.
        #[arg(long, env = "MILLRACE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for TLS; needs --tls-cert.
        #[arg(long, env = "MILLRACE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Client authentication: trust, scram (SCRAM-SHA-256 passwords) or
        /// password (cleartext passwords, for clients without SCRAM; use
        /// with TLS). Default: trust on a loopback address, scram on any
        /// other.
        #[arg(long, env = "MILLRACE_AUTH", value_parser = ["trust", "scram", "password"])]
        auth: Option<String>,
    },
    /// Measure the state stores: checkpoint-like durable commits, reopening
    /// and reading the whole state, and disk use (docs/storage.md).
    BenchStore {
        /// Live keys loaded before the commits.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Durable commits measured.
        #[arg(long, default_value_t = 300)]
        commits: u64,
        /// Keys changed per commit.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// The stores to measure.
        #[arg(long, value_delimiter = ',', default_value = "redb,sled")]
        stores: Vec<String>,
        /// Directory for the stores (default: under the system's temporary
        /// directory); removed afterwards.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measure recovery: build a view holding a chosen amount of state,
    /// checkpoint it, restart the engine and time the restore
    /// (docs/benchmarks.md).
    BenchRecovery {
        /// Rows (and aggregate groups) in the view.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Bytes of text per row.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Data directory for the run (default: under the system's
        /// temporary directory); removed afterwards.
        #[arg(long)]
        dir: Option<PathBuf>,
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
        /// Read the bids from Kafka at these bootstrap servers instead of
        /// the generator: a topic is preloaded with them as JSON, a bare
        /// consumer is measured, then each query, then freshness.
        #[arg(long)]
        kafka: Option<String>,
        /// The preloaded topic (internal, for --single).
        #[arg(long, hide = true)]
        kafka_topic: Option<String>,
        /// Records in the preloaded topic (internal, for --single).
        #[arg(long, hide = true)]
        kafka_records: Option<u64>,
        /// Events per second produced for the freshness measurement.
        #[arg(long, default_value_t = 50_000)]
        freshness_rate: u64,
        /// Seconds of production for the freshness measurement (0: skip).
        #[arg(long, default_value_t = 10)]
        freshness_seconds: u64,
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
            kafka,
            kafka_topic,
            kafka_records,
            freshness_rate,
            freshness_seconds,
        } => {
            let feed = match (kafka, kafka_topic, kafka_records) {
                (Some(brokers), Some(topic), Some(records)) => Feed::Kafka {
                    brokers,
                    topic,
                    records,
                },
                (Some(brokers), _, _) => {
                    return bench_kafka(
                        &brokers,
                        events,
                        queries,
                        !no_verify,
                        freshness_rate,
                        freshness_seconds,
                    )
                }
                _ => Feed::Generator,
            };
            bench(events, queries, !no_verify, single, &feed)
        }
        CommandLine::BenchRecovery {
            rows,
            payload_bytes,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("millrace-bench-recovery-{}", std::process::id()))
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            let result =
                runtime.block_on(millrace::bench::recovery::run(rows, payload_bytes, &dir))?;
            println!("{}", millrace::bench::recovery::markdown(&result));
            Ok(())
        }
        CommandLine::BenchStore {
            keys,
            value_bytes,
            commits,
            batch,
            stores,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("millrace-bench-store-{}", std::process::id()))
            });
            let mut runs = Vec::new();
            for store in stores {
                let kind: millrace::storage::StoreKind = store.parse()?;
                eprintln!("measuring {}...", kind.name());
                runs.push(millrace::bench::store::run(
                    kind,
                    &dir.join(kind.name()),
                    keys,
                    value_bytes,
                    commits,
                    batch,
                )?);
            }
            let _ = std::fs::remove_dir_all(&dir);
            println!("{}", millrace::bench::store::markdown(&runs));
            Ok(())
        }
        CommandLine::Serve {
            listen,
            data_dir,
            log_level,
            state_store,
            checkpoint_interval_ms,
            init_sql,
            tls_cert,
            tls_key,
            auth,
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
                        state_store: state_store
                            .map(|s| s.parse::<millrace::storage::StoreKind>())
                            .transpose()?,
                        checkpoint_interval: (checkpoint_interval_ms > 0)
                            .then(|| std::time::Duration::from_millis(checkpoint_interval_ms)),
                        init_sql,
                        tls: tls_cert.zip(tls_key),
                        auth: auth.map(|a| match a.as_str() {
                            "scram" => millrace::pgwire::AuthMode::Scram,
                            "password" => millrace::pgwire::AuthMode::Password,
                            _ => millrace::pgwire::AuthMode::Trust,
                        }),
                        // Read from the environment only, never a flag, so
                        // that it does not show in process listings.
                        password: std::env::var("MILLRACE_PASSWORD").ok(),
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
    feed: &Feed,
) -> anyhow::Result<()> {
    use millrace::bench::{markdown_table, query_names, run_single};
    if let Some(q) = single {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = runtime.block_on(run_single(&q, events, verify, feed))?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let queries = if queries.is_empty() {
        query_names().into_iter().map(String::from).collect()
    } else {
        queries
    };
    let results = run_queries(events, &queries, verify, feed)?;
    println!("{}", markdown_table(&results));
    if verify && results.iter().any(|r| !r.verified) {
        anyhow::bail!("a view did not match its batch computation");
    }
    Ok(())
}

/// Runs each query in its own process (so that peak memory is its own).
fn run_queries(
    events: u64,
    queries: &[String],
    verify: bool,
    feed: &Feed,
) -> anyhow::Result<Vec<BenchResult>> {
    let exe = std::env::current_exe()?;
    let mut results: Vec<BenchResult> = Vec::new();
    for q in queries {
        eprintln!("running {q} over {events} events...");
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--single", q, "--events", &events.to_string()]);
        if let Feed::Kafka {
            brokers,
            topic,
            records,
        } = feed
        {
            cmd.args(["--kafka", brokers, "--kafka-topic", topic])
                .args(["--kafka-records", &records.to_string()]);
        }
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
            "{q}: {:.0} events/s, {:.0} rows/s, {:.0} rows per CPU-second, peak {:.0} MiB, verified: {}",
            result.events_per_second(),
            result.rows_per_second(),
            result.rows_per_cpu_second(),
            result.peak_rss_mib,
            result.verified
        );
        results.push(result);
    }
    Ok(results)
}

/// The Kafka benchmark: preload a topic with the bids as JSON, measure a
/// bare consumer, each query, and freshness.
fn bench_kafka(
    brokers: &str,
    events: u64,
    queries: Vec<String>,
    verify: bool,
    freshness_rate: u64,
    freshness_seconds: u64,
) -> anyhow::Result<()> {
    use millrace::bench::{kafka, markdown_table};
    let queries = if queries.is_empty() {
        ["q0", "q1", "q2", "q17"].map(String::from).to_vec()
    } else {
        queries
    };
    let topic = format!("millrace-bench-bids-{events}-{}", std::process::id());
    let mut options = std::collections::BTreeMap::new();
    for (k, v) in [
        ("connector", "nexmark"),
        ("nexmark.table.type", "bid"),
        ("nexmark.min.event.gap.in.ns", "0"),
    ] {
        options.insert(k.to_string(), v.to_string());
    }
    options.insert("nexmark.event.num".into(), events.to_string());
    eprintln!("preloading {topic} with the bids of {events} Nexmark events...");
    let start = std::time::Instant::now();
    let records = kafka::preload(brokers, &topic, &options)?;
    eprintln!(
        "preloaded {records} records in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let bare = kafka::bare_consumer(brokers, &topic, records)?;
    eprintln!(
        "bare consumer: {:.0} records/s, {:.0} per CPU-second",
        bare.records as f64 / bare.seconds,
        bare.records as f64 / bare.cpu_seconds.max(1e-9)
    );
    let feed = Feed::Kafka {
        brokers: brokers.to_string(),
        topic: topic.clone(),
        records,
    };
    let results = run_queries(events, &queries, verify, &feed)?;
    println!("Bare librdkafka consumer: {} records in {:.2} s: {:.0} records/s, {:.0} records per CPU-second\n",
        bare.records, bare.seconds, bare.records as f64 / bare.seconds, bare.records as f64 / bare.cpu_seconds.max(1e-9));
    println!("{}", markdown_table(&results));
    if freshness_seconds > 0 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let exe = std::env::current_exe()?;
        let f = runtime.block_on(kafka::freshness(
            &exe,
            brokers,
            freshness_rate,
            freshness_seconds,
        ))?;
        println!(
            "Freshness at {} events/s for {} s ({} samples through pgwire): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            f.rate, freshness_seconds, f.samples, f.p50_ms, f.p99_ms, f.max_ms
        );
        println!(
            "Bare consumer alone, on records produced the same way, produce to consumed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            f.bare_p50_ms, f.bare_p99_ms, f.bare_max_ms
        );
    }
    if verify && results.iter().any(|r| !r.verified) {
        anyhow::bail!("a view did not match its batch computation");
    }
    Ok(())
}
