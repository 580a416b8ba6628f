//! Keyed state for sources whose records replace earlier ones: Kafka's
//! `FORMAT UPSERT` (the record key is the identity) and `FORMAT DEBEZIUM`
//! with a primary key.
//!
//! Weights: an upsert of key k to row r emits -1 for k's previous row (if
//! any) and +1 for r; a delete of k emits -1 for k's previous row, and
//! nothing for an unknown key. So a view over the source always holds
//! exactly the latest row of every live key, however often a key changes
//! or a record repeats.

use std::collections::HashMap;

use datafusion::arrow::array::{Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter};

use crate::error::Result;
use crate::stream::change::{row_converter, ChangeBatch};

/// The latest row of every live key.
pub struct KeyedState {
    schema: SchemaRef,
    converter: RowConverter,
    rows: HashMap<Box<[u8]>, OwnedRow>,
}

impl KeyedState {
    /// Empty state for rows of `schema`.
    pub fn try_new(schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            converter: row_converter(&schema)?,
            schema,
            rows: HashMap::new(),
        })
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Applies, in order, an upsert of `rows` row i under `keys[i]` where
    /// `present[i]`, and a delete of `keys[i]` where not. Returns the
    /// change.
    pub fn apply(
        &mut self,
        rows: &RecordBatch,
        keys: &[&[u8]],
        present: &[bool],
    ) -> Result<ChangeBatch> {
        let encoded = self.converter.convert_columns(rows.columns())?;
        let mut retracted: Vec<OwnedRow> = Vec::new();
        let mut inserted: Vec<u32> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let previous = if present[i] {
                inserted.push(i as u32);
                self.rows.insert(Box::from(*key), encoded.row(i).owned())
            } else {
                self.rows.remove(*key)
            };
            if let Some(old) = previous {
                retracted.push(old);
            }
        }
        let old = self
            .converter
            .convert_rows(retracted.iter().map(|r| r.row()))?;
        let old = RecordBatch::try_new(self.schema.clone(), old)?;
        let new = take_record_batch(rows, &UInt32Array::from(inserted))?;
        let weights: Int64Array = std::iter::repeat_n(-1i64, old.num_rows())
            .chain(std::iter::repeat_n(1i64, new.num_rows()))
            .collect();
        let data = concat_batches(&self.schema, [&old, &new])?;
        ChangeBatch::try_new(data, weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::pretty::from_pretty;

    #[test]
    fn upserts_retract_the_previous_row_and_deletes_remove_it() {
        let input = from_pretty(
            "I T
             1 a +1
             2 b +1
             1 c +1
             2 x +1",
        )
        .unwrap();
        let rows = input.data().clone();
        let mut state = KeyedState::try_new(rows.schema()).unwrap();
        let keys: Vec<&[u8]> = vec![b"1", b"2", b"1", b"2"];
        let out = state
            .apply(&rows, &keys, &[true, true, true, false])
            .unwrap()
            .consolidate()
            .unwrap();
        // Net: key 1 holds c; key 2 came and went.
        let lines = crate::stream::pretty::to_pretty_lines(&out).unwrap();
        assert_eq!(lines, vec!["1 c | +1".to_string()]);
        assert_eq!(state.len(), 1);
        // A later upsert of key 1 retracts c.
        let again = rows.slice(0, 1);
        let out = state.apply(&again, &[b"1"], &[true]).unwrap();
        let lines = crate::stream::pretty::to_pretty_lines(&out).unwrap();
        assert_eq!(lines, vec!["1 a | +1".to_string(), "1 c | -1".to_string()]);
    }
}
