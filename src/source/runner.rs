//! Running a source: a generator thread hands batches over a bounded
//! channel to an ingest task, which commits them to the engine a few batches
//! per epoch. The channel bound is the back-pressure: a generator never
//! runs more than a few batches ahead of the views.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{BatchGenerator, SourcePosition, SourceProgress};
use crate::error::Result;
use crate::stream::change::ChangeBatch;

/// Batches in flight between a generator and the engine.
const CHANNEL_BATCHES: usize = 4;
/// Most rows committed in one epoch.
const MAX_EPOCH_ROWS: usize = 1 << 16;

/// Where a source's batches go: the engine.
#[async_trait]
pub trait SourceSink: Send + Sync + 'static {
    /// Commits `batches` read from `source` for `view` as one epoch;
    /// `position` is where the reader stands after them.
    async fn ingest(
        &self,
        source: &str,
        view: &str,
        batches: Vec<ChangeBatch>,
        position: SourcePosition,
    ) -> Result<()>;

    /// `source`'s stream for `view` has ended: no batch follows, so its
    /// watermark can go to the end and close every window.
    async fn finish(&self, source: &str, view: &str) -> Result<()>;
}

/// One batch from a generator thread, with where that thread stands after
/// it.
struct Produced {
    batch: ChangeBatch,
    part: usize,
    position: SourcePosition,
}

/// Starts `generators` (one thread each, each producing its own part of
/// the stream) reading `source` for `view`, feeding `sink`. Progress and the
/// stop flag live in `progress`; it is finished when every thread is. A
/// reader resumed at `resume` goes on from there: generators that produce
/// their own stream skip the rows each thread had produced.
pub fn spawn_source(
    source: String,
    view: String,
    generators: Vec<Box<dyn BatchGenerator>>,
    progress: Arc<SourceProgress>,
    sink: Arc<dyn SourceSink>,
    resume: Option<SourcePosition>,
) {
    let lockstep = generators.len() > 1 && generators.iter().all(|g| g.in_lockstep());
    // Generators splitting one ordered stream each get a channel, read in
    // turn; independent readers share one, read as batches come.
    let channels = if lockstep { generators.len() } else { 1 };
    let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..channels)
        .map(|_| mpsc::channel::<Produced>(CHANNEL_BATCHES * generators.len().max(1)))
        .unzip();
    progress.started.store(true, Ordering::Relaxed);
    let live = Arc::new(AtomicUsize::new(generators.len()));
    if generators.is_empty() {
        progress.finished.store(true, Ordering::SeqCst);
    }
    let mut position = resume.clone().unwrap_or_else(|| match generators.first() {
        Some(g) if g.position().is_some() => SourcePosition::Offsets(Default::default()),
        _ => SourcePosition::Rows(vec![0; generators.len()]),
    });
    for (part, generator) in generators.into_iter().enumerate() {
        let tx = senders[part % channels].clone();
        let skip = match &resume {
            Some(SourcePosition::Rows(rows)) => rows.get(part).copied().unwrap_or(0),
            _ => 0,
        };
        let thread_progress = progress.clone();
        let thread_live = live.clone();
        let name = source.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("source-{source}-{part}"))
            .spawn(move || {
                let rows = generate(&name, generator, part, skip, &thread_progress, &tx);
                if thread_live.fetch_sub(1, Ordering::SeqCst) == 1 {
                    thread_progress.finished.store(true, Ordering::SeqCst);
                }
                info!(source = %name, part, rows, "source generator done");
            });
        if let Err(e) = spawned {
            warn!(%source, error = %e, "cannot start source thread");
            if live.fetch_sub(1, Ordering::SeqCst) == 1 {
                progress.finished.store(true, Ordering::SeqCst);
            }
        }
    }
    drop(senders);
    tokio::spawn(async move {
        // The channel whose batch comes next; in lockstep, strictly in turn.
        let mut turn = 0usize;
        while let Some(first) = next_in_turn(&mut receivers, &mut turn).await {
            let mut rows = first.batch.num_rows();
            position.merge(first.part, &first.position);
            let mut batches = vec![first.batch];
            // An epoch holds whole rounds (one batch of every split), so
            // that no split's rows are late relative to another's.
            while !turn.is_multiple_of(receivers.len().max(1)) {
                match next_in_turn(&mut receivers, &mut turn).await {
                    Some(b) => {
                        rows += b.batch.num_rows();
                        position.merge(b.part, &b.position);
                        batches.push(b.batch);
                    }
                    None => break,
                }
            }
            while rows < MAX_EPOCH_ROWS && receivers.iter().all(|rx| !rx.is_empty()) {
                for _ in 0..receivers.len() {
                    match try_next_in_turn(&mut receivers, &mut turn) {
                        Some(b) => {
                            rows += b.batch.num_rows();
                            position.merge(b.part, &b.position);
                            batches.push(b.batch);
                        }
                        None => break,
                    }
                }
            }
            if progress.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Err(e) = sink.ingest(&source, &view, batches, position.clone()).await {
                let n = progress.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(%source, error = %e, errors = n, "batch from source skipped");
                }
            }
            progress.ingested.fetch_add(rows as u64, Ordering::SeqCst);
        }
        // Every generator returned: a bounded stream has ended (a stopped
        // source has not).
        if !progress.stop.load(Ordering::Relaxed) {
            if let Err(e) = sink.finish(&source, &view).await {
                warn!(%source, error = %e, "end of stream not committed");
            }
        }
        progress.closed.store(true, Ordering::SeqCst);
    });
}

