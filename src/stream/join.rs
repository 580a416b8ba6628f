//! Inner equi-join, maintained incrementally.
//!
//! Weights: a left row `l` (weight `a`) and a right row `r` (weight `b`) with
//! equal keys produce the joined row `l ++ r` with weight `a * b`. Join is
//! bilinear, so for deltas `dL`, `dR` the output delta is
//! `dL ⋈ R + L' ⋈ dR`, where `R` is the right side before this epoch and
//! `L' = L + dL` the left side after it. Each side is indexed by join key,
//! holding its rows in Arrow row format with their weights. Rows whose key
//! contains NULL never match (SQL `=`), unless the join compares keys with
//! `IS NOT DISTINCT FROM`. An optional residual predicate filters the
//! joined rows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::change::{batch_from_columns, evaluate_keys, row_converter, ChangeBatch};
use super::filter::evaluate_predicate;
use super::operator::{Operator, OperatorStats};
use crate::error::Result;

/// Rows (row format) with their weights, sharing one join key.
type Bucket = HashMap<Box<[u8]>, i64>;

/// One side of the join: its rows indexed by key.
struct JoinSide {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    rows: RowConverter,
    index: HashMap<Box<[u8]>, Bucket>,
}

/// Incremental inner equi-join; see the module documentation.
pub struct JoinOperator {
    left: JoinSide,
    right: JoinSide,
    key_types: Vec<DataType>,
    key_converter: Option<RowConverter>,
    nulls_equal: bool,
    filter: Option<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    stats: OperatorStats,
}

/// Key rows of one delta: `None` for a row whose key never matches.
type KeyRows = Vec<Option<Box<[u8]>>>;

impl JoinOperator {
    /// Joins rows of `left_schema` and `right_schema` on
    /// `left_keys[i] = right_keys[i]`, emitting rows of `schema` (left
    /// columns then right columns) that pass `filter`.
    pub fn try_new(
        left_schema: &SchemaRef,
        right_schema: &SchemaRef,
        left_keys: Vec<Arc<dyn PhysicalExpr>>,
        right_keys: Vec<Arc<dyn PhysicalExpr>>,
        nulls_equal: bool,
        filter: Option<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let key_types = left_keys
            .iter()
            .map(|e| Ok(e.data_type(left_schema)?))
            .collect::<Result<Vec<_>>>()?;
        let key_converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types
                    .iter()
                    .map(|t| SortField::new(t.clone()))
                    .collect(),
            )?)
        };
        Ok(Self {
            left: JoinSide {
                keys: left_keys,
                rows: row_converter(left_schema)?,
                index: HashMap::new(),
            },
            right: JoinSide {
                keys: right_keys,
                rows: row_converter(right_schema)?,
                index: HashMap::new(),
            },
            key_types,
            key_converter,
            nulls_equal,
            filter,
            schema,
            stats: OperatorStats::default(),
        })
    }

    /// Encodes the key of every row of `delta` read through `keys`.
    fn key_rows(&self, keys: &[Arc<dyn PhysicalExpr>], delta: &ChangeBatch) -> Result<KeyRows> {
        let n = delta.num_rows();
        let Some(conv) = &self.key_converter else {
            return Ok(vec![Some(Box::from(&[][..])); n]);
        };
        let arrays = evaluate_keys(keys, &self.key_types, delta.data())?;
        let rows = conv.convert_columns(&arrays)?;
        Ok((0..n)
            .map(|i| {
                let has_null = arrays.iter().any(|a| a.is_null(i));
                (self.nulls_equal || !has_null).then(|| Box::from(rows.row(i).data()))
            })
            .collect())
    }

    /// Joins `delta` (on side `delta_is_left`) against the other side's state.
    fn probe(
        &mut self,
        delta: &ChangeBatch,
        keys: &KeyRows,
        delta_is_left: bool,
    ) -> Result<Option<ChangeBatch>> {
        let other = if delta_is_left {
            &self.right
        } else {
            &self.left
        };
        let mut delta_idx: Vec<u32> = Vec::new();
        let mut other_rows: Vec<&[u8]> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        let dw = delta.weights().values();
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            if let Some(matches) = other.index.get(key) {
                self.stats.state_touched += matches.len() as u64;
                for (row, w) in matches {
                    delta_idx.push(i as u32);
                    other_rows.push(row);
                    weights.push(dw[i] * w);
                }
            }
        }
        if weights.is_empty() {
            return Ok(None);
        }
        let indices = UInt32Array::from(delta_idx);
        let delta_cols = delta
            .data()
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let parser = other.rows.parser();
        let other_cols = other
            .rows
            .convert_rows(other_rows.iter().map(|r| parser.parse(r)))?;
        let columns = if delta_is_left {
            [delta_cols, other_cols].concat()
        } else {
            [other_cols, delta_cols].concat()
        };
        let data = batch_from_columns(self.schema.clone(), columns, weights.len())?;
        Ok(Some(ChangeBatch::try_new(data, Int64Array::from(weights))?))
    }

    /// Adds `delta` to one side's index.
    fn absorb(&mut self, delta: &ChangeBatch, keys: KeyRows, left: bool) -> Result<()> {
        let side = if left {
            &mut self.left
        } else {
            &mut self.right
        };
        let rows = side.rows.convert_columns(delta.data().columns())?;
        for (i, (key, w)) in keys.into_iter().zip(delta.weights().values()).enumerate() {
            let Some(key) = key else { continue };
            let row = rows.row(i).data();
            match side.index.get_mut(&key) {
                Some(bucket) => {
                    match bucket.get_mut(row) {
                        Some(c) => {
                            *c += *w;
                            if *c == 0 {
                                bucket.remove(row);
                            }
                        }
                        None => {
                            bucket.insert(row.into(), *w);
                        }
                    }
                    if bucket.is_empty() {
                        side.index.remove(&key);
                    }
                }
                None => {
                    side.index.insert(key, HashMap::from([(row.into(), *w)]));
                }
            }
        }
        self.stats.state_touched += delta.num_rows() as u64;
        Ok(())
    }
}

