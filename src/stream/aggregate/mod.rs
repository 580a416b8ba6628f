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
//! minimum finds the next one without rescanning any input. When the input
//! can never retract, `min` and `max` of fixed-width values keep only the
//! running extreme.
//!
//! The work is per batch: group keys are hashed column-wise and interned into
//! dense ids ([`groups`]), state is one vector per aggregate indexed by id
//! ([`accumulator`]), and the old and new outputs of all touched groups are
//! read out as whole Arrow arrays and compared column-wise.
//!
//! When a group column carries a watermark (the `window_start` of a
//! `TUMBLE`), a group whose value in it falls behind the watermark can
//! receive no more changes: its state is dropped, without emitting
//! anything, so an endless windowed aggregation keeps only its open
//! windows. A min-heap of each group's value finds them without a scan.

mod accumulator;
mod groups;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, UInt32Array};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{concat, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use self::accumulator::{active_rows, AccColumn, AccPlan};
use self::groups::GroupTable;
use super::change::{batch_from_columns, ChangeBatch};
use super::filter::evaluate_predicate;
use super::operator::codec::Reader;
use super::operator::{Operator, OperatorStats, StateChanges, StateEntry};
use super::watermark::{values_as_i64, Watermarks};
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

/// Incremental `GROUP BY` operator; see the module documentation.
pub struct AggregateOperator {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<AggregateSpec>,
    plans: Vec<AccPlan>,
    columns: Vec<AccColumn>,
    /// Sum of the weights of each group's rows.
    counts: Vec<i64>,
    group_converter: Option<RowConverter>,
    groups: GroupTable,
    append_only: bool,
    global_emitted: bool,
    /// Per group id, the last epoch stamp that touched it.
    touched_at: Vec<u32>,
    stamp: u32,
    schema: SchemaRef,
    stats: OperatorStats,
    /// Groups by their value in the group column that carries a watermark.
    expiry: Option<Expiry>,
    /// Groups changed since the last checkpoint, when checkpoints are taken.
    changes: Option<GroupChanges>,
}

/// The groups an aggregate changed since its last checkpoint.
#[derive(Default)]
struct GroupChanges {
    /// Ids of groups touched (each once; see `flagged`).
    touched: Vec<u32>,
    /// Per group id, whether it is in `touched`.
    flagged: Vec<bool>,
    /// Keys of groups removed.
    removed: Vec<Box<[u8]>>,
}

impl GroupChanges {
    fn touch(&mut self, g: u32) {
        let i = g as usize;
        if self.flagged.len() <= i {
            self.flagged.resize(i + 1, false);
        }
        if !self.flagged[i] {
            self.flagged[i] = true;
            self.touched.push(g);
        }
    }
}

/// The groups of an aggregate ordered by their value in one group column
/// (as `i64`), to drop those the column's watermark has passed.
struct Expiry {
    column: usize,
    heap: BinaryHeap<Reverse<(i64, u32, u32)>>,
    /// Per group id, bumped each time the id is freed, so that a heap entry
    /// of an earlier group with the same id is recognised as stale.
    generation: Vec<u32>,
}

impl AggregateOperator {
    /// An aggregate over rows of `input_schema`, grouping by `group_exprs`
    /// and computing `aggregates`, emitting rows of `schema` (group columns
    /// then aggregate columns). `append_only` promises that the input never
    /// retracts (every weight is positive), which lets `min`/`max` keep only
    /// the running extreme; a retraction then is refused as an engine bug.
    pub fn try_new(
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        aggregates: Vec<AggregateSpec>,
        input_schema: &SchemaRef,
        schema: SchemaRef,
        append_only: bool,
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
        let plans = aggregates
            .iter()
            .enumerate()
            .map(|(i, agg)| {
                let arg_type = match &agg.arg {
                    Some(e) => e.data_type(input_schema)?,
                    None => DataType::Null,
                };
                let out_type = schema.field(group_exprs.len() + i).data_type().clone();
                AccPlan::try_new(
                    agg.kind,
                    arg_type,
                    out_type,
                    agg.delimiter.clone(),
                    append_only,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let columns = plans.iter().map(AccPlan::new_column).collect();
        let mut op = Self {
            group_exprs,
            aggregates,
            plans,
            columns,
            counts: Vec::new(),
            group_converter,
            groups: GroupTable::default(),
            append_only,
            global_emitted: false,
            touched_at: Vec::new(),
            stamp: 0,
            schema,
            stats: OperatorStats::default(),
            expiry: None,
            changes: None,
        };
        if op.is_global() {
            // The one group of a global aggregate has id 0 and is never
            // removed.
            op.push_group();
        }
        Ok(op)
    }

    /// The same aggregate dropping groups once the watermark of group column
    /// `column` passes their value in it.
    pub fn with_watermark_column(mut self, column: usize) -> Result<Self> {
        if column >= self.group_exprs.len() {
            return Err(MillraceError::plan(
                "a watermark column of an aggregate must be a group column",
            ));
        }
        self.expiry = Some(Expiry {
            column,
            heap: BinaryHeap::new(),
            generation: Vec::new(),
        });
        Ok(self)
    }

    /// Removes group `g`: its id and state are free for a new group.
    fn remove_group(&mut self, g: u32) {
        if let Some(changes) = &mut self.changes {
            changes.removed.push(self.groups.key(g).into());
        }
        self.groups.remove(g);
        self.counts[g as usize] = 0;
        for c in &mut self.columns {
            c.empty_group(g);
        }
        if let Some(e) = &mut self.expiry {
            if let Some(gen) = e.generation.get_mut(g as usize) {
                *gen = gen.wrapping_add(1);
            }
        }
    }

    /// Records the watermark-column values of groups created from rows
    /// `created` of `keys`.
    fn track_new_groups(&mut self, keys: &[ArrayRef], created: &[(u32, u32)]) -> Result<()> {
        let Some(e) = &mut self.expiry else {
            return Ok(());
        };
        if created.is_empty() {
            return Ok(());
        }
        let rows = UInt32Array::from_iter_values(created.iter().map(|(row, _)| *row));
        let values = values_as_i64(&take(&keys[e.column], &rows, None)?)?;
        for (i, &(_, g)) in created.iter().enumerate() {
            if e.generation.len() <= g as usize {
                e.generation.resize(g as usize + 1, 0);
            }
            // A NULL never falls behind a watermark.
            if values.is_valid(i) {
                e.heap
                    .push(Reverse((values.value(i), g, e.generation[g as usize])));
            }
        }
        Ok(())
    }

    /// Number of groups currently held.
    pub fn group_count(&self) -> usize {
        if self.is_global() {
            1
        } else {
            self.groups.len()
        }
    }

    fn is_global(&self) -> bool {
        self.group_exprs.is_empty()
    }

    /// Whether group id `g` holds a group (the global group once emitted;
    /// otherwise a group not removed).
    fn is_live(&self, g: u32) -> bool {
        if self.is_global() {
            self.global_emitted
        } else {
            !self.groups.key(g).is_empty()
        }
    }

    fn push_group(&mut self) {
        let g = self.counts.len() as u32;
        self.counts.push(0);
        self.touched_at.push(0);
        for c in &mut self.columns {
            c.empty_group(g);
        }
    }

    /// Maps every row of `delta` to its group id, creating groups.
    fn group_ids(&mut self, delta: &ChangeBatch) -> Result<Vec<u32>> {
        let n = delta.num_rows();
        let Some(conv) = &self.group_converter else {
            return Ok(vec![0; n]);
        };
        let keys = self
            .group_exprs
            .iter()
            .map(|e| Ok(e.evaluate(delta.data())?.into_array(n)?))
            .collect::<Result<Vec<_>>>()?;
        let rows = conv.convert_columns(&keys)?;
        self.groups.hash_batch(&keys, n)?;
        let mut ids = Vec::with_capacity(n);
        let mut created: Vec<(u32, u32)> = Vec::new();
        let tracking = self.expiry.is_some();
        for row in 0..n {
            let live = self.groups.len();
            let id = self.groups.intern(&rows, row);
            if id as usize == self.counts.len() {
                // A new id past the last: state for it.
                self.push_group();
            }
            if tracking && self.groups.len() > live {
                created.push((row as u32, id));
            }
            ids.push(id);
        }
        self.track_new_groups(&keys, &created)?;
        Ok(ids)
    }

    /// Whether each group in `touched` exists (has rows, or is the global
    /// group once emitted).
    fn existing(&self, touched: &[u32], global_exists: bool) -> Vec<bool> {
        if self.is_global() {
            vec![global_exists; touched.len()]
        } else {
            touched
                .iter()
                .map(|&g| self.counts[g as usize] > 0)
                .collect()
        }
    }

    /// The aggregate output columns of `touched` groups.
    fn output_columns(&self, touched: &[u32]) -> Result<Vec<ArrayRef>> {
        self.plans
            .iter()
            .zip(&self.columns)
            .map(|(plan, column)| plan.output(column, touched))
            .collect()
    }

    /// The group key columns of `touched` groups.
    fn key_columns(&self, touched: &[u32]) -> Result<Vec<ArrayRef>> {
        match &self.group_converter {
            None => Ok(vec![]),
            Some(conv) => {
                let parser = conv.parser();
                Ok(conv.convert_rows(touched.iter().map(|&g| parser.parse(self.groups.key(g))))?)
            }
        }
    }

    /// Adds `delta` (whose rows belong to groups `ids`) to the state.
    fn apply(&mut self, delta: &ChangeBatch, ids: &[u32]) -> Result<()> {
        let weights = delta.weights().values();
        if self.append_only && weights.iter().any(|&w| w < 0) {
            return Err(MillraceError::execution(
                "a retraction reached an aggregate over an append-only input",
            ));
        }
        for (&g, &w) in ids.iter().zip(weights.iter()) {
            self.counts[g as usize] += w;
        }
        let n = delta.num_rows();
        for ((agg, plan), column) in self
            .aggregates
            .iter()
            .zip(&self.plans)
            .zip(&mut self.columns)
        {
            let arg = agg
                .arg
                .as_ref()
                .map(|e| e.evaluate(delta.data())?.into_array(n))
                .transpose()?;
            let filter = agg
                .filter
                .as_ref()
                .map(|f| evaluate_predicate(f, delta.data()))
                .transpose()?;
            let active: Option<BooleanBuffer> = active_rows(arg.as_ref(), filter.as_ref());
            let prepared = plan.prepare(arg.as_ref())?;
            plan.apply(column, &prepared, ids, weights, active.as_ref());
        }
        Ok(())
    }
}

/// Positions where any pair of columns differs (NULL equals NULL).
fn changed_rows(old: &[ArrayRef], new: &[ArrayRef], rows: usize) -> Result<Vec<bool>> {
    let mut changed = vec![false; rows];
    for (a, b) in old.iter().zip(new) {
        match distinct(a, b) {
            Ok(d) => {
                for (c, v) in changed.iter_mut().zip(d.values().iter()) {
                    *c |= v;
                }
            }
            // A type the comparison kernel does not handle: treat every row
            // as changed (a retraction and insertion of an equal row cancel
            // out downstream).
            Err(_) => changed.iter_mut().for_each(|c| *c = true),
        }
    }
    Ok(changed)
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
        let global = self.is_global();
        let first_global = global && !self.global_emitted;
        if delta.is_none() && !first_global {
            return Ok(None);
        }

        // The groups this epoch touches, each once.
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.touched_at.iter_mut().for_each(|t| *t = 0);
            self.stamp = 1;
        }
        let ids = match &delta {
            Some(d) => {
                self.stats.rows_in += d.num_rows() as u64;
                self.group_ids(d)?
            }
            None => Vec::new(),
        };
        let mut touched: Vec<u32> = Vec::new();
        for &g in ids.iter().chain(first_global.then_some(&0)) {
            let mark = &mut self.touched_at[g as usize];
            if *mark != self.stamp {
                *mark = self.stamp;
                touched.push(g);
            }
        }
        self.stats.state_touched += touched.len() as u64;
        if let Some(changes) = &mut self.changes {
            for &g in &touched {
                changes.touch(g);
            }
        }

        // Outputs before and after the change.
        let old_exists = self.existing(&touched, self.global_emitted);
        let old = if old_exists.iter().any(|&e| e) {
            Some(self.output_columns(&touched)?)
        } else {
            None
        };
        if let Some(delta) = &delta {
            self.apply(delta, &ids)?;
        }
        if touched.iter().any(|&g| self.counts[g as usize] < 0) {
            return Err(MillraceError::execution(
                "aggregate group has negative multiplicity (a delete of a row that was never inserted)",
            ));
        }
        let new_exists = self.existing(&touched, true);
        let new = self.output_columns(&touched)?;
        if global {
            self.global_emitted = true;
        }

        // Retract old rows and insert new ones where they differ.
        let changed = match &old {
            Some(old) => changed_rows(old, &new, touched.len())?,
            None => vec![true; touched.len()],
        };
        let mut retract: Vec<u32> = Vec::new();
        let mut insert: Vec<u32> = Vec::new();
        for (i, ((&was, &is), &diff)) in
            old_exists.iter().zip(&new_exists).zip(&changed).enumerate()
        {
            if was && (!is || diff) {
                retract.push(i as u32);
            }
            if is && (!was || diff) {
                insert.push(i as u32);
            }
        }
        let result = if retract.is_empty() && insert.is_empty() {
            None
        } else {
            let retract = UInt32Array::from(retract);
            let insert = UInt32Array::from(insert);
            let both: UInt32Array = retract.iter().chain(insert.iter()).collect();
            let mut columns = self
                .key_columns(&touched)?
                .iter()
                .map(|k| Ok(take(k, &both, None)?))
                .collect::<Result<Vec<_>>>()?;
            for (i, new_col) in new.iter().enumerate() {
                let inserted = take(new_col, &insert, None)?;
                columns.push(match &old {
                    Some(old) if !retract.is_empty() => {
                        let retracted = take(&old[i], &retract, None)?;
                        concat(&[retracted.as_ref(), inserted.as_ref()])?
                    }
                    _ => inserted,
                });
            }
            let rows = retract.len() + insert.len();
            let mut weights = vec![-1i64; retract.len()];
            weights.resize(rows, 1);
            let data = batch_from_columns(self.schema.clone(), columns, rows)?;
            self.stats.rows_out += rows as u64;
            Some(ChangeBatch::try_new(data, Int64Array::from(weights))?)
        };

        // Groups left without rows go; their ids are reused.
        if !global {
            for (&g, &is) in touched.iter().zip(&new_exists) {
                if !is {
                    self.remove_group(g);
                }
            }
        }
        Ok(result)
    }

    fn advance(
        &mut self,
        _inputs: &[&Watermarks],
        output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        let Some(column) = self.expiry.as_ref().map(|e| e.column) else {
            return Ok(None);
        };
        let Some(mark) = output.get(column) else {
            return Ok(None);
        };
        // `None`: the stream ended, every group goes.
        let bound = mark.as_i64(self.schema.field(column).data_type())?;
        let mut expired = Vec::new();
        if let Some(e) = &mut self.expiry {
            while let Some(Reverse((value, g, gen))) = e.heap.peek().copied() {
                if bound.is_some_and(|b| value >= b) {
                    break;
                }
                e.heap.pop();
                if e.generation.get(g as usize) == Some(&gen) {
                    expired.push(g);
                }
            }
        }
        self.stats.state_touched += expired.len() as u64;
        for g in expired {
            self.remove_group(g);
        }
        Ok(None)
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn track_changes(&mut self) {
        self.changes = Some(GroupChanges::default());
    }

    /// Each group is one key (its group key in row format; empty for the
    /// global group) whose value is its row count and then each
    /// aggregate's state.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        let Some(changes) = self.changes.take() else {
            return Ok(());
        };
        for key in &changes.removed {
            out.delete(key);
        }
        // One value buffer for every group: the changes copy it.
        let mut value = Vec::with_capacity(8 + 24 * self.columns.len());
        for &g in &changes.touched {
            if !self.is_live(g) {
                continue;
            }
            value.clear();
            value.extend_from_slice(&self.counts[g as usize].to_le_bytes());
            for column in &self.columns {
                column.encode(g, &mut value);
            }
            let key: &[u8] = if self.is_global() {
                &[]
            } else {
                self.groups.key(g)
            };
            out.put(key, &value);
        }
        let mut next = GroupChanges {
            flagged: changes.flagged,
            ..GroupChanges::default()
        };
        next.flagged.iter_mut().for_each(|f| *f = false);
        self.changes = Some(next);
        Ok(())
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<u32> = match &self.group_converter {
            None => {
                self.global_emitted = true;
                vec![0; entries.len()]
            }
            Some(conv) => {
                let parser = conv.parser();
                let keys = conv.convert_rows(entries.iter().map(|(k, _)| parser.parse(k)))?;
                let rows = conv.convert_columns(&keys)?;
                self.groups.hash_batch(&keys, entries.len())?;
                let mut ids = Vec::with_capacity(entries.len());
                let mut created = Vec::new();
                for row in 0..entries.len() {
                    let id = self.groups.intern(&rows, row);
                    if id as usize == self.counts.len() {
                        self.push_group();
                    }
                    created.push((row as u32, id));
                    ids.push(id);
                }
                self.track_new_groups(&keys, &created)?;
                ids
            }
        };
        for ((_, value), g) in entries.iter().zip(ids) {
            let mut r = Reader::new(value);
            self.counts[g as usize] = r.i64()?;
            for column in &mut self.columns {
                column.decode(g, &mut r)?;
            }
            if !r.is_done() {
                return Err(MillraceError::storage(
                    "a checkpointed aggregate group is longer than its layout",
                ));
            }
        }
        Ok(())
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
            false,
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
            false,
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

    /// GROUP BY c0: min/max of an integer and a float column, count(c1).
    fn extremes(append_only: bool) -> AggregateOperator {
        let input = from_pretty("T I F").unwrap().schema();
        let out = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("lo", DataType::Int64, true),
            Field::new("hi", DataType::Int64, true),
            Field::new("flo", DataType::Float64, true),
            Field::new("fhi", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        AggregateOperator::try_new(
            vec![col("c0", 0)],
            vec![
                spec(AggregateKind::Min, Some(col("c1", 1))),
                spec(AggregateKind::Max, Some(col("c1", 1))),
                spec(AggregateKind::Min, Some(col("c2", 2))),
                spec(AggregateKind::Max, Some(col("c2", 2))),
                spec(AggregateKind::Count, Some(col("c1", 1))),
            ],
            &input,
            out,
            append_only,
        )
        .unwrap()
    }

    #[test]
    fn running_extremes_equal_value_multisets_on_growing_input() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let mut running = extremes(true);
        let mut multiset = extremes(false);
        for _ in 0..200 {
            let mut text = String::from("T I F\n");
            for _ in 0..rng.random_range(1..20) {
                let g = ["a", "b", "c", "d", "."][rng.random_range(0..5)];
                let i = if rng.random_ratio(1, 6) {
                    ".".to_string()
                } else {
                    rng.random_range(-50i64..50).to_string()
                };
                let f = if rng.random_ratio(1, 6) {
                    ".".to_string()
                } else {
                    format!("{:.2}", rng.random_range(-5.0f64..5.0))
                };
                text.push_str(&format!("{g} {i} {f} +{}\n", rng.random_range(1..3)));
            }
            assert_eq!(
                step(&mut running, &text),
                step(&mut multiset, &text),
                "{text}"
            );
        }
    }

    #[test]
    fn a_retraction_into_an_append_only_aggregate_is_refused() {
        let mut op = extremes(true);
        step(&mut op, "T I F\n a 1 1.0 +1");
        let err = op
            .step(&[Some(from_pretty("T I F\n a 1 1.0 -1").unwrap())])
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }

    #[test]
    fn groups_behind_the_watermark_are_dropped_without_output() {
        use crate::stream::watermark::{Mark, Watermarks};
        use datafusion::common::ScalarValue;
        let input = from_pretty("I I").unwrap().schema();
        let out = Arc::new(Schema::new(vec![
            Field::new("w", DataType::Int64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let mut op = AggregateOperator::try_new(
            vec![col("c0", 0)],
            vec![spec(AggregateKind::Count, None)],
            &input,
            out,
            false,
        )
        .unwrap()
        .with_watermark_column(0)
        .unwrap();
        step(&mut op, "I I\n 0 1 +1\n 10 1 +1\n 20 1 +1\n 0 2 +1");
        assert_eq!(op.group_count(), 3);
        let mut marks = Watermarks::none();
        marks.advance(0, Mark::Value(ScalarValue::Int64(Some(10))));
        assert!(op
            .advance(&[&Watermarks::none()], &marks)
            .unwrap()
            .is_none());
        assert_eq!(op.group_count(), 2, "window 0 is closed");
        // A group removed and created again under a reused id is tracked
        // by its own value, not the stale entry of the id.
        step(&mut op, "I I\n 10 1 -1");
        step(&mut op, "I I\n 30 1 +1");
        marks.advance(0, Mark::Value(ScalarValue::Int64(Some(25))));
        op.advance(&[&Watermarks::none()], &marks).unwrap();
        assert_eq!(op.group_count(), 1, "only 30 is open");
        assert_eq!(
            step(&mut op, "I I\n 30 1 +1"),
            vec!["30 1 | -1", "30 2 | +1"]
        );
        marks.advance(0, Mark::End);
        op.advance(&[&Watermarks::none()], &marks).unwrap();
        assert_eq!(op.group_count(), 0);
    }

    #[test]
    fn removed_groups_free_their_state_for_new_groups() {
        let mut op = grouped();
        step(&mut op, "T I\n a 1 +1\n b 9 +1");
        step(&mut op, "T I\n a 1 -1");
        // `c` reuses the id `a` had, and starts from empty state.
        assert_eq!(step(&mut op, "T I\n c 4 +1"), vec!["c 1 4 4 4 | +1"]);
        assert_eq!(
            step(&mut op, "T I\n c 2 +1\n b 9 -1"),
            vec!["b 1 9 9 9 | -1", "c 1 4 4 4 | -1", "c 2 6 2 4 | +1"]
        );
        assert_eq!(op.group_count(), 1);
    }

    #[test]
    fn a_restored_aggregate_goes_on_exactly_like_the_original() {
        let epochs: Vec<Vec<Option<ChangeBatch>>> = [
            "T I\n a 1 +1\n a 5 +1\n b 2 +2",
            "T I\n a 1 -1\n c 9 +1",
            "T I\n b 2 -2\n a . +1",
            "T I\n b 4 +1\n c 9 -1\n a 7 +3",
            "T I\n a 5 -1\n a 3 +1",
        ]
        .iter()
        .map(|t| vec![Some(from_pretty(t).unwrap())])
        .collect();
        crate::stream::operator::checkpoint_testing::assert_restores_exactly(
            || Box::new(grouped()),
            &epochs,
        );
    }
}