/// Waits for the batch of the channel whose turn it is, skipping channels
/// whose generator has ended; `None` once all have.
async fn next_in_turn(
    receivers: &mut Vec<mpsc::Receiver<Produced>>,
    turn: &mut usize,
) -> Option<Produced> {
    while !receivers.is_empty() {
        let i = *turn % receivers.len();
        match receivers[i].recv().await {
            Some(b) => {
                *turn = i + 1;
                return Some(b);
            }
            None => {
                receivers.remove(i);
                *turn = i;
            }
        }
    }
    None
}

/// The batch of the channel whose turn it is, if one is already waiting.
fn try_next_in_turn(
    receivers: &mut Vec<mpsc::Receiver<Produced>>,
    turn: &mut usize,
) -> Option<Produced> {
    while !receivers.is_empty() {
        let i = *turn % receivers.len();
        match receivers[i].try_recv() {
            Ok(b) => {
                *turn = i + 1;
                return Some(b);
            }
            Err(mpsc::error::TryRecvError::Empty) => return None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                receivers.remove(i);
                *turn = i;
            }
        }
    }
    None
}

/// Runs one generator (thread `part` of its source) until it ends, the
/// source stops or the engine goes away, first dropping the `skip` rows a
/// checkpoint already holds; returns the rows it produced.
fn generate(
    source: &str,
    mut generator: Box<dyn BatchGenerator>,
    part: usize,
    mut skip: u64,
    progress: &SourceProgress,
    tx: &mpsc::Sender<Produced>,
) -> u64 {
    let start = Instant::now();
    let rate = generator.rows_per_second();
    let mut rows: u64 = 0;
    let skipped = skip;
    if skip > 0 && generator.skip(skip) {
        skip = 0;
    }
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            break;
        }
        let batch = match generator.next_batch() {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                warn!(%source, error = %e, "source generator failed; stopping it");
                progress.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let batch = if skip > 0 {
            let n = batch.num_rows() as u64;
            if n <= skip {
                skip -= n;
                continue;
            }
            let rest = batch.slice(skip as usize, (n - skip) as usize);
            skip = 0;
            rest
        } else {
            batch
        };
        if batch.is_empty() {
            continue;
        }
        let n = batch.num_rows() as u64;
        rows += n;
        if let Some(rps) = rate {
            let due = Duration::from_secs_f64(rows as f64 / rps);
            let elapsed = start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        // Counted before sending, so FLUSH waits for it.
        progress.produced.fetch_add(n, Ordering::SeqCst);
        let position = generator
            .position()
            .unwrap_or(SourcePosition::Rows(vec![skipped + rows]));
        if tx
            .blocking_send(Produced {
                batch,
                part,
                position,
            })
            .is_err()
        {
            break;
        }
    }
    rows
}
