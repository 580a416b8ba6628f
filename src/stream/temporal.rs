//! Temporal filters: conditions on the clock (`WHERE ts > now() -
//! INTERVAL '1' HOUR`) that admit rows when time reaches them and expire
//! them when it passes.
//!
//! In a view, `now()` cannot be a constant: the optimizer would fold it into
//! the moment the view was created. [`rewrite_clock`], a pass over the plan
//! before optimization, turns each supported condition into
//! `expr op now()` where `now()` is [`ViewClock`], a volatile function the
//! optimizer leaves in place. Lowering takes those conditions out of the
//! filter ([`clock_comparison`]) into a [`TemporalFilterOperator`], which
//! reads the time from its graph's [`Clock`]; the engine sets that clock at
//! every epoch and runs an epoch whenever a scheduled change falls due.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DFResult, ScalarValue};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Filter, LogicalPlan, Operator as BinaryOp, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;

use super::change::ChangeBatch;
use super::operator::{codec, Operator, OperatorStats, StateChanges, StateEntry};
use super::watermark::values_as_i64;
use crate::error::{MillraceError, Result};

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Nanoseconds since the Unix epoch, now.
pub fn system_now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time a dataflow's temporal filters see, in nanoseconds since the
/// Unix epoch: one value per epoch, shared by every operator of a graph.
#[derive(Debug, Clone)]
pub struct Clock(Arc<AtomicI64>);

impl Default for Clock {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(system_now_nanos())))
    }
}

impl Clock {
    /// The time of the current epoch.
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the time of the next epoch.
    pub fn set(&self, nanos: i64) {
        self.0.store(nanos, Ordering::Relaxed);
    }
}

/// `now()` inside a materialized view: volatile, so that the optimizer does
/// not fold it into a constant. Only the temporal filter reads its meaning;
/// evaluated directly, it is the current time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ViewClock {
    signature: Signature,
}

impl ViewClock {
    /// The function as an expression: `now()`.
    pub fn call() -> Expr {
        let udf = ScalarUDF::new_from_impl(ViewClock {
            signature: Signature::nullary(Volatility::Volatile),
        });
        Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
            Arc::new(udf),
            vec![],
        ))
    }
}

fn clock_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

impl ScalarUDFImpl for ViewClock {
    fn name(&self) -> &str {
        "now"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(clock_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
            Some(system_now_nanos()),
            Some("+00:00".into()),
        )))
    }
}

/// Whether `e` is a call of [`ViewClock`].
fn is_view_clock(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.inner().is::<ViewClock>())
}

/// Whether [`ViewClock`] occurs anywhere in `e`.
pub fn contains_view_clock(e: &Expr) -> bool {
    e.exists(|x| Ok(is_view_clock(x))).unwrap_or(false)
}

/// The clock functions a temporal filter accepts: those that read an
/// instant. (`current_date` and `current_time` are refused.)
pub const INSTANT_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "localtimestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "clock_timestamp",
];

fn is_instant_call(e: &Expr) -> bool {
    match e {
        Expr::ScalarFunction(f) if f.args.is_empty() && !is_view_clock(e) => {
            INSTANT_FUNCTIONS.contains(&f.func.name().to_ascii_lowercase().as_str())
        }
        _ => false,
    }
}

fn contains_instant_call(e: &Expr) -> bool {
    e.exists(|x| Ok(is_instant_call(x))).unwrap_or(false)
}

/// How conditions on the clock are written, for error messages.
const TEMPORAL_FORMS: &str = "compare now() with an expression of the row's columns in a WHERE condition, with now() alone on its side or plus or minus a constant interval: ts > now() - INTERVAL '1' HOUR, ts <= now(), or now() BETWEEN ts AND ts + INTERVAL '10' MINUTE";

