//! The engine: executes statements against the catalog, the tables and the
//! materialized views, and publishes a consistent [`Snapshot`] after every
//! committed change.
//!
//! Writers (DDL and DML) are serialized by one lock; each committed change
//! is an epoch. A change to tables flows through every dependent view's
//! dataflow in creation order (a view can only read relations created before
//! it), all in the same epoch, and only then is the new snapshot published.
//! Readers take the published snapshot without locking the writer, so reads
//! never block ingestion and never see half of a change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::CatalogProvider;
use datafusion::catalog::{MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::common::ParamValues;
use datafusion::datasource::{TableType, ViewTable};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, ColumnOption, CommentObject, CreateTable, CreateView, Delete, FromTable,
    Ident, ObjectName, ObjectType, Statement, TableFactor, TableWithJoins, Update,
};
use tracing::{info, warn};

use super::catalog::{decode_entry, rows_namespace, CatalogEntry, Comments, CATALOG_NAMESPACE};
use super::checkpoint::{
    self as ck, CheckpointRecord, ViewChanges, CHECKPOINT_NAMESPACE, LAST_CHECKPOINT_KEY,
    POSITIONS_NAMESPACE, STALE_VIEWS_KEY,
};
use super::pg_catalog::{self, PgCatalogInfo, PgRelation, SharedCatalog};
use super::snapshot::{RelationProvider, Snapshot, SourceProvider};
use super::statement::{
    parse_statement, split_statements, take_time_clauses, Command, CreateSink, CreateSource,
    ObjectKind, StatementText, WatermarkClause,
};
use super::table::TableState;
use super::types::{arrow_to_sql_name, sql_to_arrow, SQL_TYPE_KEY};
use super::users::Users;
use crate::error::{MillraceError, Result};
use crate::sink::{build_sink, spawn_sink, SinkHandle, SinkTarget};
use crate::source::{
    build_declared, spawn_source, Include, IncludeKind, ReaderContext, SourceDecl, SourcePosition,
    SourceProgress, SourceReader, SourceSink, SourceSpec,
};
use crate::storage::{StateStore, WriteBatch};
use crate::stream::lower::{is_append_only, lower_plan_marked, RelationInfo};
use crate::stream::materialize::Contents;
use crate::stream::operator::OperatorStats;
use crate::stream::operator::{codec, StateChanges};
use crate::stream::watermark::{
    watermark_type_supported, Mark, RelationMarks, WatermarkEntry, WatermarkProgress,
    WatermarkSpec, WatermarkTracker, Watermarks,
};
use crate::stream::{ChangeBatch, Dataflow};

/// Catalog name DataFusion resolves unqualified names in.
pub const CATALOG_NAME: &str = "millrace";
/// Schema name DataFusion resolves unqualified names in.
pub const SCHEMA_NAME: &str = "public";

/// What one statement produced.
#[derive(Debug, Clone)]
pub enum QueryOutput {
    /// Rows, with the command tag's verb (`SELECT`, `SHOW`, `EXPLAIN`).
    Rows {
        /// Schema of the rows.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
    },
    /// A command without rows.
    Command {
        /// The command tag (`INSERT`, `CREATE TABLE`, ...).
        tag: String,
        /// Affected row count, for tags that carry one.
        rows: Option<usize>,
    },
    /// The statement was empty.
    Empty,
}

impl QueryOutput {
    fn command(tag: &str) -> Self {
        QueryOutput::Command {
            tag: tag.to_string(),
            rows: None,
        }
    }

    fn count(tag: &str, rows: usize) -> Self {
        QueryOutput::Command {
            tag: tag.to_string(),
            rows: Some(rows),
        }
    }
}

/// A materialized view's running state.
struct MaterializedView {
    name: String,
    plan: LogicalPlan,
    dataflow: Dataflow,
    inputs: Vec<String>,
    contents: Contents,
    append_only: bool,
    /// `EMIT ON WINDOW CLOSE`: rows appear once their window closes.
    emit_on_window_close: bool,
    /// The view's catalog id, which names its checkpointed state.
    id: u64,
    /// Whether the view's state is written at checkpoints (checkpoints
    /// are on and every operator of its dataflow can write its state).
    checkpointed: bool,
    /// What its contents did since the last checkpoint.
    changes: ViewChanges,
}

/// How often a checkpoint is taken when no option says otherwise (the
/// server's `--checkpoint-interval-ms` default).
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The last checkpoint, for `millrace_catalog.checkpoints`.
#[derive(Debug, Default, Clone, Copy)]
struct CheckpointStatus {
    last: Option<CheckpointRecord>,
    /// Checkpoints committed since the server started.
    taken: u64,
    /// How long the last one took to build and commit, in microseconds.
    last_duration_us: u64,
    /// Whether checkpoints stopped after a failed write.
    failed: bool,
}

/// The longest a reader waits for the writer to publish the epoch it is
/// committing before it reads the last published one instead.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a waiting reader looks again for an idle writer.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// The least time between two epochs run for temporal filters alone: rows
/// that expire within it leave together.
const TIMER_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// When nothing is scheduled, how often the timer task checks that the
/// engine still exists.
const TIMER_IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// When the earliest scheduled change of any view's temporal filter falls
/// due, shared between the engine and the task that runs an epoch then.
struct Timers {
    /// Nanoseconds since the Unix epoch; `i64::MAX` when nothing is
    /// scheduled.
    due: std::sync::atomic::AtomicI64,
    /// Wakes the task when `due` moved earlier.
    changed: tokio::sync::Notify,
}

impl Timers {
    fn new() -> Self {
        Self {
            due: std::sync::atomic::AtomicI64::new(i64::MAX),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn due(&self) -> i64 {
        self.due.load(Ordering::SeqCst)
    }

    /// Whether a scheduled change is due at `now`.
    fn is_due(&self, now: i64) -> bool {
        self.due() <= now
    }
}

/// Runs an epoch whenever a temporal filter's scheduled change falls due,
/// so that subscribers and sinks see rows expire; ends with the engine.
async fn run_timers(engine: Weak<Engine>, timers: Arc<Timers>) {
    loop {
        let changed = timers.changed.notified();
        let now = crate::stream::temporal::system_now_nanos();
        let due = timers.due();
        if due <= now {
            let Some(e) = engine.upgrade() else {
                return;
            };
            {
                let mut state = e.writer.lock().await;
                if let Err(err) = e.commit_epoch(&mut state, vec![], None, false) {
                    warn!(error = %err, "epoch for temporal filters failed");
                }
            }
            drop(e);
            tokio::time::sleep(TIMER_MIN_GAP).await;
            continue;
        }
        let wait = u64::try_from(due - now)
            .map(std::time::Duration::from_nanos)
            .unwrap_or(TIMER_IDLE_CHECK)
            .min(TIMER_IDLE_CHECK);
        let _ = tokio::time::timeout(wait, changed).await;
        if engine.strong_count() == 0 {
            return;
        }
    }
}

/// Takes a checkpoint every `interval` while anything changed since the
/// last; ends with the engine.
async fn run_checkpoints(engine: Weak<Engine>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(e) = engine.upgrade() else {
            return;
        };
        let mut state = e.writer.lock().await;
        if state.uncheckpointed || super::sink_log::delivery_unrecorded(&state.sinks) {
            if let Err(err) = e.checkpoint(&mut state) {
                warn!(error = %err, "checkpoint failed");
            }
        }
    }
}

/// Everything the single writer owns.
#[derive(Default)]
struct EngineState {
    catalog: BTreeMap<String, CatalogEntry>,
    tables: HashMap<String, TableState>,
    views: Vec<MaterializedView>,
    sources: HashMap<String, SourceSpec>,
    /// Running sinks by name.
    sinks: HashMap<String, SinkHandle>,
    /// Open `SUBSCRIBE`s.
    subscribers: Vec<Subscriber>,
    next_id: u64,
    epoch: u64,
    /// When replaying the catalog at start, nothing is written back.
    replaying: bool,
    /// The catalog as `pg_catalog` describes it; rebuilt at the next
    /// publish after a definition changes.
    pg_info: Option<Arc<PgCatalogInfo>>,
    /// Names and schemas of the system relations.
    system_relations: Vec<(String, SchemaRef)>,
    /// Declared watermarks of sources and tables, by relation.
    declared_watermarks: HashMap<String, Arc<WatermarkSpec>>,
    /// The watermark of each table that declares one; changes behind it
    /// are refused (deletes) or dropped (inserts).
    table_watermarks: HashMap<String, WatermarkTracker>,
    /// Sources with `INCLUDE proctime`, with the schema their readers
    /// produce (without that column, which the engine appends).
    proctime_sources: HashMap<String, SchemaRef>,
    /// Whether an epoch committed since the last checkpoint.
    uncheckpointed: bool,
    /// Where each reader (source, view) stands after what it committed.
    positions: HashMap<(String, String), SourcePosition>,
    /// Positions read from the last checkpoint, for readers about to start.
    resume_positions: HashMap<(String, String), SourcePosition>,
    /// A checkpoint write failed: no more are taken (the store keeps the
    /// last whole one), and table writes mark the view checkpoints stale.
    checkpoints_failed: bool,
}

/// One declared watermark as `millrace_catalog.watermarks` lists it: a
/// table's own, or the one a view's dataflow applies to what it reads.
#[derive(Debug, Clone)]
struct WatermarkRow {
    view: Option<String>,
    entry: WatermarkEntry,
}

/// How many epochs a `SUBSCRIBE` may fall behind before it is ended, so
/// that a client that stops reading cannot grow the server's memory.
pub const SUBSCRIBE_BACKLOG: usize = 4096;

/// One epoch's change to a subscribed relation: the epoch and the change.
pub type SubscribedChange = (u64, ChangeBatch);

/// An open `SUBSCRIBE`, fed after each commit.
struct Subscriber {
    relation: String,
    schema: SchemaRef,
    tx: tokio::sync::mpsc::Sender<SubscribedChange>,
}

/// An open `SUBSCRIBE` as `millrace_catalog.subscriptions` lists it. The
/// sender is weak so that the listing never keeps a stream open: once the
/// engine drops the subscriber, or the client drops the receiving end, the
/// entry is gone.
#[derive(Debug)]
struct SubscriptionEntry {
    relation: String,
    since_epoch: u64,
    tx: tokio::sync::mpsc::WeakSender<SubscribedChange>,
}

/// Options for opening an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Treat `CREATE` of an existing object as a no-op (used for `--init-sql`).
    pub skip_existing: bool,
    /// The schema unqualified names resolve in (from the session's
    /// `search_path`); `public` when `None`.
    pub default_schema: Option<String>,
    /// The client session's settings, lower-cased name to value, for
    /// `current_setting`.
    pub settings: BTreeMap<String, String>,
}

/// The Millrace engine. Cheap to share behind an `Arc`.
pub struct Engine {
    me: Weak<Engine>,
    writer: tokio::sync::Mutex<EngineState>,
    /// Every running source reader (one per source and view reading it),
    /// readable without the writer lock: FLUSH waits on them.
    readers: std::sync::Mutex<Vec<SourceReader>>,
    /// Open subscriptions, for `millrace_catalog.subscriptions`.
    subscriptions: std::sync::Mutex<Vec<SubscriptionEntry>>,
    /// Declared watermarks in use, for `millrace_catalog.watermarks`.
    watermarks: std::sync::Mutex<Vec<WatermarkRow>>,
    /// The snapshot readers take, if one is published. Published lazily:
    /// see [`Engine::snapshot`].
    published: RwLock<Option<Arc<Snapshot>>>,
    /// Epochs committed so far (the writer's `epoch`, readable without its
    /// lock): a published snapshot of this epoch is current.
    committed_epoch: std::sync::atomic::AtomicU64,
    /// A reader waits for a snapshot of the epoch being committed.
    publish_wanted: std::sync::atomic::AtomicBool,
    /// Wakes the readers waiting for a snapshot.
    publish_done: tokio::sync::Notify,
    base_state: SessionState,
    /// The latest catalog, for catalog functions.
    pg_shared: SharedCatalog,
    schema: Arc<MemorySchemaProvider>,
    store: Arc<dyn StateStore>,
    /// Login users, read by authentication without the writer lock.
    users: Arc<Users>,
    /// When a temporal filter next needs an epoch.
    timers: Arc<Timers>,
    /// How often checkpoints are taken; `None`: never (views are rebuilt
    /// on start, and views over sources start over).
    checkpoint_interval: Option<std::time::Duration>,
    /// The last checkpoint, readable without the writer lock.
    checkpoint_status: std::sync::Mutex<CheckpointStatus>,
    /// How many views are checkpointed, for the system view.
    checkpointed_views: std::sync::atomic::AtomicUsize,
}

fn lower_name(name: &ObjectName) -> Result<String> {
    let last = name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .ok_or_else(|| MillraceError::plan(format!("invalid name {name}")))?;
    Ok(ident_name(last))
}

fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn quote_ident(name: &str) -> String {
    Ident::with_quote('"', name).to_string()
}

