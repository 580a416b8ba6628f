//! Aggregate state held column-wise: one vector per aggregate call, indexed
//! by group id, updated by tight loops over a whole batch and read out as
//! Arrow arrays for many groups at once.
//!
//! Weights: a row `x` with weight `w` adds `w` to a count, `w * x` to a sum,
//! and `w` copies of `x` to a value multiset; rows whose argument is NULL or
//! fails the aggregate's `FILTER` are skipped. When the aggregate's input can
//! never retract (every weight positive), `min` and `max` of integer,
//! temporal, decimal and floating-point values keep only the running extreme
//! instead of the multiset of values.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array,
    Int64Array, StringArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, ScalarBuffer};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::error::{MillraceError, Result};
use crate::stream::operator::codec::{put_bytes, Reader};

use super::AggregateKind;

/// The state layout of one aggregate, chosen from its function, argument
/// type and whether its input can retract.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    Count,
    /// Integer sum (or average) in an `i128`, with the count of inputs.
    IntSum,
    /// Decimal sum (or average), unscaled, with the count of inputs.
    DecimalSum {
        scale: i8,
    },
    FloatSum,
    Bools,
    /// Running extreme of values read as `i64` (append-only input).
    IntExtreme {
        max: bool,
    },
    /// Running extreme of unscaled decimals (append-only input).
    DecimalExtreme {
        max: bool,
    },
    /// Running extreme of floats (append-only input).
    FloatExtreme {
        max: bool,
    },
    /// Multiset of values in row format (any type, retractions allowed).
    Values,
}

/// How one aggregate's state is kept, updated and read out.
pub(super) struct AccPlan {
    kind: AggregateKind,
    layout: Layout,
    arg_type: DataType,
    out_type: DataType,
    converter: Option<RowConverter>,
    null_row: Vec<u8>,
    delimiter: String,
}

/// One aggregate's argument over one batch, in the form its state needs.
pub(super) enum PreparedArg {
    /// Only which rows count matters (`count`).
    Nothing,
    Ints(ScalarBuffer<i64>),
    Wide(ScalarBuffer<i128>),
    Floats(ScalarBuffer<f64>),
    Bools(BooleanBuffer),
    Rows(Rows),
}

/// One aggregate's state for every group.
pub(super) enum AccColumn {
    Count(Vec<i64>),
    Sum { sum: Vec<i128>, n: Vec<i64> },
    FloatSum { sum: Vec<f64>, n: Vec<i64> },
    Bools { t: Vec<i64>, f: Vec<i64> },
    IntExtreme { value: Vec<i128>, n: Vec<i64> },
    FloatExtreme { value: Vec<f64>, n: Vec<i64> },
    Values(Vec<BTreeMap<Box<[u8]>, i64>>),
}

