//! Event-time watermarks: how a stream says that some of its state can no
//! longer change.
//!
//! A watermark on column `c` of a stream is a value `W` with a promise: no
//! change (insert or delete) with `c < W` will come any more. Watermarks
//! start at relations declared `WATERMARK FOR ts AS expr`: the scan of such
//! a relation drops the rows later than its watermark (counting them), then
//! advances the watermark to the largest `expr` over the rows it admitted.
//! When a bounded stream ends, its watermark becomes [`Mark::End`]: nothing
//! more will come at all.
//!
//! Each dataflow node derives its output watermarks from its inputs' by
//! [`WatermarkRule`]s that lowering decides from the plan: a column passed
//! through keeps its watermark; a monotone function of it (`date_bin`,
//! `+ INTERVAL`) maps it; a union's column takes the least of its inputs'.
//! Operators use the watermarks to drop state no future change can touch
//! (closed windows of an aggregate, join rows that can no longer match), and
//! `EMIT ON WINDOW CLOSE` to release each window once, when it closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, Int64Array, RecordBatch,
};
use datafusion::arrow::compute::kernels::cmp::{lt, lt_eq};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;

use super::change::ChangeBatch;
use crate::error::{MillraceError, Result};

/// One column's watermark.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// No change with a smaller value will come.
    Value(ScalarValue),
    /// The stream has ended: no change will come at all.
    End,
}

impl Mark {
    /// The later of two marks.
    fn max(self, other: Mark) -> Mark {
        match (self, other) {
            (Mark::End, _) | (_, Mark::End) => Mark::End,
            (Mark::Value(a), Mark::Value(b)) => {
                if b.partial_cmp(&a) == Some(std::cmp::Ordering::Greater) {
                    Mark::Value(b)
                } else {
                    Mark::Value(a)
                }
            }
        }
    }

    /// The earlier of two marks.
    fn min(self, other: Mark) -> Mark {
        match (self, other) {
            (Mark::End, m) | (m, Mark::End) => m,
            (Mark::Value(a), Mark::Value(b)) => {
                if b.partial_cmp(&a) == Some(std::cmp::Ordering::Less) {
                    Mark::Value(b)
                } else {
                    Mark::Value(a)
                }
            }
        }
    }

    /// Which values of `array` are behind this mark: below it (`inclusive`:
    /// at or below it). NULLs are never behind.
    pub fn behind(&self, array: &ArrayRef, inclusive: bool) -> Result<BooleanArray> {
        let value = match self {
            Mark::End => return Ok(BooleanArray::from(vec![true; array.len()])),
            Mark::Value(v) => v.cast_to(array.data_type())?,
        };
        let scalar = value.to_scalar()?;
        let mask = if inclusive {
            lt_eq(array, &scalar)?
        } else {
            lt(array, &scalar)?
        };
        Ok(match mask.nulls() {
            Some(_) => datafusion::arrow::compute::prep_null_mask_filter(&mask),
            None => mask,
        })
    }

    /// The mark as an `i64` of a column of `data_type` (see
    /// [`values_as_i64`]); `None` for [`Mark::End`], behind which everything
    /// is.
    /// The mark as bytes for a checkpoint: a tag (0: a value, 1: the
    /// end), and for a value its integer value and its type's name.
    pub fn encode(&self) -> Result<Vec<u8>> {
        match self {
            Mark::End => Ok(vec![1]),
            Mark::Value(v) => {
                let data_type = v.data_type();
                let Some(n) = self.as_i64(&data_type)? else {
                    return Ok(vec![1]);
                };
                let mut out = vec![0];
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(data_type.to_string().as_bytes());
                Ok(out)
            }
        }
    }

    /// The mark [`Mark::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Mark> {
        let bad = || MillraceError::storage("a checkpointed watermark is damaged");
        match bytes.split_first() {
            Some((1, _)) => Ok(Mark::End),
            Some((0, rest)) if rest.len() >= 8 => {
                let (n, name) = rest.split_at(8);
                let n = i64::from_le_bytes(n.try_into().map_err(|_| bad())?);
                let name = std::str::from_utf8(name).map_err(|_| bad())?;
                let data_type: DataType = name.parse().map_err(|_| bad())?;
                Ok(Mark::Value(
                    ScalarValue::Int64(Some(n)).cast_to(&data_type)?,
                ))
            }
            _ => Err(bad()),
        }
    }

    pub fn as_i64(&self, data_type: &DataType) -> Result<Option<i64>> {
        match self {
            Mark::End => Ok(None),
            Mark::Value(v) => match v.cast_to(data_type)?.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(b)) => Ok(Some(b)),
                other => Err(MillraceError::execution(format!(
                    "watermark {other} has no integer value"
                ))),
            },
        }
    }
}

