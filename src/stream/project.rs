//! Project: computes a list of scalar expressions for every row.
//!
//! Weights: `out(f(r)) += in(r)`; each input row maps to one output row with
//! the same weight. Linear, so deltas map straight through.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use super::change::{batch_from_columns, ChangeBatch};
use super::operator::{Operator, OperatorStats};
use crate::error::Result;

/// Evaluates DataFusion physical expressions over whole batches.
pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl ProjectOperator {
    /// A projection producing `exprs` as the columns of `schema`.
    pub fn try_new(exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            exprs,
            schema,
            stats: OperatorStats::default(),
        })
    }
}

impl Operator for ProjectOperator {
    fn describe(&self) -> String {
        let exprs: Vec<String> = self.exprs.iter().map(|e| e.to_string()).collect();
        format!("Project [{}]", exprs.join(", "))
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(delta)) = inputs.first() else {
            return Ok(None);
        };
        let n = delta.num_rows();
        self.stats.rows_in += n as u64;
        self.stats.rows_out += n as u64;
        let columns = self
            .exprs
            .iter()
            .zip(self.schema.fields())
            .map(|(e, f)| {
                let array = e.evaluate(delta.data())?.into_array(n)?;
                if array.data_type() == f.data_type() {
                    Ok(array)
                } else {
                    Ok(datafusion::arrow::compute::cast(&array, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let data = batch_from_columns(self.schema.clone(), columns, n)?;
        Ok(Some(delta.with_data(data)?))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }
}
