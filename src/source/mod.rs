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
pub mod kafka;
pub mod nexmark;
pub mod options;
mod runner;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{MillraceError, Result};
use crate::stream::change::ChangeBatch;
use options::invalid;

pub use runner::{spawn_source, SourceSink};

/// Produces a source's changes, one batch at a time. Most sources only
/// insert (every weight +1); upsert and change-data-capture sources also
/// retract rows they produced before.
pub trait BatchGenerator: Send {
    /// The next batch (possibly empty, when nothing arrived for a while), or
    /// `None` once the source is exhausted.
    fn next_batch(&mut self) -> Result<Option<ChangeBatch>>;

    /// Rows per second to pace at, or `None` for as fast as possible.
    fn rows_per_second(&self) -> Option<f64>;

    /// Whether this generator is one of several that split one ordered
    /// stream between them (each taking every n-th event), so that their
    /// batches must be committed in turn to keep event time in order: a
    /// generator thread that ran ahead of the others would make their rows
    /// late for the watermark. Readers of independent inputs (Kafka
    /// partitions) are not, and are committed as they come.
    fn in_lockstep(&self) -> bool {
        false
    }

    /// Where this generator stands after the batches it returned, when it
    /// reads an external log (Kafka: the next offset of each partition it
    /// reads). Generators that produce their stream themselves return
    /// `None`; the runner counts their rows instead.
    fn position(&self) -> Option<SourcePosition> {
        None
    }

    /// Jumps over the next `rows` rows without producing them, for a
    /// generator resumed from a checkpoint; false when it cannot, and the
    /// runner then produces and drops them. Generators whose rows are a
    /// function of their position (Nexmark) jump in constant time.
    fn skip(&mut self, _rows: u64) -> bool {
        false
    }
}

/// How far a reader has read its source, saved with each checkpoint so
/// that a restarted reader goes on from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePosition {
    /// A Kafka topic: the next offset to read, by partition.
    Offsets(BTreeMap<i32, i64>),
    /// A generator: rows produced so far by each of its threads.
    Rows(Vec<u64>),
}

impl SourcePosition {
    /// Folds in the position of generator thread `part`.
    pub fn merge(&mut self, part: usize, other: &SourcePosition) {
        match (self, other) {
            (SourcePosition::Offsets(mine), SourcePosition::Offsets(theirs)) => {
                mine.extend(theirs.iter().map(|(p, o)| (*p, *o)));
            }
            (SourcePosition::Rows(mine), SourcePosition::Rows(theirs)) => {
                if mine.len() <= part {
                    mine.resize(part + 1, 0);
                }
                mine[part] = theirs.iter().sum();
            }
            (me, other) => *me = other.clone(),
        }
    }

    /// The position as bytes, for the state store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            SourcePosition::Offsets(map) => {
                out.push(0);
                for (p, o) in map {
                    out.extend_from_slice(&p.to_le_bytes());
                    out.extend_from_slice(&o.to_le_bytes());
                }
            }
            SourcePosition::Rows(rows) => {
                out.push(1);
                for r in rows {
                    out.extend_from_slice(&r.to_le_bytes());
                }
            }
        }
        out
    }

    /// The position [`SourcePosition::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || MillraceError::storage("a checkpointed source position is damaged");
        match bytes.split_first() {
            Some((0, rest)) if rest.len() % 12 == 0 => Ok(SourcePosition::Offsets(
                rest.chunks_exact(12)
                    .map(|c| {
                        let (p, o) = c.split_at(4);
                        Ok((
                            i32::from_le_bytes(p.try_into().map_err(|_| bad())?),
                            i64::from_le_bytes(o.try_into().map_err(|_| bad())?),
                        ))
                    })
                    .collect::<Result<_>>()?,
            )),
            Some((1, rest)) if rest.len() % 8 == 0 => Ok(SourcePosition::Rows(
                rest.chunks_exact(8)
                    .map(|c| Ok(u64::from_le_bytes(c.try_into().map_err(|_| bad())?)))
                    .collect::<Result<_>>()?,
            )),
            _ => Err(bad()),
        }
    }
}

/// Builds a source's generators (see [`SourceSpec::make_generators`]).
pub type GeneratorFactory =
    Box<dyn Fn(&ReaderContext) -> Result<Vec<Box<dyn BatchGenerator>>> + Send + Sync>;

/// What a reader of a source is for: passed to the generators it starts.
#[derive(Clone, Default)]
pub struct ReaderContext {
    /// The source read.
    pub source: String,
    /// The view fed.
    pub view: String,
    /// The reader's counters, which generators update.
    pub progress: Arc<SourceProgress>,
    /// Where to go on from, when the reader resumes a checkpointed view.
    pub resume: Option<SourcePosition>,
}

