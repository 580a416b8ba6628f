//! Upsert: the entry of a keyed source (Kafka `FORMAT UPSERT`, or
//! `FORMAT DEBEZIUM` with a primary key) into a dataflow, where each record
//! replaces its key's previous row instead of adding one.
//!
//! The source's readers do not know the previous rows: they send each
//! record as it is, with its key in a last column ([`KEY_COLUMN`]) and its
//! weight saying what it does (`+1` the key's new row, `-1` the key's
//! deletion). This operator keeps the latest row of every live key and
//! turns the records into changes. Because that state lives in the
//! dataflow, it is checkpointed with the view's other operators and the
//! readers' positions, so a view over a keyed topic resumes after a crash
//! instead of re-reading the topic from its start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BinaryArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter};

use super::change::{row_converter, ChangeBatch};
use super::operator::{Operator, OperatorStats, StateChanges, StateEntry};
use crate::error::{MillraceError, Result};

/// The name of the last column of a keyed source's batches: each record's
/// key, as bytes.
pub const KEY_COLUMN: &str = "__millrace_key";

/// The schema of a keyed source's batches: the relation's columns, then
/// the key.
pub fn keyed_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
    Arc::new(Schema::new(fields))
}

/// A keyed source's batch (of `schema`, made by [`keyed_schema`]): row
/// `i` of `rows` under `keys[i]`, as the key's new row where `present[i]`,
/// as the key's deletion where not (its row is then ignored).
pub fn records(
    schema: &SchemaRef,
    rows: &RecordBatch,
    keys: &[&[u8]],
    present: &[bool],
) -> Result<ChangeBatch> {
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(BinaryArray::from_iter_values(keys.iter())));
    let data = RecordBatch::try_new(schema.clone(), columns)?;
    let weights: Int64Array = present.iter().map(|&p| if p { 1 } else { -1 }).collect();
    ChangeBatch::try_new(data, weights)
}

/// Keeps the latest row of every live key of a keyed relation.
///
/// Weights: the input is records, not changes. A record of key `k` with
/// weight `w > 0` and row `r` emits `-1` for `k`'s previous row (if any)
/// and `+1` for `r`; one with `w < 0` emits `-1` for `k`'s previous row
/// and nothing for an unknown key. Records apply in order, so the output
/// collection is always exactly the latest row of every live key, however
/// often a key changes or a record repeats.
pub struct UpsertOperator {
    relation: String,
    /// The relation's schema: what the operator emits.
    schema: SchemaRef,
    converter: RowConverter,
    rows: HashMap<Box<[u8]>, OwnedRow>,
    /// Once checkpoints are taken: the keys changed since the last one.
    changed: Option<HashSet<Box<[u8]>>>,
    stats: OperatorStats,
}

impl UpsertOperator {
    /// An upsert of `relation`, whose rows have `schema` (without the key
    /// column).
    pub fn try_new(relation: String, schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            relation,
            converter: row_converter(&schema)?,
            schema,
            rows: HashMap::new(),
            changed: None,
            stats: OperatorStats::default(),
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

    /// Applies one batch of records (see the type's doc).
    fn apply(&mut self, records: &ChangeBatch) -> Result<ChangeBatch> {
        let width = self.schema.fields().len();
        let data = records.data();
        if data.num_columns() != width + 1 {
            return Err(MillraceError::execution(format!(
                "a keyed batch of \"{}\" has {} columns where {} and the key were expected",
                self.relation,
                data.num_columns(),
                width
            )));
        }
        let keys = data.column(width).as_binary_opt::<i32>().ok_or_else(|| {
            MillraceError::execution(format!(
                "the key column of a keyed batch of \"{}\" is not binary",
                self.relation
            ))
        })?;
        let rows = RecordBatch::try_new(self.schema.clone(), data.columns()[..width].to_vec())?;
        let encoded = self.converter.convert_columns(rows.columns())?;
        let mut retracted: Vec<OwnedRow> = Vec::new();
        let mut inserted: Vec<u32> = Vec::new();
        for (i, w) in records.weights().values().iter().enumerate() {
            let key = keys.value(i);
            let previous = if *w > 0 {
                inserted.push(i as u32);
                let row = encoded.row(i).owned();
                match self.rows.get_mut(key) {
                    Some(slot) => Some(std::mem::replace(slot, row)),
                    None => {
                        self.rows.insert(Box::from(key), row);
                        None
                    }
                }
            } else if *w < 0 {
                self.rows.remove(key)
            } else {
                continue;
            };
            if let Some(changed) = &mut self.changed {
                if !changed.contains(key) {
                    changed.insert(Box::from(key));
                }
            }
            if let Some(old) = previous {
                retracted.push(old);
            }
        }
        let old = self
            .converter
            .convert_rows(retracted.iter().map(|r| r.row()))?;
        let old = RecordBatch::try_new(self.schema.clone(), old)?;
        let new = take_record_batch(&rows, &UInt32Array::from(inserted))?;
        let weights: Int64Array = std::iter::repeat_n(-1i64, old.num_rows())
            .chain(std::iter::repeat_n(1i64, new.num_rows()))
            .collect();
        let data = concat_batches(&self.schema, [&old, &new])?;
        ChangeBatch::try_new(data, weights)
    }
}

impl Operator for UpsertOperator {
    fn describe(&self) -> String {
        format!("Upsert {} by key", self.relation)
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(records)) = inputs.first() else {
            return Ok(None);
        };
        self.stats.rows_in += records.num_rows() as u64;
        self.stats.state_touched += records.num_rows() as u64;
        let out = self.apply(records)?;
        if out.is_empty() {
            return Ok(None);
        }
        self.stats.rows_out += out.num_rows() as u64;
        Ok(Some(out))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn track_changes(&mut self) {
        self.changed = Some(HashSet::new());
    }