/// Pass (on the plan before optimization): rewrites each condition of a
/// `WHERE` (or `HAVING`) that compares the clock with the row into
/// `row_expr op now()`, with [`ViewClock`] as `now()`: constant offsets of
/// the clock move to the row's side (`ts > now() - I` becomes
/// `ts + I > now()`), and `BETWEEN` splits in two. Clock functions anywhere
/// else are left for [`super::lower::reject_clock`] to refuse; a condition
/// on the clock of another shape is refused here.
pub fn rewrite_clock(plan: LogicalPlan) -> Result<LogicalPlan> {
    let rewritten = plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::Filter(f) if contains_instant_call(&f.predicate) => {
            let mut conditions = Vec::new();
            for c in split_conjunction_owned(f.predicate) {
                rewrite_condition(c, &mut conditions)
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            }
            let predicate = conjunction(conditions)
                .unwrap_or(Expr::Literal(ScalarValue::Boolean(Some(true)), None));
            Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                predicate, f.input,
            )?)))
        }
        other => Ok(Transformed::no(other)),
    });
    match rewritten {
        Ok(t) => Ok(t.data),
        Err(datafusion::error::DataFusionError::External(e)) => {
            match e.downcast::<MillraceError>() {
                Ok(e) => Err(*e),
                Err(e) => Err(MillraceError::plan(e.to_string())),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Rewrites one condition of a filter (see [`rewrite_clock`]) into `out`.
fn rewrite_condition(condition: Expr, out: &mut Vec<Expr>) -> Result<()> {
    if !contains_instant_call(&condition) {
        out.push(condition);
        return Ok(());
    }
    let refuse = |what: &Expr| {
        MillraceError::not_supported(format!(
            "the condition {what} in a materialized view: to filter on the clock, {TEMPORAL_FORMS}"
        ))
    };
    match condition {
        Expr::Between(b) if !b.negated => {
            let low = Expr::BinaryExpr(BinaryExpr::new(b.expr.clone(), BinaryOp::GtEq, b.low));
            let high = Expr::BinaryExpr(BinaryExpr::new(b.expr, BinaryOp::LtEq, b.high));
            rewrite_condition(low, out)?;
            rewrite_condition(high, out)
        }
        Expr::BinaryExpr(b)
            if matches!(
                b.op,
                BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq
            ) =>
        {
            let whole = Expr::BinaryExpr(b.clone());
            let left_clock = contains_instant_call(&b.left);
            let right_clock = contains_instant_call(&b.right);
            // As `row op clock_side`.
            let (row, op, clock_side) = match (left_clock, right_clock) {
                (false, true) => (*b.left, b.op, *b.right),
                (true, false) => match b.op.swap() {
                    Some(op) => (*b.right, op, *b.left),
                    None => return Err(refuse(&whole)),
                },
                _ => return Err(refuse(&whole)),
            };
            let mut offsets = Vec::new();
            if !clock_offsets(&clock_side, &mut offsets) {
                return Err(refuse(&whole));
            }
            // row op clock + c  <=>  row - c op clock.
            let row = offsets.into_iter().fold(row, |row, (plus, c)| {
                let op = if plus {
                    BinaryOp::Minus
                } else {
                    BinaryOp::Plus
                };
                Expr::BinaryExpr(BinaryExpr::new(Box::new(row), op, Box::new(c)))
            });
            out.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(row),
                op,
                Box::new(ViewClock::call()),
            )));
            Ok(())
        }
        other => Err(refuse(&other)),
    }
}

/// Whether `e` is the clock plus or minus constants; collects the constants
/// as `(added, constant)`.
fn clock_offsets(e: &Expr, offsets: &mut Vec<(bool, Expr)>) -> bool {
    let constant = |e: &Expr| {
        !contains_instant_call(e)
            && e.column_refs().is_empty()
            && !e.is_volatile()
            && !e
                .exists(|x| {
                    Ok(matches!(
                        x,
                        Expr::ScalarSubquery(_)
                            | Expr::Exists(_)
                            | Expr::InSubquery(_)
                            | Expr::OuterReferenceColumn(..)
                    ))
                })
                .unwrap_or(true)
    };
    match e {
        _ if is_instant_call(e) => true,
        Expr::Alias(a) => clock_offsets(&a.expr, offsets),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(_, _)) => {
            clock_offsets(&c.expr, offsets)
        }
        Expr::BinaryExpr(b) => match b.op {
            BinaryOp::Plus if constant(&b.right) => {
                offsets.push((true, (*b.right).clone()));
                clock_offsets(&b.left, offsets)
            }
            BinaryOp::Plus if constant(&b.left) => {
                offsets.push((true, (*b.left).clone()));
                clock_offsets(&b.right, offsets)
            }
            BinaryOp::Minus if constant(&b.right) => {
                offsets.push((false, (*b.right).clone()));
                clock_offsets(&b.left, offsets)
            }
            _ => false,
        },
        _ => false,
    }
}

