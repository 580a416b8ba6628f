//! The recovery benchmark: builds a materialized view holding a chosen
//! amount of state from a generator, checkpoints it whole, closes the
//! engine, and measures how long opening it again takes, views restored,
//! before the first query is answered (and checks that answer).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{MillraceError, Result};
use crate::sql::{Engine, EngineOptions, QueryOutput};
use crate::storage::{open_in, StateStore};

/// One run of the recovery benchmark.
#[derive(Debug, Clone)]
pub struct RecoveryResult {
    /// Rows (and groups) in the view.
    pub rows: u64,
    /// Bytes of text per row.
    pub payload_bytes: usize,
    /// Bytes of keys and values the checkpoint holds.
    pub state_bytes: u64,
    /// Size of the store file afterwards.
    pub file_bytes: u64,
    /// Seconds from the view's creation until the generator was drained.
    pub build_seconds: f64,
    /// Seconds the checkpoint of the whole state took (built and written).
    pub checkpoint_seconds: f64,
    /// Seconds to open the engine again, views restored.
    pub restore_seconds: f64,
    /// Seconds until the first query over the restored view answered.
    pub first_answer_seconds: f64,
}

/// The view's row count.
async fn count(engine: &Arc<Engine>) -> Result<u64> {
    number(engine, "SELECT CAST(sum(n) AS TEXT) FROM state").await
}

/// The first value of `sql`'s answer, as a number.
async fn number(engine: &Arc<Engine>, sql: &str) -> Result<u64> {
    let (outputs, err) = engine.execute_all(sql, &EngineOptions::default()).await;
    if let Some(e) = err {
        return Err(e);
    }
    for output in outputs {
        if let QueryOutput::Rows { batches, .. } = output {
            for b in batches {
                if b.num_rows() > 0 {
                    let text =
                        datafusion::arrow::util::display::array_value_to_string(b.column(0), 0)?;
                    return text
                        .parse()
                        .map_err(|_| MillraceError::execution(format!("bad count {text}")));
                }
            }
        }
    }
    Err(MillraceError::execution(format!("{sql} returned nothing")))
}

/// Opens the store in `dir`, waiting for this process's previous handle on
/// it to be gone.
async fn reopen(dir: &Path) -> Result<Arc<dyn StateStore>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match open_in(dir, None) {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs the benchmark in `dir` (which is removed first and after).
pub async fn run(rows: u64, payload_bytes: usize, dir: &Path) -> Result<RecoveryResult> {
    let _ = std::fs::remove_dir_all(dir);
    // Checkpoints only when asked for (by a read), so that the whole state
    // goes into one checkpoint that is timed.
    let interval = Some(Duration::from_secs(24 * 3600));
    let engine = Engine::open_with(open_in(dir, None)?, interval).await?;
    let sql = format!(
        "CREATE SOURCE rows_in (id BIGINT, payload VARCHAR) WITH (
           connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.limit = '{rows}',
           fields.id.kind = 'sequence', fields.payload.length = '{payload_bytes}');
         CREATE MATERIALIZED VIEW state AS
           SELECT id, payload, count(*) AS n FROM rows_in GROUP BY id, payload;"
    );
    let started = Instant::now();
    let (_, err) = engine.execute_all(&sql, &EngineOptions::default()).await;
    if let Some(e) = err {
        return Err(e);
    }
    while !engine
        .source_readers("rows_in")
        .iter()
        .all(|p| p.closed.load(Ordering::SeqCst))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let build_seconds = started.elapsed().as_secs_f64();
    // The end of the stream is published at once, and publishing takes a
    // checkpoint first: the whole state, in one write.
    let before = count(&engine).await?;
    let checkpoint_seconds = number(
        &engine,
        "SELECT CAST(last_duration_us AS TEXT) FROM millrace_catalog.checkpoints",
    )
    .await? as f64
        / 1e6;
    if before != rows {
        return Err(MillraceError::execution(format!(
            "the view holds {before} rows, not {rows}"
        )));
    }
    drop(engine);
    let store = reopen(dir).await?;
    let state_bytes = checkpointed_bytes(store.as_ref())?;
    let started = Instant::now();
    let engine = Engine::open_with(store, interval).await?;
    let restore_seconds = started.elapsed().as_secs_f64();
    let after = count(&engine).await?;
    let first_answer_seconds = started.elapsed().as_secs_f64();
    if after != rows {
        return Err(MillraceError::execution(format!(
            "after the restart the view holds {after} rows, not {rows}"
        )));
    }
    drop(engine);
    let file_bytes = std::fs::metadata(dir.join("state.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(dir);
    Ok(RecoveryResult {
        rows,
        payload_bytes,
        state_bytes,
        file_bytes,
        build_seconds,
        checkpoint_seconds,
        restore_seconds,
        first_answer_seconds,
    })
}

/// Bytes of keys and values in the checkpoints of the first catalog ids
/// (the benchmark creates two objects on a new store), runs included.
fn checkpointed_bytes(store: &dyn StateStore) -> Result<u64> {
    use crate::sql::checkpoint::{view_namespace, view_runs_namespace};
    let mut total = 0u64;
    for id in 0..4u64 {
        for ns in [view_namespace(id), view_runs_namespace(id)] {
            for (k, v) in store.scan(&ns)? {
                total += (k.len() + v.len()) as u64;
            }
        }
    }
    Ok(total)
}

/// The result as a Markdown table row.
pub fn markdown(r: &RecoveryResult) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "| rows | payload bytes | checkpointed state | store file | build | whole checkpoint | restart, views restored | first answer |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {} | {} | {:.0} MiB | {:.0} MiB | {:.1} s | {:.1} s | {:.2} s | {:.2} s |",
        r.rows,
        r.payload_bytes,
        mib(r.state_bytes),
        mib(r.file_bytes),
        r.build_seconds,
        r.checkpoint_seconds,
        r.restore_seconds,
        r.first_answer_seconds
    )
}
