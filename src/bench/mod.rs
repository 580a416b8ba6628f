//! `millrace bench`: runs Nexmark queries through the real engine, from
//! the in-process generator to a materialized view, and reports events per
//! second, events per CPU-second and peak memory. Each query runs in its own
//! process (so peak memory is its own), and its final view is checked
//! against DataFusion's batch evaluation of the same query over the same
//! events, so a fast wrong answer cannot pass.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use serde::{Deserialize, Serialize};

pub mod kafka;
pub mod recovery;
pub mod store;

use crate::error::{MillraceError, Result};
use crate::source::build_source;
use crate::sql::statement::{parse_statement, split_statements, Command};
use crate::sql::{Engine, EngineOptions, QueryOutput};

/// The benchmark queries: name and the SQL file that defines its sources and view.
pub const QUERIES: &[(&str, &str)] = &[
    ("q0", include_str!("../../sql-examples/nexmark/q0.sql")),
    ("q1", include_str!("../../sql-examples/nexmark/q1.sql")),
    ("q2", include_str!("../../sql-examples/nexmark/q2.sql")),
    ("q3", include_str!("../../sql-examples/nexmark/q3.sql")),
    ("q4", include_str!("../../sql-examples/nexmark/q4.sql")),
    ("q5", include_str!("../../sql-examples/nexmark/q5.sql")),
    ("q6", include_str!("../../sql-examples/nexmark/q6.sql")),
    ("q7", include_str!("../../sql-examples/nexmark/q7.sql")),
    ("q8", include_str!("../../sql-examples/nexmark/q8.sql")),
    ("q9", include_str!("../../sql-examples/nexmark/q9.sql")),
    ("q10", include_str!("../../sql-examples/nexmark/q10.sql")),
    ("q11", include_str!("../../sql-examples/nexmark/q11.sql")),
    ("q12", include_str!("../../sql-examples/nexmark/q12.sql")),
    ("q13", include_str!("../../sql-examples/nexmark/q13.sql")),
    ("q14", include_str!("../../sql-examples/nexmark/q14.sql")),
    ("q15", include_str!("../../sql-examples/nexmark/q15.sql")),
    ("q16", include_str!("../../sql-examples/nexmark/q16.sql")),
    ("q17", include_str!("../../sql-examples/nexmark/q17.sql")),
    ("q18", include_str!("../../sql-examples/nexmark/q18.sql")),
    ("q19", include_str!("../../sql-examples/nexmark/q19.sql")),
    ("q20", include_str!("../../sql-examples/nexmark/q20.sql")),
    ("q21", include_str!("../../sql-examples/nexmark/q21.sql")),
    ("q22", include_str!("../../sql-examples/nexmark/q22.sql")),
];

/// What one query's run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Query name.
    pub query: String,
    /// Nexmark events walked through (all types).
    pub events: u64,
    /// Rows the sources fed into the view.
    pub rows_in: u64,
    /// Wall-clock seconds from view creation to the last row committed.
    pub seconds: f64,
    /// CPU seconds of the process over the same span.
    pub cpu_seconds: f64,
    /// Peak resident memory of the process, in MiB.
    pub peak_rss_mib: f64,
    /// Rows in the final view.
    pub view_rows: usize,
    /// The view matched the batch computation.
    pub verified: bool,
}

impl BenchResult {
    /// Rows per wall-clock second.
    pub fn rows_per_second(&self) -> f64 {
        self.rows_in as f64 / self.seconds.max(1e-9)
    }

    /// Rows per CPU-second.
    pub fn rows_per_cpu_second(&self) -> f64 {
        self.rows_in as f64 / self.cpu_seconds.max(1e-9)
    }

    /// Nexmark events (of all types) per wall-clock second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// Nexmark events (of all types) per CPU-second.
    pub fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// CPU seconds (user + system) used by this process so far.
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Peak resident memory of this process in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn query_file(name: &str) -> Result<&'static str> {
    QUERIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sql)| *sql)
        .ok_or_else(|| {
            let names: Vec<&str> = QUERIES.iter().map(|(n, _)| *n).collect();
            MillraceError::plan(format!("unknown query {name}; known: {}", names.join(", ")))
        })
}

/// Where a benchmark query's bid rows come from.
#[derive(Debug, Clone)]
pub enum Feed {
    /// The built-in Nexmark generator.
    Generator,
    /// A Kafka topic preloaded with the same events as JSON.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// Records in the topic.
        records: u64,
    },
}