/// How long one step of `t` is, in nanoseconds: the unit of a time column,
/// and the truncation of a clock cast to `t`.
fn step_of(t: &DataType) -> Option<i64> {
    match t {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1_000),
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => Some(1_000_000),
        DataType::Timestamp(TimeUnit::Second, _) => Some(1_000_000_000),
        DataType::Date32 => Some(NANOS_PER_DAY),
        _ => None,
    }
}

/// The step the clock is truncated to on this side of a comparison, if the
/// side is the clock under casts.
fn clock_step(e: &Expr) -> Option<i64> {
    match e {
        _ if is_view_clock(e) => Some(1),
        Expr::Cast(c) => Some(clock_step(&c.expr)?.max(step_of(c.field.data_type())?)),
        Expr::TryCast(c) => Some(clock_step(&c.expr)?.max(step_of(c.field.data_type())?)),
        _ => None,
    }
}

/// A condition on the clock after optimization: `trunc(now) op row`, where
/// the clock is truncated to `step` nanoseconds by the casts around it.
pub struct ClockComparison<'a> {
    /// The row's side.
    pub row: &'a Expr,
    /// The comparison, with the clock on the left.
    pub op: BinaryOp,
    /// The clock's truncation, in nanoseconds.
    pub step: i64,
}

/// Reads a condition [`rewrite_clock`] produced, as the optimizer left it;
/// `None` when it has another shape (refused by the caller).
pub fn clock_comparison(e: &Expr) -> Option<ClockComparison<'_>> {
    let Expr::BinaryExpr(b) = e else {
        return None;
    };
    let (step, row, op) = match (clock_step(&b.left), clock_step(&b.right)) {
        (Some(step), None) => (step, b.right.as_ref(), b.op),
        (None, Some(step)) => (step, b.left.as_ref(), b.op.swap()?),
        _ => return None,
    };
    if contains_view_clock(row)
        || !matches!(
            op,
            BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq
        )
    {
        return None;
    }
    Some(ClockComparison { row, op, step })
}

