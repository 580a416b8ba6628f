//! Sinks: continuous exports of a table's or view's changes to the outside.
//!
//! `CREATE SINK name FROM relation WITH (connector = '...') FORMAT f ENCODE
//! e` first sends the relation's current rows (unless `snapshot =
//! 'false'`), then every change the engine commits to it, in commit order.
//! The engine hands changes to the sink's own thread over a channel, so a
//! slow external system never holds up the engine.
//!
//! A sink from a checkpointed relation (a table, or a view whose state is
//! checkpointed) is *logged*: its changes go into the sink log with each
//! checkpoint, one entry per checkpoint, and the sink is handed an entry
//! only once that checkpoint is durable. It never sends a change a crash
//! could undo. The thread retries an entry until it is delivered, then
//! reports its sequence number, which the next checkpoint records; after a
//! restart the sink is handed every entry after the last one recorded.
//! Other sinks are handed each epoch's change as it commits.

pub mod encode;
pub mod kafka;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::error::{MillraceError, Result};
use crate::source::options::invalid;
use crate::stream::change::ChangeBatch;

/// How changes are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// Inserted rows only; refused for relations that can retract rows.
    Plain,
    /// Keyed: the latest row per key, a null value (tombstone) for a
    /// deleted key.
    Upsert,
    /// Debezium change events with `before`, `after` and `op`.
    Debezium,
}

/// Writes change batches to an external system.
pub trait SinkWriter: Send {
    /// Writes one change (consolidated). For an entry of the sink log
    /// (`seq` is its sequence number) it returns `Ok` only once the
    /// external system has durably accepted all of it; an error makes the
    /// sink write the same entry again. A writer that records delivered
    /// sequence numbers itself (Kafka `exactly_once`) skips entries it has
    /// already delivered.
    fn write(&mut self, change: &ChangeBatch, seq: Option<u64>) -> Result<()>;
}

/// Builds a sink's writer; called again after a failure (the external
/// system unreachable, say) until it succeeds or the sink is dropped.
pub type WriterFactory = Box<dyn FnMut(Arc<SinkProgress>) -> Result<Box<dyn SinkWriter>> + Send>;

/// Live counters of a sink.
#[derive(Debug, Default)]
pub struct SinkProgress {
    /// Change rows handed to the sink.
    pub rows: AtomicU64,
    /// Messages written and acknowledged.
    pub delivered: AtomicU64,
    /// Messages or batches that failed.
    pub errors: AtomicU64,
    /// The last failure, for `SHOW SINKS`.
    pub last_error: Mutex<Option<String>>,
    /// The last sink log entry delivered (0: none).
    pub delivered_seq: AtomicU64,
    /// The sink has been dropped.
    pub stop: AtomicBool,
}

impl SinkProgress {
    /// Records a failure.
    pub fn failed(&self, sink: &str, message: String) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(%sink, error = %message, errors = n, "sink write failed");
        }
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(message);
        }
    }
}

/// One change handed to a sink's thread.
pub struct SinkEntry {
    /// The sink log sequence number, or `None` for a change handed over as
    /// its epoch commits (not logged).
    pub seq: Option<u64>,
    /// The change, with the relation's column names.
    pub change: ChangeBatch,
}

/// A running sink, as the engine holds it.
pub struct SinkHandle {
    /// The sink's catalog id.
    pub id: u64,
    /// The relation exported.
    pub relation: String,
    /// The connector (`kafka`).
    pub connector: String,
    /// Its format.
    pub format: SinkFormat,
    /// Whether the sink's changes go through the sink log (see the module
    /// documentation).
    pub logged: bool,
    /// Whether the relation's rows are sent first.
    pub snapshot: bool,
    /// Whether the writer delivers log entries exactly once (Kafka
    /// `exactly_once`).
    pub exactly_once: bool,
    /// The relation's schema: changes are sent with its column names.
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// Where the engine sends changes.
    pub tx: mpsc::Sender<SinkEntry>,
    /// Counters.
    pub progress: Arc<SinkProgress>,
    /// Changes committed since the last checkpoint, not logged yet.
    pub pending: Vec<ChangeBatch>,
    /// The log entry of the checkpoint being written, handed over once
    /// that write is durable.
    pub in_flight: Option<(u64, ChangeBatch)>,
    /// Sequence numbers in the log, oldest first.
    pub log: VecDeque<u64>,
    /// The next log sequence number.
    pub next_seq: u64,
    /// The last log entry handed to the sink's thread.
    pub handed: u64,
    /// The delivered sequence number the store holds (`None`: the sink's
    /// first checkpoint is not written yet).
    pub recorded_delivered: Option<u64>,
}

impl SinkHandle {
    /// `change` with the relation's column names (operator outputs may
    /// name columns differently), or `None` after recording why not.
    pub fn conform(&self, change: &ChangeBatch) -> Option<ChangeBatch> {
        match change.with_schema(self.schema.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                self.progress.failed("sink", e.to_string());
                None
            }
        }
    }

    /// Hands a change to the sink's thread now, unlogged.
    pub fn send(&self, change: &ChangeBatch) {
        if let Some(change) = self.conform(change) {
            self.hand_over(None, change);
        }
    }

    /// Hands sink log entry `seq` to the sink's thread.
    pub fn send_logged(&self, seq: u64, change: ChangeBatch) {
        self.hand_over(Some(seq), change);
    }

    fn hand_over(&self, seq: Option<u64>, change: ChangeBatch) {
        self.progress
            .rows
            .fetch_add(change.num_rows() as u64, Ordering::Relaxed);
        // A closed channel means the sink's thread ended; its error is
        // already counted.
        let _ = self.tx.send(SinkEntry { seq, change });
    }

    /// What the sink promises across a crash, as `SHOW SINKS` says it.
    pub fn guarantee(&self) -> &'static str {
        match (self.logged, self.exactly_once) {
            (true, true) => "exactly once",
            (true, false) => "at least once",
            (false, _) => "none",
        }
    }

    /// Log entries written and not yet delivered.
    pub fn undelivered(&self) -> usize {
        let delivered = self.progress.delivered_seq.load(Ordering::Relaxed);
        self.log.iter().filter(|s| **s > delivered).count()
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::SeqCst);
    }
}

