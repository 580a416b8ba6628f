//! PostgreSQL's system catalogs (`pg_catalog`), as real relations that
//! client tools query with plain SQL: psql's `\d` commands, SQLAlchemy's
//! inspector, pgjdbc's `DatabaseMetaData`.
//!
//! The relations that describe Millrace's own objects (`pg_namespace`,
//! `pg_class`, `pg_attribute`, `pg_index`, `pg_constraint`,
//! `pg_description`, `pg_tables`, `pg_views`, `pg_matviews`) are built here
//! from the catalog of the snapshot a query reads, so a catalog query is as
//! consistent as a data query. Everything else (`pg_type`, `pg_proc`,
//! `pg_am`, the relations clients probe but Millrace leaves empty) and most
//! catalog functions come from the `datafusion-pg-catalog` crate, whose
//! static tables are exports of a real PostgreSQL.
//!
//! OIDs are stable across restarts: a relation's OID derives from its
//! persistent catalog id (see [`relation_oid`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;

use super::snapshot::Snapshot;
use super::statement::ObjectKind;
use super::system::SystemRelation;
use super::types::{is_varchar, varchar_length, SQL_TYPE_KEY};
use crate::error::{MillraceError, Result};

/// OID of the `pg_catalog` namespace.
pub const PG_CATALOG_OID: i32 = 11;
/// OID of the `public` namespace.
pub const PUBLIC_OID: i32 = 2200;
/// OID of the `information_schema` namespace.
pub const INFORMATION_SCHEMA_OID: i32 = 13_000;
/// OID of the `millrace_catalog` namespace (system relations).
pub const SYSTEM_SCHEMA_OID: i32 = 16_383;
/// OID of `pg_class` itself: the `classoid` of relation comments.
pub const PG_CLASS_OID: i32 = 1259;
/// OID of the one role, which owns everything.
pub const OWNER_OID: i32 = 10;
/// Catalog relations that stay empty because Millrace has none of the
/// objects they list: publications, subscriptions, row-security policies,
/// triggers, table inheritance, extended statistics and user mappings. Query rewriting
/// relies on it (a `SELECT` that inner-joins one returns no rows), and
/// `tests/slt/pg_catalog.slt` checks that each one is empty.
pub const UNPOPULATED_RELATIONS: &[&str] = &[
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_policy",
    "pg_trigger",
    "pg_inherits",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_user_mapping",
];
/// OID of the `btree` access method, used by primary-key indexes.
const BTREE_OID: i32 = 403;
/// OID of the `heap` access method, used by tables.
const HEAP_OID: i32 = 2;
/// First OID given to user objects, as in PostgreSQL.
const FIRST_USER_OID: i64 = 16_384;

/// The OID of the relation with catalog id `id`. Each relation owns four
/// consecutive OIDs: the relation, its row type, its primary-key index and
/// its primary-key constraint.
pub fn relation_oid(id: u64) -> i32 {
    i32::try_from(FIRST_USER_OID + 4 * id as i64).unwrap_or(i32::MAX)
}

/// One relation as the catalog relations describe it.
#[derive(Debug, Clone)]
pub struct PgRelation {
    /// The relation's OID.
    pub oid: i32,
    /// Name.
    pub name: String,
    /// Namespace OID.
    pub namespace: i32,
    /// `pg_class.relkind`: `r` table, `v` view, `m` materialized view,
    /// `f` source (shown as a foreign table).
    pub kind: char,
    /// Columns.
    pub schema: SchemaRef,
    /// Primary-key column positions (0-based).
    pub primary_key: Vec<usize>,
    /// `COMMENT ON` the relation.
    pub comment: Option<String>,
    /// `COMMENT ON COLUMN`, by column name.
    pub column_comments: BTreeMap<String, String>,
    /// For views: the defining query.
    pub definition: Option<String>,
    /// For sources: the connector and the `WITH` options, as `name=value`
    /// (secret values masked), shown as a foreign table's server and
    /// options.
    pub source_options: Option<(String, Vec<String>)>,
}

impl PgRelation {
    fn index_oid(&self) -> i32 {
        self.oid + 2
    }

    fn constraint_oid(&self) -> i32 {
        self.oid + 3
    }

    fn index_name(&self) -> String {
        format!("{}_pkey", self.name)
    }
}

/// Every relation the catalog relations describe, at one snapshot.
#[derive(Debug, Default)]
pub struct PgCatalogInfo {
    /// User and system relations.
    pub relations: Vec<PgRelation>,
}

impl PgCatalogInfo {
    fn by_oid(&self, oid: i32) -> Option<&PgRelation> {
        self.relations.iter().find(|r| r.oid == oid)
    }
}

/// The `pg_class.relkind` of a catalog object kind, if it is a relation.
pub fn relkind(kind: ObjectKind) -> Option<char> {
    match kind {
        ObjectKind::Table => Some('r'),
        ObjectKind::View => Some('v'),
        ObjectKind::MaterializedView => Some('m'),
        ObjectKind::Source => Some('f'),
        ObjectKind::Sink => None,
    }
}