/// A watermark column's values as `i64`s, whose order is the values'
/// order (timestamps in their unit, dates in days), for state ordered by
/// them.
pub fn values_as_i64(array: &ArrayRef) -> Result<Int64Array> {
    let values = datafusion::arrow::compute::cast(array, &DataType::Int64)?;
    values
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| MillraceError::execution("watermark column is not numeric"))
}

impl std::fmt::Display for Mark {
    /// A value as PostgreSQL prints it (`2024-01-01 00:00:05`); `end` once
    /// the stream has ended.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mark::Value(v) => {
                let text = v
                    .to_array()
                    .ok()
                    .and_then(|a| {
                        datafusion::arrow::util::display::array_value_to_string(&a, 0).ok()
                    })
                    .unwrap_or_else(|| v.to_string());
                write!(f, "{}", text.replacen('T', " ", 1))
            }
            Mark::End => write!(f, "end"),
        }
    }
}

/// The watermarks of a stream, by column. Most streams have none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watermarks {
    columns: Vec<(usize, Mark)>,
}

impl Watermarks {
    /// No watermarks.
    pub fn none() -> Self {
        Self::default()
    }

    /// The watermark of `column`, if it has one.
    pub fn get(&self, column: usize) -> Option<&Mark> {
        self.columns
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, m)| m)
    }

    /// True when no column has a watermark.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Column and mark pairs.
    pub fn iter(&self) -> impl Iterator<Item = &(usize, Mark)> {
        self.columns.iter()
    }

    /// Raises `column`'s watermark to `mark` (a watermark never goes back).
    pub fn advance(&mut self, column: usize, mark: Mark) {
        match self.columns.iter_mut().find(|(c, _)| *c == column) {
            Some((_, m)) => *m = std::mem::replace(m, Mark::End).max(mark),
            None => {
                self.columns.push((column, mark));
                self.columns.sort_by_key(|(c, _)| *c);
            }
        }
    }
}

/// A monotone (non-decreasing) function of one input column, evaluated on
/// a watermark: `date_bin(INTERVAL '10' SECOND, ts)` maps the watermark of
/// `ts` to that of `window_start`.
#[derive(Debug, Clone)]
pub struct MarkMap {
    expr: Arc<dyn PhysicalExpr>,
    input: SchemaRef,
    column: usize,
}

impl MarkMap {
    /// `expr` over rows of `input`, reading only `column`, which must be
    /// non-decreasing in it.
    pub fn new(expr: Arc<dyn PhysicalExpr>, input: &SchemaRef, column: usize) -> Self {
        // A batch of this schema holds NULLs in every other column.
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Self {
            expr,
            input: Arc::new(Schema::new(fields)),
            column,
        }
    }

    fn apply(&self, mark: Mark) -> Result<Mark> {
        let Mark::Value(value) = mark else {
            return Ok(Mark::End);
        };
        let columns = self
            .input
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == self.column {
                    Ok(value.cast_to(f.data_type())?.to_array()?)
                } else {
                    Ok(new_null_array(f.data_type(), 1))
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(self.input.clone(), columns)?;
        let out = self.expr.evaluate(&batch)?.into_array(1)?;
        Ok(Mark::Value(ScalarValue::try_from_array(&out, 0)?))
    }
}

/// How one output column of a node gets its watermark: the least of the
/// watermarks of `sources` (input, column), mapped by `map` when given.
/// Every source must have a watermark for the output to have one.
#[derive(Debug, Clone)]
pub struct WatermarkRule {
    /// The output column.
    pub output: usize,
    /// `(input index, column)` pairs whose least watermark it takes.
    pub sources: Vec<(usize, usize)>,
    /// A monotone function applied to that watermark.
    pub map: Option<MarkMap>,
}

impl WatermarkRule {
    /// Column `column` of input `input` passed through as output `output`.
    pub fn identity(output: usize, input: usize, column: usize) -> Self {
        Self {
            output,
            sources: vec![(input, column)],
            map: None,
        }
    }