/// `e` as a short text for `EXPLAIN`: casts left out, intervals as
/// PostgreSQL writes them.
pub fn describe_expr(e: &Expr) -> String {
    match e {
        Expr::Cast(c) => describe_expr(&c.expr),
        Expr::TryCast(c) => describe_expr(&c.expr),
        Expr::Alias(a) => describe_expr(&a.expr),
        Expr::Column(c) => c.name.clone(),
        Expr::BinaryExpr(b) => format!(
            "{} {} {}",
            describe_expr(&b.left),
            b.op,
            describe_expr(&b.right)
        ),
        Expr::Literal(v, _) if matches!(v.data_type(), DataType::Interval(_)) => v
            .to_array()
            .ok()
            .and_then(|a| {
                datafusion::arrow::util::display::array_value_to_string(a.as_ref(), 0).ok()
            })
            .map(|text| format!("INTERVAL '{text}'"))
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// Which end of a row's time of validity a condition bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundSide {
    /// Valid from the bound on (inclusive).
    From,
    /// Valid until the bound (exclusive).
    Until,
}

/// One condition of a temporal filter: a bound of each row's validity,
/// computed from an expression of the row.
pub struct TemporalBound {
    row: Arc<dyn PhysicalExpr>,
    /// The row's side as written, for `EXPLAIN`.
    text: String,
    side: BoundSide,
    /// Steps added to the row's value (0 or 1) before scaling by `step`.
    shift: i64,
    /// Nanoseconds per unit of the row's values.
    unit: i64,
    step: i64,
}

impl TemporalBound {
    /// The bound `trunc_step(now) op row` sets, where `op` has the clock on
    /// its left and `row` is evaluated over rows of `schema`.
    /// `trunc(now) < r` holds while `now < r`; `trunc(now) <= r` while
    /// `now < r + step`; `>=` from `r` on; `>` from `r + step` on (with `r`
    /// in whole steps).
    pub fn try_new(
        row: Arc<dyn PhysicalExpr>,
        schema: &Schema,
        text: String,
        op: BinaryOp,
        step: i64,
    ) -> Result<Self> {
        let unit = nanos_per_unit(&row.data_type(schema)?)?;
        let (side, shift) = match op {
            BinaryOp::Lt => (BoundSide::Until, 0),
            BinaryOp::LtEq => (BoundSide::Until, 1),
            BinaryOp::GtEq => (BoundSide::From, 0),
            BinaryOp::Gt => (BoundSide::From, 1),
            other => {
                return Err(MillraceError::not_supported(format!(
                    "the comparison {other} with now() in a materialized view"
                )))
            }
        };
        Ok(Self {
            row,
            text,
            side,
            shift,
            unit,
            step: step.max(1),
        })
    }

    /// The bound for each row of `batch` in nanoseconds; `None` where the
    /// row's value is NULL (the condition is never true).
    fn evaluate(&self, batch: &datafusion::arrow::array::RecordBatch) -> Result<Vec<Option<i64>>> {
        let values = self.row.evaluate(batch)?.into_array(batch.num_rows())?;
        Ok(values_as_i64(&values)?
            .iter()
            .map(|v| {
                v.map(|v| {
                    v.saturating_mul(self.unit)
                        .div_euclid(self.step)
                        .saturating_add(self.shift)
                        .saturating_mul(self.step)
                })
            })
            .collect())
    }
}

/// The nanoseconds in one unit of a time column of type `t` (the value
/// of `1` in it), for the types a temporal filter compares with the clock.
fn nanos_per_unit(t: &DataType) -> Result<i64> {
    step_of(t).ok_or_else(|| {
        MillraceError::plan(format!(
            "now() is compared with a value of type {t}: compare it with a timestamp or a date"
        ))
    })
}

/// A run of scheduled changes, in order of the time each falls due.
struct ScheduledRun {
    changes: ChangeBatch,
    /// When each row's change falls due, non-decreasing.
    due: Vec<i64>,
}

/// Keeps each row while the clock is inside the row's time of validity:
/// from the latest of its `From` bounds (inclusive) until the earliest of
/// its `Until` bounds (exclusive); a NULL bound means never.
///
/// Weights: the output at time `t` holds `in(r)` for every row `r` valid at
/// `t`. An input row of weight `w` that arrives at `now` is emitted with `w`
/// at once if valid then; `+w` is scheduled for its start if that is later,
/// and `-w` for its end if that is later than both. A deletion (negative
/// `w`) schedules the opposite changes, so that what an insertion scheduled
/// cancels out. Scheduled changes are emitted by the first epoch whose time
/// reaches them.
///
/// Checkpoints: each scheduled run is one entry, written once when it is
/// scheduled and deleted when it falls due (the rest of a partly due run
/// is a new run). A restored filter emits at its first epoch every change
/// that fell due while the server was down, so the view catches up with
/// the clock.
pub struct TemporalFilterOperator {
    bounds: Vec<TemporalBound>,
    schema: SchemaRef,
    clock: Clock,
    /// Scheduled runs by (first due time, sequence number).
    scheduled: BTreeMap<(i64, u64), ScheduledRun>,
    next_run: u64,
    scheduled_rows: usize,
    stats: OperatorStats,
    /// Once checkpoints are taken: what changed since the last one.
    changes: Option<RunChanges>,
}

/// The scheduled runs added and removed since the last checkpoint.
#[derive(Default)]
struct RunChanges {
    /// Runs scheduled since the last checkpoint and still scheduled.
    added: HashSet<(i64, u64)>,
    /// Runs a checkpoint wrote that are gone.
    removed: Vec<(i64, u64)>,
}

/// A scheduled run's key in the store: its first due time, ordered as
/// unsigned, then its sequence number, both big-endian.
fn run_key(key: (i64, u64)) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&((key.0 as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&key.1.to_be_bytes());
    k
}

fn parse_run_key(k: &[u8]) -> Result<(i64, u64)> {
    let bad = || MillraceError::storage("a checkpointed temporal filter key is damaged");
    if k.len() != 16 {
        return Err(bad());
    }
    let first = u64::from_be_bytes(k[..8].try_into().map_err(|_| bad())?) ^ (1 << 63);
    let seq = u64::from_be_bytes(k[8..].try_into().map_err(|_| bad())?);
    Ok((first as i64, seq))
}

impl TemporalFilterOperator {
    /// A temporal filter over rows of `schema`, reading time from `clock`.
    pub fn try_new(bounds: Vec<TemporalBound>, schema: SchemaRef, clock: Clock) -> Result<Self> {
        if bounds.is_empty() {
            return Err(MillraceError::plan("a temporal filter needs a condition"));
        }
        Ok(Self {
            bounds,
            schema,
            clock,
            scheduled: BTreeMap::new(),
            next_run: 0,
            scheduled_rows: 0,
            stats: OperatorStats::default(),
            changes: None,
        })
    }

    /// Rows whose scheduled changes have not fallen due yet.
    pub fn scheduled_rows(&self) -> usize {
        self.scheduled_rows
    }

    /// Takes the scheduled changes due at `now` or before.
    fn take_due(&mut self, now: i64, out: &mut Vec<ChangeBatch>) {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (key, run) = entry.remove_entry();
            if let Some(changes) = &mut self.changes {
                if !changes.added.remove(&key) {
                    changes.removed.push(key);
                }
            }
            let split = run.due.partition_point(|&t| t <= now);
            // What stays is counted again when it is scheduled again.
            self.scheduled_rows -= run.due.len();
            out.push(run.changes.slice(0, split));
            if split < run.due.len() {
                let rest = ScheduledRun {
                    changes: run.changes.slice(split, run.due.len() - split),
                    due: run.due[split..].to_vec(),
                };
                self.schedule(rest);
            }
        }
    }

    fn schedule(&mut self, run: ScheduledRun) {
        let Some(&first) = run.due.first() else {
            return;
        };
        self.scheduled_rows += run.due.len();
        let key = (first, self.next_run);
        self.scheduled.insert(key, run);
        self.next_run += 1;
        if let Some(changes) = &mut self.changes {
            changes.added.insert(key);
        }
    }

    /// Schedules the rows of `delta` at `times` (row index, due time),
    /// negated when `retract`.
    fn schedule_rows(
        &mut self,
        delta: &ChangeBatch,
        mut times: Vec<(i64, u32)>,
        retract: bool,
    ) -> Result<()> {
        if times.is_empty() {
            return Ok(());
        }
        times.sort_unstable();
        let indices: UInt32Array = times.iter().map(|&(_, i)| i).collect();
        let mut changes = delta.take(&indices)?;
        if retract {
            changes = changes.negate();
        }
        self.schedule(ScheduledRun {
            changes,
            due: times.into_iter().map(|(t, _)| t).collect(),
        });
        Ok(())
    }
}

