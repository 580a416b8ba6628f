//! Constant: a relation fixed at plan time (`VALUES`, or the single row of a
//! `SELECT` without `FROM`).
//!
//! Weights: emits every row with weight +1 in the first epoch, then nothing:
//! its collection never changes.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::change::ChangeBatch;
use super::operator::{Operator, OperatorStats};
use crate::error::Result;

/// Emits a fixed batch once.
pub struct ConstantOperator {
    rows: Option<RecordBatch>,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl ConstantOperator {
    /// A constant relation holding `rows`.
    pub fn try_new(rows: RecordBatch) -> Result<Self> {
        Ok(Self {
            schema: rows.schema(),
            rows: Some(rows),
            stats: OperatorStats::default(),
        })
    }
}

impl Operator for ConstantOperator {
    fn describe(&self) -> String {
        "Constant".to_string()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, _inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        Ok(self.rows.take().map(|rows| {
            self.stats.rows_out += rows.num_rows() as u64;
            ChangeBatch::with_uniform_weight(rows, 1)
        }))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }
}
