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
use datafusion::arrow::row::{RowConverter, Rows};

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

/// What puts contents back as they were when it was taken, if the change
/// being made to them fails: the old count of each row changed since (for
/// keyed contents), or the batch list (for appended contents, an O(1)
/// clone). Recording the rows changed, rather than keeping a clone of the
/// whole map, leaves the writer the only owner of the map's nodes, so a
/// change updates them in place instead of copying each one it touches.
pub struct UndoLog {
    appended: Option<BatchList>,
    /// Per change applied: its rows (row format) and, per row changed, the
    /// row's index there and its count before (0: absent).
    keyed: Vec<(Rows, Vec<(u32, i64)>)>,
}

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

    /// Starts recording what a change does, to undo it if it fails.
    pub fn undo_log(&self) -> UndoLog {
        UndoLog {
            appended: match &self.store {
                Store::Appended(batches) => Some(batches.clone()),
                Store::Keyed(_) => None,
            },
            keyed: Vec::new(),
        }
    }

    /// Undoes the changes recorded in `undo`, latest first.
    pub fn roll_back(&mut self, undo: UndoLog) {
        if let Some(batches) = undo.appended {
            self.store = Store::Appended(batches);
            return;
        }
        let Store::Keyed(map) = &mut self.store else {
            return;
        };
        for (rows, changed) in undo.keyed.into_iter().rev() {
            for &(i, old) in changed.iter().rev() {
                let key = super::change::row_bytes(&rows, i as usize);
                match (old, map.get_mut(key)) {
                    (0, Some(_)) => {
                        map.remove(key);
                    }
                    (0, None) => {}
                    (old, Some(count)) => *count = old,
                    (old, None) => {
                        map.insert(Arc::from(key), old);
                    }
                }
            }
        }
    }

    /// The schema of the rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Whether the contents are append-only (kept as appended batches).
    pub fn is_append_only(&self) -> bool {
        matches!(self.store, Store::Appended(_))
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

    /// Adds `delta` to the contents, recording in `undo` how to undo it;
    /// returns each touched row with its new count (nothing for
    /// append-only contents, which are not persisted).
    pub fn apply(
        &mut self,
        delta: &ChangeBatch,
        undo: Option<&mut UndoLog>,
    ) -> Result<Vec<RowChange>> {
        let mut changes = Vec::with_capacity(delta.num_rows());
        self.apply_tracked(delta, Some(&mut changes), undo)?;
        Ok(changes)
    }

    /// Adds `delta` to the contents, for contents that are not persisted,
    /// recording in `undo` how to undo it.
    pub fn add(&mut self, delta: &ChangeBatch, undo: Option<&mut UndoLog>) -> Result<()> {
        self.apply_tracked(delta, None, undo)
    }

    /// Adds `delta`, recording each touched row's new count in `changes`
    /// and its old count in `undo`.
    fn apply_tracked(
        &mut self,
        delta: &ChangeBatch,
        changes: Option<&mut Vec<RowChange>>,
        undo: Option<&mut UndoLog>,
    ) -> Result<()> {
        let map = match &mut self.store {
            Store::Keyed(map) => map,
            Store::Appended(batches) => return append(batches, &self.schema, delta),
        };
        let rows = self.converter.convert_columns(delta.data().columns())?;
        let mut old_counts = Vec::new();
        let logged = undo.is_some().then_some(&mut old_counts);
        let result = add_rows(map, &rows, delta, changes, logged);
        if let Some(undo) = undo {
            undo.keyed.push((rows, old_counts));
        }
        result
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

/// Adds the rows of `delta` (encoded as `rows`) to `map`, recording each
/// touched row's new count in `changes` and its index and old count in
/// `old_counts`.
fn add_rows(
    map: &mut RowMap,
    rows: &Rows,
    delta: &ChangeBatch,
    mut changes: Option<&mut Vec<RowChange>>,
    mut old_counts: Option<&mut Vec<(u32, i64)>>,
) -> Result<()> {
    let negative =
        || MillraceError::execution("a change would leave a row with negative multiplicity");
    for (i, &w) in delta.weights().values().iter().enumerate() {
        if w == 0 {
            continue;
        }
        let key = super::change::row_bytes(rows, i);
        let new = match map.get_mut(key) {
            Some(count) => {
                let new = *count + w;
                if new < 0 {
                    return Err(negative());
                }
                if let Some(log) = old_counts.as_mut() {
                    log.push((i as u32, *count));
                }
                *count = new;
                new
            }
            None if w < 0 => return Err(negative()),
            None => {
                if let Some(log) = old_counts.as_mut() {
                    log.push((i as u32, 0));
                }
                let stored = Arc::<[u8]>::from(key);
                if let Some(changes) = changes.as_mut() {
                    changes.push((stored.clone(), w));
                }
                map.insert(stored, w);
                continue;
            }
        };
        if let Some(changes) = changes.as_mut() {
            if let Some((stored, _)) = map.get_key_value(key) {
                changes.push((stored.clone(), new));
            }
        }
        if new == 0 {
            map.remove(key);
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    fn rows(contents: &Contents) -> Vec<String> {
        let mut lines: Vec<String> = contents
            .as_change_batches()
            .unwrap()
            .iter()
            .flat_map(|b| to_pretty_lines(b).unwrap())
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn rolling_back_restores_counts_changed_removed_and_added() {
        let start = from_pretty(
            "I T
             1 a +2
             2 b +1
             3 c +1",
        )
        .unwrap();
        let mut contents = Contents::try_new(start.data().schema()).unwrap();
        contents.add(&start, None).unwrap();
        let before = rows(&contents);

        let mut undo = contents.undo_log();
        // One more of row 1, row 2 removed, row 4 new...
        let first = from_pretty(
            "I T
             1 a +1
             2 b -1
             4 d +3",
        )
        .unwrap();
        contents.add(&first, Some(&mut undo)).unwrap();
        // ...then a change that fails half way: row 3 goes, row 5 comes,
        // and row 2 (already gone) cannot go below zero.
        let failing = from_pretty(
            "I T
             3 c -1
             5 e +1
             2 b -1",
        )
        .unwrap();
        assert!(contents.add(&failing, Some(&mut undo)).is_err());
        assert_ne!(rows(&contents), before);

        contents.roll_back(undo);
        assert_eq!(rows(&contents), before);
    }

    #[test]
    fn rolling_back_appended_contents_drops_the_appended_rows() {
        let start = from_pretty(
            "I
             1 +1",
        )
        .unwrap();
        let mut contents = Contents::try_new_append_only(start.data().schema()).unwrap();
        contents.add(&start, None).unwrap();
        let mut undo = contents.undo_log();
        contents.add(&start, Some(&mut undo)).unwrap();
        assert_eq!(contents.distinct_rows(), 2);
        contents.roll_back(undo);
        assert_eq!(contents.distinct_rows(), 1);
    }
}
