//! Materialize: the sink at the end of every dataflow, holding a relation's
//! current contents (a table's rows or a materialized view's result).
//!
//! Weights: `contents(r) += delta(r)`; a row is present while its summed
//! weight is positive and removed when it reaches zero. The contents are an
//! immutable-structure hash map keyed by the row in Arrow row format, so a
//! snapshot for readers is an O(1) clone and readers never block writers.
//!
//! A view whose inputs only ever grow (it reads append-only sources through
//! filters, projections, unions and joins) receives only positive weights;
//! its contents are then kept as the appended batches themselves, with no
//! per-row work at all. A negative weight there is an engine bug and is
//! refused.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;

use super::change::{row_converter, ChangeBatch};
use crate::error::{MillraceError, Result};

/// Rows per batch when contents are turned back into Arrow batches.
pub const DECODE_BATCH_ROWS: usize = 8192;

/// A relation's rows and their multiplicities.
pub type RowMap = imbl::HashMap<Arc<[u8]>, i64>;

/// Appended batches, for append-only contents.
pub type BatchList = imbl::Vector<RecordBatch>;

/// How contents are held.
#[derive(Clone)]
enum Store {
    /// Row (row format) to multiplicity.
    Keyed(RowMap),
    /// The batches as appended.
    Appended(BatchList),
}

/// Batches smaller than this are merged with the next append.
const SMALL_BATCH_ROWS: usize = 4096;

/// Contents saved for a rollback.
pub struct SavedContents(Store);

/// The mutable contents of a relation, owned by the engine's writer.
pub struct Contents {
    schema: SchemaRef,
    converter: RowConverter,
    store: Store,
}

/// The change to one encoded row, for persisting: the row and its new count
/// (0 means removed).
pub type RowChange = (Arc<[u8]>, i64);

impl Contents {
    /// Empty contents of `schema`.
    pub fn try_new(schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            converter: row_converter(&schema)?,
            schema,
            store: Store::Keyed(RowMap::new()),
        })
    }

    /// Empty append-only contents of `schema`.
    pub fn try_new_append_only(schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            converter: row_converter(&schema)?,
            schema,
            store: Store::Appended(BatchList::new()),
        })
    }

    /// A copy to restore after a failed change (O(1)).
    pub fn save(&self) -> SavedContents {
        SavedContents(self.store.clone())
    }

    /// Puts back what [`Contents::save`] returned.
    pub fn restore(&mut self, saved: SavedContents) {
        self.store = saved.0;
    }

    /// The schema of the rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of distinct rows (rows, for append-only contents).
    pub fn distinct_rows(&self) -> usize {
        match &self.store {
            Store::Keyed(rows) => rows.len(),
            Store::Appended(batches) => batches.iter().map(|b| b.num_rows()).sum(),
        }
    }

    /// Replaces the rows wholesale (used when restoring a table).
    pub fn set_rows(&mut self, rows: RowMap) {
        self.store = Store::Keyed(rows);
    }

    /// Encodes the rows of `data` in row format.
    pub fn encode(&self, data: &RecordBatch) -> Result<datafusion::arrow::row::Rows> {
        Ok(self.converter.convert_columns(data.columns())?)
    }

    /// Adds `delta` to the contents; returns each touched row with its new
    /// count (nothing for append-only contents, which are not persisted).
    pub fn apply(&mut self, delta: &ChangeBatch) -> Result<Vec<RowChange>> {
        let map = match &mut self.store {
            Store::Keyed(map) => map,
            Store::Appended(batches) => {
                append(batches, &self.schema, delta)?;
                return Ok(vec![]);
            }
        };
        let rows = self.converter.convert_columns(delta.data().columns())?;
        let mut changes = Vec::with_capacity(delta.num_rows());
        for (i, w) in delta.weights().values().iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let key = rows.row(i).data();
            let (key, new) = match map.get_key_value(key) {
                Some((k, c)) => (k.clone(), c + w),
                None => (Arc::<[u8]>::from(key), *w),
            };
            if new < 0 {
                return Err(MillraceError::execution(
                    "a change would leave a row with negative multiplicity",
                ));
            }
            if new == 0 {
                map.remove(&key);
            } else {
                map.insert(key.clone(), new);
            }
            changes.push((key, new));
        }
        Ok(changes)
    }

    /// The whole contents as change batches (each row with its count as
    /// weight), in chunks, for backfilling a new view.
    pub fn as_change_batches(&self) -> Result<Vec<ChangeBatch>> {
        match &self.store {
            Store::Keyed(rows) => decode_rows(&self.schema, &self.converter, rows, false),
            Store::Appended(batches) => Ok(batches
                .iter()
                .map(|b| ChangeBatch::with_uniform_weight(b.clone(), 1))
                .collect()),
        }
    }

    /// An immutable view of the contents for readers.
    pub fn snapshot(&self) -> Arc<RelationData> {
        Arc::new(RelationData {
            schema: self.schema.clone(),
            store: self.store.clone(),
            batches: OnceLock::new(),
        })
    }
}