impl Operator for TemporalFilterOperator {
    fn describe(&self) -> String {
        let side = |s: BoundSide| {
            self.bounds
                .iter()
                .filter(|b| b.side == s)
                .map(|b| b.text.clone())
                .collect::<Vec<_>>()
        };
        let mut parts = Vec::new();
        let from = side(BoundSide::From);
        if !from.is_empty() {
            parts.push(format!("from {}", from.join(", ")));
        }
        let until = side(BoundSide::Until);
        if !until.is_empty() {
            parts.push(format!("until {}", until.join(", ")));
        }
        format!("TemporalFilter valid {}", parts.join(" "))
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let now = self.clock.now();
        let mut out = Vec::new();
        self.take_due(now, &mut out);
        if let Some(Some(delta)) = inputs.first() {
            let n = delta.num_rows();
            self.stats.rows_in += n as u64;
            let mut from = vec![Some(i64::MIN); n];
            let mut until = vec![Some(i64::MAX); n];
            for bound in &self.bounds {
                let values = bound.evaluate(delta.data())?;
                let target = match bound.side {
                    BoundSide::From => &mut from,
                    BoundSide::Until => &mut until,
                };
                for (t, v) in target.iter_mut().zip(values) {
                    *t = match (*t, v, bound.side) {
                        (Some(a), Some(b), BoundSide::From) => Some(a.max(b)),
                        (Some(a), Some(b), BoundSide::Until) => Some(a.min(b)),
                        _ => None,
                    };
                }
            }
            let mut valid_now = Vec::with_capacity(n);
            let mut starts = Vec::new();
            let mut ends = Vec::new();
            for (i, (f, u)) in from.iter().zip(&until).enumerate() {
                let (Some(f), Some(u)) = (*f, *u) else {
                    valid_now.push(false);
                    continue;
                };
                valid_now.push(f <= now && now < u);
                if f >= u {
                    continue;
                }
                if f > now {
                    starts.push((f, i as u32));
                }
                if u != i64::MAX && u > now {
                    ends.push((u, i as u32));
                }
            }
            self.stats.state_touched += (starts.len() + ends.len()) as u64;
            let mask = datafusion::arrow::array::BooleanArray::from(valid_now);
            out.push(delta.filter(&mask)?);
            self.schedule_rows(delta, starts, false)?;
            self.schedule_rows(delta, ends, true)?;
        }
        out.retain(|b| !b.is_empty());
        if out.is_empty() {
            return Ok(None);
        }
        let batch = ChangeBatch::concat(self.schema.clone(), &out)?;
        self.stats.rows_out += batch.num_rows() as u64;
        Ok(Some(batch))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn next_due(&self) -> Option<i64> {
        self.scheduled.keys().next().map(|k| k.0)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn track_changes(&mut self) {
        // Everything scheduled before is in the store (restored) or not
        // yet written (a new filter has scheduled nothing).
        self.changes = Some(RunChanges::default());
    }

    /// Deletes the runs that fell due and writes the new ones: a count of
    /// due times, the times (little-endian), then the changes as Arrow IPC.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        let Some(changes) = &mut self.changes else {
            return Ok(());
        };
        for key in changes.removed.drain(..) {
            out.delete(run_key(key));
        }
        let mut added: Vec<(i64, u64)> = changes.added.drain().collect();
        added.sort_unstable();
        for key in added {
            let Some(run) = self.scheduled.get(&key) else {
                continue;
            };
            let mut value = Vec::with_capacity(4 + run.due.len() * 8);
            value.extend_from_slice(&(run.due.len() as u32).to_le_bytes());
            for t in &run.due {
                value.extend_from_slice(&t.to_le_bytes());
            }
            codec::put_bytes(&mut value, &run.changes.to_ipc()?);
            out.put(run_key(key), value);
        }
        Ok(())
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        for (key, value) in entries {
            let key = parse_run_key(&key)?;
            let mut r = codec::Reader::new(&value);
            let n = r.u32()? as usize;
            let mut due = Vec::with_capacity(n.min(value.len() / 8));
            for _ in 0..n {
                due.push(r.i64()?);
            }
            let changes = ChangeBatch::from_ipc(&self.schema, r.bytes()?)?;
            if changes.num_rows() != n || due.first() != Some(&key.0) || !r.is_done() {
                return Err(MillraceError::storage(
                    "a checkpointed temporal filter run does not match its due times",
                ));
            }
            self.scheduled_rows += n;
            self.next_run = self.next_run.max(key.1 + 1);
            self.scheduled.insert(key, ScheduledRun { changes, due });
        }
        Ok(())
    }
}