    /// The output column's watermark given the inputs' watermarks.
    pub fn evaluate(&self, inputs: &[&Watermarks]) -> Result<Option<Mark>> {
        match (least_mark(inputs, &self.sources), &self.map) {
            (Some(mark), Some(map)) => Ok(Some(map.apply(mark)?)),
            (least, _) => Ok(least),
        }
    }
}

/// The least watermark of the `(input, column)` pairs `sources`, when every
/// one has a watermark.
pub fn least_mark(inputs: &[&Watermarks], sources: &[(usize, usize)]) -> Option<Mark> {
    let mut least: Option<Mark> = None;
    for &(input, column) in sources {
        let mark = inputs.get(input).and_then(|w| w.get(column))?.clone();
        least = Some(match least {
            None => mark,
            Some(l) => l.min(mark),
        });
    }
    least
}

/// A relation's declared watermark: `WATERMARK FOR column AS expr`.
#[derive(Debug)]
pub struct WatermarkSpec {
    /// Index of the event-time column in the relation's schema.
    pub column: usize,
    /// Its name.
    pub column_name: String,
    /// The watermark expression over the relation's rows (same type as the
    /// column), e.g. `ts - INTERVAL '5' SECOND`.
    pub expr: Arc<dyn PhysicalExpr>,
    /// The expression as written.
    pub text: String,
    /// Whether the expression never decreases as the column grows (the
    /// column plus or minus a constant...): its largest value over a batch
    /// is then its value at the row with the latest time, and only that
    /// row is evaluated.
    pub monotone: bool,
}

/// What lowering needs to know about the watermarks of a relation a view
/// reads.
#[derive(Debug, Clone)]
pub enum RelationMarks {
    /// None.
    None,
    /// A source or table declared `WATERMARK FOR`: its scans apply it.
    Declared(Arc<WatermarkSpec>),
    /// A view: these columns of its output carry watermarks.
    Columns(Vec<usize>),
}

/// A declared watermark applied by one dataflow, with its live state.
#[derive(Debug, Clone)]
pub struct WatermarkEntry {
    /// The relation that declares it.
    pub relation: String,
    /// The declaration.
    pub spec: Arc<WatermarkSpec>,
    /// The current watermark and the late rows dropped.
    pub progress: Arc<WatermarkProgress>,
}

/// A watermark's live state, for `millrace_catalog.watermarks`.
#[derive(Debug, Default)]
pub struct WatermarkProgress {
    mark: Mutex<Option<Mark>>,
    late_rows: AtomicU64,
}

impl WatermarkProgress {
    /// The current watermark, if any row has set one.
    pub fn mark(&self) -> Option<Mark> {
        match self.mark.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Rows dropped for being later than the watermark.
    pub fn late_rows(&self) -> u64 {
        self.late_rows.load(Ordering::Relaxed)
    }

    fn set(&self, mark: &Mark) {
        match self.mark.lock() {
            Ok(mut g) => *g = Some(mark.clone()),
            Err(p) => *p.into_inner() = Some(mark.clone()),
        }
    }
}

/// Applies a declared watermark to a relation's changes: drops late ones and
/// advances the watermark over the rest.
#[derive(Debug)]
pub struct WatermarkTracker {
    spec: Arc<WatermarkSpec>,
    mark: Option<Mark>,
    progress: Arc<WatermarkProgress>,
}

/// What [`WatermarkTracker::admit`] set aside.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// Late insertions (rows with positive weight), dropped.
    pub inserts: u64,
    /// Late deletions (rows with negative weight), dropped.
    pub deletes: u64,
}

impl WatermarkTracker {
    /// A tracker of `spec` reporting to `progress`, with no watermark yet.
    pub fn new(spec: Arc<WatermarkSpec>, progress: Arc<WatermarkProgress>) -> Self {
        Self {
            spec,
            mark: None,
            progress,
        }
    }

    /// The declared watermark.
    pub fn spec(&self) -> &Arc<WatermarkSpec> {
        &self.spec
    }

    /// The current watermark.
    pub fn mark(&self) -> Option<&Mark> {
        self.mark.as_ref()
    }

    /// Rows dropped so far for being later than the watermark.
    pub fn late_rows(&self) -> u64 {
        self.progress.late_rows()
    }