/// The latest catalog, shared with catalog functions (which, unlike
/// relations, cannot see the query's snapshot).
pub type SharedCatalog = Arc<RwLock<Arc<PgCatalogInfo>>>;

fn read_shared(shared: &SharedCatalog) -> Arc<PgCatalogInfo> {
    match shared.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// Installs `pg_catalog` and the catalog functions into `state`.
pub fn install(state: SessionState, catalog: &str, shared: SharedCatalog) -> Result<SessionState> {
    let ctx = SessionContext::new_with_state(state);
    datafusion_pg_catalog::pg_catalog::setup_pg_catalog(&ctx, catalog, EmptyContextProvider)
        .map_err(|e| MillraceError::execution(format!("installing pg_catalog: {e}")))?;
    let cat = ctx
        .catalog(catalog)
        .ok_or_else(|| MillraceError::execution("the catalog is missing"))?;
    let inner = cat
        .schema("pg_catalog")
        .ok_or_else(|| MillraceError::execution("pg_catalog was not installed"))?;
    cat.register_schema("pg_catalog", Arc::new(PgCatalogSchema::new(inner)))?;
    ctx.register_udf(version_udf());
    for udf in super::pg_functions::udfs() {
        ctx.register_udf(udf);
    }
    for udf in catalog_udfs(&shared) {
        ctx.register_udf(udf);
    }
    Ok(ctx.state())
}

/// The PostgreSQL version string `version()` returns; SQLAlchemy parses
/// the major and minor version from it.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {} (Millrace {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
        crate::pgwire::SERVER_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// `pg_catalog`: Millrace's own relations first, then the crate's.
#[derive(Debug)]
struct PgCatalogSchema {
    inner: Arc<dyn SchemaProvider>,
    own: HashMap<&'static str, Arc<dyn TableProvider>>,
}

impl PgCatalogSchema {
    fn new(inner: Arc<dyn SchemaProvider>) -> Self {
        let own = OWN_RELATIONS
            .iter()
            .map(|(name, columns, rows)| {
                let schema = schema_of(columns);
                let rows = *rows;
                let batch_schema = schema.clone();
                // Computed from the catalog of the snapshot the query reads.
                let provider: Arc<dyn TableProvider> = Arc::new(SystemRelation::new(
                    schema,
                    Box::new(move |session: &dyn Session| {
                        let info = session
                            .config()
                            .get_extension::<Snapshot>()
                            .map(|s| s.catalog.clone())
                            .unwrap_or_default();
                        Ok(rows_to_batch(&batch_schema, rows(&info))?)
                    }),
                ));
                (*name, provider)
            })
            .collect();
        Self { inner, own }
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.table_names();
        for name in self.own.keys() {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        match self.own.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.own.contains_key(name) || self.inner.table_exist(name)
    }
}

type RowsFn = fn(&PgCatalogInfo) -> Vec<Vec<ScalarValue>>;

/// Column types of the catalog relations, in PostgreSQL's storage terms.
#[derive(Clone, Copy)]
enum Col {
    /// `oid`, `int4`, `regproc`...: Int32.
    Oid,
    /// `int2`.
    Int2,
    /// `float4`/`float8` statistics.
    Float,
    /// `bool`.
    Bool,
    /// `name`, `text`, `"char"`.
    Text,
    /// `int2vector` / `int2[]`.
    Int2s,
    /// `oidvector` / `oid[]`.
    Oids,
    /// `text[]`, `aclitem[]`.
    Texts,
}

impl Col {
    fn data_type(self) -> DataType {
        match self {
            Col::Oid => DataType::Int32,
            Col::Int2 => DataType::Int16,
            Col::Float => DataType::Float64,
            Col::Bool => DataType::Boolean,
            Col::Text => DataType::Utf8,
            Col::Int2s => DataType::new_list(DataType::Int16, true),
            Col::Oids => DataType::new_list(DataType::Int32, true),
            Col::Texts => DataType::new_list(DataType::Utf8, true),
        }
    }
}

fn schema_of(columns: &[(&str, Col)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, c)| Field::new(*n, c.data_type(), true))
            .collect::<Vec<_>>(),
    ))
}

fn rows_to_batch(schema: &SchemaRef, rows: Vec<Vec<ScalarValue>>) -> DFResult<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (c, field) in schema.fields().iter().enumerate() {
        let values = rows.iter().map(|r| {
            r.get(c).cloned().unwrap_or_else(|| {
                ScalarValue::try_from(field.data_type()).unwrap_or(ScalarValue::Null)
            })
        });
        let array = if rows.is_empty() {
            datafusion::arrow::array::new_empty_array(field.data_type())
        } else {
            ScalarValue::iter_to_array(values)?
        };
        columns.push(array);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn oid(v: i32) -> ScalarValue {
    ScalarValue::Int32(Some(v))
}

fn int2(v: i16) -> ScalarValue {
    ScalarValue::Int16(Some(v))
}

fn text(v: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(v.into()))
}

fn null_text() -> ScalarValue {
    ScalarValue::Utf8(None)
}

fn boolean(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}

fn int2s(values: impl IntoIterator<Item = i16>) -> ScalarValue {
    let values: Vec<ScalarValue> = values.into_iter().map(int2).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int16))
}

