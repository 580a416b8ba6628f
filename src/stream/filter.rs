//! Filter: keeps the rows satisfying a predicate.
//!
//! Weights: `out(r) = in(r)` when the predicate is true for `r`, else 0
//! (NULL counts as false). Linear, so deltas pass straight through.

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use super::change::ChangeBatch;
use super::operator::{Operator, OperatorStats};
use crate::error::{MillraceError, Result};

/// Evaluates a boolean expression over each batch and keeps matching rows.
pub struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl FilterOperator {
    /// A filter with `predicate` over rows of `schema`.
    pub fn try_new(predicate: Arc<dyn PhysicalExpr>, schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            predicate,
            schema,
            stats: OperatorStats::default(),
        })
    }
}

/// Evaluates `predicate` over a batch as a boolean mask.
pub fn evaluate_predicate(
    predicate: &Arc<dyn PhysicalExpr>,
    batch: &datafusion::arrow::array::RecordBatch,
) -> Result<BooleanArray> {
    let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    mask.as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| MillraceError::plan("filter predicate is not boolean"))
}

impl Operator for FilterOperator {
    fn describe(&self) -> String {
        format!("Filter {}", self.predicate)
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(delta)) = inputs.first() else {
            return Ok(None);
        };
        self.stats.rows_in += delta.num_rows() as u64;
        let mask = evaluate_predicate(&self.predicate, delta.data())?;
        let out = delta.filter(&mask)?;
        self.stats.rows_out += out.num_rows() as u64;
        Ok(Some(out))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{binary, lit, Column};

    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    #[test]
    fn keeps_matching_rows_with_their_weights() {
        let input = from_pretty("I\n 1 +1\n 5 -2\n . +1").unwrap();
        let schema = input.schema();
        let predicate = binary(
            Arc::new(Column::new("c0", 0)),
            BinaryOp::Gt,
            lit(2i64),
            &schema,
        )
        .unwrap();
        let mut op = FilterOperator::try_new(predicate, schema).unwrap();
        let out = op.step(&[Some(input)]).unwrap().unwrap();
        assert_eq!(to_pretty_lines(&out).unwrap(), vec!["5 | -2"]);
    }
}
