//! Window functions over partitions (`OVER (PARTITION BY ... ORDER BY ...)`):
//! `LAG`, `LEAD`, `FIRST_VALUE`, running and sliding aggregates (`sum(x)
//! OVER (... ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)`), and every other
//! window function DataFusion evaluates, with its semantics.
//!
//! Weights: the input is a Z-set; a row of weight `w > 0` is `w` copies. The
//! output holds each copy once (weight +1), extended with the values of the
//! window functions for that copy, computed over its partition's copies in
//! order (ties broken by the whole row, so the result is deterministic).
//! Each epoch, every partition the delta touched is evaluated before and
//! after the delta, and the difference is emitted: rows whose window
//! values changed (the row after an inserted one, for `LAG`; every later
//! row, for a running sum) are retracted with their old values and
//! inserted with their new ones.
//!
//! Cost: one evaluation of a touched partition per epoch, before and after,
//! so proportional to the partition's size. State: every row of every
//! partition, ordered, except partitions behind the watermark of a
//! watermarked partition column (`PARTITION BY window_start`), whose rows
//! can no longer change (see `ordered.rs`). Ranking functions filtered to a
//! range go to the top-N operator instead, which keeps less.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::WindowExpr;

use super::change::{batch_from_columns, row_converter, ChangeBatch};
use super::operator::{Operator, OperatorStats};
use super::ordered::{OrderedPartitions, Partition};
use super::watermark::Watermarks;
use crate::error::{MillraceError, Result};

/// Maintains window function values over partitions.
pub struct OverOperator {
    state: OrderedPartitions,
    window: Vec<Arc<dyn WindowExpr>>,
    input: SchemaRef,
    /// All output columns, to compare results before and after.
    output_rows: RowConverter,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl OverOperator {
    /// Evaluates `window` (all over the same `PARTITION BY` and `ORDER BY`)
    /// for rows of `input`. The output is the input's columns and then one
    /// per window expression, as in `schema`.
    pub fn try_new(
        input: &SchemaRef,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
        window: Vec<Arc<dyn WindowExpr>>,
        schema: SchemaRef,
    ) -> Result<Self> {
        if schema.fields().len() != input.fields().len() + window.len() {
            return Err(MillraceError::plan(format!(
                "window output has {} columns, expected {}",
                schema.fields().len(),
                input.fields().len() + window.len()
            )));
        }
        Ok(Self {
            state: OrderedPartitions::try_new(input, partition_by, order_by)?,
            window,
            input: input.clone(),
            output_rows: row_converter(&schema)?,
            schema,
            stats: OperatorStats::default(),
        })
    }

    /// The same operator dropping each partition whose value in input
    /// `column`, one of the partition columns, falls behind that column's
    /// watermark.
    pub fn with_watermark_partition(mut self, column: usize) -> Result<Self> {
        self.state.expire_by(column)?;
        Ok(self)
    }

    /// The output rows of one partition, encoded, with their copies.
    fn evaluate(&self, partition: &Partition) -> Result<Vec<(Vec<u8>, i64)>> {
        let live: Vec<(&[u8], i64)> = partition
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|((_, row), w)| (row.as_slice(), *w))
            .collect();
        if live.is_empty() {
            return Ok(vec![]);
        }
        let parser = self.state.input_rows.parser();
        let distinct = self
            .state
            .input_rows
            .convert_rows(live.iter().map(|(row, _)| parser.parse(row)))?;
        // Each copy is its own row, in order.
        let copies: UInt32Array = live
            .iter()
            .enumerate()
            .flat_map(|(i, (_, w))| std::iter::repeat_n(i as u32, *w as usize))
            .map(Some)
            .collect();
        let columns = distinct
            .iter()
            .map(|c| Ok(datafusion::arrow::compute::take(c, &copies, None)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows = copies.len();
        let batch = batch_from_columns(self.input.clone(), columns, rows)?;
        let mut out: Vec<ArrayRef> = batch.columns().to_vec();
        for w in &self.window {
            let values = w.evaluate(&batch)?;
            let field = self.schema.field(out.len());
            out.push(if values.data_type() == field.data_type() {
                values
            } else {
                datafusion::arrow::compute::cast(&values, field.data_type())?
            });
        }
        let encoded = self.output_rows.convert_columns(&out)?;
        Ok((0..rows)
            .map(|i| (encoded.row(i).data().to_vec(), 1))
            .collect())
    }
}

impl Operator for OverOperator {
    fn describe(&self) -> String {
        let names: Vec<&str> = self.window.iter().map(|w| w.name()).collect();
        format!(
            "Over [{}] within {} partition keys{}",
            names.join(", "),
            self.state.partition_key_count(),
            match self.state.expiring_column() {
                Some(c) => format!(" expires=[{c}]"),
                None => String::new(),
            }
        )
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    super::ordered::checkpoint_by_partitions!();

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn advance(
        &mut self,
        inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        self.stats.state_touched += self.state.expire(inputs)? as u64;
        Ok(None)
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(delta)) = inputs.first() else {
            return Ok(None);
        };
        if delta.is_empty() {
            return Ok(None);
        }
        self.stats.rows_in += delta.num_rows() as u64;
        let encoded = self.state.encode(delta)?;
        let expiry_values = self.state.expiry_values(delta)?;
        let mut diff: HashMap<Vec<u8>, i64, RandomState> =
            HashMap::with_hasher(RandomState::default());
        for (key, indices) in encoded.by_partition() {
            let before = match self.state.partitions.get(key) {
                Some(p) => self.evaluate(p)?,
                None => vec![],
            };
            let first = indices.first().copied().unwrap_or(0);
            let partition = self.state.partition_mut(key, expiry_values.as_ref(), first);
            encoded.apply(partition, &indices);
            self.stats.state_touched += indices.len() as u64;
            let after = match self.state.partitions.get(key) {
                Some(p) if !p.is_empty() => self.evaluate(p)?,
                _ => {
                    self.state.partitions.remove(key);
                    vec![]
                }
            };
            for (row, n) in after {
                *diff.entry(row).or_insert(0) += n;
            }
            for (row, n) in before {
                *diff.entry(row).or_insert(0) -= n;
            }
        }
        let changes: Vec<(Vec<u8>, i64)> = diff.into_iter().filter(|(_, n)| *n != 0).collect();
        if changes.is_empty() {
            return Ok(None);
        }
        let parser = self.output_rows.parser();
        let columns = self
            .output_rows
            .convert_rows(changes.iter().map(|(row, _)| parser.parse(row)))?;
        let data: RecordBatch = batch_from_columns(self.schema.clone(), columns, changes.len())?;
        let weights: Int64Array = changes.iter().map(|(_, n)| Some(*n)).collect();
        self.stats.rows_out += changes.len() as u64;
        Ok(Some(ChangeBatch::try_new(data, weights)?))
    }
}