/// A parsed sink definition, before it runs.
pub struct SinkSpec {
    /// The connector.
    pub connector: String,
    /// Its format.
    pub format: SinkFormat,
    /// Whether to send the relation's current rows first.
    pub snapshot: bool,
    /// Whether the sink needs the sink log (Kafka `exactly_once`).
    pub needs_log: bool,
    /// Builds the writer.
    pub make_writer: WriterFactory,
}

/// What a sink needs to know about the relation it exports.
pub struct SinkTarget<'a> {
    /// The sink's name.
    pub name: &'a str,
    /// The sink's catalog id.
    pub id: u64,
    /// The relation's name.
    pub relation: &'a str,
    /// The relation's schema.
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// Whether the relation only ever inserts.
    pub append_only: bool,
    /// The relation's primary key columns, if it has one.
    pub primary_key: Vec<usize>,
    /// Whether to check that the external system is reachable now.
    pub validate: bool,
}

/// Builds a sink from its options.
pub fn build_sink(
    target: &SinkTarget<'_>,
    options: &BTreeMap<String, String>,
    format: Option<(String, String)>,
) -> Result<SinkSpec> {
    let connector = options
        .get("connector")
        .ok_or_else(|| invalid("CREATE SINK needs WITH (connector = '...')"))?
        .to_ascii_lowercase();
    let (format, encode) = match format {
        None => (SinkFormat::Plain, "json".to_string()),
        Some((f, e)) => {
            let f = match f.as_str() {
                "plain" => SinkFormat::Plain,
                "upsert" => SinkFormat::Upsert,
                "debezium" => SinkFormat::Debezium,
                other => {
                    return Err(MillraceError::not_supported(format!(
                        "sink FORMAT {other} (PLAIN, UPSERT or DEBEZIUM)"
                    )))
                }
            };
            (f, e)
        }
    };
    if encode != "json" {
        return Err(MillraceError::not_supported(format!(
            "sink ENCODE {encode} (JSON)"
        )));
    }
    if format == SinkFormat::Plain && !target.append_only {
        return Err(MillraceError::Data {
            sqlstate: "42P17",
            message: format!(
                "FORMAT PLAIN cannot carry deletions, and \"{}\" can retract rows (it is a table, \
                 or a view with aggregates, joins or updated inputs); use FORMAT UPSERT or FORMAT DEBEZIUM",
                target.relation
            ),
        });
    }
    match connector.as_str() {
        "kafka" => kafka::build(target, options, format),
        other => Err(MillraceError::not_supported(format!(
            "sink connector '{other}' (available: kafka)"
        ))),
    }
}

/// How long a sink waits before writing a failed log entry again, at most.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// Starts the sink's thread; returns the handle the engine feeds. The
/// handle starts with an empty log: the engine fills in `logged`,
/// `snapshot` and the log's state.
pub fn spawn_sink(
    id: u64,
    name: &str,
    relation: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    connector: String,
    format: SinkFormat,
    mut make_writer: WriterFactory,
) -> Result<SinkHandle> {
    let (tx, rx) = mpsc::channel::<SinkEntry>();
    let progress = Arc::new(SinkProgress::default());
    let thread_progress = progress.clone();
    let sink = name.to_string();
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            let mut wait = Duration::from_millis(100);
            let mut writer = loop {
                match make_writer(thread_progress.clone()) {
                    Ok(w) => break w,
                    Err(e) => {
                        thread_progress.failed(&sink, e.to_string());
                        if thread_progress.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(MAX_RETRY_WAIT);
                    }
                }
            };
            while let Ok(entry) = rx.recv() {
                deliver(&sink, writer.as_mut(), &entry, &thread_progress);
                if thread_progress.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        })
        .map_err(MillraceError::Io)?;
    Ok(SinkHandle {
        id,
        relation: relation.to_string(),
        connector,
        format,
        logged: false,
        snapshot: false,
        exactly_once: false,
        schema,
        tx,
        progress,
        pending: Vec::new(),
        in_flight: None,
        log: VecDeque::new(),
        next_seq: 1,
        handed: 0,
        recorded_delivered: None,
    })
}

/// Writes one entry: an unlogged change once, a log entry until it is
/// delivered (waiting longer after each failure) or the sink is dropped.
fn deliver(sink: &str, writer: &mut dyn SinkWriter, entry: &SinkEntry, progress: &SinkProgress) {
    let mut wait = Duration::from_millis(100);
    loop {
        if progress.stop.load(Ordering::SeqCst) {
            return;
        }
        match writer.write(&entry.change, entry.seq) {
            Ok(()) => {
                if let Some(seq) = entry.seq {
                    progress.delivered_seq.fetch_max(seq, Ordering::SeqCst);
                }
                return;
            }
            Err(e) => {
                progress.failed(sink, e.to_string());
                if entry.seq.is_none() {
                    return;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
        }
    }
}