/// Integer types every value of which fits an `i64`.
fn fits_i64(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

/// Types whose values survive a round trip through `Int64` unchanged.
fn reads_as_i64(ty: &DataType) -> bool {
    (fits_i64(ty)
        || matches!(
            ty,
            DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
                | DataType::Time32(_)
                | DataType::Time64(_)
                | DataType::Duration(_)
        ))
        && can_cast_types(ty, &DataType::Int64)
        && can_cast_types(&DataType::Int64, ty)
}

fn sum_layout(ty: &DataType) -> Result<Layout> {
    match ty {
        t if fits_i64(t) || matches!(t, DataType::UInt64 | DataType::Null) => Ok(Layout::IntSum),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Ok(Layout::FloatSum),
        DataType::Decimal128(_, s) => Ok(Layout::DecimalSum { scale: *s }),
        other => Err(MillraceError::not_supported(format!(
            "sum/avg over {other} in a materialized view"
        ))),
    }
}

impl AccPlan {
    /// The plan for `kind` over arguments of `arg_type` producing
    /// `out_type`; `append_only` says the input never retracts.
    pub(super) fn try_new(
        kind: AggregateKind,
        arg_type: DataType,
        out_type: DataType,
        delimiter: String,
        append_only: bool,
    ) -> Result<Self> {
        let extreme = matches!(kind, AggregateKind::Min | AggregateKind::Max);
        let max = kind == AggregateKind::Max;
        let layout = match kind {
            AggregateKind::Count => Layout::Count,
            AggregateKind::Sum | AggregateKind::Avg => sum_layout(&arg_type)?,
            AggregateKind::BoolAnd | AggregateKind::BoolOr => Layout::Bools,
            _ if extreme && append_only && reads_as_i64(&arg_type) => Layout::IntExtreme { max },
            _ if extreme && append_only && matches!(arg_type, DataType::Decimal128(_, _)) => {
                Layout::DecimalExtreme { max }
            }
            _ if extreme
                && append_only
                && matches!(
                    arg_type,
                    DataType::Float16 | DataType::Float32 | DataType::Float64
                ) =>
            {
                Layout::FloatExtreme { max }
            }
            _ => Layout::Values,
        };
        let (converter, null_row) = if layout == Layout::Values {
            let converter = RowConverter::new(vec![SortField::new(arg_type.clone())])?;
            let null_row = converter
                .convert_columns(&[new_null_array(&arg_type, 1)])?
                .row(0)
                .data()
                .to_vec();
            (Some(converter), null_row)
        } else {
            (None, Vec::new())
        };
        Ok(Self {
            kind,
            layout,
            arg_type,
            out_type,
            converter,
            null_row,
            delimiter,
        })
    }

    /// Empty state, for no groups yet.
    pub(super) fn new_column(&self) -> AccColumn {
        match self.layout {
            Layout::Count => AccColumn::Count(Vec::new()),
            Layout::IntSum | Layout::DecimalSum { .. } => AccColumn::Sum {
                sum: Vec::new(),
                n: Vec::new(),
            },
            Layout::FloatSum => AccColumn::FloatSum {
                sum: Vec::new(),
                n: Vec::new(),
            },
            Layout::Bools => AccColumn::Bools {
                t: Vec::new(),
                f: Vec::new(),
            },
            Layout::IntExtreme { .. } | Layout::DecimalExtreme { .. } => AccColumn::IntExtreme {
                value: Vec::new(),
                n: Vec::new(),
            },
            Layout::FloatExtreme { .. } => AccColumn::FloatExtreme {
                value: Vec::new(),
                n: Vec::new(),
            },
            Layout::Values => AccColumn::Values(Vec::new()),
        }
    }

    /// Reads the argument column of one batch (`None` for `count(*)`).
    pub(super) fn prepare(&self, arg: Option<&ArrayRef>) -> Result<PreparedArg> {
        let Some(array) = arg else {
            return Ok(PreparedArg::Nothing);
        };
        Ok(match self.layout {
            Layout::Count => PreparedArg::Nothing,
            Layout::IntSum | Layout::IntExtreme { .. } => {
                let ints = cast(array, &DataType::Int64)?;
                PreparedArg::Ints(ints.as_primitive::<Int64Type>().values().clone())
            }
            Layout::DecimalSum { .. } | Layout::DecimalExtreme { .. } => PreparedArg::Wide(
                array
                    .as_primitive_opt::<Decimal128Type>()
                    .ok_or_else(|| MillraceError::execution("decimal aggregate over non-decimal"))?
                    .values()
                    .clone(),
            ),
            Layout::FloatSum | Layout::FloatExtreme { .. } => {
                let floats = cast(array, &DataType::Float64)?;
                PreparedArg::Floats(floats.as_primitive::<Float64Type>().values().clone())
            }
            Layout::Bools => {
                let bools = cast(array, &DataType::Boolean)?;
                PreparedArg::Bools(bools.as_boolean().values().clone())
            }
            Layout::Values => {
                let converter = self
                    .converter
                    .as_ref()
                    .ok_or_else(|| MillraceError::execution("missing value converter"))?;
                PreparedArg::Rows(converter.convert_columns(std::slice::from_ref(array))?)
            }
        })
    }

    /// Adds one batch to the state: row `r` belongs to group `groups[r]`
    /// with weight `weights[r]` and is skipped unless `active` (when given)
    /// is set for it.
    pub(super) fn apply(
        &self,
        column: &mut AccColumn,
        arg: &PreparedArg,
        groups: &[u32],
        weights: &[i64],
        active: Option<&BooleanBuffer>,
    ) {
        let rows = groups.len();
        match (column, arg) {
            (AccColumn::Count(c), _) => each_row(rows, active, |r| {
                c[groups[r] as usize] += weights[r];
            }),
            (AccColumn::Sum { sum, n }, PreparedArg::Ints(v)) => {
                fold_sum(sum, n, v, groups, weights, active)
            }
            (AccColumn::Sum { sum, n }, PreparedArg::Wide(v)) => {
                fold_sum(sum, n, v, groups, weights, active)
            }
            (AccColumn::FloatSum { sum, n }, PreparedArg::Floats(v)) => {
                each_row(rows, active, |r| {
                    let g = groups[r] as usize;
                    sum[g] += v[r] * weights[r] as f64;
                    n[g] += weights[r];
                })
            }
            (AccColumn::Bools { t, f }, PreparedArg::Bools(v)) => each_row(rows, active, |r| {
                let g = groups[r] as usize;
                if v.value(r) {
                    t[g] += weights[r];
                } else {
                    f[g] += weights[r];
                }
            }),
            (AccColumn::IntExtreme { value, n }, PreparedArg::Ints(v)) => {
                fold_extreme(value, n, v, groups, weights, active, self.is_max())
            }
            (AccColumn::IntExtreme { value, n }, PreparedArg::Wide(v)) => {
                fold_extreme(value, n, v, groups, weights, active, self.is_max())
            }
            (AccColumn::FloatExtreme { value, n }, PreparedArg::Floats(v)) => {
                let max = self.is_max();
                each_row(rows, active, |r| {
                    let g = groups[r] as usize;
                    let x = v[r];
                    let better = match x.total_cmp(&value[g]) {
                        std::cmp::Ordering::Greater => max,
                        std::cmp::Ordering::Less => !max,
                        std::cmp::Ordering::Equal => false,
                    };
                    if n[g] == 0 || better {
                        value[g] = x;
                    }
                    n[g] += weights[r];
                })
            }
            (AccColumn::Values(sets), PreparedArg::Rows(values)) => each_row(rows, active, |r| {
                let set = &mut sets[groups[r] as usize];
                let key = values.row(r).data();
                match set.get_mut(key) {
                    Some(c) => {
                        *c += weights[r];
                        if *c == 0 {
                            set.remove(key);
                        }
                    }
                    None => {
                        set.insert(key.into(), weights[r]);
                    }
                }
            }),
            // The argument's form is chosen from the same layout as the
            // state, so other pairs cannot occur.
            _ => {}
        }
    }

    /// Whether a running extreme is a maximum.
    fn is_max(&self) -> bool {
        matches!(
            self.layout,
            Layout::IntExtreme { max: true }
                | Layout::DecimalExtreme { max: true }
                | Layout::FloatExtreme { max: true }
        )
    }

    /// The aggregate's output value for each of `groups`, as one array of
    /// the output type.
    pub(super) fn output(&self, column: &AccColumn, groups: &[u32]) -> Result<ArrayRef> {
        let at = |v: &[i64], g: &u32| v[*g as usize];
        let array: ArrayRef = match column {
            AccColumn::Count(c) => Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|g| at(c, g)),
            )),
            AccColumn::Sum { sum, n } => self.exact_output(sum, n, groups)?,
            AccColumn::FloatSum { sum, n } => {
                let avg = self.kind == AggregateKind::Avg;
                Arc::new(Float64Array::from_iter(groups.iter().map(|&g| {
                    let (s, n) = (sum[g as usize], n[g as usize]);
                    (n != 0).then(|| if avg { s / n as f64 } else { s })
                })))
            }
            AccColumn::Bools { t, f } => {
                let and = self.kind == AggregateKind::BoolAnd;
                Arc::new(BooleanArray::from_iter(groups.iter().map(|&g| {
                    let (t, f) = (t[g as usize], f[g as usize]);
                    (t != 0 || f != 0).then_some(if and { f == 0 } else { t > 0 })
                })))
            }
            AccColumn::IntExtreme { value, n } => {
                let present = |g: u32| n[g as usize] > 0;
                match self.arg_type {
                    DataType::Decimal128(p, s) => Arc::new(
                        Decimal128Array::from_iter(
                            groups
                                .iter()
                                .map(|&g| present(g).then(|| value[g as usize])),
                        )
                        .with_precision_and_scale(p, s)?,
                    ),
                    _ => Arc::new(Int64Array::from_iter(
                        groups
                            .iter()
                            .map(|&g| present(g).then(|| value[g as usize] as i64)),
                    )),
                }
            }
            AccColumn::FloatExtreme { value, n } => Arc::new(Float64Array::from_iter(
                groups
                    .iter()
                    .map(|&g| (n[g as usize] > 0).then(|| value[g as usize])),
            )),
            AccColumn::Values(sets) => self.values_output(sets, groups)?,
        };
        if array.data_type() == &self.out_type {
            Ok(array)
        } else {
            Ok(cast(&array, &self.out_type)?)
        }
    }

    fn exact_output(&self, sum: &[i128], n: &[i64], groups: &[u32]) -> Result<ArrayRef> {
        let scale = match self.layout {
            Layout::DecimalSum { scale } => Some(scale),
            _ => None,
        };
        let avg = self.kind == AggregateKind::Avg;
        let parts = groups
            .iter()
            .map(|&g| (sum[g as usize], n[g as usize]))
            .map(|(s, n)| (n != 0).then_some((s, n)));
        Ok(match (avg, scale, &self.out_type) {
            (false, None, _) => Arc::new(
                parts
                    .map(|p| {
                        p.map(|(s, _)| i64::try_from(s).map_err(|_| overflow("sum")))
                            .transpose()
                    })
                    .collect::<Result<Int64Array>>()?,
            ),
            (false, Some(scale), out) => {
                let precision = match out {
                    DataType::Decimal128(p, _) => *p,
                    _ => 38,
                };
                Arc::new(
                    Decimal128Array::from_iter(parts.map(|p| p.map(|(s, _)| s)))
                        .with_precision_and_scale(precision, scale)?,
                )
            }
            (true, None, _) => Arc::new(Float64Array::from_iter(
                parts.map(|p| p.map(|(s, n)| s as f64 / n as f64)),
            )),
            (true, Some(scale), DataType::Decimal128(p, s)) => {
                let factor = 10i128.pow((*s as i32 - scale as i32).max(0) as u32);
                Arc::new(
                    parts
                        .map(|p| {
                            p.map(|(sum, n)| {
                                sum.checked_mul(factor)
                                    .map(|scaled| scaled / n as i128)
                                    .ok_or_else(|| overflow("avg"))
                            })
                            .transpose()
                        })
                        .collect::<Result<Decimal128Array>>()?
                        .with_precision_and_scale(*p, *s)?,
                )
            }
            (true, Some(scale), _) => {
                Arc::new(Float64Array::from_iter(parts.map(|p| {
                    p.map(|(s, n)| s as f64 / n as f64 / 10f64.powi(scale as i32))
                })))
            }
        })
    }

    fn values_output(&self, sets: &[BTreeMap<Box<[u8]>, i64>], groups: &[u32]) -> Result<ArrayRef> {
        let converter = self
            .converter
            .as_ref()
            .ok_or_else(|| MillraceError::execution("missing value converter"))?;
        let parser = converter.parser();
        let sets = groups.iter().map(|&g| &sets[g as usize]);
        match self.kind {
            AggregateKind::CountDistinct => Ok(Arc::new(Int64Array::from_iter_values(
                sets.map(|s| s.len() as i64),
            ))),
            AggregateKind::Min | AggregateKind::Max => {
                let min = self.kind == AggregateKind::Min;
                let rows = sets.map(|s| {
                    let extreme = if min {
                        s.keys().next()
                    } else {
                        s.keys().next_back()
                    };
                    parser.parse(extreme.map_or(&self.null_row[..], |k| &k[..]))
                });
                let mut arrays = converter.convert_rows(rows)?;
                arrays
                    .pop()
                    .ok_or_else(|| MillraceError::execution("value converter returned nothing"))
            }
            _ => {
                let mut out: Vec<Option<String>> = Vec::with_capacity(groups.len());
                for set in sets {
                    if set.is_empty() {
                        out.push(None);
                        continue;
                    }
                    let arrays =
                        converter.convert_rows(set.keys().map(|k| parser.parse(k.as_ref())))?;
                    let strings = cast(&arrays[0], &DataType::Utf8)?;
                    let strings = strings
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| MillraceError::execution("string_agg over non-text"))?;
                    let mut text = String::new();
                    let mut first = true;
                    for (i, count) in set.values().enumerate() {
                        for _ in 0..*count {
                            if !first {
                                text.push_str(&self.delimiter);
                            }
                            first = false;
                            text.push_str(strings.value(i));
                        }
                    }
                    out.push(Some(text));
                }
                Ok(Arc::new(StringArray::from(out)))
            }
        }
    }
}