/// The checkpoint interval a benchmark runs with:
/// `MILLRACE_CHECKPOINT_INTERVAL_MS` (0: none), as for the server, or the
/// server's default.
pub fn checkpoint_interval_from_env() -> Result<Option<Duration>> {
    match std::env::var("MILLRACE_CHECKPOINT_INTERVAL_MS") {
        Err(_) => Ok(Some(crate::sql::engine::DEFAULT_CHECKPOINT_INTERVAL)),
        Ok(v) => {
            let ms: u64 = v.trim().parse().map_err(|_| {
                MillraceError::plan(format!(
                    "MILLRACE_CHECKPOINT_INTERVAL_MS must be a number of milliseconds, not \"{v}\""
                ))
            })?;
            Ok((ms > 0).then(|| Duration::from_millis(ms)))
        }
    }
}

/// Runs one query in this process.
pub async fn run_single(name: &str, events: u64, verify: bool, feed: &Feed) -> Result<BenchResult> {
    let sql = query_file(name)?;
    let dir = std::env::temp_dir().join(format!("millrace-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::open_with(
        crate::storage::open_in(&dir, None)?,
        checkpoint_interval_from_env()?,
    )
    .await?;
    let options = EngineOptions::default();
    let mut sources: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    for part in split_statements(sql)? {
        match parse_statement(sql, &part)? {
            Command::CreateSource(mut cs) => {
                cs.options
                    .insert("nexmark.event.num".into(), events.to_string());
                cs.options
                    .insert("nexmark.min.event.gap.in.ns".into(), "0".into());
                sources.push((cs.name.clone(), cs.options.clone()));
                match feed {
                    Feed::Generator => {
                        engine
                            .execute_parsed(&part, Command::CreateSource(cs), None, &options)
                            .await?;
                    }
                    Feed::Kafka { brokers, topic, .. } => {
                        let sql = kafka::source_sql(&cs.name, &cs.options, brokers, topic)?;
                        let (_, err) = engine.execute_all(&sql, &options).await;
                        if let Some(e) = err {
                            return Err(e);
                        }
                    }
                }
            }
            Command::Sql(stmt) => {
                let (view_name, query) = match stmt.as_ref() {
                    Statement::CreateView(cv) => (cv.name.to_string(), cv.query.clone()),
                    // Side tables (q13's) are filled before the view, and
                    // read by the oracle as they are.
                    other => {
                        if let Statement::CreateTable(ct) = other {
                            tables.push(ct.name.to_string());
                        }
                        engine
                            .execute_parsed(&part, Command::Sql(stmt), None, &options)
                            .await?;
                        continue;
                    }
                };
                let start_cpu = process_cpu_seconds();
                let start = Instant::now();
                engine
                    .execute_parsed(&part, Command::Sql(stmt), None, &options)
                    .await?;
                // Wait for every source to be drained into the view.
                loop {
                    let done = sources.iter().all(|(s, _)| {
                        engine.source_readers(s).iter().all(|p| match feed {
                            Feed::Generator => p.closed.load(Ordering::SeqCst),
                            Feed::Kafka { records, .. } => {
                                p.ingested.load(Ordering::SeqCst)
                                    + p.bad_records.load(Ordering::SeqCst)
                                    >= *records
                            }
                        })
                    });
                    if done {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let seconds = start.elapsed().as_secs_f64();
                let cpu_seconds = process_cpu_seconds() - start_cpu;
                let peak = peak_rss_mib();
                let rows_in = sources
                    .iter()
                    .flat_map(|(s, _)| engine.source_readers(s))
                    .map(|p| p.ingested.load(Ordering::SeqCst))
                    .sum();
                let got = rows_of(&engine, &format!("SELECT * FROM {view_name}")).await?;
                let view_rows = got.iter().map(|b| b.num_rows()).sum();
                let verified = if verify {
                    let mut table_rows = Vec::new();
                    for t in &tables {
                        let rows = rows_of(&engine, &format!("SELECT * FROM {t}")).await?;
                        table_rows.push((t.clone(), rows));
                    }
                    match custom_check(sql)? {
                        // What the view must agree with the oracle on, when
                        // its rows themselves cannot be recomputed.
                        Some((over_view, over_sources)) => {
                            let got = rows_of(&engine, &over_view).await?;
                            let want = batch_oracle(&sources, &table_rows, &over_sources).await?;
                            canonical(&got)? == canonical(&want)?
                        }
                        None => {
                            let want = batch_oracle(&sources, &table_rows, &query).await?;
                            canonical(&got)? == canonical(&want)?
                        }
                    }
                } else {
                    false
                };
                drop(engine);
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(BenchResult {
                    query: name.to_string(),
                    events,
                    rows_in,
                    seconds,
                    cpu_seconds,
                    peak_rss_mib: peak,
                    view_rows,
                    verified,
                });
            }
            _ => {}
        }
    }
    Err(MillraceError::plan(format!(
        "benchmark file for {name} creates no view"
    )))
}

/// A benchmark file's own check, for a view whose rows depend on when it
/// ran (processing time): `-- verify view: <query over the view>` must
/// equal `-- verify oracle: <query over the sources>` evaluated by the
/// batch oracle.
fn custom_check(sql: &str) -> Result<Option<(String, datafusion::sql::sqlparser::ast::Query)>> {
    let line = |prefix: &str| {
        sql.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|q| q.trim().to_string()))
    };
    match (line("-- verify view:"), line("-- verify oracle:")) {
        (Some(view), Some(oracle)) => {
            let statement = match split_statements(&oracle)?.as_slice() {
                [one] => parse_statement(&oracle, one)?,
                _ => return Err(MillraceError::plan("-- verify oracle: needs one query")),
            };
            match statement {
                Command::Sql(stmt) => match *stmt {
                    Statement::Query(q) => Ok(Some((view, *q))),
                    _ => Err(MillraceError::plan("-- verify oracle: is not a query")),
                },
                _ => Err(MillraceError::plan("-- verify oracle: is not a query")),
            }
        }
        (None, None) => Ok(None),
        _ => Err(MillraceError::plan(
            "a benchmark file needs both -- verify view: and -- verify oracle:",
        )),
    }
}

async fn rows_of(engine: &Arc<Engine>, sql: &str) -> Result<Vec<RecordBatch>> {
    let (mut out, err) = engine.execute_all(sql, &EngineOptions::default()).await;
    if let Some(e) = err {
        return Err(e);
    }
    match out.pop() {
        Some(QueryOutput::Rows { batches, .. }) => Ok(batches),
        _ => Err(MillraceError::execution(format!("{sql} returned no rows"))),
    }
}

/// The same query evaluated by DataFusion over all the sources' events.
async fn batch_oracle(
    sources: &[(String, BTreeMap<String, String>)],
    tables: &[(String, Vec<RecordBatch>)],
    query: &datafusion::sql::sqlparser::ast::Query,
) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    for (name, rows) in tables {
        let Some(schema) = rows.first().map(|b| b.schema()) else {
            continue;
        };
        let table = MemTable::try_new(schema, vec![rows.clone()])?;
        ctx.register_table(name.as_str(), Arc::new(table))?;
    }
    for (name, options) in sources {
        let spec = build_source(None, options)?;
        let mut batches = Vec::new();
        for mut generator in (spec.make_generators)(&Default::default())? {
            while let Some(b) = generator.next_batch()? {
                batches.push(b.data().clone());
            }
        }
        let table = MemTable::try_new(spec.schema.clone(), vec![batches])?;
        ctx.register_table(name.as_str(), Arc::new(table))?;
    }
    // The view's query as the engine parsed it (window functions
    // rewritten), planned and run by DataFusion alone.
    let statement = Box::new(Statement::Query(Box::new(query.clone())));
    let plan = ctx
        .state()
        .statement_to_plan(datafusion::sql::parser::Statement::Statement(statement))
        .await?;
    Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
}