fn texts(values: &[String]) -> ScalarValue {
    let values: Vec<ScalarValue> = values.iter().map(text).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
}

fn oids(values: impl IntoIterator<Item = i32>) -> ScalarValue {
    let values: Vec<ScalarValue> = values.into_iter().map(oid).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int32))
}

fn null_list(element: DataType) -> ScalarValue {
    ScalarValue::try_from(DataType::new_list(element, true)).unwrap_or(ScalarValue::Null)
}

/// The PostgreSQL type OID of a column, as the wire reports it.
pub fn type_oid(field: &Field) -> i32 {
    if field
        .metadata()
        .get(SQL_TYPE_KEY)
        .is_some_and(|t| t == "jsonb")
    {
        return 3802;
    }
    if is_varchar(field) {
        return 1043;
    }
    arrow_pg::datatypes::into_pg_type(field.data_type())
        .map(|t| t.oid() as i32)
        .unwrap_or(25)
}

/// `atttypmod`: precision and scale of numerics, the length of
/// `varchar(n)` (plus 4, as PostgreSQL stores it), -1 otherwise.
fn type_modifier(field: &Field) -> i32 {
    if let Some(n) = varchar_length(field) {
        return i32::try_from(n).map_or(-1, |n| n + 4);
    }
    match field.data_type() {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            ((i32::from(*p) << 16) | i32::from(*s as u8)) + 4
        }
        _ => -1,
    }
}

/// `attlen`: the type's fixed width, or -1 for variable-width types.
fn type_length(field: &Field) -> i16 {
    match field.data_type() {
        DataType::Boolean => 1,
        DataType::Int16 => 2,
        DataType::Int32 | DataType::Float32 | DataType::Date32 => 4,
        DataType::Int64 | DataType::Float64 | DataType::Timestamp(..) | DataType::Time64(_) => 8,
        DataType::Interval(_) => 16,
        _ => -1,
    }
}

fn namespace_name(oid: i32) -> &'static str {
    match oid {
        PG_CATALOG_OID => "pg_catalog",
        INFORMATION_SCHEMA_OID => "information_schema",
        SYSTEM_SCHEMA_OID => super::system::SYSTEM_SCHEMA,
        _ => "public",
    }
}

const PG_NAMESPACE: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("nspname", Col::Text),
    ("nspowner", Col::Oid),
    ("nspacl", Col::Texts),
];

fn pg_namespace_rows(_: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    [
        PG_CATALOG_OID,
        PUBLIC_OID,
        INFORMATION_SCHEMA_OID,
        SYSTEM_SCHEMA_OID,
    ]
    .into_iter()
    .map(|n| {
        vec![
            oid(n),
            text(namespace_name(n)),
            oid(OWNER_OID),
            null_list(DataType::Utf8),
        ]
    })
    .collect()
}

const PG_CLASS: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("relname", Col::Text),
    ("relnamespace", Col::Oid),
    ("reltype", Col::Oid),
    ("reloftype", Col::Oid),
    ("relowner", Col::Oid),
    ("relam", Col::Oid),
    ("relfilenode", Col::Oid),
    ("reltablespace", Col::Oid),
    ("relpages", Col::Oid),
    ("reltuples", Col::Float),
    ("relallvisible", Col::Oid),
    ("reltoastrelid", Col::Oid),
    ("relhasindex", Col::Bool),
    ("relisshared", Col::Bool),
    ("relpersistence", Col::Text),
    ("relkind", Col::Text),
    ("relnatts", Col::Int2),
    ("relchecks", Col::Int2),
    ("relhasrules", Col::Bool),
    ("relhastriggers", Col::Bool),
    ("relhassubclass", Col::Bool),
    ("relrowsecurity", Col::Bool),
    ("relforcerowsecurity", Col::Bool),
    ("relispopulated", Col::Bool),
    ("relreplident", Col::Text),
    ("relispartition", Col::Bool),
    ("relrewrite", Col::Oid),
    ("relfrozenxid", Col::Oid),
    ("relminmxid", Col::Oid),
    ("relacl", Col::Texts),
    ("reloptions", Col::Texts),
    ("relpartbound", Col::Text),
];

/// The system catalogs that have a `pg_class` row, with PostgreSQL's OIDs,
/// so that `'pg_catalog.pg_class'::regclass` resolves.
const SYSTEM_CLASSES: &[(&str, i32)] = &[
    ("pg_type", 1247),
    ("pg_attribute", 1249),
    ("pg_proc", 1255),
    ("pg_class", PG_CLASS_OID),
    ("pg_database", 1262),
    ("pg_constraint", 2606),
    ("pg_description", 2609),
    ("pg_index", 2610),
    ("pg_namespace", 2615),
];

/// The OID of the `pg_catalog` relation named `name` (`pg_class`,
/// optionally `pg_catalog.`-qualified), if it is one Millrace lists.
pub fn system_class_oid(name: &str) -> Option<i32> {
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    SYSTEM_CLASSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, oid)| *oid)
}