impl AccColumn {
    /// Makes group `g` empty: a new group one past the last, or a removed
    /// group whose id is about to be reused.
    pub(super) fn empty_group(&mut self, g: u32) {
        fn put<T>(v: &mut Vec<T>, g: usize, x: T) {
            if g == v.len() {
                v.push(x);
            } else {
                v[g] = x;
            }
        }
        let g = g as usize;
        match self {
            AccColumn::Count(c) => put(c, g, 0),
            AccColumn::Sum { sum, n } | AccColumn::IntExtreme { value: sum, n } => {
                put(sum, g, 0);
                put(n, g, 0);
            }
            AccColumn::FloatSum { sum, n } | AccColumn::FloatExtreme { value: sum, n } => {
                put(sum, g, 0.0);
                put(n, g, 0);
            }
            AccColumn::Bools { t, f } => {
                put(t, g, 0);
                put(f, g, 0);
            }
            AccColumn::Values(sets) => put(sets, g, BTreeMap::new()),
        }
    }
}

impl AccColumn {
    /// Appends group `g`'s state to `out` (for a checkpoint).
    pub(super) fn encode(&self, g: u32, out: &mut Vec<u8>) {
        let g = g as usize;
        match self {
            AccColumn::Count(c) => out.extend_from_slice(&c[g].to_le_bytes()),
            AccColumn::Sum { sum, n } | AccColumn::IntExtreme { value: sum, n } => {
                out.extend_from_slice(&sum[g].to_le_bytes());
                out.extend_from_slice(&n[g].to_le_bytes());
            }
            AccColumn::FloatSum { sum, n } | AccColumn::FloatExtreme { value: sum, n } => {
                out.extend_from_slice(&sum[g].to_le_bytes());
                out.extend_from_slice(&n[g].to_le_bytes());
            }
            AccColumn::Bools { t, f } => {
                out.extend_from_slice(&t[g].to_le_bytes());
                out.extend_from_slice(&f[g].to_le_bytes());
            }
            AccColumn::Values(sets) => {
                out.extend_from_slice(&(sets[g].len() as u32).to_le_bytes());
                for (value, count) in &sets[g] {
                    put_bytes(out, value);
                    out.extend_from_slice(&count.to_le_bytes());
                }
            }
        }
    }

