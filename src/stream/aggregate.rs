//! Hash aggregate with `GROUP BY`, maintained incrementally.
//!
//! Weights: each input row `r` with weight `w` adds `w` copies of `r` to its
//! group. For every group whose contents changed in an epoch the operator
//! emits the group's previous output row with weight -1 (if the group
//! existed) and its new output row with weight +1 (if it still exists); an
//! unchanged output row is not emitted. A group exists while the sum of its
//! rows' weights is positive. Without `GROUP BY` there is exactly one group,
//! which always exists (so `count(*)` over nothing is one row saying 0, as in
//! PostgreSQL).
//!
//! Every aggregate is invertible here: `count`, `sum` and `avg` keep running
//! sums; `bool_and`/`bool_or` keep counts of true and false; `min`, `max`,
//! `string_agg` and `count(DISTINCT)` keep the multiset of values in Arrow row
//! format (whose byte order is the value order), so a delete of the current
//! minimum finds the next one without rescanning any input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;

use super::change::{batch_from_columns, ChangeBatch};
use super::filter::evaluate_predicate;
use super::operator::{Operator, OperatorStats};
use crate::error::{MillraceError, Result};

/// The aggregate functions the operator maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    /// `count(*)` (no argument) or `count(x)` (non-NULL x).
    Count,
    /// `count(DISTINCT x)`.
    CountDistinct,
    /// `sum(x)`.
    Sum,
    /// `avg(x)`.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `bool_and(x)`.
    BoolAnd,
    /// `bool_or(x)`.
    BoolOr,
    /// `string_agg(x, delimiter)`, values concatenated in ascending order.
    StringAgg,
}

/// One aggregate call in the operator.
#[derive(Clone)]
pub struct AggregateSpec {
    /// Which function.
    pub kind: AggregateKind,
    /// The argument, or `None` for `count(*)`.
    pub arg: Option<Arc<dyn PhysicalExpr>>,
    /// `FILTER (WHERE ...)`: rows failing it are ignored by this aggregate.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The delimiter of `string_agg`.
    pub delimiter: String,
    /// Text shown by `EXPLAIN`.
    pub display: String,
}

/// Per-aggregate state for one group.
#[derive(Debug, Clone)]
enum AccState {
    Count(i64),
    /// Integer or decimal (unscaled) sum, with the count of non-NULL inputs.
    ExactSum {
        sum: i128,
        n: i64,
    },
    FloatSum {
        sum: f64,
        n: i64,
    },
    Bools {
        t: i64,
        f: i64,
    },
    /// Multiset of values in row format.
    Values(BTreeMap<Box<[u8]>, i64>),
}

struct GroupSlot {
    key: Box<[u8]>,
    count: i64,
    accs: Vec<AccState>,
}

/// How the argument of one aggregate reads over one batch.
enum PreparedArg {
    Star,
    Any(ArrayRef),
    Exact(ArrayRef, Vec<i128>),
    Float(Float64Array),
    Bool(BooleanArray),
    Rows(ArrayRef, Rows),
}

/// Sum representation chosen from the argument type.
#[derive(Debug, Clone, Copy)]
enum SumRepr {
    Int,
    Decimal { scale: i8 },
    Float,
}