#[allow(clippy::too_many_arguments)]
fn class_row(
    oid_: i32,
    name: &str,
    namespace: i32,
    reltype: i32,
    relam: i32,
    kind: char,
    natts: usize,
    has_index: bool,
) -> Vec<ScalarValue> {
    vec![
        oid(oid_),
        text(name),
        oid(namespace),
        oid(reltype),
        oid(0),
        oid(OWNER_OID),
        oid(relam),
        oid(0),
        oid(0),
        oid(0),
        ScalarValue::Float64(Some(-1.0)),
        oid(0),
        oid(0),
        boolean(has_index),
        boolean(false),
        text("p"),
        text(kind.to_string()),
        int2(i16::try_from(natts).unwrap_or(i16::MAX)),
        int2(0),
        boolean(false),
        boolean(false),
        boolean(false),
        boolean(false),
        boolean(false),
        boolean(true),
        // PostgreSQL gives tables and materialized views the default
        // replica identity, every other relation none.
        text(if matches!(kind, 'r' | 'm') { "d" } else { "n" }),
        boolean(false),
        oid(0),
        oid(0),
        oid(0),
        null_list(DataType::Utf8),
        null_list(DataType::Utf8),
        null_text(),
    ]
}

fn pg_class_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for (name, o) in SYSTEM_CLASSES {
        rows.push(class_row(
            *o,
            name,
            PG_CATALOG_OID,
            0,
            HEAP_OID,
            'r',
            0,
            false,
        ));
    }
    for r in &info.relations {
        let has_pk = !r.primary_key.is_empty();
        // Tables and materialized views store rows: heap, as PostgreSQL.
        let am = if matches!(r.kind, 'r' | 'm') {
            HEAP_OID
        } else {
            0
        };
        rows.push(class_row(
            r.oid,
            &r.name,
            r.namespace,
            r.oid + 1,
            am,
            r.kind,
            r.schema.fields().len(),
            has_pk,
        ));
        if has_pk {
            rows.push(class_row(
                r.index_oid(),
                &r.index_name(),
                r.namespace,
                0,
                BTREE_OID,
                'i',
                r.primary_key.len(),
                false,
            ));
        }
    }
    rows
}

const PG_ATTRIBUTE: &[(&str, Col)] = &[
    ("attrelid", Col::Oid),
    ("attname", Col::Text),
    ("atttypid", Col::Oid),
    ("attstattarget", Col::Oid),
    ("attlen", Col::Int2),
    ("attnum", Col::Int2),
    ("attndims", Col::Oid),
    ("attcacheoff", Col::Oid),
    ("atttypmod", Col::Oid),
    ("attbyval", Col::Bool),
    ("attalign", Col::Text),
    ("attstorage", Col::Text),
    ("attcompression", Col::Text),
    ("attnotnull", Col::Bool),
    ("atthasdef", Col::Bool),
    ("atthasmissing", Col::Bool),
    ("attidentity", Col::Text),
    ("attgenerated", Col::Text),
    ("attisdropped", Col::Bool),
    ("attislocal", Col::Bool),
    ("attinhcount", Col::Oid),
    ("attcollation", Col::Oid),
    ("attacl", Col::Texts),
    ("attoptions", Col::Texts),
    ("attfdwoptions", Col::Texts),
    ("attmissingval", Col::Text),
];

fn pg_attribute_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    let mut push = |relid: i32, num: usize, f: &Field, not_null: bool| {
        let len = type_length(f);
        let collation = if matches!(
            f.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            100
        } else {
            0
        };
        rows.push(vec![
            oid(relid),
            text(f.name()),
            oid(type_oid(f)),
            oid(-1),
            int2(len),
            int2(i16::try_from(num).unwrap_or(i16::MAX)),
            oid(0),
            oid(-1),
            oid(type_modifier(f)),
            boolean(len > 0),
            text(if len == 8 { "d" } else { "i" }),
            text(if len > 0 { "p" } else { "x" }),
            text(""),
            boolean(not_null),
            boolean(false),
            boolean(false),
            text(""),
            text(""),
            boolean(false),
            boolean(true),
            oid(0),
            oid(collation),
            null_list(DataType::Utf8),
            null_list(DataType::Utf8),
            null_list(DataType::Utf8),
            null_text(),
        ]);
    };
    for r in &info.relations {
        for (i, f) in r.schema.fields().iter().enumerate() {
            let not_null = !f.is_nullable() || r.primary_key.contains(&i);
            push(r.oid, i + 1, f, not_null);
        }
        for (i, &k) in r.primary_key.iter().enumerate() {
            push(r.index_oid(), i + 1, r.schema.field(k), true);
        }
    }
    rows
}

const PG_INDEX: &[(&str, Col)] = &[
    ("indexrelid", Col::Oid),
    ("indrelid", Col::Oid),
    ("indnatts", Col::Int2),
    ("indnkeyatts", Col::Int2),
    ("indisunique", Col::Bool),
    ("indnullsnotdistinct", Col::Bool),
    ("indisprimary", Col::Bool),
    ("indisexclusion", Col::Bool),
    ("indimmediate", Col::Bool),
    ("indisclustered", Col::Bool),
    ("indisvalid", Col::Bool),
    ("indcheckxmin", Col::Bool),
    ("indisready", Col::Bool),
    ("indislive", Col::Bool),
    ("indisreplident", Col::Bool),
    ("indkey", Col::Int2s),
    ("indcollation", Col::Oids),
    ("indclass", Col::Oids),
    ("indoption", Col::Int2s),
    ("indexprs", Col::Text),
    ("indpred", Col::Text),
];