/// Whether any condition in `plan` (subqueries included) reads the view's
/// clock: such a view's rows expire, so it is not append-only.
pub fn plan_reads_clock(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            if contains_view_clock(&e) {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("t0", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new("t1", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]))
    }

    fn batch(rows: &[(i64, Option<i64>, Option<i64>, i64)]) -> ChangeBatch {
        let data = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampNanosecondArray::from_iter(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(TimestampNanosecondArray::from_iter(
                    rows.iter().map(|r| r.2),
                )),
            ],
        )
        .unwrap();
        ChangeBatch::try_new(data, Int64Array::from_iter_values(rows.iter().map(|r| r.3))).unwrap()
    }

    /// `now >= t0 AND now < t1`, as `now() >= t0 AND now() < t1`.
    fn operator(clock: &Clock) -> TemporalFilterOperator {
        let bounds = vec![
            TemporalBound::try_new(
                Arc::new(Column::new("t0", 1)),
                &schema(),
                "t0".into(),
                BinaryOp::GtEq,
                1,
            )
            .unwrap(),
            TemporalBound::try_new(
                Arc::new(Column::new("t1", 2)),
                &schema(),
                "t1".into(),
                BinaryOp::Lt,
                1,
            )
            .unwrap(),
        ];
        TemporalFilterOperator::try_new(bounds, schema(), clock.clone()).unwrap()
    }

    /// Sum of weights per id in `out`.
    fn add_to(acc: &mut std::collections::BTreeMap<i64, i64>, out: Option<ChangeBatch>) {
        let Some(out) = out else { return };
        let ids = out
            .data()
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for (id, w) in ids.values().iter().zip(out.weights().values()) {
            *acc.entry(*id).or_default() += w;
        }
        acc.retain(|_, w| *w != 0);
    }

    #[test]
    fn rows_enter_and_leave_as_the_clock_moves() {
        let clock = Clock::default();
        clock.set(100);
        let mut op = operator(&clock);
        let mut view = std::collections::BTreeMap::new();
        let input = batch(&[
            (1, Some(50), Some(150), 1),  // valid now, until 150
            (2, Some(120), Some(130), 1), // later, briefly
            (3, Some(0), Some(90), 1),    // already over
            (4, None, Some(200), 1),      // NULL: never
            (5, Some(10), None, 1),       // NULL: never
            (6, Some(130), Some(120), 1), // empty range
        ]);
        add_to(&mut view, op.step(&[Some(input)]).unwrap());
        assert_eq!(view.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(op.next_due(), Some(120));
        clock.set(125);
        add_to(&mut view, op.step(&[None]).unwrap());
        assert_eq!(view.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        clock.set(130);
        add_to(&mut view, op.step(&[None]).unwrap());
        assert_eq!(view.keys().copied().collect::<Vec<_>>(), vec![1]);
        // Deleting row 1 before it expires cancels its scheduled expiry.
        add_to(
            &mut view,
            op.step(&[Some(batch(&[(1, Some(50), Some(150), -1)]))])
                .unwrap(),
        );
        assert!(view.is_empty());
        clock.set(1_000);
        add_to(&mut view, op.step(&[None]).unwrap());
        assert!(view.is_empty());
        assert_eq!(op.next_due(), None);
        assert_eq!(op.scheduled_rows(), 0);
    }

    /// Row values of every time type become nanoseconds; other types are
    /// refused when the filter is planned, not when rows arrive.
    #[test]
    fn bounds_read_dates_and_timestamps_of_any_unit() {
        use datafusion::arrow::array::{Date32Array, TimestampMicrosecondArray};
        let schema = Schema::new(vec![
            Field::new("d", DataType::Date32, true),
            Field::new("us", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("n", DataType::Int64, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(Date32Array::from(vec![Some(2), None])),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(3), Some(-1)])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let bound = |i: usize, op| {
            TemporalBound::try_new(
                Arc::new(Column::new(schema.field(i).name(), i)),
                &schema,
                String::new(),
                op,
                1,
            )
        };
        let days = bound(0, BinaryOp::GtEq).unwrap().evaluate(&batch).unwrap();
        assert_eq!(days, vec![Some(2 * NANOS_PER_DAY), None]);
        // `now() <= us` holds until one nanosecond past it.
        let micros = bound(1, BinaryOp::LtEq).unwrap().evaluate(&batch).unwrap();
        assert_eq!(micros, vec![Some(3_001), Some(-999)]);
        let refused = bound(2, BinaryOp::Lt).err().unwrap().to_string();
        assert!(refused.contains("type Int64"), "{refused}");
    }

    /// Oracle: after every step the accumulated output equals the rows of
    /// the accumulated input valid at that time.
    #[test]
    fn output_matches_recomputation_at_every_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20 {
            let clock = Clock::default();
            let mut now = 1_000;
            clock.set(now);
            let mut op = operator(&clock);
            let mut input: std::collections::BTreeMap<i64, (i64, i64, i64)> = Default::default();
            let mut view = std::collections::BTreeMap::new();
            for _ in 0..60 {
                let mut rows = Vec::new();
                for _ in 0..rng.random_range(0..6) {
                    let id = rng.random_range(0..40);
                    match input.remove(&id) {
                        Some((t0, t1, w)) if rng.random_bool(0.5) => {
                            rows.push((id, Some(t0), Some(t1), -w))
                        }
                        Some(old) => {
                            input.insert(id, old);
                        }
                        None => {
                            let t0 = now + rng.random_range(-200..200);
                            let t1 = t0 + rng.random_range(-20..300);
                            let w = rng.random_range(1..3);
                            input.insert(id, (t0, t1, w));
                            rows.push((id, Some(t0), Some(t1), w));
                        }
                    }
                }
                let delta = (!rows.is_empty()).then(|| batch(&rows));
                add_to(&mut view, op.step(&[delta]).unwrap());
                let expected: std::collections::BTreeMap<i64, i64> = input
                    .iter()
                    .filter(|(_, (t0, t1, _))| *t0 <= now && now < *t1)
                    .map(|(id, (_, _, w))| (*id, *w))
                    .collect();
                assert_eq!(view, expected, "at {now}");
                now += rng.random_range(0..40);
                clock.set(now);
            }
        }
    }

    /// A filter restored from its checkpoint after any epoch emits what the
    /// original does at every later time, including changes that fell due
    /// between the checkpoint and the first epoch after the restore.
    #[test]
    fn a_restored_filter_goes_on_like_the_original() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let clock = Clock::default();
        let mut times = Vec::new();
        let mut epochs = Vec::new();
        let mut now = 1_000;
        let mut live: Vec<(i64, i64, i64)> = Vec::new();
        for e in 0..40i64 {
            times.push(now);
            let mut rows = Vec::new();
            for j in 0..rng.random_range(0..5) {
                if !live.is_empty() && rng.random_bool(0.3) {
                    let (id, t0, t1) = live.swap_remove(rng.random_range(0..live.len()));
                    rows.push((id, Some(t0), Some(t1), -1));
                } else {
                    let t0 = now + rng.random_range(-100..150);
                    let t1 = t0 + rng.random_range(1..200);
                    live.push((e * 10 + j, t0, t1));
                    rows.push((e * 10 + j, Some(t0), Some(t1), 1));
                }
            }
            epochs.push(vec![(!rows.is_empty()).then(|| batch(&rows))]);
            // Sometimes a long gap, as across a restart.
            now += if rng.random_bool(0.2) {
                120
            } else {
                rng.random_range(0..30)
            };
        }
        crate::stream::operator::checkpoint_testing::assert_restores_exactly_at(
            || Box::new(operator(&clock)),
            &epochs,
            |e| clock.set(times[e]),
        );
    }

    #[test]
    fn a_damaged_run_is_refused() {
        let clock = Clock::default();
        clock.set(0);
        let mut op = operator(&clock);
        op.track_changes();
        op.step(&[Some(batch(&[(1, Some(10), Some(20), 1)]))])
            .unwrap();
        let mut changes = StateChanges::default();
        op.checkpoint(&mut changes).unwrap();
        // Two runs: the row's start at 10 and its end at 20.
        let entries: Vec<StateEntry> = changes
            .ops()
            .map(|(k, v)| (k.to_vec(), v.unwrap().to_vec()))
            .collect();
        assert_eq!(entries.len(), 2);
        let (key, value) = entries[0].clone();
        for (k, v) in [
            (key.clone(), value[..value.len() - 3].to_vec()),
            (key[..5].to_vec(), value.clone()),
            (run_key((99, 0)), value.clone()),
        ] {
            let err = operator(&clock).restore(vec![(k, v)]).err().unwrap();
            assert!(
                err.to_string().contains("temporal filter")
                    || err.to_string().contains("checkpointed"),
                "{err}"
            );
        }
        let mut restored = operator(&clock);
        restored.restore(entries).unwrap();
        assert_eq!(restored.scheduled_rows(), 2);
        assert_eq!(restored.next_due(), Some(10));
    }
}