/// A `CREATE SOURCE` statement, ready for its connector.
pub struct SourceDecl<'a> {
    /// The source's name.
    pub name: &'a str,
    /// Declared columns, if any.
    pub declared: Option<SchemaRef>,
    /// `WITH` options.
    pub options: &'a BTreeMap<String, String>,
    /// `FORMAT f ENCODE e`, lower-cased.
    pub format: Option<(String, String)>,
    /// Options given after `ENCODE e`.
    pub encode_options: &'a BTreeMap<String, String>,
    /// Declared `PRIMARY KEY` columns.
    pub primary_key: &'a [String],
    /// `INCLUDE` clauses: (what, header name, column, Arrow type if declared).
    pub includes: Vec<Include>,
    /// Whether to check that the external system is reachable now (false
    /// when the catalog is replayed at start, so that an unreachable broker
    /// does not keep the server down).
    pub validate: bool,
}

/// One metadata column of a source (`INCLUDE ...`).
#[derive(Debug, Clone)]
pub struct Include {
    /// What fills it.
    pub what: IncludeKind,
    /// Its column name.
    pub column: String,
    /// Its declared type, if given.
    pub data_type: Option<datafusion::arrow::datatypes::DataType>,
}

/// The record metadata a column can be filled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncludeKind {
    /// The record key.
    Key,
    /// The partition number.
    Partition,
    /// The record's offset in its partition.
    Offset,
    /// The record's timestamp.
    Timestamp,
    /// The value of the first header with this name.
    Header(String),
}

/// A parsed source definition.
pub struct SourceSpec {
    /// The connector name (`datagen`, `nexmark`).
    pub connector: String,
    /// The rows' schema.
    pub schema: SchemaRef,
    /// Whether the source only ever inserts rows (generators, plain Kafka
    /// topics); upsert and change-data-capture sources also retract.
    pub append_only: bool,
    /// Whether the source's batches are records with their keys (upsert
    /// topics, change-data-capture topics with a primary key): the schema
    /// of [`crate::stream::upsert::keyed_schema`], turned into changes by
    /// an upsert operator at the head of each view that reads the source.
    pub keyed: bool,
    /// Builds fresh generators positioned at the start of the stream. Each
    /// produces a disjoint part of it, so that several threads can share the
    /// work; together they produce the whole stream.
    pub make_generators: GeneratorFactory,
}

/// Builds a generator source (`datagen`, `nexmark`) from its declared
/// columns (possibly none, where the connector implies them) and its
/// `WITH` options.
pub fn build_source(
    declared: Option<SchemaRef>,
    options: &BTreeMap<String, String>,
) -> Result<SourceSpec> {
    let empty = BTreeMap::new();
    build_declared(&SourceDecl {
        name: "",
        declared,
        options,
        format: None,
        encode_options: &empty,
        primary_key: &[],
        includes: vec![],
        validate: false,
    })
}

/// Builds a source from its whole declaration.
pub fn build_declared(decl: &SourceDecl<'_>) -> Result<SourceSpec> {
    let connector = decl
        .options
        .get("connector")
        .ok_or_else(|| invalid("CREATE SOURCE needs WITH (connector = '...')"))?
        .to_ascii_lowercase();
    if connector != "kafka" {
        if decl.format.is_some() {
            return Err(MillraceError::not_supported(format!(
                "FORMAT ... ENCODE on a {connector} source (it produces typed rows)"
            )));
        }
        if !decl.includes.is_empty() {
            return Err(MillraceError::not_supported(format!(
                "INCLUDE on a {connector} source (its rows carry no metadata)"
            )));
        }
        if !decl.primary_key.is_empty() {
            return Err(MillraceError::not_supported(format!(
                "PRIMARY KEY on a {connector} source"
            )));
        }
    }
    match connector.as_str() {
        "datagen" => datagen::build(decl.declared.clone(), decl.options),
        "nexmark" => nexmark::build(decl.declared.clone(), decl.options),
        "kafka" => kafka::build(decl),
        other => Err(MillraceError::not_supported(format!(
            "source connector '{other}' (available: datagen, nexmark, kafka)"
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
    /// Every produced row is committed and, for a stream that ended, so is
    /// its end.
    pub closed: AtomicBool,
    /// The source has been asked to stop.
    pub stop: AtomicBool,
    /// The generator thread is running.
    pub started: AtomicBool,
    /// Records that could not be decoded (skipped).
    pub bad_records: AtomicU64,
    /// Per-partition position and counters, for partitioned sources.
    pub partitions: std::sync::Mutex<BTreeMap<i32, PartitionProgress>>,
}

/// Where a reader stands in one partition of a partitioned source.
#[derive(Debug, Default, Clone)]
pub struct PartitionProgress {
    /// The next offset to read.
    pub next_offset: i64,
    /// The partition's high watermark when last asked, if known.
    pub high_watermark: Option<i64>,
    /// Records read.
    pub records: u64,
    /// Payload and key bytes read.
    pub bytes: u64,
    /// Records that could not be decoded.
    pub errors: u64,
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