fn key_numbers(r: &PgRelation) -> Vec<i16> {
    r.primary_key
        .iter()
        .map(|&k| i16::try_from(k + 1).unwrap_or(i16::MAX))
        .collect()
}

fn pg_index_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    info.relations
        .iter()
        .filter(|r| !r.primary_key.is_empty())
        .map(|r| {
            let n = int2(i16::try_from(r.primary_key.len()).unwrap_or(i16::MAX));
            vec![
                oid(r.index_oid()),
                oid(r.oid),
                n.clone(),
                n,
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(true),
                boolean(false),
                int2s(key_numbers(r)),
                oids(r.primary_key.iter().map(|_| 0)),
                oids(r.primary_key.iter().map(|_| 0)),
                int2s(r.primary_key.iter().map(|_| 0)),
                null_text(),
                null_text(),
            ]
        })
        .collect()
}

const PG_CONSTRAINT: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("conname", Col::Text),
    ("connamespace", Col::Oid),
    ("contype", Col::Text),
    ("condeferrable", Col::Bool),
    ("condeferred", Col::Bool),
    ("convalidated", Col::Bool),
    ("conrelid", Col::Oid),
    ("contypid", Col::Oid),
    ("conindid", Col::Oid),
    ("conparentid", Col::Oid),
    ("confrelid", Col::Oid),
    ("confupdtype", Col::Text),
    ("confdeltype", Col::Text),
    ("confmatchtype", Col::Text),
    ("conislocal", Col::Bool),
    ("coninhcount", Col::Oid),
    ("connoinherit", Col::Bool),
    ("conkey", Col::Int2s),
    ("confkey", Col::Int2s),
    ("conpfeqop", Col::Oids),
    ("conppeqop", Col::Oids),
    ("conffeqop", Col::Oids),
    ("confdelsetcols", Col::Int2s),
    ("conexclop", Col::Oids),
    ("conbin", Col::Text),
];

fn pg_constraint_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    info.relations
        .iter()
        .filter(|r| !r.primary_key.is_empty())
        .map(|r| {
            vec![
                oid(r.constraint_oid()),
                text(r.index_name()),
                oid(r.namespace),
                text("p"),
                boolean(false),
                boolean(false),
                boolean(true),
                oid(r.oid),
                oid(0),
                oid(r.index_oid()),
                oid(0),
                oid(0),
                text(" "),
                text(" "),
                text(" "),
                boolean(true),
                oid(0),
                boolean(true),
                int2s(key_numbers(r)),
                null_list(DataType::Int16),
                null_list(DataType::Int32),
                null_list(DataType::Int32),
                null_list(DataType::Int32),
                null_list(DataType::Int16),
                null_list(DataType::Int32),
                null_text(),
            ]
        })
        .collect()
}

const PG_DESCRIPTION: &[(&str, Col)] = &[
    ("objoid", Col::Oid),
    ("classoid", Col::Oid),
    ("objsubid", Col::Oid),
    ("description", Col::Text),
];

fn pg_description_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    let mut rows = Vec::new();
    for r in &info.relations {
        if let Some(c) = &r.comment {
            rows.push(vec![oid(r.oid), oid(PG_CLASS_OID), oid(0), text(c)]);
        }
        for (i, f) in r.schema.fields().iter().enumerate() {
            if let Some(c) = r.column_comments.get(f.name()) {
                let n = i32::try_from(i + 1).unwrap_or(i32::MAX);
                rows.push(vec![oid(r.oid), oid(PG_CLASS_OID), oid(n), text(c)]);
            }
        }
    }
    rows
}

/// One row per relation of `kind`.
fn rows_of_kind(
    info: &PgCatalogInfo,
    kind: char,
    row: impl Fn(&PgRelation) -> Vec<ScalarValue>,
) -> Vec<Vec<ScalarValue>> {
    info.relations
        .iter()
        .filter(|r| r.kind == kind)
        .map(row)
        .collect()
}

const PG_TABLES: &[(&str, Col)] = &[
    ("schemaname", Col::Text),
    ("tablename", Col::Text),
    ("tableowner", Col::Text),
    ("tablespace", Col::Text),
    ("hasindexes", Col::Bool),
    ("hasrules", Col::Bool),
    ("hastriggers", Col::Bool),
    ("rowsecurity", Col::Bool),
];

fn pg_tables_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    rows_of_kind(info, 'r', |r| {
        vec![
            text(namespace_name(r.namespace)),
            text(&r.name),
            text(OWNER_NAME),
            null_text(),
            boolean(!r.primary_key.is_empty()),
            boolean(false),
            boolean(false),
            boolean(false),
        ]
    })
}

/// The name of the role that owns every object.
pub const OWNER_NAME: &str = "postgres";

