//! Ordered partitions: the state of operators that look at each partition's
//! rows in order (top-N, window functions), and the encoding of a delta
//! into it.
//!
//! A partition maps (order key, row), both in Arrow's row format, to the
//! row's summed weight. The order key's byte order is the `ORDER BY` order
//! (directions and NULL placement included), and ties are broken by the
//! row's own bytes, so iteration order is deterministic.
//!
//! When a partition column is an input column that carries a watermark (a
//! ranking or window function `PARTITION BY window_start`), a partition
//! whose value in it is behind the watermark can receive no more changes:
//! the operator's rows for it are final, and [`OrderedPartitions::expire`]
//! drops its state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use super::change::{evaluate_keys, row_converter, ChangeBatch};
use super::operator::{codec, StateChanges, StateEntry};
use super::watermark::{values_as_i64, Watermarks};
use crate::error::{MillraceError, Result};

/// The checkpoint methods of an [`super::operator::Operator`] whose state
/// is the [`OrderedPartitions`] in its field `state`: each changed
/// partition is one entry (its key, holding its rows); a restore feeds the
/// stored rows back through the operator, dropping what it emits (the
/// view already holds it).
macro_rules! checkpoint_by_partitions {
    () => {
        fn checkpointable(&self) -> bool {
            true
        }

        fn track_changes(&mut self) {
            self.state.track_changes();
        }

        fn checkpoint(
            &mut self,
            out: &mut $crate::stream::operator::StateChanges,
        ) -> $crate::error::Result<()> {
            self.state.checkpoint(out);
            Ok(())
        }

        fn restore(
            &mut self,
            entries: Vec<$crate::stream::operator::StateEntry>,
        ) -> $crate::error::Result<()> {
            let rows = self.state.decode(&entries)?;
            $crate::stream::operator::replay(self, vec![vec![rows]])
        }
    };
}
pub(crate) use checkpoint_by_partitions;

/// The ordered rows of one partition: (order key, row) to summed weight.
pub type Partition = BTreeMap<(Vec<u8>, Vec<u8>), i64>;

/// Every partition's ordered rows, and how rows are keyed and ordered.
pub struct OrderedPartitions {
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    partition_types: Vec<DataType>,
    partition_rows: RowConverter,
    order_by: Vec<Arc<dyn PhysicalExpr>>,
    order_types: Vec<DataType>,
    order_rows: RowConverter,
    /// All input columns, to keep rows in state and decode them back.
    pub input_rows: RowConverter,
    /// The partitions, by partition key.
    pub partitions: HashMap<Vec<u8>, Partition, RandomState>,
    input: SchemaRef,
    expiry: Option<PartitionExpiry>,
    /// Keys of partitions changed since the last checkpoint, when
    /// checkpoints are taken.
    changed: Option<HashSet<Vec<u8>, RandomState>>,
}

/// Partitions by their value in a watermarked input column. A partition
/// emptied and made again may be listed twice; dropping it twice is
/// harmless.
struct PartitionExpiry {
    column: usize,
    by_value: BTreeMap<i64, Vec<Vec<u8>>>,
}

/// A delta encoded for [`OrderedPartitions`]: each row's partition key,
/// order key and row bytes.
pub struct EncodedDelta {
    partition_keys: Option<Rows>,
    order_keys: Option<Rows>,
    rows: Rows,
    weights: Vec<i64>,
}