    /// Splits off the changes later than the current watermark (their
    /// event time is below it), counting them; returns the rest.
    pub fn admit(&mut self, delta: &ChangeBatch) -> Result<(ChangeBatch, Late)> {
        let Some(mark) = &self.mark else {
            return Ok((delta.clone(), Late::default()));
        };
        let column = delta.data().column(self.spec.column);
        let late = mark.behind(column, false)?;
        if late.true_count() == 0 {
            return Ok((delta.clone(), Late::default()));
        }
        let mut counted = Late::default();
        for (is_late, w) in late.values().iter().zip(delta.weights().values()) {
            if is_late {
                if *w > 0 {
                    counted.inserts += *w as u64;
                } else {
                    counted.deletes += w.unsigned_abs();
                }
            }
        }
        self.progress
            .late_rows
            .fetch_add(counted.inserts + counted.deletes, Ordering::Relaxed);
        let keep = datafusion::arrow::compute::not(&late)?;
        Ok((delta.filter(&keep)?, counted))
    }

    /// Advances the watermark to the largest watermark expression over the
    /// inserted rows of `delta` (when that is later).
    pub fn observe(&mut self, delta: &ChangeBatch) -> Result<()> {
        if delta.is_empty() || matches!(self.mark, Some(Mark::End)) {
            return Ok(());
        }
        // Only inserted rows move the watermark (most batches insert only).
        let weights = delta.weights().values();
        if self.spec.monotone {
            let times = values_as_i64(delta.data().column(self.spec.column))?;
            let latest = (0..times.len())
                .filter(|&i| weights[i] > 0 && times.is_valid(i))
                .max_by_key(|&i| times.value(i));
            let Some(row) = latest else {
                return Ok(());
            };
            let value = self
                .spec
                .expr
                .evaluate(&delta.data().slice(row, 1))?
                .into_array(1)?;
            if let Some(largest) = largest(&value)? {
                self.advance_to(Mark::Value(largest));
            }
            return Ok(());
        }
        let values = self
            .spec
            .expr
            .evaluate(delta.data())?
            .into_array(delta.num_rows())?;
        let values = if weights.iter().all(|w| *w > 0) {
            values
        } else {
            let inserted = BooleanArray::from(weights.iter().map(|w| *w > 0).collect::<Vec<_>>());
            datafusion::arrow::compute::filter(&values, &inserted)?
        };
        let Some(largest) = largest(&values)? else {
            return Ok(());
        };
        self.advance_to(Mark::Value(largest));
        Ok(())
    }

    /// Moves the watermark to `mark` if that is later.
    fn advance_to(&mut self, mark: Mark) {
        let next = match self.mark.take() {
            Some(m) => m.max(mark),
            None => mark,
        };
        self.progress.set(&next);
        self.mark = Some(next);
    }

    /// Sets the watermark restored from a checkpoint.
    pub fn restore(&mut self, mark: Mark) {
        self.progress.set(&mark);
        self.mark = Some(mark);
    }