const PG_VIEWS: &[(&str, Col)] = &[
    ("schemaname", Col::Text),
    ("viewname", Col::Text),
    ("viewowner", Col::Text),
    ("definition", Col::Text),
];

fn pg_views_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    rows_of_kind(info, 'v', |r| {
        vec![
            text(namespace_name(r.namespace)),
            text(&r.name),
            text(OWNER_NAME),
            text(r.definition.clone().unwrap_or_default()),
        ]
    })
}

const PG_MATVIEWS: &[(&str, Col)] = &[
    ("schemaname", Col::Text),
    ("matviewname", Col::Text),
    ("matviewowner", Col::Text),
    ("tablespace", Col::Text),
    ("hasindexes", Col::Bool),
    ("ispopulated", Col::Bool),
    ("definition", Col::Text),
];

fn pg_matviews_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    rows_of_kind(info, 'm', |r| {
        vec![
            text(namespace_name(r.namespace)),
            text(&r.name),
            text(OWNER_NAME),
            null_text(),
            boolean(false),
            boolean(true),
            text(r.definition.clone().unwrap_or_default()),
        ]
    })
}

/// Row-level security policies: Millrace has none. Declared here because
/// clients compare `polroles` with role OIDs, which needs it typed `oid[]`.
const PG_POLICY: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("polname", Col::Text),
    ("polrelid", Col::Oid),
    ("polcmd", Col::Text),
    ("polpermissive", Col::Bool),
    ("polroles", Col::Oids),
    ("polqual", Col::Text),
    ("polwithcheck", Col::Text),
];

/// Extended statistics: none. Declared for `stxkind`'s type, `"char"[]`.
const PG_STATISTIC_EXT: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("stxrelid", Col::Oid),
    ("stxname", Col::Text),
    ("stxnamespace", Col::Oid),
    ("stxowner", Col::Oid),
    ("stxstattarget", Col::Oid),
    ("stxkeys", Col::Int2s),
    ("stxkind", Col::Texts),
    ("stxexprs", Col::Text),
];

/// Run-time settings with their defaults (`max_index_keys`, which pgjdbc
/// reads, among them). A session's own values are shown by `SHOW` and
/// `current_setting`.
const PG_SETTINGS: &[(&str, Col)] = &[
    ("name", Col::Text),
    ("setting", Col::Text),
    ("unit", Col::Text),
    ("category", Col::Text),
    ("short_desc", Col::Text),
    ("context", Col::Text),
    ("vartype", Col::Text),
    ("source", Col::Text),
    ("reset_val", Col::Text),
    ("pending_restart", Col::Bool),
];

fn pg_settings_rows(_: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    use crate::pgwire::settings::{Accepts, SETTINGS};
    SETTINGS
        .iter()
        .map(|s| {
            let vartype = match s.accepts {
                Accepts::Bool => "bool",
                Accepts::Quantity => "integer",
                Accepts::OneOf(_) => "enum",
                Accepts::Any | Accepts::ReadOnly => "string",
            };
            let context = if s.accepts == Accepts::ReadOnly {
                "internal"
            } else {
                "user"
            };
            vec![
                text(s.name),
                text(s.default),
                null_text(),
                text("Millrace"),
                text(s.description),
                text(context),
                text(vartype),
                text("default"),
                text(s.default),
                boolean(false),
            ]
        })
        .collect()
}

/// OID of the one foreign-data wrapper, `millrace`, that every source's
/// server belongs to.
const FDW_OID: i32 = 16_370;

/// The connectors, each shown as a foreign server named after it; a
/// source is a foreign table of its connector's server. The server's OID
/// is `FDW_OID + 1 +` its position here.
const CONNECTORS: &[&str] = &["datagen", "nexmark", "kafka"];

fn server_oid(connector: &str) -> Option<i32> {
    CONNECTORS
        .iter()
        .position(|c| *c == connector)
        .and_then(|i| i32::try_from(i).ok())
        .map(|i| FDW_OID + 1 + i)
}

const PG_FOREIGN_DATA_WRAPPER: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("fdwname", Col::Text),
    ("fdwowner", Col::Oid),
    ("fdwhandler", Col::Oid),
    ("fdwvalidator", Col::Oid),
    ("fdwacl", Col::Texts),
    ("fdwoptions", Col::Texts),
];

fn pg_foreign_data_wrapper_rows(_: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    vec![vec![
        oid(FDW_OID),
        text("millrace"),
        oid(OWNER_OID),
        oid(0),
        oid(0),
        null_list(DataType::Utf8),
        null_list(DataType::Utf8),
    ]]
}

const PG_FOREIGN_SERVER: &[(&str, Col)] = &[
    ("oid", Col::Oid),
    ("srvname", Col::Text),
    ("srvowner", Col::Oid),
    ("srvfdw", Col::Oid),
    ("srvtype", Col::Text),
    ("srvversion", Col::Text),
    ("srvacl", Col::Texts),
    ("srvoptions", Col::Texts),
];