/// A multiset of rows as sorted hashes of their text, floats rounded so
/// that summation order does not matter.
fn canonical(batches: &[RecordBatch]) -> Result<Vec<u64>> {
    use std::hash::{Hash, Hasher};
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut line = String::new();
        for row in 0..b.num_rows() {
            line.clear();
            for (c, f) in b.columns().iter().zip(&formatters) {
                match c.data_type() {
                    DataType::Float64 if c.is_valid(row) => line.push_str(&format!(
                        "{:.6}",
                        c.as_primitive::<Float64Type>().value(row)
                    )),
                    _ => line.push_str(&f.value(row).to_string()),
                }
                line.push('|');
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            line.hash(&mut h);
            out.push(h.finish());
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Names of the benchmark queries.
pub fn query_names() -> Vec<&'static str> {
    QUERIES.iter().map(|(n, _)| *n).collect()
}

/// Renders results as a Markdown table.
pub fn markdown_table(results: &[BenchResult]) -> String {
    let mut s = String::from(
        "| query | events | rows into view | seconds | events/s | events per CPU-second | rows/s | rows per CPU-second | peak RSS (MiB) | view rows | verified |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            r.query,
            r.events,
            r.rows_in,
            r.seconds,
            r.events_per_second(),
            r.events_per_cpu_second(),
            r.rows_per_second(),
            r.rows_per_cpu_second(),
            r.peak_rss_mib,
            r.view_rows,
            if r.verified { "yes" } else { "NO" }
        ));
    }
    s
}