impl Operator for JoinOperator {
    fn describe(&self) -> String {
        let on: Vec<String> = self
            .left
            .keys
            .iter()
            .zip(&self.right.keys)
            .map(|(l, r)| format!("{l} = {r}"))
            .collect();
        match &self.filter {
            Some(f) => format!("Join inner on=[{}] filter={f}", on.join(", ")),
            None => format!("Join inner on=[{}]", on.join(", ")),
        }
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let dl = inputs.first().cloned().flatten();
        let dr = inputs.get(1).cloned().flatten();
        let mut parts = Vec::new();
        if let Some(dl) = &dl {
            self.stats.rows_in += dl.num_rows() as u64;
            let keys = self.key_rows(&self.left.keys.clone(), dl)?;
            if let Some(out) = self.probe(dl, &keys, true)? {
                parts.push(out);
            }
            self.absorb(dl, keys, true)?;
        }
        if let Some(dr) = &dr {
            self.stats.rows_in += dr.num_rows() as u64;
            let keys = self.key_rows(&self.right.keys.clone(), dr)?;
            if let Some(out) = self.probe(dr, &keys, false)? {
                parts.push(out);
            }
            self.absorb(dr, keys, false)?;
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let mut out = ChangeBatch::concat(self.schema.clone(), &parts)?;
        if let Some(filter) = &self.filter {
            let mask = evaluate_predicate(filter, out.data())?;
            out = out.filter(&mask)?;
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    fn join() -> JoinOperator {
        let left = from_pretty("I T").unwrap().schema();
        let right = from_pretty("I I").unwrap().schema();
        let fields: Vec<Field> = left
            .fields()
            .iter()
            .chain(right.fields().iter())
            .map(|f| f.as_ref().clone())
            .collect();
        JoinOperator::try_new(
            &left,
            &right,
            vec![Arc::new(Column::new("c0", 0))],
            vec![Arc::new(Column::new("c0", 0))],
            false,
            None,
            Arc::new(Schema::new(fields)),
        )
        .unwrap()
    }

    fn step(op: &mut JoinOperator, left: Option<&str>, right: Option<&str>) -> Vec<String> {
        let l = left.map(|t| from_pretty(t).unwrap());
        let r = right.map(|t| from_pretty(t).unwrap());
        op.step(&[l, r])
            .unwrap()
            .map(|b| to_pretty_lines(&b).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn weights_multiply_and_both_sides_update() {
        let mut op = join();
        assert!(step(&mut op, Some("I T\n 1 a +2\n 2 b +1"), None).is_empty());
        assert_eq!(
            step(&mut op, None, Some("I I\n 1 10 +1\n 3 30 +1")),
            vec!["1 a 1 10 | +2"]
        );
        // Same epoch on both sides: dL ⋈ R + (L + dL) ⋈ dR.
        assert_eq!(
            step(
                &mut op,
                Some("I T\n 1 a -1\n 3 c +1"),
                Some("I I\n 1 11 +1")
            ),
            vec!["1 a 1 10 | -1", "1 a 1 11 | +1", "3 c 3 30 | +1"]
        );
    }

    #[test]
    fn null_keys_never_match() {
        let mut op = join();
        step(&mut op, Some("I T\n . a +1"), None);
        assert!(step(&mut op, None, Some("I I\n . 5 +1")).is_empty());
    }
}