fn pg_foreign_server_rows(_: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    CONNECTORS
        .iter()
        .filter_map(|c| {
            Some(vec![
                oid(server_oid(c)?),
                text(*c),
                oid(OWNER_OID),
                oid(FDW_OID),
                null_text(),
                null_text(),
                null_list(DataType::Utf8),
                null_list(DataType::Utf8),
            ])
        })
        .collect()
}

const PG_FOREIGN_TABLE: &[(&str, Col)] = &[
    ("ftrelid", Col::Oid),
    ("ftserver", Col::Oid),
    ("ftoptions", Col::Texts),
];

fn pg_foreign_table_rows(info: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    info.relations
        .iter()
        .filter_map(|r| {
            let (connector, options) = r.source_options.as_ref()?;
            Some(vec![
                oid(r.oid),
                oid(server_oid(connector)?),
                texts(options),
            ])
        })
        .collect()
}

fn no_rows(_: &PgCatalogInfo) -> Vec<Vec<ScalarValue>> {
    vec![]
}

type OwnRelation = (&'static str, &'static [(&'static str, Col)], RowsFn);

const OWN_RELATIONS: &[OwnRelation] = &[
    ("pg_namespace", PG_NAMESPACE, pg_namespace_rows),
    ("pg_class", PG_CLASS, pg_class_rows),
    ("pg_attribute", PG_ATTRIBUTE, pg_attribute_rows),
    ("pg_index", PG_INDEX, pg_index_rows),
    ("pg_constraint", PG_CONSTRAINT, pg_constraint_rows),
    ("pg_description", PG_DESCRIPTION, pg_description_rows),
    ("pg_tables", PG_TABLES, pg_tables_rows),
    ("pg_views", PG_VIEWS, pg_views_rows),
    ("pg_matviews", PG_MATVIEWS, pg_matviews_rows),
    (
        "pg_foreign_data_wrapper",
        PG_FOREIGN_DATA_WRAPPER,
        pg_foreign_data_wrapper_rows,
    ),
    (
        "pg_foreign_server",
        PG_FOREIGN_SERVER,
        pg_foreign_server_rows,
    ),
    ("pg_foreign_table", PG_FOREIGN_TABLE, pg_foreign_table_rows),
    ("pg_policy", PG_POLICY, no_rows),
    ("pg_statistic_ext", PG_STATISTIC_EXT, no_rows),
    ("pg_settings", PG_SETTINGS, pg_settings_rows),
];

/// A catalog function over OID arguments that looks relations up in the
/// latest catalog.
#[derive(Debug)]
struct CatalogFunction {
    name: &'static str,
    signature: Signature,
    shared: SharedCatalog,
    return_type: DataType,
    eval: Eval,
}

/// A catalog function's body: the catalog and one row's integer arguments
/// to the result.
type Eval = fn(&PgCatalogInfo, &[Option<i64>]) -> ScalarValue;

impl PartialEq for CatalogFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for CatalogFunction {}

impl std::hash::Hash for CatalogFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(self.return_type.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let ints: Vec<Vec<Option<i64>>> = arrays
            .iter()
            .map(|a| integer_values(a, rows))
            .collect::<DFResult<_>>()?;
        let info = read_shared(&self.shared);
        let values = (0..rows).map(|i| {
            let row: Vec<Option<i64>> = ints.iter().map(|c| c[i]).collect();
            (self.eval)(&info, &row)
        });
        if rows == 0 {
            return Ok(ColumnarValue::Array(
                datafusion::arrow::array::new_empty_array(&self.return_type),
            ));
        }
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
    }
}

/// Integer arguments of any width (OIDs arrive as int4, literals as int8);
/// booleans and text (the `pretty` flag, a catalog name) read as absent.
fn integer_values(a: &ArrayRef, rows: usize) -> DFResult<Vec<Option<i64>>> {
    Ok(match a.data_type() {
        DataType::Int32 => a
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int64 => a.as_primitive::<Int64Type>().iter().collect(),
        DataType::Int16 | DataType::Int8 | DataType::UInt32 | DataType::UInt64 => {
            let cast = datafusion::arrow::compute::cast(a, &DataType::Int32)?;
            let cast: &Int32Array = cast.as_primitive();
            cast.iter().map(|v| v.map(i64::from)).collect()
        }
        _ => vec![None; rows],
    })
}

fn relation_by(info: &PgCatalogInfo, oid: Option<i64>) -> Option<&PgRelation> {
    let oid = i32::try_from(oid?).ok()?;
    info.by_oid(oid)
}

fn quote(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn key_list(r: &PgRelation) -> String {
    r.primary_key
        .iter()
        .map(|&k| quote(r.schema.field(k).name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn viewdef(info: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    ScalarValue::Utf8(
        relation_by(info, args.first().copied().flatten())
            .and_then(|r| r.definition.clone())
            .map(|d| format!(" {d};")),
    )
}

fn col_description(info: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    let comment = || {
        let r = relation_by(info, args.first().copied().flatten())?;
        let n = usize::try_from(args.get(1).copied().flatten()?).ok()?;
        let f = r.schema.fields().get(n.checked_sub(1)?)?;
        r.column_comments.get(f.name()).cloned()
    };
    ScalarValue::Utf8(comment())
}

fn obj_description(info: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    ScalarValue::Utf8(
        relation_by(info, args.first().copied().flatten()).and_then(|r| r.comment.clone()),
    )
}

fn pk_relation_by(
    info: &PgCatalogInfo,
    arg: Option<i64>,
    oid_of: fn(&PgRelation) -> i32,
) -> Option<&PgRelation> {
    let oid = i32::try_from(arg?).ok()?;
    info.relations
        .iter()
        .find(|r| !r.primary_key.is_empty() && oid_of(r) == oid)
}

fn indexdef(info: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    let def = || {
        let r = pk_relation_by(info, args.first().copied().flatten(), PgRelation::index_oid)?;
        match args.get(1).copied().flatten() {
            Some(n) if n > 0 => {
                let k = *r.primary_key.get(usize::try_from(n - 1).ok()?)?;
                Some(quote(r.schema.field(k).name()))
            }
            _ => Some(format!(
                "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
                quote(&r.index_name()),
                namespace_name(r.namespace),
                quote(&r.name),
                key_list(r)
            )),
        }
    };
    ScalarValue::Utf8(def())
}

fn constraintdef(info: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    ScalarValue::Utf8(
        pk_relation_by(
            info,
            args.first().copied().flatten(),
            PgRelation::constraint_oid,
        )
        .map(|r| format!("PRIMARY KEY ({})", key_list(r))),
    )
}

fn no_sequence(_: &PgCatalogInfo, _: &[Option<i64>]) -> ScalarValue {
    ScalarValue::Utf8(None)
}

/// Visible through the search path: user relations in `public`, and
/// PostgreSQL's own catalogs.
fn table_is_visible(info: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    let Some(oid) = args.first().copied().flatten() else {
        return ScalarValue::Boolean(None);
    };
    let owner = relation_by(info, Some(oid))
        .or_else(|| pk_relation_by(info, Some(oid), PgRelation::index_oid));
    let visible = match owner {
        Some(r) => r.namespace == PUBLIC_OID,
        // Built-in objects have OIDs below the first user OID.
        None => oid < FIRST_USER_OID,
    };
    ScalarValue::Boolean(Some(visible))
}

/// Built-in objects (types, functions, collations) all live in
/// `pg_catalog`, which is always on the search path.
fn builtin_is_visible(_: &PgCatalogInfo, args: &[Option<i64>]) -> ScalarValue {
    ScalarValue::Boolean(args.first().copied().flatten().map(|_| true))
}

fn catalog_udfs(shared: &SharedCatalog) -> Vec<ScalarUDF> {
    let arity = |counts: &[usize]| {
        Signature::one_of(
            counts.iter().map(|&n| TypeSignature::Any(n)).collect(),
            Volatility::Stable,
        )
    };
    let functions: Vec<(&'static str, Signature, DataType, Eval)> = vec![
        ("pg_get_viewdef", arity(&[1, 2]), DataType::Utf8, viewdef),
        (
            "col_description",
            arity(&[2]),
            DataType::Utf8,
            col_description,
        ),
        (
            "obj_description",
            arity(&[1, 2]),
            DataType::Utf8,
            obj_description,
        ),
        ("pg_get_indexdef", arity(&[1, 3]), DataType::Utf8, indexdef),
        (
            "pg_get_constraintdef",
            arity(&[1, 2]),
            DataType::Utf8,
            constraintdef,
        ),
        (
            "pg_get_serial_sequence",
            arity(&[2]),
            DataType::Utf8,
            no_sequence,
        ),
        (
            "pg_table_is_visible",
            arity(&[1]),
            DataType::Boolean,
            table_is_visible,
        ),
        (
            "pg_type_is_visible",
            arity(&[1]),
            DataType::Boolean,
            builtin_is_visible,
        ),
        (
            "pg_function_is_visible",
            arity(&[1]),
            DataType::Boolean,
            builtin_is_visible,
        ),
        (
            "pg_collation_is_visible",
            arity(&[1]),
            DataType::Boolean,
            builtin_is_visible,
        ),
        (
            "pg_opclass_is_visible",
            arity(&[1]),
            DataType::Boolean,
            builtin_is_visible,
        ),
    ];
    functions
        .into_iter()
        .map(|(name, signature, return_type, eval)| {
            ScalarUDF::new_from_impl(CatalogFunction {
                name,
                signature,
                shared: shared.clone(),
                return_type,
                eval,
            })
        })
        .collect()
}

fn version_udf() -> ScalarUDF {
    let version = version_string();
    datafusion::prelude::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    )
}

/// The system relations of `millrace_catalog`, as catalog entries.
pub fn system_relations(schemas: &[(String, SchemaRef)]) -> Vec<PgRelation> {
    schemas
        .iter()
        .enumerate()
        .map(|(i, (name, schema))| PgRelation {
            oid: 16_000 + 4 * i32::try_from(i).unwrap_or(0),
            name: name.clone(),
            namespace: SYSTEM_SCHEMA_OID,
            kind: 'v',
            schema: schema.clone(),
            primary_key: vec![],
            comment: None,
            column_comments: BTreeMap::new(),
            definition: None,
            source_options: None,
        })
        .collect()
}
