//! Sinks: continuous exports of a table's or view's changes to the outside.
//!
//! `CREATE SINK name FROM relation WITH (connector = '...') FORMAT f ENCODE
//! e` first sends the relation's current rows (unless `snapshot =
//! 'false'`), then every change the engine commits to it, epoch by epoch,
//! in commit order. The engine hands each epoch's change batch to the
//! sink's own thread over a channel, so a slow external system never holds
//! up the engine.

pub mod encode;
pub mod kafka;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

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
    /// Writes one epoch's changes (consolidated).
    fn write(&mut self, change: &ChangeBatch) -> Result<()>;
}

/// Builds a sink's writer.
pub type WriterFactory = Box<dyn FnOnce(Arc<SinkProgress>) -> Result<Box<dyn SinkWriter>> + Send>;

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

/// A running sink, as the engine holds it.
pub struct SinkHandle {
    /// The relation exported.
    pub relation: String,
    /// The connector (`kafka`).
    pub connector: String,
    /// Its format.
    pub format: SinkFormat,
    /// The relation's schema: changes are sent with its column names.
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// Where the engine sends each epoch's change.
    pub tx: mpsc::Sender<ChangeBatch>,
    /// Counters.
    pub progress: Arc<SinkProgress>,
}

impl SinkHandle {
    /// Queues a change for the sink's thread.
    pub fn send(&self, change: &ChangeBatch) {
        self.progress
            .rows
            .fetch_add(change.num_rows() as u64, Ordering::Relaxed);
        // Operator outputs may name columns differently from the relation.
        let change = match change.with_schema(self.schema.clone()) {
            Ok(c) => c,
            Err(e) => {
                self.progress.failed("sink", e.to_string());
                return;
            }
        };
        // A closed channel means the sink's thread ended; its error is
        // already counted.
        let _ = self.tx.send(change);
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
    /// Builds the writer.
    pub make_writer: WriterFactory,
}

/// What a sink needs to know about the relation it exports.
pub struct SinkTarget<'a> {
    /// The sink's name.
    pub name: &'a str,
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

/// Starts the sink's thread; returns the handle the engine feeds.
pub fn spawn_sink(
    name: &str,
    relation: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    connector: String,
    format: SinkFormat,
    make_writer: WriterFactory,
) -> Result<SinkHandle> {
    let (tx, rx) = mpsc::channel::<ChangeBatch>();
    let progress = Arc::new(SinkProgress::default());
    let thread_progress = progress.clone();
    let sink = name.to_string();
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            let mut writer = match make_writer(thread_progress.clone()) {
                Ok(w) => w,
                Err(e) => {
                    thread_progress.failed(&sink, e.to_string());
                    return;
                }
            };
            while let Ok(change) = rx.recv() {
                if thread_progress.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(e) = writer.write(&change) {
                    thread_progress.failed(&sink, e.to_string());
                }
            }
        })
        .map_err(MillraceError::Io)?;
    Ok(SinkHandle {
        relation: relation.to_string(),
        connector,
        format,
        schema,
        tx,
        progress,
    })
}