/// Incremental `GROUP BY` operator; see the module documentation.
pub struct AggregateOperator {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<AggregateSpec>,
    arg_types: Vec<DataType>,
    value_converters: Vec<Option<RowConverter>>,
    group_converter: Option<RowConverter>,
    slots: Vec<Option<GroupSlot>>,
    free_slots: Vec<usize>,
    index: HashMap<Box<[u8]>, usize>,
    global_emitted: bool,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl AggregateOperator {
    /// An aggregate over rows of `input_schema`, grouping by `group_exprs`
    /// and computing `aggregates`, emitting rows of `schema` (group columns
    /// then aggregate columns).
    pub fn try_new(
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        aggregates: Vec<AggregateSpec>,
        input_schema: &SchemaRef,
        schema: SchemaRef,
    ) -> Result<Self> {
        if schema.fields().len() != group_exprs.len() + aggregates.len() {
            return Err(MillraceError::plan(
                "aggregate output schema does not match its expressions",
            ));
        }
        let group_converter = if group_exprs.is_empty() {
            None
        } else {
            let fields = group_exprs
                .iter()
                .map(|e| Ok(SortField::new(e.data_type(input_schema)?)))
                .collect::<Result<Vec<_>>>()?;
            Some(RowConverter::new(fields)?)
        };
        let mut arg_types = Vec::new();
        let mut value_converters = Vec::new();
        for agg in &aggregates {
            let ty = match &agg.arg {
                Some(e) => e.data_type(input_schema)?,
                None => DataType::Null,
            };
            let needs_values = matches!(
                agg.kind,
                AggregateKind::Min
                    | AggregateKind::Max
                    | AggregateKind::CountDistinct
                    | AggregateKind::StringAgg
            );
            value_converters.push(if needs_values {
                Some(RowConverter::new(vec![SortField::new(ty.clone())])?)
            } else {
                None
            });
            if matches!(agg.kind, AggregateKind::Sum | AggregateKind::Avg) {
                sum_repr(&ty)?;
            }
            arg_types.push(ty);
        }
        Ok(Self {
            group_exprs,
            aggregates,
            arg_types,
            value_converters,
            group_converter,
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashMap::new(),
            global_emitted: false,
            schema,
            stats: OperatorStats::default(),
        })
    }

    /// Number of groups currently held.
    pub fn group_count(&self) -> usize {
        self.index.len()
    }

    fn is_global(&self) -> bool {
        self.group_exprs.is_empty()
    }

    fn new_accs(&self) -> Vec<AccState> {
        self.aggregates
            .iter()
            .zip(&self.arg_types)
            .map(|(a, ty)| match a.kind {
                AggregateKind::Count => AccState::Count(0),
                AggregateKind::Sum | AggregateKind::Avg => match sum_repr(ty) {
                    Ok(SumRepr::Float) => AccState::FloatSum { sum: 0.0, n: 0 },
                    _ => AccState::ExactSum { sum: 0, n: 0 },
                },
                AggregateKind::BoolAnd | AggregateKind::BoolOr => AccState::Bools { t: 0, f: 0 },
                _ => AccState::Values(BTreeMap::new()),
            })
            .collect()
    }

    fn slot_for(&mut self, key: &[u8]) -> usize {
        if let Some(&s) = self.index.get(key) {
            return s;
        }
        let slot = GroupSlot {
            key: key.into(),
            count: 0,
            accs: self.new_accs(),
        };
        let id = match self.free_slots.pop() {
            Some(id) => {
                self.slots[id] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(key.into(), id);
        id
    }

    fn prepare_args(&self, delta: &ChangeBatch) -> Result<Vec<PreparedArg>> {
        let n = delta.num_rows();
        self.aggregates
            .iter()
            .enumerate()
            .map(|(i, agg)| {
                let Some(expr) = &agg.arg else {
                    return Ok(PreparedArg::Star);
                };
                let array = expr.evaluate(delta.data())?.into_array(n)?;
                Ok(match agg.kind {
                    AggregateKind::Count => PreparedArg::Any(array),
                    AggregateKind::Sum | AggregateKind::Avg => {
                        match sum_repr(&self.arg_types[i])? {
                            SumRepr::Float => {
                                let f = cast(&array, &DataType::Float64)?;
                                PreparedArg::Float(downcast::<Float64Array>(&f)?.clone())
                            }
                            SumRepr::Int => {
                                let a = cast(&array, &DataType::Int64)?;
                                let ints = downcast::<Int64Array>(&a)?;
                                let values = ints.values().iter().map(|v| *v as i128).collect();
                                PreparedArg::Exact(a.clone(), values)
                            }
                            SumRepr::Decimal { .. } => {
                                let d = downcast::<Decimal128Array>(&array)?;
                                let values = d.values().to_vec();
                                PreparedArg::Exact(array.clone(), values)
                            }
                        }
                    }
                    AggregateKind::BoolAnd | AggregateKind::BoolOr => {
                        let b = cast(&array, &DataType::Boolean)?;
                        PreparedArg::Bool(downcast::<BooleanArray>(&b)?.clone())
                    }
                    _ => {
                        let converter = self.value_converters[i]
                            .as_ref()
                            .ok_or_else(|| MillraceError::execution("missing value converter"))?;
                        let rows = converter.convert_columns(std::slice::from_ref(&array))?;
                        PreparedArg::Rows(array, rows)
                    }
                })
            })
            .collect()
    }

    /// The output values of the aggregates of one group.
    fn outputs(&self, slot: &GroupSlot) -> Result<Vec<ScalarValue>> {
        self.aggregates
            .iter()
            .enumerate()
            .map(|(i, agg)| {
                let out_type = self.schema.field(self.group_exprs.len() + i).data_type();
                let value = match (&slot.accs[i], agg.kind) {
                    (AccState::Count(c), _) => ScalarValue::Int64(Some(*c)),
                    (AccState::ExactSum { n: 0, .. }, _) | (AccState::FloatSum { n: 0, .. }, _) => {
                        ScalarValue::Null
                    }
                    (AccState::ExactSum { sum, n }, kind) => {
                        exact_sum_output(*sum, *n, kind, &self.arg_types[i], out_type)?
                    }
                    (AccState::FloatSum { sum, n }, AggregateKind::Avg) => {
                        ScalarValue::Float64(Some(sum / *n as f64))
                    }
                    (AccState::FloatSum { sum, .. }, _) => ScalarValue::Float64(Some(*sum)),
                    (AccState::Bools { t, f }, kind) => {
                        if *t == 0 && *f == 0 {
                            ScalarValue::Boolean(None)
                        } else if kind == AggregateKind::BoolAnd {
                            ScalarValue::Boolean(Some(*f == 0))
                        } else {
                            ScalarValue::Boolean(Some(*t > 0))
                        }
                    }
                    (AccState::Values(values), kind) => {
                        self.values_output(i, values, kind, &agg.delimiter)?
                    }
                };
                cast_scalar(value, out_type)
            })
            .collect()
    }

    fn values_output(
        &self,
        agg_index: usize,
        values: &BTreeMap<Box<[u8]>, i64>,
        kind: AggregateKind,
        delimiter: &str,
    ) -> Result<ScalarValue> {
        let converter = self.value_converters[agg_index]
            .as_ref()
            .ok_or_else(|| MillraceError::execution("missing value converter"))?;
        let parser = converter.parser();
        let decode_one = |bytes: &[u8]| -> Result<ScalarValue> {
            let arrays = converter.convert_rows(std::iter::once(parser.parse(bytes)))?;
            Ok(ScalarValue::try_from_array(&arrays[0], 0)?)
        };
        Ok(match kind {
            AggregateKind::CountDistinct => ScalarValue::Int64(Some(values.len() as i64)),
            AggregateKind::Min => match values.keys().next() {
                Some(k) => decode_one(k)?,
                None => ScalarValue::Null,
            },
            AggregateKind::Max => match values.keys().next_back() {
                Some(k) => decode_one(k)?,
                None => ScalarValue::Null,
            },
            _ => {
                if values.is_empty() {
                    return Ok(ScalarValue::Utf8(None));
                }
                let arrays =
                    converter.convert_rows(values.keys().map(|k| parser.parse(k.as_ref())))?;
                let strings = cast(&arrays[0], &DataType::Utf8)?;
                let strings = downcast::<StringArray>(&strings)?;
                let mut out = String::new();
                let mut first = true;
                for (i, count) in values.values().enumerate() {
                    for _ in 0..*count {
                        if !first {
                            out.push_str(delimiter);
                        }
                        first = false;
                        out.push_str(strings.value(i));
                    }
                }
                ScalarValue::Utf8(Some(out))
            }
        })
    }

    fn group_columns(&self, keys: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        match &self.group_converter {
            None => Ok(vec![]),
            Some(conv) => {
                let parser = conv.parser();
                Ok(conv.convert_rows(keys.iter().map(|k| parser.parse(k)))?)
            }
        }
    }
}

fn downcast<T: 'static>(a: &ArrayRef) -> Result<&T> {
    a.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| MillraceError::execution("unexpected array type in aggregate"))
}

fn sum_repr(ty: &DataType) -> Result<SumRepr> {
    match ty {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Null => Ok(SumRepr::Int),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Ok(SumRepr::Float),
        DataType::Decimal128(_, s) => Ok(SumRepr::Decimal { scale: *s }),
        other => Err(MillraceError::not_supported(format!(
            "sum/avg over {other} in a materialized view"
        ))),
    }
}

fn exact_sum_output(
    sum: i128,
    n: i64,
    kind: AggregateKind,
    arg_type: &DataType,
    out_type: &DataType,
) -> Result<ScalarValue> {
    let repr = sum_repr(arg_type)?;
    Ok(match (kind, repr) {
        (AggregateKind::Avg, SumRepr::Int) => ScalarValue::Float64(Some(sum as f64 / n as f64)),
        (AggregateKind::Avg, SumRepr::Decimal { scale }) => match out_type {
            DataType::Decimal128(p, s) => {
                let shift = (*s as i32 - scale as i32).max(0) as u32;
                let scaled = sum
                    .checked_mul(10i128.pow(shift))
                    .ok_or_else(|| overflow("avg"))?;
                ScalarValue::Decimal128(Some(scaled / n as i128), *p, *s)
            }
            _ => ScalarValue::Float64(Some(sum as f64 / n as f64 / 10f64.powi(scale as i32))),
        },
        (_, SumRepr::Decimal { scale }) => match out_type {
            DataType::Decimal128(p, _) => ScalarValue::Decimal128(Some(sum), *p, scale),
            _ => ScalarValue::Decimal128(Some(sum), 38, scale),
        },
        _ => ScalarValue::Int64(Some(i64::try_from(sum).map_err(|_| overflow("sum"))?)),
    })
}

fn overflow(what: &str) -> MillraceError {
    MillraceError::Data {
        sqlstate: "22003",
        message: format!("{what} out of range"),
    }
}

fn cast_scalar(value: ScalarValue, ty: &DataType) -> Result<ScalarValue> {
    if value.data_type() == *ty {
        Ok(value)
    } else if value.is_null() {
        Ok(ScalarValue::try_from(ty)?)
    } else {
        Ok(value.cast_to(ty)?)
    }
}

impl Operator for AggregateOperator {
    fn describe(&self) -> String {
        let groups: Vec<String> = self.group_exprs.iter().map(|e| e.to_string()).collect();
        let aggs: Vec<&str> = self.aggregates.iter().map(|a| a.display.as_str()).collect();
        format!(
            "Aggregate group_by=[{}] aggregates=[{}]",
            groups.join(", "),
            aggs.join(", ")
        )
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let delta = inputs.first().cloned().flatten();
        let first_global = self.is_global() && !self.global_emitted;
        if delta.is_none() && !first_global {
            return Ok(None);
        }

        // Map every input row to its group slot.
        let mut row_slots: Vec<usize> = Vec::new();
        let mut touched: Vec<usize> = Vec::new();
        let mut prepared = Vec::new();
        let mut filters: Vec<Option<BooleanArray>> = Vec::new();
        if let Some(delta) = &delta {
            let n = delta.num_rows();
            self.stats.rows_in += n as u64;
            if let Some(conv) = &self.group_converter {
                let keys = self
                    .group_exprs
                    .iter()
                    .map(|e| Ok(e.evaluate(delta.data())?.into_array(n)?))
                    .collect::<Result<Vec<_>>>()?;
                let rows = conv.convert_columns(&keys)?;
                row_slots.reserve(n);
                for i in 0..n {
                    row_slots.push(self.slot_for(rows.row(i).data()));
                }
            } else {
                let s = self.slot_for(&[]);
                row_slots.resize(n, s);
            }
            prepared = self.prepare_args(delta)?;
            filters = self
                .aggregates
                .iter()
                .map(|a| {
                    a.filter
                        .as_ref()
                        .map(|f| evaluate_predicate(f, delta.data()))
                        .transpose()
                })
                .collect::<Result<_>>()?;
        }
        if first_global {
            let s = self.slot_for(&[]);
            touched.push(s);
        }
        let mut seen = vec![false; self.slots.len()];
        for &s in &touched {
            seen[s] = true;
        }
        for &s in &row_slots {
            if !seen[s] {
                seen[s] = true;
                touched.push(s);
            }
        }
        self.stats.state_touched += touched.len() as u64;

        // Old outputs of the touched groups.
        let global = self.is_global();
        let mut old: Vec<Option<Vec<ScalarValue>>> = Vec::with_capacity(touched.len());
        for &s in &touched {
            let slot = self.slots[s]
                .as_ref()
                .ok_or_else(|| MillraceError::execution("empty slot"))?;
            let exists = if global {
                self.global_emitted
            } else {
                slot.count > 0
            };
            old.push(if exists {
                Some(self.outputs(slot)?)
            } else {
                None
            });
        }

        // Apply the delta.
        if let Some(delta) = &delta {
            let weights = delta.weights().values();
            for (row, (&s, &w)) in row_slots.iter().zip(weights.iter()).enumerate() {
                let slot = self.slots[s]
                    .as_mut()
                    .ok_or_else(|| MillraceError::execution("empty slot"))?;
                slot.count += w;
                for (a, acc) in slot.accs.iter_mut().enumerate() {
                    if let Some(mask) = &filters[a] {
                        if !mask.is_valid(row) || !mask.value(row) {
                            continue;
                        }
                    }
                    apply_row(acc, &prepared[a], row, w);
                }
            }
        }

        // New outputs and the difference.
        let n_groups = self.group_exprs.len();
        let mut out_keys: Vec<&[u8]> = Vec::new();
        let mut out_values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggregates.len()];
        let mut out_weights: Vec<i64> = Vec::new();
        let mut emptied: Vec<usize> = Vec::new();
        for (&s, old_row) in touched.iter().zip(old) {
            let slot = self.slots[s]
                .as_ref()
                .ok_or_else(|| MillraceError::execution("empty slot"))?;
            if slot.count < 0 {
                return Err(MillraceError::execution(
                    "aggregate group has negative multiplicity (a delete of a row that was never inserted)",
                ));
            }
            let exists = global || slot.count > 0;
            let new_row = if exists {
                Some(self.outputs(slot)?)
            } else {
                None
            };
            if !exists {
                emptied.push(s);
            }
            if old_row == new_row {
                continue;
            }
            for (row, w) in [(old_row, -1i64), (new_row, 1)] {
                if let Some(values) = row {
                    out_keys.push(slot.key.as_ref());
                    for (col, v) in out_values.iter_mut().zip(values) {
                        col.push(v);
                    }
                    out_weights.push(w);
                }
            }
        }
        if global {
            self.global_emitted = true;
        }
        let result = if out_weights.is_empty() {
            None
        } else {
            let mut columns = self.group_columns(&out_keys)?;
            for (i, values) in out_values.into_iter().enumerate() {
                let ty = self.schema.field(n_groups + i).data_type().clone();
                let array = ScalarValue::iter_to_array(values)?;
                columns.push(if array.data_type() == &ty {
                    array
                } else {
                    cast(&array, &ty)?
                });
            }
            let data = batch_from_columns(self.schema.clone(), columns, out_weights.len())?;
            self.stats.rows_out += out_weights.len() as u64;
            Some(ChangeBatch::try_new(data, Int64Array::from(out_weights))?)
        };
        for s in emptied {
            if let Some(slot) = self.slots[s].take() {
                self.index.remove(&slot.key);
                self.free_slots.push(s);
            }
        }
        Ok(result)
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn is_stateful(&self) -> bool {
        true
    }
}

fn apply_row(acc: &mut AccState, arg: &PreparedArg, row: usize, w: i64) {
    let valid = match arg {
        PreparedArg::Star => true,
        PreparedArg::Any(a) | PreparedArg::Exact(a, _) | PreparedArg::Rows(a, _) => a.is_valid(row),
        PreparedArg::Float(a) => a.is_valid(row),
        PreparedArg::Bool(a) => a.is_valid(row),
    };
    if !valid {
        // Aggregates ignore NULL arguments.
        return;
    }
    match (acc, arg) {
        (AccState::Count(c), _) => *c += w,
        (AccState::ExactSum { sum, n }, PreparedArg::Exact(_, values)) => {
            *sum += values[row] * w as i128;
            *n += w;
        }
        (AccState::FloatSum { sum, n }, PreparedArg::Float(a)) => {
            *sum += a.value(row) * w as f64;
            *n += w;
        }
        (AccState::Bools { t, f }, PreparedArg::Bool(a)) => {
            if a.value(row) {
                *t += w
            } else {
                *f += w
            }
        }
        (AccState::Values(values), PreparedArg::Rows(_, rows)) => {
            let key = rows.row(row).data();
            match values.get_mut(key) {
                Some(c) => {
                    *c += w;
                    if *c == 0 {
                        values.remove(key);
                    }
                }
                None => {
                    values.insert(key.into(), w);
                }
            }
        }
        // The argument form is chosen from the accumulator when the operator
        // is built, so other pairs cannot occur.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    fn col(name: &str, i: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, i))
    }

    fn spec(kind: AggregateKind, arg: Option<Arc<dyn PhysicalExpr>>) -> AggregateSpec {
        AggregateSpec {
            kind,
            arg,
            filter: None,
            delimiter: ",".into(),
            display: format!("{kind:?}"),
        }
    }

    /// GROUP BY c0: count(*), sum(c1), min(c1), max(c1)
    fn grouped() -> AggregateOperator {
        let input = from_pretty("T I").unwrap().schema();
        let out = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Int64, true),
            Field::new("lo", DataType::Int64, true),
            Field::new("hi", DataType::Int64, true),
        ]));
        AggregateOperator::try_new(
            vec![col("c0", 0)],
            vec![
                spec(AggregateKind::Count, None),
                spec(AggregateKind::Sum, Some(col("c1", 1))),
                spec(AggregateKind::Min, Some(col("c1", 1))),
                spec(AggregateKind::Max, Some(col("c1", 1))),
            ],
            &input,
            out,
        )
        .unwrap()
    }

    fn step(op: &mut AggregateOperator, text: &str) -> Vec<String> {
        let out = op.step(&[Some(from_pretty(text).unwrap())]).unwrap();
        out.map(|b| to_pretty_lines(&b).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn emits_retraction_and_insertion_per_touched_group() {
        let mut op = grouped();
        assert_eq!(
            step(&mut op, "T I\n a 1 +1\n a 5 +1\n b 2 +2"),
            vec!["a 2 6 1 5 | +1", "b 2 4 2 2 | +1"]
        );
        // Deleting the minimum of `a` finds the next one; `b` is untouched.
        assert_eq!(
            step(&mut op, "T I\n a 1 -1"),
            vec!["a 1 5 5 5 | +1", "a 2 6 1 5 | -1"]
        );
        // The last rows of a group leave: only a retraction.
        assert_eq!(step(&mut op, "T I\n b 2 -2"), vec!["b 2 4 2 2 | -1"]);
        assert_eq!(op.group_count(), 1);
    }

    #[test]
    fn nulls_are_ignored_by_aggregates_but_counted_by_count_star() {
        let mut op = grouped();
        assert_eq!(step(&mut op, "T I\n a . +1"), vec!["a 1 . . . | +1"]);
        assert_eq!(
            step(&mut op, "T I\n a 3 +1"),
            vec!["a 1 . . . | -1", "a 2 3 3 3 | +1"]
        );
    }

    #[test]
    fn a_change_that_cancels_out_emits_nothing() {
        let mut op = grouped();
        step(&mut op, "T I\n a 1 +1");
        assert!(step(&mut op, "T I\n a 7 +1\n a 7 -1").is_empty());
    }

    #[test]
    fn global_aggregate_has_one_row_even_when_empty() {
        let input = from_pretty("I").unwrap().schema();
        let out = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Int64, true),
        ]));
        let mut op = AggregateOperator::try_new(
            vec![],
            vec![
                spec(AggregateKind::Count, None),
                spec(AggregateKind::Sum, Some(col("c0", 0))),
            ],
            &input,
            out,
        )
        .unwrap();
        let first = op.step(&[None]).unwrap().unwrap();
        assert_eq!(to_pretty_lines(&first).unwrap(), vec!["0 . | +1"]);
        let lines = to_pretty_lines(
            &op.step(&[Some(from_pretty("I\n 4 +1").unwrap())])
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(lines, vec!["0 . | -1", "1 4 | +1"]);
        let lines = to_pretty_lines(
            &op.step(&[Some(from_pretty("I\n 4 -1").unwrap())])
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(lines, vec!["0 . | +1", "1 4 | -1"]);
    }
}