    /// The stream has ended: nothing more will come.
    pub fn end(&mut self) {
        self.progress.set(&Mark::End);
        self.mark = Some(Mark::End);
    }
}

/// The largest non-NULL value of `array`, of its type.
fn largest(array: &ArrayRef) -> Result<Option<ScalarValue>> {
    if !watermark_type_supported(array.data_type()) {
        return Err(MillraceError::not_supported(format!(
            "a watermark on a column of type {} (timestamps, dates and integers)",
            array.data_type()
        )));
    }
    match datafusion::arrow::compute::max(&values_as_i64(array)?) {
        None => Ok(None),
        Some(m) => Ok(Some(
            ScalarValue::Int64(Some(m)).cast_to(array.data_type())?,
        )),
    }
}

/// Whether a column of `data_type` may carry a declared watermark.
pub fn watermark_type_supported(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Int64 | DataType::Int32
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::pretty::from_pretty;
    use datafusion::physical_expr::expressions::Column;

    fn tracker(delay: i64) -> WatermarkTracker {
        tracker_with(delay, false)
    }

    /// A tracker of `c0 - delay`, evaluating only the latest row when
    /// `monotone`.
    fn tracker_with(delay: i64, monotone: bool) -> WatermarkTracker {
        let expr = datafusion::physical_expr::expressions::binary(
            Arc::new(Column::new("c0", 0)),
            datafusion::logical_expr::Operator::Minus,
            datafusion::physical_expr::expressions::lit(delay),
            &Arc::new(Schema::new(vec![Field::new("c0", DataType::Int64, true)])),
        )
        .unwrap();
        let spec = Arc::new(WatermarkSpec {
            column: 0,
            column_name: "c0".into(),
            expr,
            text: format!("c0 - {delay}"),
            monotone,
        });
        WatermarkTracker::new(spec, Arc::default())
    }

    #[test]
    fn rows_behind_the_watermark_are_dropped_and_counted() {
        let mut t = tracker(5);
        let first = from_pretty("I\n 10 +1\n 20 +1").unwrap();
        let (kept, late) = t.admit(&first).unwrap();
        assert_eq!((kept.num_rows(), late), (2, Late::default()));
        t.observe(&kept).unwrap();
        assert_eq!(t.mark(), Some(&Mark::Value(ScalarValue::Int64(Some(15)))));
        let second = from_pretty("I\n 14 +1\n 15 +1\n 3 -1\n . +1").unwrap();
        let (kept, late) = t.admit(&second).unwrap();
        assert_eq!(kept.num_rows(), 2, "15 and NULL stay");
        assert_eq!(
            late,
            Late {
                inserts: 1,
                deletes: 1
            }
        );
        t.observe(&kept).unwrap();
        assert_eq!(t.mark(), Some(&Mark::Value(ScalarValue::Int64(Some(15)))));
        assert_eq!(t.progress.late_rows(), 2);
    }

    /// Evaluating only the latest row of a monotone expression gives the
    /// same watermark as evaluating every row.
    #[test]
    fn a_monotone_watermark_reads_only_the_latest_row() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (mut every, mut latest) = (tracker_with(5, false), tracker_with(5, true));
        for _ in 0..200 {
            let rows: Vec<String> = (0..rng.random_range(1..6))
                .map(|_| {
                    let w = if rng.random_bool(0.8) { "+1" } else { "-1" };
                    match rng.random_range(0..10) {
                        0 => format!(" . {w}"),
                        _ => format!(" {} {w}", rng.random_range(0..1000)),
                    }
                })
                .collect();
            let delta = from_pretty(&format!("I\n{}", rows.join("\n"))).unwrap();
            every.observe(&delta).unwrap();
            latest.observe(&delta).unwrap();
            assert_eq!(every.mark(), latest.mark(), "after {rows:?}");
        }
    }

    #[test]
    fn largest_keeps_the_column_type() {
        use datafusion::arrow::array::{Date32Array, TimestampMillisecondArray};
        let ts: ArrayRef = Arc::new(
            TimestampMillisecondArray::from(vec![Some(5), None, Some(9)]).with_timezone("+00:00"),
        );
        assert_eq!(
            largest(&ts).unwrap(),
            Some(ScalarValue::TimestampMillisecond(
                Some(9),
                Some("+00:00".into())
            ))
        );
        let days: ArrayRef = Arc::new(Date32Array::from(vec![3, 1]));
        assert_eq!(largest(&days).unwrap(), Some(ScalarValue::Date32(Some(3))));
        let mark = Mark::Value(ScalarValue::Date32(Some(3)));
        assert_eq!(mark.as_i64(&DataType::Date32).unwrap(), Some(3));
        assert_eq!(Mark::End.as_i64(&DataType::Date32).unwrap(), None);
        let text: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec!["a"]));
        assert!(largest(&text).is_err());
    }

    #[test]
    fn a_rule_takes_the_least_mark_and_end_only_when_all_ended() {
        let rule = WatermarkRule {
            output: 0,
            sources: vec![(0, 0), (1, 0)],
            map: None,
        };
        let mut a = Watermarks::none();
        let mut b = Watermarks::none();
        assert_eq!(rule.evaluate(&[&a, &b]).unwrap(), None);
        a.advance(0, Mark::Value(ScalarValue::Int64(Some(7))));
        assert_eq!(rule.evaluate(&[&a, &b]).unwrap(), None);
        b.advance(0, Mark::End);
        assert_eq!(
            rule.evaluate(&[&a, &b]).unwrap(),
            Some(Mark::Value(ScalarValue::Int64(Some(7))))
        );
        a.advance(0, Mark::Value(ScalarValue::Int64(Some(3))));
        assert_eq!(a.get(0), Some(&Mark::Value(ScalarValue::Int64(Some(7)))));
        a.advance(0, Mark::End);
        assert_eq!(rule.evaluate(&[&a, &b]).unwrap(), Some(Mark::End));
    }
}
