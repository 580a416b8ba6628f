//! Sources: continuous streams of rows from outside the engine.
//!
//! A source is declared with `CREATE SOURCE name (columns) WITH (connector =
//! '...', ...)`. It holds no rows of its own: its rows flow, batch by batch,
//! into the materialized views that read it. A source's generator runs on
//! its own thread and hands Arrow batches to the engine through a bounded
//! channel; the engine commits each handful of batches as one epoch.
//!
//! Every materialized view that reads a source gets its own reader: its own
//! generator, started when the view is created, so that every view sees the
//! stream from its beginning (as each view over a Kafka topic reads it from
//! its start offset).

pub mod datagen;
pub mod nexmark;
pub mod options;
mod runner;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{MillraceError, Result};
use options::invalid;

pub use runner::{spawn_source, SourceSink};

/// Produces a source's rows, one Arrow batch at a time.
pub trait BatchGenerator: Send {
    /// The next batch, or `None` once the source is exhausted.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// Rows per second to pace at, or `None` for as fast as possible.
    fn rows_per_second(&self) -> Option<f64>;
}

/// Builds a source's generators (see [`SourceSpec::make_generators`]).
pub type GeneratorFactory = Box<dyn Fn() -> Result<Vec<Box<dyn BatchGenerator>>> + Send + Sync>;

/// A parsed source definition.
pub struct SourceSpec {
    /// The connector name (`datagen`, `nexmark`).
    pub connector: String,
    /// The rows' schema.
    pub schema: SchemaRef,
    /// Builds fresh generators positioned at the start of the stream. Each
    /// produces a disjoint part of it, so that several threads can share the
    /// work; together they produce the whole stream.
    pub make_generators: GeneratorFactory,
}

/// Builds a source from its declared columns (possibly none, where the
/// connector implies them) and its `WITH` options.
pub fn build_source(
    declared: Option<SchemaRef>,
    options: &BTreeMap<String, String>,
) -> Result<SourceSpec> {
    let connector = options
        .get("connector")
        .ok_or_else(|| invalid("CREATE SOURCE needs WITH (connector = '...')"))?
        .to_ascii_lowercase();
    match connector.as_str() {
        "datagen" => datagen::build(declared, options),
        "nexmark" => nexmark::build(declared, options),
        other => Err(MillraceError::not_supported(format!(
            "source connector '{other}' (available: datagen, nexmark)"
        ))),
    }
}

/// Live counters of a running source, shared between its thread, the
/// engine and `SHOW SOURCES`.
#[derive(Debug, Default)]
pub struct SourceProgress {
    /// Rows handed to the engine.
    pub produced: AtomicU64,
    /// Rows committed into the views.
    pub ingested: AtomicU64,
    /// Batches that could not be committed (counted, logged, skipped).
    pub errors: AtomicU64,
    /// The generator has produced its last row.
    pub finished: AtomicBool,
    /// The source has been asked to stop.
    pub stop: AtomicBool,
    /// The generator thread is running.
    pub started: AtomicBool,
}

impl SourceProgress {
    /// `running`, `finished`, `stopped` or `idle` (no view reads it yet).
    pub fn status(&self) -> &'static str {
        if self.stop.load(Ordering::Relaxed) {
            "stopped"
        } else if self.finished.load(Ordering::Relaxed)
            && self.ingested.load(Ordering::Relaxed) >= self.produced.load(Ordering::Relaxed)
        {
            "finished"
        } else if self.started.load(Ordering::Relaxed) {
            "running"
        } else {
            "idle"
        }
    }
}

/// One reader of a source, feeding one view.
#[derive(Clone)]
pub struct SourceReader {
    /// The source read.
    pub source: String,
    /// The view fed.
    pub view: String,
    /// Its counters and stop flag.
    pub progress: Arc<SourceProgress>,
}