    /// Reads group `g`'s state, written by [`AccColumn::encode`], from
    /// `r` into the (empty) group.
    pub(super) fn decode(&mut self, g: u32, r: &mut Reader<'_>) -> Result<()> {
        let g = g as usize;
        match self {
            AccColumn::Count(c) => c[g] = r.i64()?,
            AccColumn::Sum { sum, n } | AccColumn::IntExtreme { value: sum, n } => {
                sum[g] = r.i128()?;
                n[g] = r.i64()?;
            }
            AccColumn::FloatSum { sum, n } | AccColumn::FloatExtreme { value: sum, n } => {
                sum[g] = r.f64()?;
                n[g] = r.i64()?;
            }
            AccColumn::Bools { t, f } => {
                t[g] = r.i64()?;
                f[g] = r.i64()?;
            }
            AccColumn::Values(sets) => {
                let len = r.u32()?;
                let set = &mut sets[g];
                for _ in 0..len {
                    let value: Box<[u8]> = r.bytes()?.into();
                    set.insert(value, r.i64()?);
                }
            }
        }
        Ok(())
    }
}

/// Calls `f` for each of `rows` rows that `active` (when given) keeps. The
/// closure is a type parameter, so each state layout gets its own loop with
/// no call through a pointer per row.
fn each_row(rows: usize, active: Option<&BooleanBuffer>, f: impl FnMut(usize)) {
    match active {
        None => (0..rows).for_each(f),
        Some(mask) => mask.set_indices().for_each(f),
    }
}