/// Rows of text under `columns`, as a statement's output (`SHOW`).
pub fn text_batch(columns: &[&str], rows: Vec<Vec<String>>) -> Result<QueryOutput> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|c| {
            Arc::new(StringArray::from(
                rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok(QueryOutput::Rows {
        schema,
        batches: vec![batch],
    })
}

impl Engine {
    /// Opens the engine on `store`, replaying its catalog and table contents,
    /// with checkpoints every [`DEFAULT_CHECKPOINT_INTERVAL`].
    pub async fn open(store: Arc<dyn StateStore>) -> Result<Arc<Self>> {
        Self::open_with(store, Some(DEFAULT_CHECKPOINT_INTERVAL)).await
    }

    /// Opens the engine on `store`, restoring the views from the last
    /// checkpoint, and taking checkpoints every `checkpoint_interval`
    /// (never with `None`).
    pub async fn open_with(
        store: Arc<dyn StateStore>,
        checkpoint_interval: Option<std::time::Duration>,
    ) -> Result<Arc<Self>> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_target_partitions(2);
        // `TIMESTAMPTZ '...'` and `::timestamptz` give UTC instants, typed
        // with their zone (without it DataFusion types them as timestamps
        // without time zone, and clients get the wrong type).
        config.options_mut().execution.time_zone = Some(super::types::UTC.to_string());
        let schema = Arc::new(MemorySchemaProvider::new());
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema(SCHEMA_NAME, schema.clone())?;
        // PostgreSQL's typing of quoted literals against booleans runs
        // before DataFusion's own type coercion.
        let mut analyzer_rules = datafusion::optimizer::Analyzer::new().rules;
        analyzer_rules.insert(0, Arc::new(super::pg_functions::TextLiteralCoercion));
        // After type coercion, which adds casts of its own.
        analyzer_rules.push(Arc::new(super::pg_functions::PgTextCasts));
        let base_state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_analyzer_rules(analyzer_rules)
            .build();
        base_state
            .catalog_list()
            .register_catalog(CATALOG_NAME.to_string(), catalog);
        let pg_shared = SharedCatalog::default();
        let base_state = pg_catalog::install(base_state, CATALOG_NAME, pg_shared.clone())?;
        let users = Arc::new(Users::load(store.clone())?);
        let engine = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            readers: std::sync::Mutex::new(Vec::new()),
            subscriptions: std::sync::Mutex::new(Vec::new()),
            watermarks: std::sync::Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(EngineState::default()),
            published: RwLock::new(Some(Arc::new(Snapshot::default()))),
            committed_epoch: Default::default(),
            publish_wanted: Default::default(),
            publish_done: tokio::sync::Notify::new(),
            base_state,
            pg_shared,
            schema,
            store,
            users,
            timers: Arc::new(Timers::new()),
            checkpoint_interval,
            checkpoint_status: Default::default(),
            checkpointed_views: Default::default(),
        });
        let system = engine.register_system_relations()?;
        engine.writer.lock().await.system_relations = system;
        engine.replay().await?;
        tokio::spawn(run_timers(Arc::downgrade(&engine), engine.timers.clone()));
        if let Some(interval) = checkpoint_interval {
            tokio::spawn(run_checkpoints(Arc::downgrade(&engine), interval));
        }
        Ok(engine)
    }

    /// Opens the engine on the state store in data directory `dir` (see
    /// [`crate::storage::open_in`]).
    pub async fn open_dir(dir: &Path) -> Result<Arc<Self>> {
        Self::open_dir_with(dir, None).await
    }

    /// Opens the engine on data directory `dir`, creating a new one's store
    /// as `store` (default: [`crate::storage::StoreKind::DEFAULT`]).
    pub async fn open_dir_with(
        dir: &Path,
        store: Option<crate::storage::StoreKind>,
    ) -> Result<Arc<Self>> {
        Self::open(crate::storage::open_in(dir, store)?).await
    }

    async fn replay(&self) -> Result<()> {
        let mut state = self.writer.lock().await;
        let mut entries = Vec::new();
        for (_, v) in self.store.scan(CATALOG_NAMESPACE)? {
            entries.push(decode_entry(&v)?);
        }
        entries.sort_by_key(|e| e.id);
        state.replaying = true;
        for entry in &entries {
            state.next_id = entry.id;
            let parts = split_statements(&entry.create_sql)?;
            let Some(part) = parts.first() else { continue };
            let cmd = parse_statement(&entry.create_sql, part)?;
            let result = self.execute_command(&mut state, part, cmd, None).await;
            if let Err(e) = result {
                state.replaying = false;
                return Err(MillraceError::storage(format!(
                    "cannot restore \"{}\" from its definition: {e}",
                    entry.name
                )));
            }
            if let Some(e) = state.catalog.get_mut(&entry.name) {
                e.comments = entry.comments.clone();
            }
            if let Some(table) = state.tables.get_mut(&entry.name) {
                let mut rows = crate::stream::materialize::RowMap::new();
                for (k, v) in self.store.scan(&rows_namespace(entry.id))? {
                    let count = i64::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                        MillraceError::storage(format!("corrupt row count in table {}", entry.name))
                    })?);
                    rows.insert(Arc::from(k.as_slice()), count);
                }
                table.contents.set_rows(rows);
                table.rebuild_key_index()?;
                // The table's watermark, from the rows it holds.
                let st = &mut *state;
                if let Some(tracker) = st.table_watermarks.get_mut(&entry.name) {
                    if let Some(t) = st.tables.get(&entry.name) {
                        for chunk in t.contents.as_change_batches()? {
                            tracker.observe(&chunk)?;
                        }
                    }
                }
            }
        }
        state.replaying = false;
        state.next_id = entries.last().map(|e| e.id + 1).unwrap_or(0);
        // Views were replayed before table rows were loaded: restore them
        // from the last checkpoint, or rebuild them.
        self.restore_views(&mut state)?;
        self.resume_sinks(&mut state)?;
        self.publish(&mut state);
        let read: Vec<(String, String)> = state
            .views
            .iter()
            .flat_map(|v| v.inputs.iter().map(|i| (i.clone(), v.name.clone())))
            .collect();
        for (source, view) in read {
            self.start_reader(&mut state, &source, &view);
        }
        if !entries.is_empty() {
            info!(relations = entries.len(), "restored catalog");
        }
        Ok(())
    }

    /// A snapshot of the latest committed epoch, for a reader.
    ///
    /// Snapshots are made only when read. A published snapshot shares its
    /// contents with the writer's, so every change the writer makes after
    /// it copies what it touches; the writer drops a snapshot no reader
    /// holds before each source epoch (see [`Engine::commit_epoch`]), and
    /// a stream into a view then costs nothing for snapshots nobody reads.
    /// A reader that finds no current snapshot publishes one itself when
    /// the writer is idle, or asks the writer to publish at the end of the
    /// epoch it is committing (waiting at most [`PUBLISH_WAIT`], then
    /// reading the last published snapshot, if any).
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
        loop {
            if let Some(s) = self.current_snapshot() {
                return s;
            }
            if let Ok(mut state) = self.writer.try_lock() {
                return self.snapshot_locked(&mut state);
            }
            let done = self.publish_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            self.publish_wanted.store(true, Ordering::SeqCst);
            // Published between the first look and the request?
            if let Some(s) = self.current_snapshot() {
                return s;
            }
            // The lock may be held by something that does not commit
            // (and so does not publish): look again every few ms.
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let _ = tokio::time::timeout((deadline - now).min(PUBLISH_RETRY), done).await;
        }
        if let Some(s) = self.published_snapshot() {
            return s;
        }
        let mut state = self.writer.lock().await;
        self.snapshot_locked(&mut state)
    }

    /// The published snapshot, if it is of the latest committed epoch and
    /// no temporal filter has a change due.
    fn current_snapshot(&self) -> Option<Arc<Snapshot>> {
        let epoch = self
            .committed_epoch
            .load(std::sync::atomic::Ordering::SeqCst);
        if self
            .timers
            .is_due(crate::stream::temporal::system_now_nanos())
        {
            return None;
        }
        self.published_snapshot().filter(|s| s.epoch == epoch)
    }

    /// The published snapshot, current or not.
    fn published_snapshot(&self) -> Option<Arc<Snapshot>> {
        match self.published.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A current snapshot, for the writer: the published one if it shows
    /// the writer's epoch and catalog, else a new one.
    fn snapshot_locked(&self, state: &mut EngineState) -> Arc<Snapshot> {
        // Temporal filters' changes due by now come first, so that a read
        // sees the views as of its own time.
        if self
            .timers
            .is_due(crate::stream::temporal::system_now_nanos())
        {
            if let Err(e) = self.commit_epoch(state, vec![], None, false) {
                warn!(error = %e, "epoch for temporal filters failed");
            }
        }
        match self.published_snapshot() {
            Some(s) if s.epoch == state.epoch && state.pg_info.is_some() => s,
            _ => self.publish(state),
        }
    }

    /// Drops the published snapshot if no reader holds it, so that the
    /// writer's next changes touch contents it alone owns.
    fn release_unread_snapshot(&self) {
        let mut slot = match self.published.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if slot.as_ref().is_some_and(|s| Arc::strong_count(s) == 1) {
            *slot = None;
        }
    }

    /// Records when the views' temporal filters next need an epoch, and
    /// wakes the timer task if that moved earlier.
    fn refresh_timers(&self, state: &EngineState) {
        let due = state
            .views
            .iter()
            .filter_map(|v| v.dataflow.next_due())
            .min()
            .unwrap_or(i64::MAX);
        let before = self.timers.due.swap(due, Ordering::SeqCst);
        if due < before {
            self.timers.changed.notify_one();
        }
    }

    /// Makes the writer's current contents and catalog the published
    /// snapshot, wakes the readers waiting for one, and returns it.
    ///
    /// Readers see checkpointed state only: an epoch not yet in a
    /// checkpoint is checkpointed first, so that what a reader saw is never
    /// taken back by a crash. If that fails, the last published snapshot is
    /// returned instead.
    fn publish(&self, state: &mut EngineState) -> Arc<Snapshot> {
        if state.uncheckpointed && !state.replaying {
            if let Err(e) = self.checkpoint(state) {
                warn!(error = %e, "checkpoint before publishing failed");
                if let Some(s) = self.published_snapshot() {
                    return s;
                }
            }
        }
        let mut relations = HashMap::new();
        for (name, t) in &state.tables {
            relations.insert(name.clone(), t.contents.snapshot());
        }
        for v in &state.views {
            relations.insert(v.name.clone(), v.contents.snapshot());
        }
        let catalog = match &state.pg_info {
            Some(info) => info.clone(),
            None => {
                let info = Arc::new(pg_catalog_info(state));
                match self.pg_shared.write() {
                    Ok(mut g) => *g = info.clone(),
                    Err(p) => *p.into_inner() = info.clone(),
                }
                state.pg_info = Some(info.clone());
                info
            }
        };
        let snap = Arc::new(Snapshot {
            epoch: state.epoch,
            relations,
            catalog,
        });
        match self.published.write() {
            Ok(mut g) => *g = Some(snap.clone()),
            Err(p) => *p.into_inner() = Some(snap.clone()),
        }
        self.publish_wanted
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.publish_done.notify_waiters();
        snap
    }

    /// A session state for one query, reading `snapshot`.
    fn query_state(
        &self,
        snapshot: Arc<Snapshot>,
        options: Option<&EngineOptions>,
    ) -> SessionState {
        let mut state = self.base_state.clone();
        state.config_mut().set_extension(snapshot);
        if let Some(options) = options {
            let config = state.config_mut().options_mut();
            if let Some(schema) = &options.default_schema {
                config.catalog.default_schema = schema.clone();
            }
            config
                .extensions
                .insert(super::pg_functions::SessionSettings(
                    options.settings.clone(),
                ));
        }
        // Physical expressions take their configuration from here, which
        // carries the session's settings to `current_setting`.
        state.mark_start_execution();
        state
    }

    /// Whether schema `name` exists (for resolving `search_path`).
    pub fn schema_exists(&self, name: &str) -> bool {
        self.base_state
            .catalog_list()
            .catalog(CATALOG_NAME)
            .is_some_and(|c| c.schema(name).is_some())
    }

    /// Work counters of a materialized view's operators, in graph order.
    pub async fn view_stats(&self, name: &str) -> Option<Vec<(String, OperatorStats)>> {
        let state = self.writer.lock().await;
        state
            .views
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.dataflow.stats())
    }

    /// Names of the materialized views, in creation order.
    pub async fn materialized_views(&self) -> Vec<String> {
        let state = self.writer.lock().await;
        state.views.iter().map(|v| v.name.clone()).collect()
    }

    /// The `CREATE` statement of a relation.
    pub async fn create_sql(&self, name: &str) -> Option<String> {
        let state = self.writer.lock().await;
        state.catalog.get(name).map(|e| e.create_sql.clone())
    }

    /// Flushes the state store to disk.
    pub fn flush_store(&self) -> Result<()> {
        self.store.flush()
    }

    /// Executes every statement in `sql`, stopping at the first error.
    /// Returns the outputs of the statements that ran, and the error if one failed.
    pub async fn execute_all(
        &self,
        sql: &str,
        options: &EngineOptions,
    ) -> (Vec<QueryOutput>, Option<MillraceError>) {
        let parts = match split_statements(sql) {
            Ok(p) => p,
            Err(e) => return (vec![], Some(e)),
        };
        let mut outputs = Vec::new();
        for part in &parts {
            let result = match parse_statement(sql, part) {
                Ok(cmd) => self.execute_parsed(part, cmd, None, options).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(o) => outputs.push(o),
                Err(e) => return (outputs, Some(e)),
            }
        }
        (outputs, None)
    }

    /// Executes one parsed statement with optional bound parameters.
    pub async fn execute_parsed(
        &self,
        text: &StatementText,
        cmd: Command,
        params: Option<ParamValues>,
        options: &EngineOptions,
    ) -> Result<QueryOutput> {
        if let Command::Flush = cmd {
            self.wait_for_sources().await?;
        }
        // Reads never take the writer lock.
        if let Command::Sql(stmt) = &cmd {
            if let Statement::Query(_) = stmt.as_ref() {
                let snapshot = self.snapshot().await;
                return self
                    .run_query((**stmt).clone(), params, Some(options), snapshot)
                    .await;
            }
            if let Statement::Explain { statement, .. } = stmt.as_ref() {
                if !matches!(statement.as_ref(), Statement::CreateView(_)) {
                    let snapshot = self.snapshot().await;
                    return self
                        .run_query((**stmt).clone(), params, Some(options), snapshot)
                        .await;
                }
            }
            if options.skip_existing {
                if let Some(name) = created_name(stmt) {
                    let state = self.writer.lock().await;
                    if state.catalog.contains_key(&name) {
                        info!(relation = %name, "already exists; left as it is");
                        return Ok(QueryOutput::command(created_tag(stmt)));
                    }
                }
            }
        }
        let mut state = self.writer.lock().await;
        // Readers arriving while this statement runs read the snapshot
        // from before it.
        if self.published_snapshot().is_none() {
            self.publish(&mut state);
        }
        let output = self.execute_command(&mut state, text, cmd, params).await;
        // A definition changed: make the new catalog visible at once.
        if state.pg_info.is_none() {
            self.publish(&mut state);
        }
        output
    }

    /// Plans a statement for the extended protocol: returns the parameter
    /// types and the result schema (empty for commands).
    pub async fn describe(
        &self,
        cmd: &Command,
        options: &EngineOptions,
    ) -> Result<(Vec<Option<DataType>>, SchemaRef)> {
        let empty: SchemaRef = Arc::new(Schema::empty());
        let Command::Sql(stmt) = cmd else {
            return Ok((vec![], describe_own_command(cmd)));
        };
        let plan_stmt: Statement = match stmt.as_ref() {
            Statement::Query(_) | Statement::Insert(_) => (**stmt).clone(),
            Statement::Explain { statement, .. }
                if !matches!(statement.as_ref(), Statement::CreateView(_)) =>
            {
                (**stmt).clone()
            }
            Statement::Update(u) => {
                let state = self.writer.lock().await;
                self.update_query(&state, u)?
            }
            Statement::Delete(d) => {
                let state = self.writer.lock().await;
                self.delete_query(&state, d)?.0
            }
            Statement::ShowTables { .. } => {
                return Ok((
                    vec![],
                    describe_own_command(&Command::ShowObjects(ObjectKind::Table)),
                ))
            }
            _ => return Ok((vec![], empty)),
        };
        let plan_stmt = super::pg_rewrite::rewrite_query(plan_stmt);
        // Describing plans without reading rows: any snapshot will do.
        let snapshot = self.published_snapshot().unwrap_or_default();
        let state = self.query_state(snapshot, Some(options));
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(plan_stmt)))
            .await?;
        let types = plan.get_parameter_types()?;
        let mut ordered: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(k, v)| {
                k.trim_start_matches('$')
                    .parse::<usize>()
                    .ok()
                    .map(|i| (i, v))
            })
            .collect();
        ordered.sort_by_key(|(i, _)| *i);
        let n = ordered.last().map(|(i, _)| *i).unwrap_or(0);
        let mut params = vec![None; n];
        for (i, t) in ordered {
            if i >= 1 {
                params[i - 1] = t;
            }
        }
        let schema = match (&plan, stmt.as_ref()) {
            (_, Statement::Query(_)) | (_, Statement::Explain { .. }) => {
                Arc::new(plan.schema().as_arrow().clone())
            }
            _ => empty,
        };
        Ok((params, schema))
    }

    async fn run_query(
        &self,
        stmt: Statement,
        params: Option<ParamValues>,
        options: Option<&EngineOptions>,
        snapshot: Arc<Snapshot>,
    ) -> Result<QueryOutput> {
        let stmt = super::pg_rewrite::rewrite_query(stmt);
        let state = self.query_state(snapshot, options);
        let mut plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
            .await?;
        if let Some(p) = params {
            plan = plan.with_param_values(p)?;
        }
        if let LogicalPlan::Statement(_) | LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) = plan {
            return Err(MillraceError::not_supported(format!(
                "statement {}",
                plan.display()
            )));
        }
        let batches = execute_plan(&state, &plan).await?;
        Ok(QueryOutput::Rows {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            batches,
        })
    }

    fn execute_command<'a>(
        &'a self,
        state: &'a mut EngineState,
        text: &'a StatementText,
        cmd: Command,
        params: Option<ParamValues>,
    ) -> futures::future::BoxFuture<'a, Result<QueryOutput>> {
        Box::pin(async move {
            match cmd {
                Command::Empty => Ok(QueryOutput::Empty),
                Command::Flush => {
                    // Commits are synchronous: every accepted change is
                    // already visible in every view. Make it durable too.
                    self.store.flush()?;
                    Ok(QueryOutput::command("FLUSH"))
                }
                Command::CreateSource(cs) => self.create_source(state, *cs),
                Command::CreateSink(cs) => self.create_sink(state, *cs),
                Command::DropSource {
                    kind,
                    names,
                    if_exists,
                    cascade,
                } => {
                    let names = names
                        .into_iter()
                        .map(|n| ObjectName::from(vec![Ident::with_quote('"', n)]))
                        .collect();
                    self.drop_objects(state, kind, if_exists, names, cascade)
                }
                Command::ShowObjects(ObjectKind::Source) => {
                    let readers = self.readers();
                    let mut rows: Vec<Vec<String>> = Vec::new();
                    for (name, spec) in &state.sources {
                        let mine: Vec<&SourceReader> =
                            readers.iter().filter(|r| &r.source == name).collect();
                        if mine.is_empty() {
                            rows.push(vec![
                                name.clone(),
                                spec.connector.clone(),
                                String::new(),
                                "idle".into(),
                                "0".into(),
                                "0".into(),
                            ]);
                        }
                        for r in mine {
                            rows.push(vec![
                                name.clone(),
                                spec.connector.clone(),
                                r.view.clone(),
                                r.progress.status().to_string(),
                                r.progress.ingested.load(Ordering::Relaxed).to_string(),
                                (r.progress.errors.load(Ordering::Relaxed)
                                    + r.progress.bad_records.load(Ordering::Relaxed))
                                .to_string(),
                            ]);
                        }
                    }
                    rows.sort();
                    text_batch(SHOW_SOURCES_COLUMNS, rows)
                }
                Command::ShowObjects(ObjectKind::Sink) => {
                    let mut rows: Vec<Vec<String>> = state
                        .sinks
                        .iter()
                        .map(|(name, h)| {
                            let p = &h.progress;
                            vec![
                                name.clone(),
                                h.relation.clone(),
                                h.connector.clone(),
                                format!("{:?}", h.format).to_ascii_uppercase(),
                                p.rows.load(Ordering::Relaxed).to_string(),
                                p.delivered.load(Ordering::Relaxed).to_string(),
                                p.errors.load(Ordering::Relaxed).to_string(),
                                h.guarantee().to_string(),
                                h.undelivered().to_string(),
                                p.last_error
                                    .lock()
                                    .ok()
                                    .and_then(|e| e.clone())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect();
                    rows.sort();
                    text_batch(SHOW_SINKS_COLUMNS, rows)
                }
                Command::ShowObjects(kind) => {
                    let rows = state
                        .catalog
                        .values()
                        .filter(|e| e.kind == kind)
                        .map(|e| vec![e.name.clone()])
                        .collect::<Vec<_>>();
                    let mut rows = rows;
                    rows.sort();
                    text_batch(&["name"], rows)
                }
                Command::ShowCreate(kind, name) => {
                    let entry = state
                        .catalog
                        .get(&name)
                        .ok_or_else(|| MillraceError::UnknownRelation(name.clone()))?;
                    if entry.kind != kind {
                        return Err(wrong_kind(&name, kind));
                    }
                    text_batch(
                        &["name", "create_sql"],
                        vec![vec![entry.name.clone(), entry.create_sql.clone()]],
                    )
                }
                Command::Subscribe(_) => Err(MillraceError::not_supported(
                    "SUBSCRIBE outside a client session",
                )),
                Command::Sql(stmt) => self.execute_sql(state, text, *stmt, params).await,
            }
        })
    }

    async fn execute_sql(
        &self,
        state: &mut EngineState,
        text: &StatementText,
        stmt: Statement,
        params: Option<ParamValues>,
    ) -> Result<QueryOutput> {
        match stmt {
            Statement::Query(_) => {
                let snapshot = self.snapshot_locked(state);
                self.run_query(stmt, params, None, snapshot).await
            }
            Statement::CreateTable(ct) => self.create_table(state, ct, &text.text),
            Statement::CreateView(cv) => {
                if cv.materialized {
                    self.create_materialized_view(state, cv, &text.text).await
                } else {
                    self.create_view(state, cv, &text.text).await
                }
            }
            Statement::Explain { statement, .. } => match *statement {
                Statement::CreateView(cv) if cv.materialized => {
                    self.explain_view(state, cv, &text.text).await
                }
                other => {
                    let snapshot = self.snapshot_locked(state);
                    self.run_query(other, params, None, snapshot).await
                }
            },
            Statement::Insert(_) => self.insert(state, stmt, params).await,
            Statement::Update(u) => self.update(state, u, params).await,
            Statement::Delete(d) => self.delete(state, d, params).await,
            Statement::CreateRole(_)
            | Statement::AlterRole { .. }
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::Drop {
                object_type: ObjectType::Role | ObjectType::User,
                ..
            } => self.manage_users(state, &stmt),
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => {
                let kind = match object_type {
                    ObjectType::Table => ObjectKind::Table,
                    ObjectType::View => ObjectKind::View,
                    ObjectType::MaterializedView => ObjectKind::MaterializedView,
                    other => return Err(MillraceError::not_supported(format!("DROP {other}"))),
                };
                self.drop_objects(state, kind, if_exists, names, cascade)
            }
            Statement::ShowTables { .. } => {
                self.execute_command(state, text, Command::ShowObjects(ObjectKind::Table), None)
                    .await
            }
            Statement::Comment {
                object_type,
                object_name,
                comment,
                if_exists,
            } => self.comment_on(state, object_type, &object_name, comment, if_exists),
            other if crate::pgwire::session::is_session_statement(&other) => {
                Err(MillraceError::not_supported(format!(
                    "{}: session statements run only in a client session",
                    first_words(&other.to_string())
                )))
            }
            other => Err(MillraceError::not_supported(format!(
                "statement: {}",
                first_words(&other.to_string())
            ))),
        }
    }

    /// `COMMENT ON TABLE | VIEW | MATERIALIZED VIEW | FOREIGN TABLE | COLUMN
    /// name IS 'text' | NULL`: stored with the catalog entry, shown by
    /// `pg_description`, `obj_description` and `col_description`.
    fn comment_on(
        &self,
        state: &mut EngineState,
        object_type: CommentObject,
        object_name: &ObjectName,
        comment: Option<String>,
        if_exists: bool,
    ) -> Result<QueryOutput> {
        let parts: Vec<String> = object_name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(ident_name))
            .collect();
        let (relation, column) = match (object_type, parts.as_slice()) {
            (CommentObject::Column, [.., rel, col]) => (rel.clone(), Some(col.clone())),
            (CommentObject::Column, _) => {
                return Err(MillraceError::plan(format!(
                    "COMMENT ON COLUMN needs relation.column, got {object_name}"
                )))
            }
            (
                CommentObject::Table | CommentObject::View | CommentObject::MaterializedView,
                [.., rel],
            ) => (rel.clone(), None),
            (other, _) => return Err(MillraceError::not_supported(format!("COMMENT ON {other}"))),
        };
        let Some(entry) = state.catalog.get(&relation) else {
            if if_exists {
                return Ok(QueryOutput::command("COMMENT"));
            }
            return Err(MillraceError::UnknownRelation(relation));
        };
        let mut entry = entry.clone();
        match column {
            Some(col) => {
                if entry.schema.field_with_name(&col).is_err() {
                    return Err(MillraceError::Data {
                        sqlstate: "42703",
                        message: format!(
                            "column \"{col}\" of relation \"{relation}\" does not exist"
                        ),
                    });
                }
                match comment {
                    Some(c) => entry.comments.columns.insert(col, c),
                    None => entry.comments.columns.remove(&col),
                };
            }
            None => entry.comments.relation = comment,
        }
        self.register(state, entry)?;
        self.publish(state);
        Ok(QueryOutput::command("COMMENT"))
    }

    fn ensure_absent(&self, state: &EngineState, name: &str) -> Result<()> {
        if state.catalog.contains_key(name) {
            return Err(MillraceError::DuplicateRelation(name.to_string()));
        }
        Ok(())
    }

    fn register(&self, state: &mut EngineState, entry: CatalogEntry) -> Result<()> {
        if !state.replaying {
            let mut batch = WriteBatch::default();
            batch.put(CATALOG_NAMESPACE, entry.key(), entry.encode()?);
            self.store.write(batch)?;
        }
        state.next_id = state.next_id.max(entry.id + 1);
        state.catalog.insert(entry.name.clone(), entry);
        state.pg_info = None;
        Ok(())
    }

    fn create_table(
        &self,
        state: &mut EngineState,
        ct: CreateTable,
        text: &str,
    ) -> Result<QueryOutput> {
        let name = lower_name(&ct.name)?;
        let (_, clauses) = take_time_clauses(text)?;
        if state.catalog.contains_key(&name) {
            if ct.if_not_exists {
                return Ok(QueryOutput::command("CREATE TABLE"));
            }
            return Err(MillraceError::DuplicateRelation(name));
        }
        if ct.query.is_some() {
            return Err(MillraceError::not_supported("CREATE TABLE ... AS SELECT"));
        }
        if ct.columns.is_empty() {
            return Err(MillraceError::plan("a table needs at least one column"));
        }
        let mut fields = Vec::new();
        let mut primary_key: Vec<usize> = Vec::new();
        let mut seen = HashSet::new();
        for (i, col) in ct.columns.iter().enumerate() {
            let col_name = ident_name(&col.name);
            if !seen.insert(col_name.clone()) {
                return Err(MillraceError::Data {
                    sqlstate: "42701",
                    message: format!("column \"{col_name}\" specified more than once"),
                });
            }
            let (ty, sql_type) = sql_to_arrow(&col.data_type)?;
            let mut nullable = true;
            for opt in &col.options {
                match &opt.option {
                    ColumnOption::NotNull => nullable = false,
                    ColumnOption::Null => {}
                    ColumnOption::PrimaryKey(_) => {
                        nullable = false;
                        primary_key.push(i);
                    }
                    other => {
                        return Err(MillraceError::not_supported(format!(
                            "column option {other}"
                        )))
                    }
                }
            }
            let mut field = Field::new(col_name, ty, nullable);
            if let Some(t) = sql_type {
                field = field.with_metadata(HashMap::from([(SQL_TYPE_KEY.to_string(), t)]));
            }
            fields.push(field);
        }
        for constraint in &ct.constraints {
            use datafusion::sql::sqlparser::ast::TableConstraint;
            match constraint {
                TableConstraint::PrimaryKey(pk) => {
                    if !primary_key.is_empty() {
                        return Err(MillraceError::plan(format!(
                            "multiple primary keys for table \"{name}\" are not allowed"
                        )));
                    }
                    for c in &pk.columns {
                        let cname = c
                            .column
                            .expr
                            .to_string()
                            .trim_matches('"')
                            .to_ascii_lowercase();
                        let idx =
                            fields
                                .iter()
                                .position(|f| *f.name() == cname)
                                .ok_or_else(|| MillraceError::Data {
                                    sqlstate: "42703",
                                    message: format!(
                                        "column \"{cname}\" named in key does not exist"
                                    ),
                                })?;
                        primary_key.push(idx);
                    }
                }
                other => {
                    return Err(MillraceError::not_supported(format!(
                        "table constraint {other}"
                    )))
                }
            }
        }
        if primary_key.len() > 1 && ct.constraints.is_empty() {
            return Err(MillraceError::plan(format!(
                "multiple primary keys for table \"{name}\" are not allowed"
            )));
        }
        for &i in &primary_key {
            let f = fields[i].clone().with_nullable(false);
            fields[i] = f;
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let watermark = clauses
            .watermark
            .as_ref()
            .map(|w| self.watermark_spec(&name, w, &schema))
            .transpose()?;
        let id = state.next_id;
        let entry = CatalogEntry {
            id,
            name: name.clone(),
            kind: ObjectKind::Table,
            schema: schema.clone(),
            // The WATERMARK clause is not in sqlparser's syntax tree.
            create_sql: match &watermark {
                Some(_) => text.trim().to_string(),
                None => Statement::CreateTable(ct).to_string(),
            },
            depends_on: vec![],
            comments: Comments::default(),
        };
        let table = TableState::try_new(name.clone(), id, schema.clone(), primary_key)?;
        self.register(state, entry)?;
        if let Some(spec) = watermark {
            let progress = Arc::new(WatermarkProgress::default());
            self.lock_watermarks().push(WatermarkRow {
                view: None,
                entry: WatermarkEntry {
                    relation: name.clone(),
                    spec: spec.clone(),
                    progress: progress.clone(),
                },
            });
            state
                .table_watermarks
                .insert(name.clone(), WatermarkTracker::new(spec.clone(), progress));
            state.declared_watermarks.insert(name.clone(), spec);
        }
        self.schema.register_table(
            name.clone(),
            Arc::new(RelationProvider::new(name.clone(), schema, TableType::Base)),
        )?;
        state.tables.insert(name, table);
        self.publish(state);
        Ok(QueryOutput::command("CREATE TABLE"))
    }

    /// Plans a relation's `WATERMARK FOR column AS expr` against its schema.
    fn watermark_spec(
        &self,
        relation: &str,
        clause: &WatermarkClause,
        schema: &SchemaRef,
    ) -> Result<Arc<WatermarkSpec>> {
        let column = schema
            .index_of(&clause.column)
            .map_err(|_| MillraceError::Data {
                sqlstate: "42703",
                message: format!(
                    "WATERMARK FOR names column \"{}\", which \"{relation}\" does not have",
                    clause.column
                ),
            })?;
        let data_type = schema.field(column).data_type().clone();
        if !watermark_type_supported(&data_type) {
            return Err(MillraceError::not_supported(format!(
                "a watermark on column \"{}\" of type {} (timestamps, dates and integers)",
                clause.column,
                column_type_name(schema.field(column))
            )));
        }
        let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())?;
        let logical = self
            .base_state
            .create_logical_expr(&clause.expr, &df_schema)
            .map_err(|e| MillraceError::plan(format!("in WATERMARK FOR {}: {e}", clause.column)))?;
        if logical.is_volatile() {
            return Err(MillraceError::plan(format!(
                "the watermark expression {} must not be volatile",
                clause.expr
            )));
        }
        let monotone = crate::stream::lower::monotone_in(&logical, &df_schema)
            .is_some_and(|(c, _)| c == column);
        let expr = self
            .base_state
            .create_physical_expr(logical, &df_schema)
            .map_err(|e| MillraceError::plan(format!("in WATERMARK FOR {}: {e}", clause.column)))?;
        let expr_type = expr.data_type(schema)?;
        if expr_type != data_type {
            return Err(MillraceError::plan(format!(
                "the watermark expression {} is of type {expr_type}, but column \"{}\" is of type {data_type}",
                clause.expr, clause.column
            )));
        }
        Ok(Arc::new(WatermarkSpec {
            column,
            column_name: clause.column.clone(),
            expr,
            text: clause.expr.clone(),
            monotone,
        }))
    }

    fn lock_watermarks(&self) -> std::sync::MutexGuard<'_, Vec<WatermarkRow>> {
        match self.watermarks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Lists the declared watermarks `dataflow` applies for `view`,
    /// replacing the view's earlier ones.
    fn register_view_watermarks(&self, view: &str, dataflow: &Dataflow) {
        let mut rows = self.lock_watermarks();
        rows.retain(|r| r.view.as_deref() != Some(view));
        rows.extend(dataflow.watermark_entries().iter().map(|e| WatermarkRow {
            view: Some(view.to_string()),
            entry: e.clone(),
        }));
    }

    /// Plans a view's query against the current catalog: the raw plan (for
    /// dependencies) and the optimized one (for lowering).
    async fn plan_view_query(
        &self,
        cv: &CreateView,
        name: &str,
    ) -> Result<(LogicalPlan, Vec<String>, SchemaRef)> {
        // Planning reads no rows: any snapshot will do.
        let snapshot = self.published_snapshot().unwrap_or_default();
        let state = self.query_state(snapshot, None);
        let raw = state
            .statement_to_plan(DFStatement::Statement(Box::new(Statement::Query(
                cv.query.clone(),
            ))))
            .await?;
        let mut depends_on = Vec::new();
        use datafusion::common::tree_node::TreeNodeRecursion;
        raw.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                depends_on.push(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        depends_on.sort();
        depends_on.dedup();
        if depends_on.iter().any(|d| d == name) {
            return Err(MillraceError::plan(format!(
                "view \"{name}\" cannot read itself"
            )));
        }
        let mut fields: Vec<Field> = raw
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if !cv.columns.is_empty() {
            if cv.columns.len() != fields.len() {
                return Err(MillraceError::plan(format!(
                    "view \"{name}\" names {} columns but its query produces {}",
                    cv.columns.len(),
                    fields.len()
                )));
            }
            for (f, c) in fields.iter_mut().zip(&cv.columns) {
                *f = f.clone().with_name(ident_name(&c.name));
            }
        }
        let mut seen = HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                return Err(MillraceError::Data {
                    sqlstate: "42701",
                    message: format!(
                        "column \"{}\" specified more than once; give the view's columns distinct names with AS",
                        f.name()
                    ),
                });
            }
        }
        let schema = Arc::new(Schema::new(fields));
        Ok((raw, depends_on, schema))
    }

    async fn create_view(
        &self,
        state: &mut EngineState,
        cv: CreateView,
        text: &str,
    ) -> Result<QueryOutput> {
        let name = lower_name(&cv.name)?;
        if state.catalog.contains_key(&name) && (cv.if_not_exists || state.replaying) {
            return Ok(QueryOutput::command("CREATE VIEW"));
        }
        if cv.or_replace {
            return Err(MillraceError::not_supported("CREATE OR REPLACE VIEW"));
        }
        self.ensure_absent(state, &name)?;
        let (raw, depends_on, schema) = self.plan_view_query(&cv, &name).await?;
        let plan = rename_outputs(raw, &schema)?;
        let entry = CatalogEntry {
            id: state.next_id,
            name: name.clone(),
            kind: ObjectKind::View,
            schema,
            create_sql: text.trim().to_string(),
            depends_on,
            comments: Comments::default(),
        };
        self.register(state, entry.clone())?;
        self.schema.register_table(
            name,
            Arc::new(ViewTable::new(plan, Some(entry.create_sql.clone()))),
        )?;
        Ok(QueryOutput::command("CREATE VIEW"))
    }

    async fn build_view(
        &self,
        inputs: &ViewInputs,
        cv: &CreateView,
        name: &str,
        emit_on_window_close: bool,
    ) -> Result<(LogicalPlan, Vec<String>, SchemaRef, Dataflow)> {
        let (raw, depends_on, schema) = self.plan_view_query(cv, name).await?;
        // Before the optimizer folds `now()` into the creation time:
        // conditions on the clock become temporal filters, and any other
        // use of it is refused.
        let raw = crate::stream::temporal::rewrite_clock(raw)?;
        crate::stream::lower::reject_clock(&raw)?;
        let plan = self.base_state.optimize(&raw)?;
        let plan = crate::stream::scalar_subquery::scalar_subqueries_to_joins(plan)?;
        let dataflow = inputs.lower(&plan, emit_on_window_close)?;
        Ok((plan, depends_on, schema, dataflow))
    }

    async fn create_materialized_view(
        &self,
        state: &mut EngineState,
        cv: CreateView,
        text: &str,
    ) -> Result<QueryOutput> {
        let name = lower_name(&cv.name)?;
        let emit_on_window_close = take_time_clauses(text)?.1.emit_on_window_close;
        if state.catalog.contains_key(&name) && (cv.if_not_exists || state.replaying) {
            return Ok(QueryOutput::command("CREATE MATERIALIZED VIEW"));
        }
        if cv.or_replace {
            return Err(MillraceError::not_supported(
                "CREATE OR REPLACE MATERIALIZED VIEW",
            ));
        }
        self.ensure_absent(state, &name)?;
        let (plan, depends_on, schema, mut dataflow) = self
            .build_view(&ViewInputs::of(state), &cv, &name, emit_on_window_close)
            .await?;
        let inputs = dataflow.relations();
        let append_only = is_append_only(&plan, &|r| relation_grows(state, r));
        let mut contents = if append_only {
            Contents::try_new_append_only(schema.clone())?
        } else {
            Contents::try_new(schema.clone())?
        };
        let checkpointed = self.checkpoint_interval.is_some() && dataflow.checkpointable();
        if checkpointed {
            dataflow.track_changes();
        }
        if !state.replaying {
            backfill(state, &mut dataflow, &inputs, &mut contents)?;
        }
        let mut changes = ViewChanges {
            reset: true,
            ..ViewChanges::default()
        };
        if checkpointed {
            record_contents(&mut changes, &contents)?;
        }
        let id = state.next_id;
        let entry = CatalogEntry {
            id,
            name: name.clone(),
            kind: ObjectKind::MaterializedView,
            schema: schema.clone(),
            // As written: window table functions and EMIT ON WINDOW CLOSE
            // are rewritten or taken out before the syntax tree exists.
            create_sql: text.trim().to_string(),
            depends_on,
            comments: Comments::default(),
        };
        self.register(state, entry)?;
        self.schema.register_table(
            name.clone(),
            Arc::new(RelationProvider::new(name.clone(), schema, TableType::View)),
        )?;
        info!(view = %name, rows = contents.distinct_rows(), "materialized view created");
        self.register_view_watermarks(&name, &dataflow);
        state.views.push(MaterializedView {
            name,
            plan,
            dataflow,
            inputs: inputs.clone(),
            contents,
            append_only,
            emit_on_window_close,
            id,
            checkpointed,
            changes,
        });
        state.uncheckpointed = true;
        self.refresh_timers(state);
        self.publish(state);
        if !state.replaying {
            let view_name = state
                .views
                .last()
                .map(|v| v.name.clone())
                .unwrap_or_default();
            for input in &inputs {
                self.start_reader(state, input, &view_name);
            }
        }
        Ok(QueryOutput::command("CREATE MATERIALIZED VIEW"))
    }

    async fn explain_view(
        &self,
        state: &mut EngineState,
        cv: CreateView,
        text: &str,
    ) -> Result<QueryOutput> {
        let name = lower_name(&cv.name)?;
        let emit_on_window_close = take_time_clauses(text)?.1.emit_on_window_close;
        let (_, _, _, dataflow) = self
            .build_view(&ViewInputs::of(state), &cv, &name, emit_on_window_close)
            .await?;
        let mut lines = vec![vec![format!("Materialize {name}")]];
        lines.extend(
            dataflow
                .explain()
                .into_iter()
                .map(|l| vec![format!("  {l}")]),
        );
        text_batch(&["QUERY PLAN"], lines)
    }

    /// Re-creates the dataflows and contents of views from index `from` on,
    /// from their inputs' current contents.
    /// Puts every view back as of the last checkpoint where it can be, and
    /// rebuilds the others from their inputs. A view is restored when
    /// checkpoints are on, the store holds its state with the same
    /// dataflow layout, every view it reads was restored too, and every
    /// source it reads can resume; its readers then go on from the
    /// checkpoint's positions.
    fn restore_views(&self, state: &mut EngineState) -> Result<()> {
        let record = match self.store.get(CHECKPOINT_NAMESPACE, LAST_CHECKPOINT_KEY)? {
            Some(bytes) => Some(CheckpointRecord::decode(&bytes)?),
            None => None,
        };
        let stale = self
            .store
            .get(CHECKPOINT_NAMESPACE, STALE_VIEWS_KEY)?
            .is_some();
        if let Some(r) = record {
            // Epochs go on from the checkpoint's: never backwards.
            state.epoch = state.epoch.max(r.epoch);
            self.committed_epoch.store(state.epoch, Ordering::SeqCst);
            self.lock_checkpoint_status().last = Some(r);
        }
        let mut positions: HashMap<u64, Vec<(String, SourcePosition)>> = HashMap::new();
        for (key, value) in self.store.scan(POSITIONS_NAMESPACE)? {
            if key.len() < 8 {
                continue;
            }
            let (id, source) = key.split_at(8);
            let id = u64::from_be_bytes(id.try_into().unwrap_or_default());
            let source = String::from_utf8_lossy(source).into_owned();
            positions
                .entry(id)
                .or_default()
                .push((source, SourcePosition::decode(&value)?));
        }
        let mut restored: HashSet<String> = HashSet::new();
        for i in 0..state.views.len() {
            let view = &state.views[i];
            let sources_resume = view.inputs.iter().all(|r| {
                state.sources.contains_key(r)
                    || state.tables.contains_key(r)
                    || restored.contains(r)
            });
            let can_restore = record.is_some() && !stale && view.checkpointed && sources_resume;
            if can_restore {
                match self.restore_view(state, i) {
                    Ok(true) => {
                        crate::crash::hit("restore");
                        let view = &state.views[i];
                        restored.insert(view.name.clone());
                        for (source, position) in positions.remove(&view.id).unwrap_or_default() {
                            state
                                .resume_positions
                                .insert((source, view.name.clone()), position);
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(view = %state.views[i].name, error = %e, "cannot restore the view from its checkpoint; rebuilding it");
                    }
                }
            }
            self.rebuild_view(state, i)?;
        }
        if stale {
            let mut batch = WriteBatch::default();
            batch.delete(CHECKPOINT_NAMESPACE, STALE_VIEWS_KEY.to_vec());
            self.store.write(batch)?;
        }
        if !restored.is_empty() {
            info!(
                views = restored.len(),
                epoch = state.epoch,
                "views restored from the last checkpoint"
            );
        }
        Ok(())
    }

    /// Restores view `i`'s dataflow state and contents from its
    /// checkpoint. False when the store holds none for its layout.
    fn restore_view(&self, state: &mut EngineState, i: usize) -> Result<bool> {
        let mut dataflow = ViewInputs::of(state)
            .lower(&state.views[i].plan, state.views[i].emit_on_window_close)?;
        let ns = ck::view_namespace(state.views[i].id);
        let layout = format!("{}{}", ck::STATE_FORMAT, dataflow.layout());
        match self.store.get(&ns, ck::LAYOUT_KEY)? {
            Some(stored) if stored == layout.as_bytes() => {}
            Some(_) => {
                info!(view = %state.views[i].name, "the view's operators or state format changed since its checkpoint; rebuilding it");
                return Ok(false);
            }
            None => return Ok(false),
        }
        let entries = self.store.scan(&ns)?;
        let mut appended: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut base_end = 0;
        for (key, value) in entries {
            match key.first() {
                Some(&ck::APPENDED_PREFIX) if key.len() == 9 => {
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&key[1..]);
                    appended.push((u64::from_be_bytes(seq), value));
                }
                _ if key == ck::LAYOUT_KEY => {}
                _ if key == ck::BASE_END_KEY => {
                    base_end = ck::decode_sequence(&value)?;
                }
                _ => {
                    return Err(MillraceError::storage(format!(
                        "unknown key in the checkpoint of view \"{}\"",
                        state.views[i].name
                    )))
                }
            }
        }
        // The keyed state: the view's runs applied in order.
        let runs = ck::read_runs(self.store.as_ref(), state.views[i].id)?;
        let run_bytes: u64 = runs.iter().map(|(_, r)| r.len() as u64).sum();
        let next_run = runs
            .last()
            .map(|(seq, _)| ck::slot_after(*seq))
            .unwrap_or(0);
        let folded = ck::FoldedRuns::of_runs(&runs, base_end)?;
        let name = &state.views[i].name;
        // The contents rows are rebuilt on a second thread while this one
        // restores the operators: each reads the runs for its own keys.
        let restored = std::thread::scope(|scope| {
            let rows = scope.spawn(|| {
                let mut rows = crate::stream::materialize::RowMap::new();
                folded.for_each(|key, value| {
                    if let [ck::ROW_PREFIX, row @ ..] = key {
                        let count = i64::from_le_bytes(value.try_into().map_err(|_| {
                            MillraceError::storage("a checkpointed view row count is damaged")
                        })?);
                        rows.insert(Arc::from(row), count);
                    }
                    Ok(())
                })?;
                Ok::<_, MillraceError>(rows)
            });
            let mut operators: HashMap<usize, Vec<crate::stream::operator::StateEntry>> =
                HashMap::new();
            let restored = folded
                .for_each(|key, value| match key.first() {
                    Some(&ck::OPERATOR_PREFIX) => {
                        let (node, k) = ck::split_operator_key(key)?;
                        operators.entry(node).or_default().push((k, value.to_vec()));
                        Ok(())
                    }
                    Some(&ck::ROW_PREFIX) => Ok(()),
                    _ => Err(MillraceError::storage(format!(
                        "unknown key in the checkpointed runs of view \"{name}\""
                    ))),
                })
                .and_then(|()| dataflow.restore(operators));
            let rows = rows
                .join()
                .unwrap_or_else(|_| Err(MillraceError::execution("restoring view rows failed")));
            restored.and(rows)
        });
        let rows = restored?;
        drop(folded);
        dataflow.track_changes();
        let view = &mut state.views[i];
        let schema = view.contents.schema().clone();
        let mut contents = if view.append_only {
            Contents::try_new_append_only(schema.clone())?
        } else {
            Contents::try_new(schema.clone())?
        };
        appended.sort_by_key(|(seq, _)| *seq);
        let next_sequence = appended.last().map(|(s, _)| s + 1).unwrap_or(0);
        if view.append_only {
            for (_, bytes) in &appended {
                for batch in ck::decode_batches(bytes)? {
                    let batch = crate::stream::change::batch_from_columns(
                        schema.clone(),
                        batch.columns().to_vec(),
                        batch.num_rows(),
                    )?;
                    contents.add(&ChangeBatch::with_uniform_weight(batch, 1), None)?;
                }
            }
        } else {
            contents.set_rows(rows);
        }
        self.register_view_watermarks(&view.name, &dataflow);
        view.dataflow = dataflow;
        view.contents = contents;
        view.changes = ViewChanges {
            next_sequence,
            next_run,
            base_bytes: run_bytes,
            base_end,
            ..ViewChanges::default()
        };
        self.refresh_timers(state);
        Ok(true)
    }

    /// Takes a checkpoint now: one atomic, durable store write of every
    /// checkpointed view's changed state, the readers' positions and the
    /// epoch. After a failed write no more are taken (see
    /// [`EngineState::checkpoints_failed`]).
    fn checkpoint(&self, state: &mut EngineState) -> Result<()> {
        if self.checkpoint_interval.is_none() || state.checkpoints_failed {
            state.uncheckpointed = false;
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut writes = WriteBatch::default();
        let epoch = state.epoch;
        let result = self
            .checkpoint_into(state, &mut writes, epoch)
            .and_then(|record| self.commit_checkpoint(state, writes, record, started));
        if state.checkpoints_failed {
            super::sink_log::release_pending(&mut state.sinks);
        }
        result
    }

    /// Writes `writes` (which hold a checkpoint) and records it as the
    /// last, or marks checkpoints failed.
    fn commit_checkpoint(
        &self,
        state: &mut EngineState,
        writes: WriteBatch,
        record: Option<CheckpointRecord>,
        started: std::time::Instant,
    ) -> Result<()> {
        if record.is_some() {
            crate::crash::hit("checkpoint-before");
        }
        let written = if record.is_some() && crate::crash::fails("checkpoint-write") {
            Err(MillraceError::storage(
                "injected failure of a checkpoint write",
            ))
        } else {
            self.store.write(writes)
        };
        match written {
            Ok(()) => {
                if record.is_some() {
                    crate::crash::hit("checkpoint-after");
                }
                state.uncheckpointed = false;
                if let Some(record) = record {
                    if let Err(e) =
                        super::sink_log::hand_over(&mut state.sinks, self.store.as_ref())
                    {
                        warn!(error = %e, "handing sink log entries to sinks failed");
                    }
                    let mut status = self.lock_checkpoint_status();
                    status.last = Some(record);
                    status.taken += 1;
                    status.last_duration_us = started.elapsed().as_micros() as u64;
                }
                Ok(())
            }
            Err(e) => {
                super::sink_log::abandon_in_flight(&mut state.sinks);
                if record.is_some() {
                    state.checkpoints_failed = true;
                    self.lock_checkpoint_status().failed = true;
                    tracing::error!(error = %e, "a checkpoint could not be written; no more are taken until restart, and views will be rebuilt on start");
                }
                Err(e)
            }
        }
    }

    /// Adds a checkpoint of the current epoch to `writes`; returns its
    /// record, or `None` when checkpoints are off or failed (then a write
    /// that changes tables marks the view checkpoints stale).
    ///
    /// An error here stops checkpoints, as a failed write does: the
    /// operators have handed over their changes since the last checkpoint
    /// to a write that will not happen, so a later checkpoint would lack
    /// them. The store keeps the last whole checkpoint.
    fn checkpoint_into(
        &self,
        state: &mut EngineState,
        writes: &mut WriteBatch,
        epoch: u64,
    ) -> Result<Option<CheckpointRecord>> {
        let built = self.build_checkpoint(state, writes, epoch);
        if let Err(e) = &built {
            if !state.checkpoints_failed {
                state.checkpoints_failed = true;
                self.lock_checkpoint_status().failed = true;
                super::sink_log::abandon_in_flight(&mut state.sinks);
                tracing::error!(error = %e, "a checkpoint could not be built; no more are taken until restart");
            }
        }
        built
    }

    /// [`Engine::checkpoint_into`] without its handling of errors.
    fn build_checkpoint(
        &self,
        state: &mut EngineState,
        writes: &mut WriteBatch,
        epoch: u64,
    ) -> Result<Option<CheckpointRecord>> {
        if self.checkpoint_interval.is_none() {
            return Ok(None);
        }
        if state.checkpoints_failed {
            writes.put(CHECKPOINT_NAMESPACE, STALE_VIEWS_KEY.to_vec(), vec![1]);
            return Ok(None);
        }
        for view in state.views.iter_mut().filter(|v| v.checkpointed) {
            let ns = ck::view_namespace(view.id);
            let runs_ns = ck::view_runs_namespace(view.id);
            if view.changes.reset {
                for (key, _) in self.store.scan(&ns)? {
                    writes.delete(&ns, key);
                }
                for (key, _) in self.store.scan(&runs_ns)? {
                    writes.delete(&runs_ns, key);
                }
                writes.put(
                    &ns,
                    ck::LAYOUT_KEY.to_vec(),
                    format!("{}{}", ck::STATE_FORMAT, view.dataflow.layout()).into_bytes(),
                );
                view.changes.reset = false;
                view.changes.compaction = None;
                view.changes.run_bytes = 0;
                view.changes.base_bytes = 0;
                // The reset deleted the base's end too: written anew below.
                view.changes.base_end = u64::MAX;
            }
            let changes = &mut view.changes;
            let mut applied = false;
            if let Some(result) = changes.compaction.as_mut().and_then(|c| c.finished()) {
                changes.compaction = None;
                match result {
                    Ok(base) => {
                        apply_compaction(view.id, changes, base, writes)?;
                        applied = true;
                    }
                    // The runs stay as they are; a later checkpoint starts
                    // another compaction.
                    Err(e) => {
                        warn!(view = %view.name, error = %e, "compacting a view's checkpoint runs failed")
                    }
                }
            }
            let due = changes
                .base_bytes
                .saturating_mul(changes.compact_factor.max(1))
                .max(ck::compact_min_bytes());
            // Every run before `next_run` is committed (checkpoints are
            // written one at a time), so a compaction can read them while
            // this checkpoint and later ones write after them. Not in the
            // checkpoint that writes a compaction's result, though: until
            // it commits, the store still holds the runs it replaces.
            if !applied
                && changes.compaction.is_none()
                && changes.run_bytes >= due
                && changes.next_run >= ck::RUN_SLOT
            {
                changes.compaction = Some(ck::PendingCompaction::start(
                    self.store.clone(),
                    view.id,
                    changes.next_run,
                    changes.base_end,
                    changes.run_bytes,
                )?);
            }
            // The operators' changed state and the changed contents rows,
            // as one run (or a few, when large), written as the operators
            // packed it.
            let mut run = StateChanges::default();
            view.dataflow
                .checkpoint_into(&mut run, ck::operator_prefix)?;
            for (row, count) in view.changes.rows.drain() {
                let count = count.to_le_bytes();
                let value = (count != [0; 8]).then_some(&count[..]);
                run.op(&[&[ck::ROW_PREFIX], &row], value);
            }
            let changes = &mut view.changes;
            let runs_before = changes.run_bytes;
            let mut written = None;
            let mut put_run = |bytes: Vec<u8>| {
                changes.run_bytes += bytes.len() as u64;
                writes.put(&runs_ns, ck::run_key(changes.next_run), bytes);
                written = Some(changes.next_run);
                changes.next_run += 1;
            };
            if run.byte_len() <= ck::BASE_CHUNK_BYTES {
                if !run.is_empty() {
                    put_run(run.take_bytes());
                }
            } else {
                let bytes = run.take_bytes();
                for piece in codec::split_ops(&bytes, ck::BASE_CHUNK_BYTES)? {
                    put_run(piece.to_vec());
                }
            }
            // The next checkpoint's runs start a slot of their own.
            if let Some(last) = written {
                changes.next_run = ck::slot_after(last);
            }
            if changes.base_bytes == 0 && runs_before == 0 && changes.compaction.is_none() {
                // The first runs (all of a new or rebuilt view's state, one
                // checkpoint's, so each key at most once; or the first after
                // a compaction that left nothing, with no other run after
                // it) are its base: nothing in them is superseded yet.
                view.changes.base_bytes = view.changes.run_bytes;
                view.changes.run_bytes = 0;
                if view.changes.base_end != view.changes.next_run {
                    view.changes.base_end = view.changes.next_run;
                    ck::put_base_end(writes, &ns, view.changes.base_end);
                }
            }
            if !view.changes.appended.is_empty() {
                let appended = std::mem::take(&mut view.changes.appended);
                let schema = appended[0].schema();
                let all = ChangeBatch::concat(schema, &appended)?;
                let mut key = vec![ck::APPENDED_PREFIX];
                key.extend_from_slice(&view.changes.next_sequence.to_be_bytes());
                view.changes.next_sequence += 1;
                writes.put(&ns, key, ck::encode_batch(all.data())?);
            }
        }
        if crate::crash::fails("checkpoint-build") {
            return Err(MillraceError::storage(
                "injected failure while building a checkpoint",
            ));
        }
        for ((source, view), position) in &state.positions {
            let Some(v) = state
                .views
                .iter()
                .find(|v| &v.name == view && v.checkpointed)
            else {
                continue;
            };
            writes.put(
                POSITIONS_NAMESPACE,
                ck::position_key(v.id, source),
                position.encode(),
            );
        }
        super::sink_log::write_pending(&mut state.sinks, writes)?;
        self.checkpointed_views.store(
            state.views.iter().filter(|v| v.checkpointed).count(),
            Ordering::Relaxed,
        );
        let record = CheckpointRecord {
            epoch,
            committed_at_ms: ck::now_ms(),
        };
        writes.put(
            CHECKPOINT_NAMESPACE,
            LAST_CHECKPOINT_KEY.to_vec(),
            record.encode(),
        );
        Ok(Some(record))
    }

    fn lock_checkpoint_status(&self) -> std::sync::MutexGuard<'_, CheckpointStatus> {
        match self.checkpoint_status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Re-creates one view's dataflow and contents from its inputs.
    fn rebuild_view(&self, state: &mut EngineState, i: usize) -> Result<()> {
        let mut dataflow = ViewInputs::of(state)
            .lower(&state.views[i].plan, state.views[i].emit_on_window_close)?;
        let checkpointed = self.checkpoint_interval.is_some() && dataflow.checkpointable();
        if checkpointed {
            dataflow.track_changes();
        }
        let schema = state.views[i].contents.schema().clone();
        let mut contents = if state.views[i].append_only {
            Contents::try_new_append_only(schema)?
        } else {
            Contents::try_new(schema)?
        };
        let inputs = state.views[i].inputs.clone();
        backfill(state, &mut dataflow, &inputs, &mut contents)?;
        let view = &mut state.views[i];
        self.register_view_watermarks(&view.name, &dataflow);
        view.dataflow = dataflow;
        view.checkpointed = checkpointed;
        view.changes = ViewChanges {
            reset: true,
            ..ViewChanges::default()
        };
        view.contents = contents;
        if checkpointed {
            record_contents(&mut view.changes, &view.contents)?;
        }
        state.uncheckpointed = true;
        self.refresh_timers(state);
        Ok(())
    }

    /// Applies changes to tables and propagates them through every view, as
    /// one epoch. On any error, nothing is changed.
    fn commit(&self, state: &mut EngineState, changes: Vec<(String, ChangeBatch)>) -> Result<()> {
        self.commit_epoch(state, changes, None, true)
    }

    /// One epoch: `changes` to tables and rows `streamed` from a source to
    /// the one view whose reader produced them, pushed through every view
    /// that reads what changed.
    /// With `publish_now` false the epoch is published only if a reader
    /// waits for it (see [`Engine::snapshot`]).
    fn commit_epoch(
        &self,
        state: &mut EngineState,
        changes: Vec<(String, ChangeBatch)>,
        streamed: Option<Streamed>,
        publish_now: bool,
    ) -> Result<()> {
        self.release_unread_snapshot();
        // The time the views' temporal filters see in this epoch.
        let now = crate::stream::temporal::system_now_nanos();
        let is_due = |v: &MaterializedView| v.dataflow.next_due().is_some_and(|d| d <= now);
        // Check constraints before touching anything.
        let mut checked = Vec::new();
        for (table, delta) in changes {
            let mut delta = delta.consolidate()?;
            if let Some(tracker) = state.table_watermarks.get_mut(&table) {
                // Inserts behind the table's watermark are dropped (and
                // counted); deletes there would change what can no longer
                // change, and are refused.
                let (kept, late) = tracker.admit(&delta)?;
                if late.deletes > 0 {
                    let spec = tracker.spec();
                    return Err(MillraceError::Data {
                        sqlstate: "22000",
                        message: format!(
                            "cannot delete or update rows of \"{table}\" whose \"{}\" is behind its watermark ({})",
                            spec.column_name,
                            tracker.mark().map(|m| m.to_string()).unwrap_or_default()
                        ),
                    });
                }
                delta = kept;
            }
            if delta.is_empty() {
                continue;
            }
            let t = state
                .tables
                .get(&table)
                .ok_or_else(|| MillraceError::UnknownRelation(table.clone()))?;
            let index = t.check(&delta)?;
            checked.push((table, delta, index));
        }
        if checked.is_empty() && streamed.is_none() && !state.views.iter().any(is_due) {
            self.refresh_timers(state);
            return Ok(());
        }
        // What undoes this epoch's changes to contents if it fails.
        let mut saved_tables: Vec<(String, _, _)> = checked
            .iter()
            .filter_map(|(t, _, _)| {
                state
                    .tables
                    .get(t)
                    .map(|ts| (t.clone(), ts.contents.undo_log(), ts.key_index.clone()))
            })
            .collect();
        let mut view_undo: Vec<_> = state.views.iter().map(|v| v.contents.undo_log()).collect();

        let mut deltas: HashMap<String, ChangeBatch> = HashMap::new();
        // Watermarks of the views' outputs, and of a source that ended.
        let mut marks = view_watermarks(state);
        let mut marks_moved: HashSet<String> = HashSet::new();
        if let Some(s) = streamed.as_ref().filter(|s| s.ended) {
            if let Some(spec) = state.declared_watermarks.get(&s.source) {
                let mut end = Watermarks::none();
                end.advance(spec.column, Mark::End);
                marks.insert(s.source.clone(), end);
            }
        }
        let mut writes = WriteBatch::default();
        let mut failure: Option<(usize, MillraceError)> = None;
        let mut stepped: Vec<usize> = Vec::new();
        let mut recorded: Vec<(usize, ViewChanges)> = Vec::new();
        for (table, delta, index) in checked {
            let Some(t) = state.tables.get_mut(&table) else {
                continue;
            };
            let undo = saved_tables
                .iter_mut()
                .find(|(name, _, _)| *name == table)
                .map(|(_, undo, _)| undo);
            match t.contents.apply(&delta, undo) {
                Ok(changed) => {
                    let ns = rows_namespace(t.id);
                    for (row, count) in changed {
                        if count == 0 {
                            writes.delete(&ns, row.to_vec());
                        } else {
                            writes.put(&ns, row.to_vec(), count.to_le_bytes().to_vec());
                        }
                    }
                    t.key_index = index;
                    deltas.insert(table, delta);
                }
                Err(e) => {
                    failure = Some((0, e));
                    break;
                }
            }
        }
        if failure.is_none() {
            for (i, view) in state.views.iter_mut().enumerate() {
                let fed = streamed.as_ref().filter(|s| s.view == view.name);
                if fed.is_none()
                    && !is_due(view)
                    && !view
                        .inputs
                        .iter()
                        .any(|r| deltas.contains_key(r) || marks_moved.contains(r))
                {
                    continue;
                }
                stepped.push(i);
                view.dataflow.set_now(now);
                // A source's rows reach only the view whose reader read them.
                let mut view_deltas;
                let inputs = match fed {
                    Some(s) => {
                        view_deltas = deltas.clone();
                        view_deltas.insert(s.source.clone(), s.delta.clone());
                        &view_deltas
                    }
                    None => &deltas,
                };
                // An append-only view's output has only positive weights, so
                // there is nothing to cancel out.
                let append_only = view.append_only;
                let result = view
                    .dataflow
                    .step_marked(inputs, &marks)
                    .and_then(|out| {
                        out.map(|o| if append_only { Ok(o) } else { o.consolidate() })
                            .transpose()
                    })
                    .and_then(|out| match out {
                        Some(o) if !o.is_empty() => {
                            let undo = Some(&mut view_undo[i]);
                            if view.checkpointed {
                                // What the change did to the contents, kept
                                // aside until the epoch succeeds.
                                let rows = view.contents.apply(&o, undo)?;
                                let mut changed = ViewChanges::default();
                                if view.contents.is_append_only() {
                                    changed.appended.push(o.clone());
                                } else {
                                    changed.rows.extend(rows);
                                }
                                recorded.push((i, changed));
                            } else {
                                view.contents.add(&o, undo)?;
                            }
                            Ok(Some(o))
                        }
                        _ => Ok(None),
                    });
                match result {
                    Ok(Some(out)) => {
                        deltas.insert(view.name.clone(), out);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failure = Some((i, e));
                        break;
                    }
                }
                let after = view.dataflow.output_watermarks();
                if !after.is_empty() && marks.get(&view.name) != Some(&after) {
                    marks_moved.insert(view.name.clone());
                    marks.insert(view.name.clone(), after);
                }
            }
        }
        // The epoch's changes to view contents, merged once it holds.
        let merge = |state: &mut EngineState, recorded: Vec<(usize, ViewChanges)>| {
            for (i, changed) in recorded {
                if let Some(view) = state.views.get_mut(i) {
                    view.changes.rows.extend(changed.rows);
                    view.changes.appended.extend(changed.appended);
                }
            }
        };
        // A logged sink's share of the epoch goes into the checkpoint that
        // covers the epoch; the others are handed theirs below, once the
        // epoch holds.
        let mut sinks_pushed: Vec<String> = Vec::new();
        if failure.is_none() && !state.checkpoints_failed {
            for (name, sink) in state.sinks.iter_mut().filter(|(_, s)| s.logged) {
                if let Some(change) = deltas.get(&sink.relation).and_then(|c| sink.conform(c)) {
                    sink.pending.push(change);
                    sinks_pushed.push(name.clone());
                }
            }
        }
        let mut checkpoint_record = None;
        let started = std::time::Instant::now();
        if failure.is_none() && !writes.is_empty() {
            // A change to tables is durable before it is answered; the
            // views it changed are checkpointed in the same write, so that
            // tables and views never disagree after a restart.
            merge(state, std::mem::take(&mut recorded));
            // This epoch's number, once committed.
            let epoch = state.epoch + 1;
            let attempt = self
                .checkpoint_into(state, &mut writes, epoch)
                .and_then(|record| {
                    checkpoint_record = record;
                    self.commit_checkpoint(state, writes, record, started)
                });
            if let Err(e) = attempt {
                failure = Some((state.views.len(), e));
            }
        } else if failure.is_none() {
            merge(state, std::mem::take(&mut recorded));
        }
        if let Some((_, err)) = failure {
            warn!(error = %err, "change rejected; rolling back");
            for name in &sinks_pushed {
                if let Some(sink) = state.sinks.get_mut(name) {
                    sink.pending.pop();
                }
            }
            for (t, undo, index) in saved_tables {
                if let Some(ts) = state.tables.get_mut(&t) {
                    ts.contents.roll_back(undo);
                    ts.key_index = index;
                }
            }
            for (v, undo) in state.views.iter_mut().zip(view_undo) {
                v.contents.roll_back(undo);
            }
            // The operators of the views that saw this change may be half
            // updated: rebuild those from the restored contents. A view that
            // reads a source cannot replay the stream it has seen, and
            // restarts from the live stream.
            for i in stepped {
                if !state.views[i].dataflow.is_stateful() {
                    // Nothing but the restored contents to put back.
                    continue;
                }
                if let Err(e) = self.rebuild_view(state, i) {
                    warn!(error = %e, "rebuilding a view after a rejected change failed");
                }
                if state.views[i]
                    .inputs
                    .iter()
                    .any(|r| state.sources.contains_key(r))
                {
                    warn!(view = %state.views[i].name, "view reset after a failed batch from a source");
                }
            }
            self.refresh_timers(state);
            return Err(err);
        }
        self.refresh_timers(state);
        for (table, tracker) in state.table_watermarks.iter_mut() {
            if let Some(delta) = deltas.get(table) {
                tracker.observe(delta)?;
            }
        }
        // Once checkpoints have failed, logged sinks get their waiting
        // changes, then each epoch's, unlogged.
        let unlogged = state.checkpoints_failed;
        if unlogged {
            super::sink_log::release_pending(&mut state.sinks);
        }
        for sink in state.sinks.values().filter(|s| unlogged || !s.logged) {
            if let Some(change) = deltas.get(&sink.relation) {
                sink.send(change);
            }
        }
        let epoch = state.epoch;
        // A subscriber whose client is gone, or which fell too far behind,
        // is dropped; its stream then ends.
        state
            .subscribers
            .retain(|sub| match deltas.get(&sub.relation) {
                None => !sub.tx.is_closed(),
                Some(change) => match change.with_schema(sub.schema.clone()) {
                    Ok(change) => sub.tx.try_send((epoch, change)).is_ok(),
                    Err(e) => {
                        warn!(relation = %sub.relation, error = %e, "subscription ended");
                        false
                    }
                },
            });
        state.epoch += 1;
        if checkpoint_record.is_none() {
            state.uncheckpointed = true;
        }
        self.committed_epoch
            .store(state.epoch, std::sync::atomic::Ordering::SeqCst);
        if publish_now
            || self
                .publish_wanted
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.publish(state);
        }
        Ok(())
    }

    async fn insert(
        &self,
        state: &mut EngineState,
        stmt: Statement,
        params: Option<ParamValues>,
    ) -> Result<QueryOutput> {
        if let Statement::Insert(ins) = &stmt {
            if ins.returning.is_some() {
                return Err(MillraceError::not_supported("INSERT ... RETURNING"));
            }
            if ins.on.is_some() {
                return Err(MillraceError::not_supported("INSERT ... ON CONFLICT"));
            }
        }
        // The rows inserted come from a query written in PostgreSQL's
        // dialect, rewritten as ad-hoc queries are.
        let stmt = super::pg_rewrite::rewrite_query(stmt);
        let qstate = self.query_state(self.snapshot_locked(state), None);
        let mut plan = qstate
            .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
            .await?;
        if let Some(p) = params {
            plan = plan.with_param_values(p)?;
        }
        let LogicalPlan::Dml(dml) = plan else {
            return Err(MillraceError::plan("INSERT did not plan as an insert"));
        };
        if !matches!(dml.op, WriteOp::Insert(_)) {
            return Err(MillraceError::plan("INSERT did not plan as an insert"));
        }
        let table = dml.table_name.table().to_string();
        let schema = state
            .tables
            .get(&table)
            .map(|t| t.contents.schema().clone())
            .ok_or_else(|| match state.catalog.get(&table) {
                Some(_) => MillraceError::Data {
                    sqlstate: "42809",
                    message: format!("cannot insert into \"{table}\": it is not a table"),
                },
                None => MillraceError::UnknownRelation(table.clone()),
            })?;
        let batches = execute_plan(&qstate, &dml.input).await?;
        let rows = self.conform_and_commit(state, &table, &schema, batches, 1)?;
        Ok(QueryOutput::Command {
            tag: "INSERT 0".to_string(),
            rows: Some(rows),
        })
    }

    /// The login users.
    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    /// Whether `name` is a table, view, materialized view or source (the
    /// relations privileges apply to).
    pub fn is_user_relation(&self, name: &str) -> bool {
        self.schema.table_exist(name)
    }

    /// `CREATE ROLE | USER`, `ALTER ROLE | USER ... PASSWORD`, `DROP ROLE |
    /// USER`: login users with SCRAM verifiers (see [`Users`]).
    fn manage_users(&self, state: &EngineState, stmt: &Statement) -> Result<QueryOutput> {
        use datafusion::sql::sqlparser::ast::{
            AlterRoleOperation, Expr, Password, RoleOption, Value,
        };
        fn password_text(p: &Password) -> Result<Option<String>> {
            match p {
                Password::NullPassword => Ok(None),
                Password::Password(Expr::Value(v)) => match &v.value {
                    Value::SingleQuotedString(s) => Ok(Some(s.clone())),
                    _ => Err(MillraceError::plan("a password must be a quoted string")),
                },
                Password::Password(_) => {
                    Err(MillraceError::plan("a password must be a quoted string"))
                }
            }
        }
        match stmt {
            Statement::CreateRole(role) => {
                let password = match &role.password {
                    Some(p) => password_text(p)?,
                    None => None,
                };
                let superuser = role.superuser == Some(true);
                for name in &role.names {
                    self.users.create(
                        &lower_name(name)?,
                        password.as_deref(),
                        superuser,
                        role.if_not_exists,
                    )?;
                }
                Ok(QueryOutput::command("CREATE ROLE"))
            }
            Statement::AlterRole {
                name,
                operation: AlterRoleOperation::WithOptions { options },
            } => {
                let mut changed = false;
                for option in options {
                    match option {
                        RoleOption::Password(p) => {
                            let password = password_text(p)?;
                            self.users.set_password(
                                &ident_name(name),
                                password.as_deref(),
                                false,
                            )?;
                            changed = true;
                        }
                        RoleOption::Login(true) => {}
                        other => {
                            return Err(MillraceError::not_supported(format!(
                                "role option {other}"
                            )))
                        }
                    }
                }
                if !changed && self.users.get(&ident_name(name)).is_none() {
                    return Err(MillraceError::Data {
                        sqlstate: "42704",
                        message: format!("role \"{}\" does not exist", ident_name(name)),
                    });
                }
                Ok(QueryOutput::command("ALTER ROLE"))
            }
            Statement::Drop {
                names, if_exists, ..
            } => {
                for name in names {
                    self.users.drop_user(&lower_name(name)?, *if_exists)?;
                }
                Ok(QueryOutput::command("DROP ROLE"))
            }
            Statement::Grant(g) => {
                self.grant_select(state, &g.privileges, g.objects.as_ref(), &g.grantees, true)?;
                Ok(QueryOutput::command("GRANT"))
            }
            Statement::Revoke(r) => {
                self.grant_select(state, &r.privileges, r.objects.as_ref(), &r.grantees, false)?;
                Ok(QueryOutput::command("REVOKE"))
            }
            other => Err(MillraceError::not_supported(format!(
                "role statement {}",
                first_words(&other.to_string())
            ))),
        }
    }

    /// `GRANT | REVOKE SELECT ON rel, ... | ALL TABLES IN SCHEMA public
    /// TO | FROM user, ...`: the only privilege Millrace keeps.
    fn grant_select(
        &self,
        state: &EngineState,
        privileges: &datafusion::sql::sqlparser::ast::Privileges,
        objects: Option<&datafusion::sql::sqlparser::ast::GrantObjects>,
        grantees: &[datafusion::sql::sqlparser::ast::Grantee],
        grant: bool,
    ) -> Result<()> {
        use datafusion::sql::sqlparser::ast::{Action, GrantObjects, GranteeName, Privileges};
        let select_only = match privileges {
            Privileges::Actions(actions) => actions
                .iter()
                .all(|a| matches!(a, Action::Select { columns: None })),
            Privileges::All { .. } => false,
        };
        if !select_only {
            return Err(MillraceError::not_supported(
                "privileges other than SELECT on whole relations (writes need a superuser)",
            ));
        }
        let relations: Vec<String> = match objects {
            Some(GrantObjects::Tables(names) | GrantObjects::Views(names)) => {
                names.iter().map(lower_name).collect::<Result<Vec<_>>>()?
            }
            Some(GrantObjects::AllTablesInSchema { .. }) => {
                vec![super::users::ALL_RELATIONS.to_string()]
            }
            _ => {
                return Err(MillraceError::not_supported(
                    "GRANT on objects other than relations",
                ))
            }
        };
        for r in &relations {
            if r != super::users::ALL_RELATIONS && !state.catalog.contains_key(r) {
                return Err(MillraceError::UnknownRelation(r.clone()));
            }
        }
        for grantee in grantees {
            let Some(GranteeName::ObjectName(name)) = &grantee.name else {
                return Err(MillraceError::not_supported(
                    "GRANT to this kind of grantee",
                ));
            };
            self.users
                .set_select(&lower_name(name)?, &relations, grant)?;
        }
        Ok(())
    }

    /// `SUBSCRIBE`: a stream of `relation`'s changes, each with the epoch
    /// that committed it; with `snapshot`, first its current rows (at the
    /// last committed epoch) as one change of inserts. The stream ends
    /// when the relation is dropped, or when the reader falls more than
    /// [`SUBSCRIBE_BACKLOG`] epochs behind.
    pub async fn subscribe(
        &self,
        relation: &str,
        snapshot: bool,
    ) -> Result<(SchemaRef, tokio::sync::mpsc::Receiver<SubscribedChange>)> {
        let mut state = self.writer.lock().await;
        let (schema, contents) = if let Some(t) = state.tables.get(relation) {
            (t.contents.schema().clone(), &t.contents)
        } else if let Some(v) = state.views.iter().find(|v| v.name == relation) {
            let schema = state
                .catalog
                .get(relation)
                .map(|e| e.schema.clone())
                .unwrap_or_else(|| v.contents.schema().clone());
            (schema, &v.contents)
        } else if state.catalog.contains_key(relation) {
            return Err(MillraceError::Data {
                sqlstate: "42809",
                message: format!(
                    "cannot subscribe to \"{relation}\": only tables and materialized views have changes"
                ),
            });
        } else {
            return Err(MillraceError::UnknownRelation(relation.to_string()));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBE_BACKLOG);
        if snapshot {
            let parts = contents.as_change_batches()?;
            let all = ChangeBatch::concat(schema.clone(), &parts)?;
            if !all.is_empty() {
                let last_committed = state.epoch.saturating_sub(1);
                // The channel is new and empty: this cannot be full.
                let _ = tx.try_send((last_committed, all));
            }
        }
        self.open_subscriptions().push(SubscriptionEntry {
            relation: relation.to_string(),
            since_epoch: state.epoch.saturating_sub(1),
            tx: tx.downgrade(),
        });
        state.subscribers.push(Subscriber {
            relation: relation.to_string(),
            schema: schema.clone(),
            tx,
        });
        Ok((schema, rx))
    }

    /// The columns of table `name` (for `COPY ... FROM STDIN`), or an
    /// error naming why rows cannot be copied into it.
    pub async fn table_schema(&self, name: &str) -> Result<SchemaRef> {
        let state = self.writer.lock().await;
        match state.tables.get(name) {
            Some(t) => Ok(t.contents.schema().clone()),
            None if state.catalog.contains_key(name) => Err(MillraceError::Data {
                sqlstate: "42809",
                message: format!("cannot copy to \"{name}\": it is not a table"),
            }),
            None => Err(MillraceError::UnknownRelation(name.to_string())),
        }
    }

    /// `COPY table [(columns)] FROM STDIN`: rows of text fields (`None` for
    /// NULL) for `columns`, in order; other columns are NULL. Each field is
    /// read as its column's type the way a quoted literal would be; the
    /// first that cannot be is reported with its line (`first_line` is the
    /// line number of `rows[0]`). All rows are committed as one change, or
    /// none.
    pub async fn copy_in(
        &self,
        table: &str,
        columns: &[String],
        rows: &[Vec<Option<String>>],
        first_line: usize,
    ) -> Result<usize> {
        let mut state = self.writer.lock().await;
        let schema = state
            .tables
            .get(table)
            .map(|t| t.contents.schema().clone())
            .ok_or_else(|| MillraceError::UnknownRelation(table.to_string()))?;
        let mut arrays = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let position = columns.iter().position(|c| c == field.name());
            let text: StringArray = match position {
                Some(p) => rows.iter().map(|r| r[p].as_deref()).collect(),
                None => rows.iter().map(|_| None::<&str>).collect(),
            };
            arrays.push(copy_cast(&text, field, table, first_line)?);
        }
        let batch = RecordBatch::try_new(relaxed(&schema), arrays)?;
        let rows = self.conform_and_commit(&mut state, table, &schema, vec![batch], 1)?;
        self.publish(&mut state);
        Ok(rows)
    }

    /// Casts batches to the table's schema and commits them with `weight`.
    fn conform_and_commit(
        &self,
        state: &mut EngineState,
        table: &str,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        weight: i64,
    ) -> Result<usize> {
        let mut parts = Vec::new();
        let mut rows = 0;
        for b in batches {
            rows += b.num_rows();
            let conformed = conform(b.columns(), schema)?;
            parts.push(ChangeBatch::with_uniform_weight(conformed, weight));
        }
        let delta = ChangeBatch::concat(relaxed(schema), &parts)?;
        let late_rows = |state: &EngineState| {
            state
                .table_watermarks
                .get(table)
                .map_or(0, |t| t.late_rows())
        };
        let late_before = late_rows(state);
        self.commit(state, vec![(table.to_string(), delta)])?;
        // Rows behind the table's watermark were dropped, not inserted.
        let late = late_rows(state).saturating_sub(late_before) as usize;
        Ok(rows.saturating_sub(late))
    }

    fn table_name_of(
        &self,
        state: &EngineState,
        factor: &TableFactor,
        verb: &str,
    ) -> Result<String> {
        let TableFactor::Table { name, .. } = factor else {
            return Err(MillraceError::not_supported(format!(
                "{verb} of a non-table"
            )));
        };
        let name = lower_name(name)?;
        if !state.tables.contains_key(&name) {
            return Err(match state.catalog.get(&name) {
                Some(_) => MillraceError::Data {
                    sqlstate: "42809",
                    message: format!("cannot {verb} \"{name}\": it is not a table"),
                },
                None => MillraceError::UnknownRelation(name),
            });
        }
        Ok(name)
    }

    /// `SELECT <old columns>, <new values> FROM t WHERE ...` for an UPDATE.
    fn update_query(&self, state: &EngineState, u: &Update) -> Result<Statement> {
        if u.from.is_some() {
            return Err(MillraceError::not_supported("UPDATE ... FROM"));
        }
        if u.returning.is_some() {
            return Err(MillraceError::not_supported("UPDATE ... RETURNING"));
        }
        if !u.table.joins.is_empty() {
            return Err(MillraceError::not_supported("UPDATE of a join"));
        }
        let table = self.table_name_of(state, &u.table.relation, "update")?;
        let schema = state.tables[&table].contents.schema().clone();
        let mut new_values: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect();
        let mut assigned = HashSet::new();
        for a in &u.assignments {
            let AssignmentTarget::ColumnName(col) = &a.target else {
                return Err(MillraceError::not_supported("UPDATE of a column tuple"));
            };
            let col = lower_name(col)?;
            let idx = schema.index_of(&col).map_err(|_| MillraceError::Data {
                sqlstate: "42703",
                message: format!("column \"{col}\" of relation \"{table}\" does not exist"),
            })?;
            if !assigned.insert(idx) {
                return Err(MillraceError::Data {
                    sqlstate: "42601",
                    message: format!("multiple assignments to same column \"{col}\""),
                });
            }
            new_values[idx] = format!("({})", a.value);
        }
        let old: Vec<String> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} AS \"__old_{i}\"", quote_ident(f.name())))
            .collect();
        let new_values: Vec<String> = new_values
            .into_iter()
            .enumerate()
            .map(|(i, v)| format!("{v} AS \"__new_{i}\""))
            .collect();
        let alias = match &u.table.relation {
            TableFactor::Table { alias: Some(a), .. } => format!(" AS {a}"),
            _ => String::new(),
        };
        let mut sql = format!(
            "SELECT {}, {} FROM {}{}",
            old.join(", "),
            new_values.join(", "),
            quote_ident(&table),
            alias
        );
        if let Some(sel) = &u.selection {
            sql.push_str(&format!(" WHERE {sel}"));
        }
        parse_one(&sql)
    }

    async fn update(
        &self,
        state: &mut EngineState,
        u: Update,
        params: Option<ParamValues>,
    ) -> Result<QueryOutput> {
        let query = self.update_query(state, &u)?;
        let table = self.table_name_of(state, &u.table.relation, "update")?;
        let schema = state.tables[&table].contents.schema().clone();
        let n = schema.fields().len();
        let qstate = self.query_state(self.snapshot_locked(state), None);
        let mut plan = qstate
            .statement_to_plan(DFStatement::Statement(Box::new(query)))
            .await?;
        if let Some(p) = params {
            plan = plan.with_param_values(p)?;
        }
        let batches = execute_plan(&qstate, &plan).await?;
        let mut parts = Vec::new();
        let mut rows = 0;
        for b in batches {
            rows += b.num_rows();
            let old = conform(&b.columns()[..n], &schema)?;
            let new = conform(&b.columns()[n..], &schema)?;
            parts.push(ChangeBatch::with_uniform_weight(old, -1));
            parts.push(ChangeBatch::with_uniform_weight(new, 1));
        }
        let delta = ChangeBatch::concat(relaxed(&schema), &parts)?;
        self.commit(state, vec![(table, delta)])?;
        Ok(QueryOutput::count("UPDATE", rows))
    }

    /// `SELECT * FROM t WHERE ...` for a DELETE, and the table name.
    fn delete_query(&self, state: &EngineState, d: &Delete) -> Result<(Statement, String)> {
        if d.using.is_some() {
            return Err(MillraceError::not_supported("DELETE ... USING"));
        }
        if d.returning.is_some() {
            return Err(MillraceError::not_supported("DELETE ... RETURNING"));
        }
        let from: &Vec<TableWithJoins> = match &d.from {
            FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
        };
        let [twj] = from.as_slice() else {
            return Err(MillraceError::not_supported("DELETE from several tables"));
        };
        if !twj.joins.is_empty() {
            return Err(MillraceError::not_supported("DELETE from a join"));
        }
        let table = self.table_name_of(state, &twj.relation, "delete from")?;
        let alias = match &twj.relation {
            TableFactor::Table { alias: Some(a), .. } => format!(" AS {a}"),
            _ => String::new(),
        };
        let schema = state.tables[&table].contents.schema().clone();
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {}{}",
            cols.join(", "),
            quote_ident(&table),
            alias
        );
        if let Some(sel) = &d.selection {
            sql.push_str(&format!(" WHERE {sel}"));
        }
        Ok((parse_one(&sql)?, table))
    }

    async fn delete(
        &self,
        state: &mut EngineState,
        d: Delete,
        params: Option<ParamValues>,
    ) -> Result<QueryOutput> {
        let (query, table) = self.delete_query(state, &d)?;
        let schema = state.tables[&table].contents.schema().clone();
        let qstate = self.query_state(self.snapshot_locked(state), None);
        let mut plan = qstate
            .statement_to_plan(DFStatement::Statement(Box::new(query)))
            .await?;
        if let Some(p) = params {
            plan = plan.with_param_values(p)?;
        }
        let batches = execute_plan(&qstate, &plan).await?;
        let rows = self.conform_and_commit(state, &table, &schema, batches, -1)?;
        Ok(QueryOutput::count("DELETE", rows))
    }

    /// Registers the `millrace_catalog` relations, which read live state.
    fn register_system_relations(&self) -> Result<Vec<(String, SchemaRef)>> {
        use super::system::{SystemRelation, SYSTEM_SCHEMA};
        let system = Arc::new(MemorySchemaProvider::new());
        let catalog = self
            .base_state
            .catalog_list()
            .catalog(CATALOG_NAME)
            .ok_or_else(|| MillraceError::execution("the catalog is missing"))?;
        catalog.register_schema(SYSTEM_SCHEMA, system.clone())?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("view", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("high_watermark", DataType::Int64, true),
            Field::new("lag", DataType::Int64, true),
            Field::new("records", DataType::Int64, false),
            Field::new("bytes", DataType::Int64, false),
            Field::new("errors", DataType::Int64, false),
        ]));
        let me = self.me.clone();
        let rows_schema = schema.clone();
        system.register_table(
            "source_partitions".into(),
            Arc::new(SystemRelation::new(
                schema.clone(),
                Box::new(move |_| {
                    let readers = me.upgrade().map(|e| e.readers()).unwrap_or_default();
                    source_partition_rows(&rows_schema, &readers)
                }),
            )),
        )?;
        let subscriptions = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("since_epoch", DataType::Int64, false),
            Field::new("pending_epochs", DataType::Int64, false),
        ]));
        let me = self.me.clone();
        let rows_schema = subscriptions.clone();
        system.register_table(
            "subscriptions".into(),
            Arc::new(SystemRelation::new(
                subscriptions.clone(),
                Box::new(move |_| {
                    let rows = me
                        .upgrade()
                        .map(|e| e.subscription_rows())
                        .unwrap_or_default();
                    subscription_batch(&rows_schema, rows)
                }),
            )),
        )?;
        let watermarks = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("view", DataType::Utf8, true),
            Field::new("column", DataType::Utf8, false),
            Field::new("expression", DataType::Utf8, false),
            Field::new("watermark", DataType::Utf8, true),
            Field::new("late_rows", DataType::Int64, false),
        ]));
        let me = self.me.clone();
        let rows_schema = watermarks.clone();
        system.register_table(
            "watermarks".into(),
            Arc::new(SystemRelation::new(
                watermarks.clone(),
                Box::new(move |_| {
                    let rows = me
                        .upgrade()
                        .map(|e| e.lock_watermarks().clone())
                        .unwrap_or_default();
                    watermark_batch(&rows_schema, &rows)
                }),
            )),
        )?;
        let checkpoints = Arc::new(Schema::new(vec![
            Field::new("epoch", DataType::Int64, true),
            Field::new(
                "committed_at",
                DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Millisecond,
                    Some(super::types::UTC.into()),
                ),
                true,
            ),
            Field::new("interval_ms", DataType::Int64, true),
            Field::new("taken", DataType::Int64, false),
            Field::new("last_duration_us", DataType::Int64, false),
            Field::new("views", DataType::Int64, false),
            Field::new("failed", DataType::Boolean, false),
        ]));
        let me = self.me.clone();
        let rows_schema = checkpoints.clone();
        system.register_table(
            "checkpoints".into(),
            Arc::new(SystemRelation::new(
                checkpoints.clone(),
                Box::new(move |_| {
                    let Some(e) = me.upgrade() else {
                        return Ok(RecordBatch::new_empty(rows_schema.clone()));
                    };
                    e.checkpoint_batch(&rows_schema)
                }),
            )),
        )?;
        Ok(vec![
            ("source_partitions".to_string(), schema),
            ("subscriptions".to_string(), subscriptions),
            ("watermarks".to_string(), watermarks),
            ("checkpoints".to_string(), checkpoints),
        ])
    }

    /// The one row of `millrace_catalog.checkpoints`: the last committed
    /// checkpoint's epoch and time, the interval, how many were taken
    /// since start, how long the last took, how many views are
    /// checkpointed, and whether checkpoints stopped after a failure.
    fn checkpoint_batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        use datafusion::arrow::array::{BooleanArray, Int64Array, TimestampMillisecondArray};
        let status = *self.lock_checkpoint_status();
        let views = self.checkpointed_views.load(Ordering::Relaxed) as i64;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![status.last.map(|r| r.epoch as i64)])),
            Arc::new(
                TimestampMillisecondArray::from(vec![status.last.map(|r| r.committed_at_ms)])
                    .with_timezone(super::types::UTC),
            ),
            Arc::new(Int64Array::from(vec![self
                .checkpoint_interval
                .map(|d| d.as_millis() as i64)])),
            Arc::new(Int64Array::from(vec![status.taken as i64])),
            Arc::new(Int64Array::from(vec![status.last_duration_us as i64])),
            Arc::new(Int64Array::from(vec![views])),
            Arc::new(BooleanArray::from(vec![status.failed])),
        ];
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }

    fn open_subscriptions(&self) -> std::sync::MutexGuard<'_, Vec<SubscriptionEntry>> {
        match self.subscriptions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The open subscriptions: relation, first epoch, and how many epochs
    /// wait unread. Ended ones are forgotten here.
    fn subscription_rows(&self) -> Vec<(String, u64, usize)> {
        let mut open = self.open_subscriptions();
        open.retain(|s| s.tx.upgrade().is_some_and(|tx| !tx.is_closed()));
        open.iter()
            .filter_map(|s| {
                let tx = s.tx.upgrade()?;
                Some((
                    s.relation.clone(),
                    s.since_epoch,
                    tx.max_capacity() - tx.capacity(),
                ))
            })
            .collect()
    }

    fn readers(&self) -> Vec<SourceReader> {
        self.readers_mut().clone()
    }

    fn readers_mut(&self) -> std::sync::MutexGuard<'_, Vec<SourceReader>> {
        match self.readers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Waits until every row the running sources produced so far is
    /// committed.
    async fn wait_for_sources(&self) -> Result<()> {
        let targets: Vec<(String, Arc<SourceProgress>, u64, bool)> = self
            .readers()
            .into_iter()
            .map(|r| {
                // A stream that has ended is waited for until its end is
                // committed too (closing its windows).
                let ended = r.progress.finished.load(Ordering::SeqCst);
                let target = r.progress.produced.load(Ordering::SeqCst);
                (r.source, r.progress, target, ended)
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        for (name, p, target, ended) in targets {
            let done = |p: &SourceProgress| {
                p.stop.load(Ordering::SeqCst)
                    || if ended {
                        p.closed.load(Ordering::SeqCst)
                    } else {
                        p.ingested.load(Ordering::SeqCst) >= target
                    }
            };
            while !done(&p) {
                if std::time::Instant::now() > deadline {
                    return Err(MillraceError::execution(format!(
                        "FLUSH timed out waiting for source \"{name}\""
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    /// Progress of every reader of source `name` (one per view reading it).
    pub fn source_readers(&self, name: &str) -> Vec<Arc<SourceProgress>> {
        self.readers()
            .into_iter()
            .filter(|r| r.source == name)
            .map(|r| r.progress)
            .collect()
    }

    fn create_source(&self, state: &mut EngineState, cs: CreateSource) -> Result<QueryOutput> {
        if state.catalog.contains_key(&cs.name) {
            if cs.if_not_exists || state.replaying {
                return Ok(QueryOutput::command("CREATE SOURCE"));
            }
            return Err(MillraceError::DuplicateRelation(cs.name));
        }
        let declared = if cs.columns.is_empty() {
            None
        } else {
            let mut fields = Vec::new();
            for c in &cs.columns {
                let (ty, _) = sql_to_arrow(&c.data_type)?;
                fields.push(Field::new(ident_name(&c.name), ty, true));
            }
            Some(Arc::new(Schema::new(fields)))
        };
        let mut includes = Vec::new();
        let mut proctime: Option<String> = None;
        for inc in &cs.includes {
            if inc.what == "proctime" {
                // Filled by the engine, for any connector.
                if let Some(t) = &inc.data_type {
                    if sql_to_arrow(t)?.0 != super::types::timestamptz() {
                        return Err(MillraceError::plan(format!(
                            "INCLUDE proctime is of type timestamptz, not {t}"
                        )));
                    }
                }
                if proctime.replace(inc.column.clone()).is_some() {
                    return Err(MillraceError::plan("INCLUDE proctime given twice"));
                }
                continue;
            }
            let what = match (inc.what.as_str(), &inc.header) {
                ("key", _) => IncludeKind::Key,
                ("partition", _) => IncludeKind::Partition,
                ("offset", _) => IncludeKind::Offset,
                ("timestamp", _) => IncludeKind::Timestamp,
                ("header", Some(h)) => IncludeKind::Header(h.clone()),
                (other, _) => {
                    return Err(MillraceError::not_supported(format!(
                        "INCLUDE {other} (key, partition, offset, timestamp, header 'name' or proctime)"
                    )))
                }
            };
            let data_type = match &inc.data_type {
                Some(t) => Some(sql_to_arrow(t)?.0),
                None => None,
            };
            includes.push(Include {
                what,
                column: inc.column.clone(),
                data_type,
            });
        }
        let mut spec = build_declared(&SourceDecl {
            name: &cs.name,
            declared,
            options: &cs.options,
            format: cs.format.clone(),
            encode_options: &cs.encode_options,
            primary_key: &cs.primary_key,
            includes,
            validate: !state.replaying,
        })?;
        if let Some(column) = proctime {
            if spec.schema.index_of(&column).is_ok() {
                return Err(MillraceError::plan(format!(
                    "INCLUDE proctime AS {column}: the source already has a column \"{column}\""
                )));
            }
            let produced = spec.schema.clone();
            let mut fields: Vec<Field> = produced
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(column, super::types::timestamptz(), false));
            spec.schema = Arc::new(Schema::new(fields));
            state.proctime_sources.insert(cs.name.clone(), produced);
        }
        let schema = spec.schema.clone();
        let watermark = cs
            .watermark
            .as_ref()
            .map(|w| self.watermark_spec(&cs.name, w, &schema))
            .transpose()?;
        let entry = CatalogEntry {
            id: state.next_id,
            name: cs.name.clone(),
            kind: ObjectKind::Source,
            schema: schema.clone(),
            create_sql: cs.sql.clone(),
            depends_on: vec![],
            comments: Comments::default(),
        };
        self.register(state, entry)?;
        self.schema.register_table(
            cs.name.clone(),
            Arc::new(SourceProvider::new(cs.name.clone(), schema)),
        )?;
        if let Some(w) = watermark {
            state.declared_watermarks.insert(cs.name.clone(), w);
        }
        state.sources.insert(cs.name, spec);
        Ok(QueryOutput::command("CREATE SOURCE"))
    }

    fn create_sink(&self, state: &mut EngineState, cs: CreateSink) -> Result<QueryOutput> {
        if state.catalog.contains_key(&cs.name) {
            if cs.if_not_exists || state.replaying {
                return Ok(QueryOutput::command("CREATE SINK"));
            }
            return Err(MillraceError::DuplicateRelation(cs.name));
        }
        let entry = state
            .catalog
            .get(&cs.from)
            .ok_or_else(|| MillraceError::UnknownRelation(cs.from.clone()))?;
        let (schema, primary_key) = match entry.kind {
            ObjectKind::Table => (
                entry.schema.clone(),
                state
                    .tables
                    .get(&cs.from)
                    .map(|t| t.primary_key.clone())
                    .unwrap_or_default(),
            ),
            ObjectKind::MaterializedView => (entry.schema.clone(), vec![]),
            ObjectKind::View => {
                return Err(MillraceError::not_supported(format!(
                    "a sink from plain view \"{}\": its changes are not computed; make it a materialized view",
                    cs.from
                )))
            }
            ObjectKind::Source | ObjectKind::Sink => {
                return Err(MillraceError::not_supported(format!(
                    "a sink from \"{}\": sinks read tables and materialized views (make a materialized view over the source)",
                    cs.from
                )))
            }
        };
        let id = state.next_id;
        let target = SinkTarget {
            name: &cs.name,
            id,
            relation: &cs.from,
            schema: schema.clone(),
            append_only: relation_grows(state, &cs.from),
            primary_key,
            validate: !state.replaying,
        };
        let spec = build_sink(&target, &cs.options, cs.format.clone())?;
        let logged = self.relation_checkpointed(state, &cs.from);
        if spec.needs_log && !logged {
            let why = format!(
                "exactly_once for a sink from \"{}\": {}",
                cs.from,
                self.why_not_checkpointed(state)
            );
            if !state.replaying {
                return Err(MillraceError::not_supported(why));
            }
            // Started with checkpoints off: the sink runs, each change in
            // a transaction of its own, but without the log.
            warn!(sink = %cs.name, "not in effect: {why}");
        }
        let mut handle = spawn_sink(
            id,
            &cs.name,
            &cs.from,
            schema.clone(),
            spec.connector,
            spec.format,
            spec.make_writer,
        )?;
        handle.logged = logged;
        handle.snapshot = spec.snapshot;
        handle.exactly_once = spec.needs_log;
        // The snapshot goes first, under the writer lock, so that no change
        // is missed or sent twice. A logged sink's snapshot is its first log
        // entry, written by the checkpoint taken below. On restart the
        // catalog is replayed before contents are loaded: a restarted sink
        // sends only its log (see `resume_sinks`).
        if spec.snapshot && !state.replaying {
            if let Some(all) = relation_rows(state, &cs.from, &schema)? {
                if logged {
                    handle.pending.push(all);
                } else {
                    handle.send(&all);
                }
            }
        }
        let entry = CatalogEntry {
            id: state.next_id,
            name: cs.name.clone(),
            kind: ObjectKind::Sink,
            schema,
            create_sql: cs.sql.clone(),
            depends_on: vec![cs.from.clone()],
            comments: Comments::default(),
        };
        self.register(state, entry)?;
        state.sinks.insert(cs.name, handle);
        if logged && !state.replaying {
            // The sink's first log entry and its progress record: without
            // them a restart takes the sink for one never started.
            state.uncheckpointed = true;
            if let Err(e) = self.checkpoint(state) {
                warn!(error = %e, "the checkpoint of a new sink failed");
            }
        }
        Ok(QueryOutput::command("CREATE SINK"))
    }

    /// Whether changes to `relation` are checkpointed: a table's always
    /// (with its statement), a view's when its operators can checkpoint;
    /// neither once checkpoints are off or have failed.
    fn relation_checkpointed(&self, state: &EngineState, relation: &str) -> bool {
        self.checkpoint_interval.is_some()
            && !state.checkpoints_failed
            && (state.tables.contains_key(relation)
                || state
                    .views
                    .iter()
                    .any(|v| v.name == relation && v.checkpointed))
    }

    /// Why [`Engine::relation_checkpointed`] is false, for an error.
    fn why_not_checkpointed(&self, state: &EngineState) -> &'static str {
        if self.checkpoint_interval.is_none() {
            "checkpoints are off (--checkpoint-interval-ms 0), and a sink can only deliver exactly once what a checkpoint keeps"
        } else if state.checkpoints_failed {
            "checkpoints stopped after a failed write; restart the server"
        } else {
            "its operators cannot write their state at checkpoints, so its changes cannot be delivered exactly once"
        }
    }

    /// At start: hands each sink the log entries it has not delivered, and
    /// starts the sinks created just before a crash as new ones.
    fn resume_sinks(&self, state: &mut EngineState) -> Result<()> {
        let unstarted = super::sink_log::resume(&mut state.sinks, self.store.as_ref())?;
        if unstarted.is_empty() {
            return Ok(());
        }
        for name in &unstarted {
            let Some((relation, schema, snapshot)) = state
                .sinks
                .get(name)
                .map(|s| (s.relation.clone(), s.schema.clone(), s.snapshot))
            else {
                continue;
            };
            if !snapshot {
                continue;
            }
            if let Some(all) = relation_rows(state, &relation, &schema)? {
                if let Some(sink) = state.sinks.get_mut(name) {
                    sink.pending.push(all);
                }
            }
        }
        state.uncheckpointed = true;
        self.checkpoint(state)
    }

    /// Starts a reader of `source` (if it is a source) for `view`: its own
    /// generator, from the start of the stream.
    fn start_reader(&self, state: &mut EngineState, source: &str, view: &str) {
        let Some(spec) = state.sources.get(source) else {
            return;
        };
        let Some(engine) = self.me.upgrade() else {
            return;
        };
        let progress = Arc::new(SourceProgress::default());
        self.readers_mut().push(SourceReader {
            source: source.to_string(),
            view: view.to_string(),
            progress: progress.clone(),
        });
        let resume = state
            .resume_positions
            .remove(&(source.to_string(), view.to_string()));
        if let Some(position) = &resume {
            // Until the reader commits a batch, the checkpoint's position
            // is its position.
            state
                .positions
                .insert((source.to_string(), view.to_string()), position.clone());
        }
        let ctx = ReaderContext {
            source: source.to_string(),
            view: view.to_string(),
            progress: progress.clone(),
            resume: resume.clone(),
        };
        match (spec.make_generators)(&ctx) {
            Ok(generators) => {
                info!(%source, %view, connector = %spec.connector, threads = generators.len(), "source reader started");
                spawn_source(
                    source.to_string(),
                    view.to_string(),
                    generators,
                    progress,
                    engine,
                    resume,
                );
            }
            Err(e) => {
                warn!(%source, error = %e, "cannot start source");
                progress.errors.fetch_add(1, Ordering::Relaxed);
                progress.finished.store(true, Ordering::SeqCst);
            }
        }
    }

    fn drop_objects(
        &self,
        state: &mut EngineState,
        kind: ObjectKind,
        if_exists: bool,
        names: Vec<ObjectName>,
        cascade: bool,
    ) -> Result<QueryOutput> {
        let tag = format!("DROP {}", kind.sql_name());
        let mut to_drop: Vec<String> = Vec::new();
        for n in &names {
            let name = lower_name(n)?;
            match state.catalog.get(&name) {
                None if if_exists => continue,
                None => return Err(MillraceError::UnknownRelation(name)),
                Some(e) if e.kind != kind => return Err(wrong_kind(&name, kind)),
                Some(_) => {}
            }
            // Everything that depends on it, transitively.
            let mut closure = vec![name.clone()];
            let mut i = 0;
            while i < closure.len() {
                let current = closure[i].clone();
                for e in state.catalog.values() {
                    if e.depends_on.contains(&current) && !closure.contains(&e.name) {
                        closure.push(e.name.clone());
                    }
                }
                i += 1;
            }
            let dependents: Vec<String> = closure
                .iter()
                .filter(|d| {
                    **d != name
                        && !names
                            .iter()
                            .any(|n| lower_name(n).ok().as_ref() == Some(*d))
                })
                .cloned()
                .collect();
            if !dependents.is_empty() && !cascade {
                return Err(MillraceError::DependentObjects {
                    name,
                    dependents: dependents.join(", "),
                });
            }
            for c in closure {
                if !to_drop.contains(&c) {
                    to_drop.push(c);
                }
            }
        }
        // Drop dependents before what they depend on: newest first.
        to_drop.sort_by_key(|n| std::cmp::Reverse(state.catalog.get(n).map(|e| e.id).unwrap_or(0)));
        let mut batch = WriteBatch::default();
        for name in &to_drop {
            state.pg_info = None;
            let Some(entry) = state.catalog.remove(name) else {
                continue;
            };
            batch.delete(CATALOG_NAMESPACE, entry.key());
            self.schema.deregister_table(name)?;
            if state.tables.remove(name).is_some() {
                self.store.drop_namespace(&rows_namespace(entry.id))?;
            }
            if entry.kind == ObjectKind::Sink {
                super::sink_log::forget(self.store.as_ref(), entry.id, &mut batch)?;
            }
            if entry.kind == ObjectKind::MaterializedView {
                self.store.drop_namespace(&ck::view_namespace(entry.id))?;
                self.store
                    .drop_namespace(&ck::view_runs_namespace(entry.id))?;
                for (key, _) in self.store.scan(POSITIONS_NAMESPACE)? {
                    if key.starts_with(&entry.id.to_be_bytes()) {
                        batch.delete(POSITIONS_NAMESPACE, key);
                    }
                }
            }
            state
                .positions
                .retain(|(source, view), _| source != name && view != name);
            state.views.retain(|v| &v.name != name);
            self.refresh_timers(state);
            state.sources.remove(name);
            state.declared_watermarks.remove(name);
            state.proctime_sources.remove(name);
            state.table_watermarks.remove(name);
            self.lock_watermarks()
                .retain(|r| &r.entry.relation != name && r.view.as_deref() != Some(name.as_str()));
            state.sinks.remove(name);
            state.subscribers.retain(|s| &s.relation != name);
            self.readers_mut().retain(|r| {
                let gone = &r.source == name || &r.view == name;
                if gone {
                    r.progress.stop.store(true, Ordering::SeqCst);
                }
                !gone
            });
        }
        self.store.write(batch)?;
        self.publish(state);
        Ok(QueryOutput::command(&tag))
    }
}

/// Every row of table or view `relation` as one insertion with `schema`'s
/// column names, or `None` when it is empty.
fn relation_rows(
    state: &EngineState,
    relation: &str,
    schema: &SchemaRef,
) -> Result<Option<ChangeBatch>> {
    let contents = state.tables.get(relation).map(|t| &t.contents).or_else(|| {
        state
            .views
            .iter()
            .find(|v| v.name == relation)
            .map(|v| &v.contents)
    });
    let Some(contents) = contents else {
        return Ok(None);
    };
    let parts = contents.as_change_batches()?;
    let all = ChangeBatch::concat(schema.clone(), &parts)?.with_schema(schema.clone())?;
    Ok((!all.is_empty()).then_some(all))
}

/// The relations that only ever grow (see [`relation_grows`]), as a set
/// that a planning step can hold across an await.
/// Builds the `pg_catalog` description of every relation in the catalog.
fn pg_catalog_info(state: &EngineState) -> PgCatalogInfo {
    let mut entries: Vec<&CatalogEntry> = state.catalog.values().collect();
    entries.sort_by_key(|e| e.id);
    let mut relations: Vec<PgRelation> = entries
        .into_iter()
        .filter_map(|e| {
            let kind = pg_catalog::relkind(e.kind)?;
            let definition = match e.kind {
                ObjectKind::View | ObjectKind::MaterializedView => view_query_text(&e.create_sql),
                _ => None,
            };
            Some(PgRelation {
                oid: pg_catalog::relation_oid(e.id),
                name: e.name.clone(),
                namespace: pg_catalog::PUBLIC_OID,
                kind,
                schema: e.schema.clone(),
                primary_key: state
                    .tables
                    .get(&e.name)
                    .map(|t| t.primary_key.clone())
                    .unwrap_or_default(),
                comment: e.comments.relation.clone(),
                column_comments: e.comments.columns.clone(),
                definition,
                source_options: match e.kind {
                    ObjectKind::Source => source_options(&e.create_sql),
                    _ => None,
                },
            })
        })
        .collect();
    relations.extend(pg_catalog::system_relations(&state.system_relations));
    PgCatalogInfo { relations }
}

/// The rows of `millrace_catalog.subscriptions`.
fn subscription_batch(schema: &SchemaRef, rows: Vec<(String, u64, usize)>) -> Result<RecordBatch> {
    let relations: StringArray = rows.iter().map(|r| Some(r.0.as_str())).collect();
    let since: datafusion::arrow::array::Int64Array = rows
        .iter()
        .map(|r| Some(i64::try_from(r.1).unwrap_or(i64::MAX)))
        .collect();
    let pending: datafusion::arrow::array::Int64Array = rows
        .iter()
        .map(|r| Some(i64::try_from(r.2).unwrap_or(i64::MAX)))
        .collect();
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(relations), Arc::new(since), Arc::new(pending)],
    )?)
}

/// The connector and `WITH` options of a `CREATE SOURCE` statement, as
/// `name=value`, for `pg_foreign_table`. Values of options that look like
/// secrets (passwords, keys, SASL configuration) are masked: the catalog
/// is readable by every user.
fn source_options(create_sql: &str) -> Option<(String, Vec<String>)> {
    let text = super::statement::split_statements(create_sql)
        .ok()?
        .into_iter()
        .next()?;
    let Command::CreateSource(cs) = super::statement::parse_statement(create_sql, &text).ok()?
    else {
        return None;
    };
    let connector = cs.options.get("connector")?.clone();
    let secret = |k: &str| {
        ["password", "secret", "sasl", "ssl.key", "token"]
            .iter()
            .any(|w| k.contains(w))
    };
    let options = cs
        .options
        .iter()
        .map(|(k, v)| {
            if secret(k) {
                format!("{k}=********")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    Some((connector, options))
}

/// The query of a `CREATE [MATERIALIZED] VIEW` statement, as SQL text.
fn view_query_text(create_sql: &str) -> Option<String> {
    let parts = split_statements(create_sql).ok()?;
    match parse_statement(create_sql, parts.first()?).ok()? {
        Command::Sql(stmt) => match *stmt {
            Statement::CreateView(cv) => Some(cv.query.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// What lowering a view needs to know about the relations it may read.
struct ViewInputs {
    growing: std::collections::HashSet<String>,
    marks: HashMap<String, RelationMarks>,
    keyed: std::collections::HashSet<String>,
}

impl ViewInputs {
    fn of(state: &EngineState) -> Self {
        let mut marks: HashMap<String, RelationMarks> = state
            .declared_watermarks
            .iter()
            .map(|(name, spec)| (name.clone(), RelationMarks::Declared(spec.clone())))
            .collect();
        for v in &state.views {
            let columns = v.dataflow.output_marked_columns();
            if !columns.is_empty() {
                marks.insert(v.name.clone(), RelationMarks::Columns(columns));
            }
        }
        Self {
            growing: growing_relations(state),
            marks,
            keyed: state
                .sources
                .iter()
                .filter(|(_, spec)| spec.keyed)
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }

    fn lower(&self, plan: &LogicalPlan, emit_on_window_close: bool) -> Result<Dataflow> {
        lower_plan_marked(
            plan,
            &RelationInfo {
                grows: &|r| self.growing.contains(r),
                marks: &|r| self.marks.get(r).cloned().unwrap_or(RelationMarks::None),
                keyed: &|r| self.keyed.contains(r),
            },
            emit_on_window_close,
        )
    }
}

/// The current watermarks of every view whose output carries one.
fn view_watermarks(state: &EngineState) -> HashMap<String, Watermarks> {
    state
        .views
        .iter()
        .filter_map(|v| {
            let marks = v.dataflow.output_watermarks();
            (!marks.is_empty()).then(|| (v.name.clone(), marks))
        })
        .collect()
}

fn growing_relations(state: &EngineState) -> std::collections::HashSet<String> {
    let names = state
        .sources
        .keys()
        .chain(state.views.iter().map(|v| &v.name));
    names
        .filter(|n| relation_grows(state, n))
        .cloned()
        .collect()
}

/// Whether relation `name` only ever grows: sources do, and views built
/// only from growing inputs.
fn relation_grows(state: &EngineState, name: &str) -> bool {
    state.sources.get(name).is_some_and(|s| s.append_only)
        || state.views.iter().any(|v| v.name == name && v.append_only)
}

#[async_trait::async_trait]
impl SourceSink for Engine {
    async fn ingest(
        &self,
        source: &str,
        view: &str,
        batches: Vec<ChangeBatch>,
        position: SourcePosition,
    ) -> Result<()> {
        // Published when read (see `Engine::snapshot`): a published view's
        // contents are shared with readers, so the next change to them
        // copies the parts it touches.
        self.commit_streamed(source, view, batches, false, Some(position))
            .await
    }

    async fn finish(&self, source: &str, view: &str) -> Result<()> {
        self.commit_streamed(source, view, vec![], true, None).await
    }
}

impl Engine {
    /// Commits `batches` read from `source` for `view` as one epoch (with
    /// `ended`, the end of the stream after them, which is published at
    /// once: the views' final contents).
    async fn commit_streamed(
        &self,
        source: &str,
        view: &str,
        batches: Vec<ChangeBatch>,
        ended: bool,
        position: Option<SourcePosition>,
    ) -> Result<()> {
        let mut state = self.writer.lock().await;
        let Some(spec) = state.sources.get(source) else {
            return Ok(());
        };
        if !state.views.iter().any(|v| v.name == view) {
            return Ok(());
        }
        // A keyed source's batches carry each record's key last.
        let with_key = |schema: &SchemaRef| {
            if spec.keyed {
                crate::stream::upsert::keyed_schema(schema)
            } else {
                schema.clone()
            }
        };
        let delta = match state.proctime_sources.get(source) {
            None => ChangeBatch::concat(with_key(&spec.schema), &batches)?,
            Some(produced) => {
                let delta = ChangeBatch::concat(with_key(produced), &batches)?;
                with_processing_time(&delta, &with_key(&spec.schema), spec.keyed)?
            }
        };
        let streamed = Streamed {
            source: source.to_string(),
            view: view.to_string(),
            delta,
            ended,
        };
        // The position moves with the epoch, before it commits: a checkpoint
        // taken while committing it (to publish) must hold both. A batch
        // that fails is skipped (and counted by the reader): the reader is
        // past it either way.
        if let Some(position) = position {
            state
                .positions
                .insert((source.to_string(), view.to_string()), position);
            state.uncheckpointed = true;
        }
        self.commit_epoch(&mut state, vec![], Some(streamed), ended)
    }
}

/// Writes what a background compaction of a view's runs produced:
/// deletes the runs it replaces and puts
/// its base just before its cut, in the checkpoint being written, so the
/// store holds either the old runs or the base, never both in part. The
/// runs written while it ran stay, after the base. A compaction happens
/// once the runs written since the last one are as large as its base, so
/// each byte of live state is rewritten at most about once per byte of
/// changes.
fn apply_compaction(
    id: u64,
    changes: &mut ViewChanges,
    base: ck::CompactedBase,
    writes: &mut WriteBatch,
) -> Result<()> {
    let runs_ns = ck::view_runs_namespace(id);
    for seq in &base.replaced {
        writes.delete(&runs_ns, ck::run_key(*seq));
    }
    let mut base_bytes = 0u64;
    for (i, piece) in base.pieces.into_iter().enumerate() {
        base_bytes += piece.len() as u64;
        writes.put(
            &runs_ns,
            ck::run_key(ck::base_piece_seq(base.cut, i)?),
            piece,
        );
    }
    // What the compaction wrote holds each key once: the new base.
    changes.base_end = base.cut;
    ck::put_base_end(writes, &ck::view_namespace(id), changes.base_end);
    let folded = base.covered_run_bytes + changes.base_bytes;
    tracing::debug!(
        namespace = runs_ns,
        runs_bytes = folded,
        base_bytes,
        "compacted a view's checkpoint runs"
    );
    // A compaction that found little superseded state waits longer for
    // the next one: rewriting a state that only grows buys no space.
    changes.compact_factor = if base_bytes.saturating_mul(4) >= folded.saturating_mul(3) {
        (changes.compact_factor.max(1) * 2).min(ck::MAX_COMPACT_FACTOR)
    } else {
        1
    };
    changes.base_bytes = base_bytes;
    changes.run_bytes = changes.run_bytes.saturating_sub(base.covered_run_bytes);
    Ok(())
}

/// `delta` with one more column of `schema`, the current time (one value
/// for the whole epoch), for `INCLUDE proctime`: last, or before the key
/// column of a `keyed` source's records.
fn with_processing_time(
    delta: &ChangeBatch,
    schema: &SchemaRef,
    keyed: bool,
) -> Result<ChangeBatch> {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let n = delta.num_rows();
    let mut columns = delta.data().columns().to_vec();
    let at = if keyed {
        columns.len().saturating_sub(1)
    } else {
        columns.len()
    };
    columns.insert(
        at,
        Arc::new(TimestampMicrosecondArray::from_value(now, n).with_timezone(super::types::UTC)),
    );
    let data = crate::stream::change::batch_from_columns(schema.clone(), columns, n)?;
    delta.with_data(data)
}

/// The rows of `millrace_catalog.watermarks`.
fn watermark_batch(schema: &SchemaRef, rows: &[WatermarkRow]) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Int64Array, StringArray};
    let relation: StringArray = rows
        .iter()
        .map(|r| Some(r.entry.relation.as_str()))
        .collect();
    let view: StringArray = rows.iter().map(|r| r.view.as_deref()).collect();
    let column: StringArray = rows
        .iter()
        .map(|r| Some(r.entry.spec.column_name.as_str()))
        .collect();
    let expression: StringArray = rows
        .iter()
        .map(|r| Some(r.entry.spec.text.as_str()))
        .collect();
    let watermark: StringArray = rows
        .iter()
        .map(|r| r.entry.progress.mark().map(|m| m.to_string()))
        .collect();
    let late: Int64Array = rows
        .iter()
        .map(|r| Some(r.entry.progress.late_rows() as i64))
        .collect();
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(relation),
            Arc::new(view),
            Arc::new(column),
            Arc::new(expression),
            Arc::new(watermark),
            Arc::new(late),
        ],
    )?)
}

/// The rows of `millrace_catalog.source_partitions`.
fn source_partition_rows(schema: &SchemaRef, readers: &[SourceReader]) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Int32Builder, Int64Builder, StringBuilder};
    let mut source = StringBuilder::new();
    let mut view = StringBuilder::new();
    let mut partition = Int32Builder::new();
    let mut offset = Int64Builder::new();
    let mut high = Int64Builder::new();
    let mut lag = Int64Builder::new();
    let mut records = Int64Builder::new();
    let mut bytes = Int64Builder::new();
    let mut errors = Int64Builder::new();
    for r in readers {
        let parts = match r.progress.partitions.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for (p, stats) in parts {
            source.append_value(&r.source);
            view.append_value(&r.view);
            partition.append_value(p);
            offset.append_value(stats.next_offset);
            high.append_option(stats.high_watermark);
            lag.append_option(stats.high_watermark.map(|h| (h - stats.next_offset).max(0)));
            records.append_value(stats.records as i64);
            bytes.append_value(stats.bytes as i64);
            errors.append_value(stats.errors as i64);
        }
    }
    let columns: Vec<datafusion::arrow::array::ArrayRef> = vec![
        Arc::new(source.finish()),
        Arc::new(view.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(high.finish()),
        Arc::new(lag.finish()),
        Arc::new(records.finish()),
        Arc::new(bytes.finish()),
        Arc::new(errors.finish()),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Rows read from a source for one view.
struct Streamed {
    source: String,
    view: String,
    delta: ChangeBatch,
    /// The source's stream has ended: nothing follows.
    ended: bool,
}

/// Records all of `contents` as changed, for a checkpoint that rewrites a
/// view's state whole: every batch of append-only contents, or every row of
/// keyed contents with its count.
fn record_contents(changes: &mut ViewChanges, contents: &Contents) -> Result<()> {
    for batch in contents.as_change_batches()? {
        if contents.is_append_only() {
            changes.appended.push(batch);
            continue;
        }
        let rows = contents.encode(batch.data())?;
        for (i, count) in batch.weights().values().iter().enumerate() {
            let row = crate::stream::change::row_bytes(&rows, i);
            changes.rows.insert(Arc::from(row), *count);
        }
    }
    Ok(())
}

/// Feeds the full contents of `inputs` through a new dataflow.
fn backfill(
    state: &EngineState,
    dataflow: &mut Dataflow,
    inputs: &[String],
    contents: &mut Contents,
) -> Result<()> {
    let mut outputs = Vec::new();
    let marks = view_watermarks(state);
    // The first step runs even without input: constants and global
    // aggregates emit their initial rows.
    if let Some(out) = dataflow.step_marked(&HashMap::new(), &marks)? {
        outputs.push(out);
    }
    for input in inputs {
        if state.sources.contains_key(input) {
            // A source keeps no rows: the view starts from its live stream.
            continue;
        }
        let source = state
            .tables
            .get(input)
            .map(|t| &t.contents)
            .or_else(|| {
                state
                    .views
                    .iter()
                    .find(|v| &v.name == input)
                    .map(|v| &v.contents)
            })
            .ok_or_else(|| MillraceError::UnknownRelation(input.clone()))?;
        let mut chunks = source.as_change_batches()?;
        // A relation with a declared watermark goes in as one change, so
        // that none of its rows is late relative to another.
        if state.declared_watermarks.contains_key(input) && chunks.len() > 1 {
            let schema = chunks[0].schema();
            chunks = vec![ChangeBatch::concat(schema, &chunks)?];
        }
        for chunk in chunks {
            let deltas = HashMap::from([(input.clone(), chunk)]);
            if let Some(out) = dataflow.step_marked(&deltas, &marks)? {
                outputs.push(out);
            }
        }
    }
    if let Some(schema) = dataflow.output_schema() {
        let all = ChangeBatch::concat(schema, &outputs)?.consolidate()?;
        let all = all.with_schema(contents.schema().clone())?;
        contents.add(&all, None)?;
    }
    Ok(())
}

/// Renames a plan's output columns to `schema`'s names.
fn rename_outputs(plan: LogicalPlan, schema: &SchemaRef) -> Result<LogicalPlan> {
    use datafusion::logical_expr::{col, LogicalPlanBuilder};
    let same = plan
        .schema()
        .fields()
        .iter()
        .zip(schema.fields())
        .all(|(a, b)| a.name() == b.name());
    if same {
        return Ok(plan);
    }
    let exprs: Vec<_> = plan
        .schema()
        .columns()
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| col(c).alias(f.name()))
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Runs a logical plan to completion.
async fn execute_plan(state: &SessionState, plan: &LogicalPlan) -> Result<Vec<RecordBatch>> {
    let physical = state.create_physical_plan(plan).await?;
    Ok(collect(physical, state.task_ctx()).await?)
}

/// Reads a column of `COPY` text fields as `field`'s type. On failure,
/// finds the first field that does not read, to name its line and value.
fn copy_cast(
    text: &StringArray,
    field: &Field,
    table: &str,
    first_line: usize,
) -> Result<ArrayRef> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let whole = cast_with_options(text, field.data_type(), &options);
    match whole {
        Ok(array) => Ok(array),
        Err(e) => {
            for row in 0..text.len() {
                let one = text.slice(row, 1);
                if cast_with_options(&one, field.data_type(), &options).is_err() {
                    return Err(MillraceError::Data {
                        sqlstate: "22P02",
                        message: format!(
                            "invalid input syntax for type {}: \"{}\" (COPY {table}, line {}, column {})",
                            column_type_name(field),
                            text.value(row),
                            first_line + row,
                            field.name()
                        ),
                    });
                }
            }
            Err(e.into())
        }
    }
}

/// Casts `columns` to the types of `schema` (erroring on values that do
/// not fit, as PostgreSQL's assignment casts do).
fn conform(columns: &[ArrayRef], schema: &SchemaRef) -> Result<RecordBatch> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cols = columns
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            let c = if c.data_type() == f.data_type() {
                c.clone()
            } else {
                cast_with_options(c, f.data_type(), &options)?
            };
            if f.metadata().get(SQL_TYPE_KEY).is_some_and(|t| t == "jsonb") {
                check_json(&c, f.name())?;
            }
            Ok(c)
        })
        .collect::<Result<Vec<_>>>()?;
    let n = columns.first().map(|c| c.len()).unwrap_or(0);
    // Built under the relaxed schema: NOT NULL is checked by the table, with
    // a proper error, before anything is applied.
    crate::stream::change::batch_from_columns(relaxed(schema), cols, n)
}

/// Refuses text that is not JSON, as PostgreSQL does for `jsonb`.
fn check_json(column: &ArrayRef, name: &str) -> Result<()> {
    use datafusion::arrow::array::{Array, AsArray};
    let Some(strings) = column.as_string_opt::<i32>() else {
        return Ok(());
    };
    for i in 0..strings.len() {
        if strings.is_valid(i) {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(strings.value(i)) {
                return Err(MillraceError::Data {
                    sqlstate: "22P02",
                    message: format!(
                        "invalid input syntax for type json in column \"{name}\": {e}"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `schema` with every column nullable.
fn relaxed(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn parse_one(sql: &str) -> Result<Statement> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql)?;
    if stmts.len() != 1 {
        return Err(MillraceError::plan("expected one statement"));
    }
    Ok(stmts.remove(0))
}

fn wrong_kind(name: &str, kind: ObjectKind) -> MillraceError {
    MillraceError::Data {
        sqlstate: "42809",
        message: format!(
            "\"{name}\" is not a {}",
            kind.sql_name().to_ascii_lowercase()
        ),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn created_name(stmt: &Statement) -> Option<String> {
    match stmt {
        Statement::CreateTable(ct) => lower_name(&ct.name).ok(),
        Statement::CreateView(cv) => lower_name(&cv.name).ok(),
        _ => None,
    }
}

fn created_tag(stmt: &Statement) -> &'static str {
    match stmt {
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(cv) if cv.materialized => "CREATE MATERIALIZED VIEW",
        _ => "CREATE VIEW",
    }
}

/// Columns of `SHOW SOURCES`.
const SHOW_SOURCES_COLUMNS: &[&str] = &["name", "connector", "view", "status", "rows", "errors"];
/// Columns of `SHOW SINKS`.
const SHOW_SINKS_COLUMNS: &[&str] = &[
    "name",
    "relation",
    "connector",
    "format",
    "rows",
    "delivered",
    "errors",
    "guarantee",
    "undelivered_entries",
    "last_error",
];

fn describe_own_command(cmd: &Command) -> SchemaRef {
    let cols: &[&str] = match cmd {
        Command::ShowObjects(ObjectKind::Source) => SHOW_SOURCES_COLUMNS,
        Command::ShowObjects(ObjectKind::Sink) => SHOW_SINKS_COLUMNS,
        Command::ShowObjects(_) => &["name"],
        Command::ShowCreate(..) => &["name", "create_sql"],
        _ => &[],
    };
    Arc::new(Schema::new(
        cols.iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ))
}

/// The SQL type name of a column, for display.
pub fn column_type_name(field: &Field) -> String {
    arrow_to_sql_name(
        field.data_type(),
        field.metadata().get(SQL_TYPE_KEY).map(|s| s.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `INCLUDE proctime` adds the time as the relation's last column: for
    /// a keyed source's records, before the key column, which stays last.
    #[test]
    fn processing_time_goes_before_a_keyed_records_key() {
        let rows = crate::stream::pretty::from_pretty("I\n 1 +1\n 2 -1").unwrap();
        let mut fields: Vec<Field> = rows
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            "seen",
            super::super::types::timestamptz(),
            false,
        ));
        let relation = Schema::new(fields);
        let produced = crate::stream::upsert::keyed_schema(&rows.schema());
        let records =
            crate::stream::upsert::records(&produced, rows.data(), &[b"k1", b"k2"], &[true, false])
                .unwrap();
        let keyed = crate::stream::upsert::keyed_schema(&relation);
        let out = with_processing_time(&records, &keyed, true).unwrap();
        let names: Vec<&str> = out
            .data()
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names[1..], ["seen", crate::stream::upsert::KEY_COLUMN]);
        assert_eq!(out.data().column(1).null_count(), 0);
        assert_eq!(out.weights().values(), records.weights().values());
        // A plain source's time is simply last.
        let plain = with_processing_time(&rows, &Arc::new(relation), false).unwrap();
        assert_eq!(plain.data().schema_ref().field(1).name(), "seen");
    }

    #[test]
    fn source_options_mask_secrets_for_the_catalog() {
        let (connector, options) = source_options(
            "CREATE SOURCE s (a bigint) WITH (connector = 'kafka', topic = 't', \
             properties.bootstrap.server = 'b:9092', properties.sasl.password = 'hunter2', \
             properties.ssl.key.password = 'k')",
        )
        .expect("a source");
        assert_eq!(connector, "kafka");
        assert!(options.contains(&"topic=t".to_string()), "{options:?}");
        assert!(options.contains(&"properties.sasl.password=********".to_string()));
        assert!(options.contains(&"properties.ssl.key.password=********".to_string()));
        assert!(
            !options.iter().any(|o| o.contains("hunter2")),
            "{options:?}"
        );
        assert!(source_options("CREATE TABLE t (a bigint)").is_none());
    }
}