/// Appends a change with only positive weights to a batch list.
fn append(batches: &mut BatchList, schema: &SchemaRef, delta: &ChangeBatch) -> Result<()> {
    let weights = delta.weights().values();
    if weights.iter().any(|w| *w < 0) {
        return Err(MillraceError::execution(
            "a retraction reached an append-only view",
        ));
    }
    let data = if weights.iter().all(|w| *w == 1) {
        delta.data().clone()
    } else {
        // A row of weight n is n copies of the row.
        let indices: datafusion::arrow::array::UInt32Array = weights
            .iter()
            .enumerate()
            .flat_map(|(i, w)| std::iter::repeat_n(i as u32, *w as usize))
            .collect();
        delta.take(&indices)?.into_parts().0
    };
    if data.num_rows() == 0 {
        return Ok(());
    }
    let data = super::change::batch_from_columns(
        schema.clone(),
        data.columns().to_vec(),
        data.num_rows(),
    )?;
    match batches.back() {
        Some(last) if last.num_rows() < SMALL_BATCH_ROWS && data.num_rows() < SMALL_BATCH_ROWS => {
            let merged = datafusion::arrow::compute::concat_batches(&last.schema(), [last, &data])?;
            batches.pop_back();
            batches.push_back(merged);
        }
        _ => batches.push_back(data),
    }
    Ok(())
}

/// Decodes encoded rows into change batches of at most [`DECODE_BATCH_ROWS`]
/// rows. With `expand`, a row of count n appears n times with weight 1.
fn decode_rows(
    schema: &SchemaRef,
    converter: &RowConverter,
    rows: &RowMap,
    expand: bool,
) -> Result<Vec<ChangeBatch>> {
    let parser = converter.parser();
    let mut out = Vec::new();
    let mut keys: Vec<&[u8]> = Vec::with_capacity(DECODE_BATCH_ROWS.min(rows.len()));
    let mut weights: Vec<i64> = Vec::with_capacity(keys.capacity());
    let mut flush = |keys: &mut Vec<&[u8]>, weights: &mut Vec<i64>| -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let columns = converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        let data = super::change::batch_from_columns(schema.clone(), columns, keys.len())?;
        out.push(ChangeBatch::try_new(
            data,
            Int64Array::from(std::mem::take(weights)),
        )?);
        keys.clear();
        Ok(())
    };
    for (k, c) in rows.iter() {
        if *c <= 0 {
            continue;
        }
        let copies = if expand { *c } else { 1 };
        for _ in 0..copies {
            keys.push(k.as_ref());
            weights.push(if expand { 1 } else { *c });
            if keys.len() >= DECODE_BATCH_ROWS {
                flush(&mut keys, &mut weights)?;
            }
        }
    }
    flush(&mut keys, &mut weights)?;
    Ok(out)
}

/// A relation's contents at one epoch, as readers see them.
pub struct RelationData {
    schema: SchemaRef,
    store: Store,
    batches: OnceLock<std::result::Result<Vec<RecordBatch>, String>>,
}

impl RelationData {
    /// The schema of the rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of rows, counting duplicates.
    pub fn row_count(&self) -> i64 {
        match &self.store {
            Store::Keyed(rows) => rows.values().sum(),
            Store::Appended(batches) => batches.iter().map(|b| b.num_rows() as i64).sum(),
        }
    }

    /// The rows as Arrow batches (a row of count n appears n times), decoded
    /// once per snapshot and shared by every reader of it.
    pub fn batches(&self) -> Result<Vec<RecordBatch>> {
        let rows = match &self.store {
            Store::Appended(batches) => return Ok(batches.iter().cloned().collect()),
            Store::Keyed(rows) => rows,
        };
        self.batches
            .get_or_init(|| {
                let converter = row_converter(&self.schema).map_err(|e| e.to_string())?;
                decode_rows(&self.schema, &converter, rows, true)
                    .map(|bs| bs.into_iter().map(|b| b.into_parts().0).collect())
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(MillraceError::execution)
    }
}