impl OrderedPartitions {
    /// Partitions of rows of `input` by `partition_by`, each ordered by
    /// `order_by`.
    pub fn try_new(
        input: &SchemaRef,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
    ) -> Result<Self> {
        let partition_types = partition_by
            .iter()
            .map(|e| Ok(e.data_type(input)?))
            .collect::<Result<Vec<_>>>()?;
        let partition_rows = RowConverter::new(
            partition_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let order_types = order_by
            .iter()
            .map(|(e, _)| Ok(e.data_type(input)?))
            .collect::<Result<Vec<_>>>()?;
        let order_rows = RowConverter::new(
            order_types
                .iter()
                .zip(&order_by)
                .map(|(t, (_, o))| SortField::new_with_options(t.clone(), *o))
                .collect(),
        )?;
        Ok(Self {
            partition_by,
            partition_types,
            partition_rows,
            order_by: order_by.into_iter().map(|(e, _)| e).collect(),
            order_types,
            order_rows,
            input_rows: row_converter(input)?,
            partitions: HashMap::with_hasher(RandomState::default()),
            input: input.clone(),
            expiry: None,
            changed: None,
        })
    }

    /// Drops each partition whose value in input `column` falls behind that
    /// column's watermark (see [`OrderedPartitions::expire`]). The caller
    /// makes sure `column` is one of the partition expressions, as a plain
    /// column, so that such a partition can no longer change.
    pub fn expire_by(&mut self, column: usize) -> Result<()> {
        if column >= self.input.fields().len() {
            return Err(MillraceError::plan(
                "watermark column of ordered partitions out of range",
            ));
        }
        self.expiry = Some(PartitionExpiry {
            column,
            by_value: BTreeMap::new(),
        });
        Ok(())
    }

    /// The name of the input column partitions expire by, if any.
    pub fn expiring_column(&self) -> Option<&str> {
        self.expiry
            .as_ref()
            .map(|e| self.input.field(e.column).name().as_str())
    }

    /// The values of the expiring column in `delta`, for
    /// [`OrderedPartitions::partition_mut`].
    pub fn expiry_values(&self, delta: &ChangeBatch) -> Result<Option<Int64Array>> {
        match &self.expiry {
            Some(e) => Ok(Some(values_as_i64(delta.data().column(e.column))?)),
            None => Ok(None),
        }
    }

    /// The partition of `key`, made empty if it is new; a new one is
    /// tracked for expiry by its value at row `first` of `values`.
    pub fn partition_mut(
        &mut self,
        key: &[u8],
        values: Option<&Int64Array>,
        first: usize,
    ) -> &mut Partition {
        if let Some(changed) = &mut self.changed {
            if !changed.contains(key) {
                changed.insert(key.to_vec());
            }
        }
        if let (Some(e), Some(values)) = (&mut self.expiry, values) {
            if !self.partitions.contains_key(key) && values.is_valid(first) {
                e.by_value
                    .entry(values.value(first))
                    .or_default()
                    .push(key.to_vec());
            }
        }
        self.partitions.entry(key.to_vec()).or_default()
    }

    /// Drops the partitions behind input 0's watermark on the expiring
    /// column (all of them once the stream ended); how many went.
    pub fn expire(&mut self, inputs: &[&Watermarks]) -> Result<usize> {
        let Some(e) = &mut self.expiry else {
            return Ok(0);
        };
        let Some(mark) = inputs.first().and_then(|w| w.get(e.column)) else {
            return Ok(0);
        };
        let expired = match mark.as_i64(self.input.field(e.column).data_type())? {
            None => std::mem::take(&mut e.by_value),
            Some(bound) => {
                let kept = e.by_value.split_off(&bound);
                std::mem::replace(&mut e.by_value, kept)
            }
        };
        let mut dropped = 0;
        for key in expired.into_values().flatten() {
            if self.partitions.remove(&key).is_some() {
                dropped += 1;
                if let Some(changed) = &mut self.changed {
                    changed.insert(key);
                }
            }
        }
        Ok(dropped)
    }

    /// From now on, remember which partitions change.
    pub fn track_changes(&mut self) {
        self.changed = Some(HashSet::with_hasher(RandomState::default()));
    }

    /// Writes each changed partition (key: its partition key) as its rows
    /// with their weights, or deletes it when it is gone.
    pub fn checkpoint(&mut self, out: &mut StateChanges) {
        let Some(changed) = &mut self.changed else {
            return;
        };
        for key in changed.drain() {
            match self.partitions.get(&key) {
                None => out.delete(key),
                Some(partition) => out.put_weighted_rows(
                    &[&key],
                    partition.iter().map(|((_, row), w)| (row.as_slice(), *w)),
                ),
            }
        }
    }

    /// The rows of checkpointed partitions `entries` as one change, to be
    /// fed back through the operator.
    pub fn decode(&self, entries: &[StateEntry]) -> Result<Option<ChangeBatch>> {
        codec::decode_weighted_rows(
            entries.iter().map(|(_, v)| v.as_slice()),
            &self.input_rows,
            &self.input,
        )
    }

    /// How many expressions partition the rows.
    pub fn partition_key_count(&self) -> usize {
        self.partition_by.len()
    }

    /// How many expressions order a partition.
    pub fn order_key_count(&self) -> usize {
        self.order_by.len()
    }

    /// Encodes a delta's keys and rows, once per batch.
    pub fn encode(&self, delta: &ChangeBatch) -> Result<EncodedDelta> {
        let data = delta.data();
        // The row format of no columns holds no rows to index: without
        // keys, every row gets the empty key.
        let partition_keys = if self.partition_by.is_empty() {
            None
        } else {
            let keys = evaluate_keys(&self.partition_by, &self.partition_types, data)?;
            Some(self.partition_rows.convert_columns(&keys)?)
        };
        let order_keys = if self.order_by.is_empty() {
            None
        } else {
            let keys = evaluate_keys(&self.order_by, &self.order_types, data)?;
            Some(self.order_rows.convert_columns(&keys)?)
        };
        Ok(EncodedDelta {
            partition_keys,
            order_keys,
            rows: self.input_rows.convert_columns(data.columns())?,
            weights: delta.weights().values().to_vec(),
        })
    }
}

impl EncodedDelta {
    /// The delta's row indices, by partition key, in arrival order.
    pub fn by_partition(&self) -> HashMap<&[u8], Vec<usize>, RandomState> {
        let mut touched: HashMap<&[u8], Vec<usize>, RandomState> =
            HashMap::with_hasher(RandomState::default());
        for i in 0..self.rows.num_rows() {
            let key: &[u8] = match &self.partition_keys {
                Some(keys) => keys.row(i).data(),
                None => &[],
            };
            touched.entry(key).or_default().push(i);
        }
        touched
    }

    /// Row `i`'s order key, row bytes and weight.
    pub fn entry(&self, i: usize) -> (&[u8], &[u8], i64) {
        let order: &[u8] = match &self.order_keys {
            Some(o) => o.row(i).data(),
            None => &[],
        };
        (order, self.rows.row(i).data(), self.weights[i])
    }

    /// Adds the weights of rows `indices` to `partition`, dropping rows
    /// whose weight sums to zero.
    pub fn apply(&self, partition: &mut Partition, indices: &[usize]) {
        for &i in indices {
            let order = match &self.order_keys {
                Some(o) => o.row(i).data().to_vec(),
                None => vec![],
            };
            let entry = (order, self.rows.row(i).data().to_vec());
            let weight = partition.entry(entry.clone()).or_insert(0);
            *weight += self.weights[i];
            if *weight == 0 {
                partition.remove(&entry);
            }
        }
    }
}