/// Folds integer values (`i64` or unscaled decimals) into sums and counts.
fn fold_sum<T: Copy + Into<i128>>(
    sum: &mut [i128],
    n: &mut [i64],
    values: &[T],
    groups: &[u32],
    weights: &[i64],
    active: Option<&BooleanBuffer>,
) {
    each_row(groups.len(), active, |r| {
        let g = groups[r] as usize;
        let x: i128 = values[r].into();
        sum[g] += x * weights[r] as i128;
        n[g] += weights[r];
    })
}

/// Folds integer values (`i64` or unscaled decimals) into running extremes.
fn fold_extreme<T: Copy + Into<i128>>(
    value: &mut [i128],
    n: &mut [i64],
    values: &[T],
    groups: &[u32],
    weights: &[i64],
    active: Option<&BooleanBuffer>,
    max: bool,
) {
    each_row(groups.len(), active, |r| {
        let g = groups[r] as usize;
        let x: i128 = values[r].into();
        if n[g] == 0 || (max && x > value[g]) || (!max && x < value[g]) {
            value[g] = x;
        }
        n[g] += weights[r];
    })
}

fn overflow(what: &str) -> MillraceError {
    MillraceError::Data {
        sqlstate: "22003",
        message: format!("{what} out of range"),
    }
}

/// Rows of a batch an aggregate reads: its argument is not NULL and its
/// `FILTER` (when present) is true. `None` means every row.
pub(super) fn active_rows(
    arg: Option<&ArrayRef>,
    filter: Option<&BooleanArray>,
) -> Option<BooleanBuffer> {
    let valid = arg.and_then(|a| a.logical_nulls()).map(|n| n.into_inner());
    let passes = filter.map(|f| match f.nulls() {
        Some(nulls) => f.values() & nulls.inner(),
        None => f.values().clone(),
    });
    match (valid, passes) {
        (Some(a), Some(b)) => Some(&a & &b),
        (a, b) => a.or(b),
    }
}
