//! Scan: the entry of a relation's changes into a dataflow.
//!
//! Weights: passes every row through with its weight unchanged, keeping only
//! the projected columns (`out(r[proj]) += in(r)`).

use datafusion::arrow::datatypes::SchemaRef;

use super::change::{batch_from_columns, ChangeBatch};
use super::operator::{Operator, OperatorStats};
use crate::error::Result;

/// Reads a relation's delta, keeping the projected columns.
pub struct ScanOperator {
    relation: String,
    projection: Vec<usize>,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl ScanOperator {
    /// A scan of `relation` emitting the columns at `projection`, under `schema`.
    pub fn try_new(relation: String, projection: Vec<usize>, schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            relation,
            projection,
            schema,
            stats: OperatorStats::default(),
        })
    }
}

impl Operator for ScanOperator {
    fn describe(&self) -> String {
        let cols: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!("Scan {} [{}]", self.relation, cols.join(", "))
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(delta)) = inputs.first() else {
            return Ok(None);
        };
        self.stats.rows_in += delta.num_rows() as u64;
        self.stats.rows_out += delta.num_rows() as u64;
        let columns = self
            .projection
            .iter()
            .map(|&i| delta.data().column(i).clone())
            .collect();
        let data = batch_from_columns(self.schema.clone(), columns, delta.num_rows())?;
        Ok(Some(delta.with_data(data)?))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }
}
