//! Running a source: a generator thread hands batches over a bounded
//! channel to an ingest task, which commits them to the engine a few batches
//! per epoch. The channel bound is the back-pressure: a generator never
//! runs more than a few batches ahead of the views.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{BatchGenerator, SourceProgress};
use crate::error::Result;

/// Batches in flight between a generator and the engine.
const CHANNEL_BATCHES: usize = 4;
/// Most rows committed in one epoch.
const MAX_EPOCH_ROWS: usize = 1 << 16;

/// Where a source's batches go: the engine.
#[async_trait]
pub trait SourceSink: Send + Sync + 'static {
    /// Commits `batches` read from `source` for `view` as one epoch.
    async fn ingest(&self, source: &str, view: &str, batches: Vec<RecordBatch>) -> Result<()>;
}

/// Starts `generator` reading `source` for `view`, feeding `sink`. Progress
/// and the stop flag live in `progress`.
pub fn spawn_source(
    source: String,
    view: String,
    mut generator: Box<dyn BatchGenerator>,
    progress: Arc<SourceProgress>,
    sink: Arc<dyn SourceSink>,
) {
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(CHANNEL_BATCHES);
    progress.started.store(true, Ordering::Relaxed);
    let gen_progress = progress.clone();
    let gen_name = source.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("source-{source}"))
        .spawn(move || {
            let start = Instant::now();
            let rate = generator.rows_per_second();
            let mut rows: u64 = 0;
            loop {
                if gen_progress.stop.load(Ordering::Relaxed) {
                    break;
                }
                let batch = match generator.next_batch() {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(source = %gen_name, error = %e, "source generator failed; stopping it");
                        gen_progress.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                rows += batch.num_rows() as u64;
                if let Some(rps) = rate {
                    let due = Duration::from_secs_f64(rows as f64 / rps);
                    let elapsed = start.elapsed();
                    if due > elapsed {
                        std::thread::sleep(due - elapsed);
                    }
                }
                let n = batch.num_rows() as u64;
                // Counted before sending, so FLUSH waits for it.
                gen_progress.produced.fetch_add(n, Ordering::SeqCst);
                if tx.blocking_send(batch).is_err() {
                    break;
                }
            }
            gen_progress.finished.store(true, Ordering::SeqCst);
            info!(source = %gen_name, rows, "source generator done");
        });
    if let Err(e) = spawned {
        warn!(%source, error = %e, "cannot start source thread");
        progress.finished.store(true, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut rows = first.num_rows();
            let mut batches = vec![first];
            while rows < MAX_EPOCH_ROWS {
                match rx.try_recv() {
                    Ok(b) => {
                        rows += b.num_rows();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            if progress.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Err(e) = sink.ingest(&source, &view, batches).await {
                let n = progress.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(%source, error = %e, errors = n, "batch from source skipped");
                }
            }
            progress.ingested.fetch_add(rows as u64, Ordering::SeqCst);
        }
    });
}