    /// Each changed key is one entry: the key's bytes, holding its row in
    /// Arrow's row format; a key no longer live is deleted.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        let Some(changed) = &mut self.changed else {
            return Ok(());
        };
        for key in changed.drain() {
            match self.rows.get(&key) {
                Some(row) => out.put(&key, row.row().as_ref()),
                None => out.delete(&key),
            }
        }
        Ok(())
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        let parser = self.converter.parser();
        let mut parsed = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            parsed.push((key, parser.parse(&value).owned()));
        }
        // Decoding every row once checks that the stored rows fit the
        // relation's columns before any is used.
        if let Err(e) = self
            .converter
            .convert_rows(parsed.iter().map(|(_, r)| r.row()))
        {
            return Err(MillraceError::storage(format!(
                "the checkpointed rows of \"{}\" do not match its columns: {e}",
                self.relation
            )));
        }
        for (key, row) in parsed {
            self.rows.insert(key.into_boxed_slice(), row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::operator::checkpoint_testing::assert_restores_exactly;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    /// Records of `(id, text)` rows under `keys`, with `weights`.
    fn records(pretty: &str, keys: &[&str]) -> ChangeBatch {
        let rows = from_pretty(pretty).unwrap();
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let present: Vec<bool> = rows.weights().values().iter().map(|w| *w > 0).collect();
        super::records(&keyed_schema(&rows.schema()), rows.data(), &keys, &present).unwrap()
    }

    fn relation() -> SchemaRef {
        from_pretty("I T\n 0 a +1").unwrap().schema()
    }

    #[test]
    fn upserts_retract_the_previous_row_and_deletes_remove_it() {
        let mut op = UpsertOperator::try_new("accounts".into(), relation()).unwrap();
        let first = records(
            "I T
             1 a +1
             2 b +1
             1 c +1
             2 x -1
             3 y -1",
            &["1", "2", "1", "2", "3"],
        );
        let out = op
            .step(&[Some(first)])
            .unwrap()
            .unwrap()
            .consolidate()
            .unwrap();
        // Net: key 1 holds c; key 2 came and went; key 3 was never there.
        assert_eq!(to_pretty_lines(&out).unwrap(), vec!["1 c | +1"]);
        assert_eq!(op.len(), 1);
        // A later upsert of key 1 retracts c.
        let out = op
            .step(&[Some(records("I T\n 1 a +1", &["1"]))])
            .unwrap()
            .unwrap();
        assert_eq!(
            to_pretty_lines(&out).unwrap(),
            vec!["1 a | +1".to_string(), "1 c | -1".to_string()]
        );
    }

    #[test]
    fn a_restored_upsert_goes_on_like_the_original() {
        let epochs: Vec<Vec<Option<ChangeBatch>>> = vec![
            vec![Some(records("I T\n 1 a +1\n 2 b +1", &["1", "2"]))],
            vec![Some(records("I T\n 1 c +1\n 3 d +1", &["1", "3"]))],
            vec![None],
            vec![Some(records("I T\n 2 b -1\n 1 e +1", &["2", "1"]))],
            vec![Some(records("I T\n 2 f +1\n 3 d -1", &["2", "3"]))],
            vec![Some(records(
                "I T\n 1 g +1\n 2 h +1\n 3 i +1",
                &["1", "2", "3"],
            ))],
        ];
        assert_restores_exactly(
            || Box::new(UpsertOperator::try_new("accounts".into(), relation()).unwrap()),
            &epochs,
        );
    }

    #[test]
    fn a_batch_without_its_key_column_is_refused() {
        let mut op = UpsertOperator::try_new("accounts".into(), relation()).unwrap();
        let plain = from_pretty("I T\n 1 a +1").unwrap();
        let err = op.step(&[Some(plain)]).err().unwrap().to_string();
        assert!(err.contains("\"accounts\""), "{err}");
    }
}
