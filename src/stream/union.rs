//! Union all: the sum of its inputs.
//!
//! Weights: `out(r) = in_1(r) + ... + in_n(r)`. Linear: the output delta is
//! the concatenation of the input deltas.

use datafusion::arrow::datatypes::SchemaRef;

use super::change::{batch_from_columns, ChangeBatch};
use super::operator::{Operator, OperatorStats};
use crate::error::Result;

/// Concatenates the deltas of any number of inputs with one schema.
pub struct UnionOperator {
    schema: SchemaRef,
    stats: OperatorStats,
}

impl UnionOperator {
    /// A union producing rows of `schema`.
    pub fn try_new(schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            schema,
            stats: OperatorStats::default(),
        })
    }
}

impl Operator for UnionOperator {
    fn describe(&self) -> String {
        "UnionAll".to_string()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let mut parts = Vec::new();
        for delta in inputs.iter().flatten() {
            self.stats.rows_in += delta.num_rows() as u64;
            let columns = delta
                .data()
                .columns()
                .iter()
                .zip(self.schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        Ok(datafusion::arrow::compute::cast(c, f.data_type())?)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let data = batch_from_columns(self.schema.clone(), columns, delta.num_rows())?;
            parts.push(delta.with_data(data)?);
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let out = ChangeBatch::concat(self.schema.clone(), &parts)?;
        self.stats.rows_out += out.num_rows() as u64;
        Ok(Some(out))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }
}
