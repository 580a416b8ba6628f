//! Top-N: per partition, the rows whose rank by an ordering lies in a
//! range. One operator maintains `ORDER BY ... LIMIT n OFFSET m`,
//! `ROW_NUMBER()` / `RANK()` / `DENSE_RANK() OVER (PARTITION BY ... ORDER BY
//! ...)` filtered by their value, and `DISTINCT ON` (top 1 per key).
//!
//! Weights: the input is a Z-set; a row of weight `w > 0` is `w` copies, each
//! ranked in the order (ties broken by the whole row, so the result is
//! deterministic). The output holds, with weight +1 per copy, each copy
//! whose rank lies in `[first, last]`, extended with its rank when the
//! operator numbers rows. A row whose summed weight is not positive is
//! absent. Each epoch, every partition the input delta touched is ranked
//! before and after the delta, and the difference is emitted: a row that
//! enters the range is inserted, one that leaves it (or whose rank moves)
//! is retracted, so the output is always the ranked rows of the current
//! input.
//!
//! State: every row of every partition, ordered, since a deletion in the top
//! rows pulls the next row in. Over an input that only grows (an
//! append-only source), rows past the range can never re-enter it: they are
//! dropped after each epoch, and a new row that would rank past a full
//! range is dropped before it touches the state, so the state stays `last`
//! rows per partition.
//!
//! When a partition column is a column of the input that carries a
//! watermark (top-N per window: `PARTITION BY window_start`), a partition
//! whose value is behind the watermark can receive no more changes: its
//! ranked rows are final. Its state is dropped and nothing is emitted.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, UInt64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use super::change::{batch_from_columns, ChangeBatch};
use super::operator::{Operator, OperatorStats};
use super::ordered::{OrderedPartitions, Partition};
use super::watermark::Watermarks;
use crate::error::{MillraceError, Result};

/// How rows are numbered within their partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    /// `ROW_NUMBER()`: 1, 2, 3... even among ties.
    RowNumber,
    /// `RANK()`: ties share a rank; the next rank skips (1, 1, 3).
    Rank,
    /// `DENSE_RANK()`: ties share a rank; no gaps (1, 1, 2).
    DenseRank,
}

impl Ranking {
    /// The ranking of a window function name, if it is one.
    pub fn of(name: &str) -> Option<Self> {
        match name {
            "row_number" => Some(Ranking::RowNumber),
            "rank" => Some(Ranking::Rank),
            "dense_rank" => Some(Ranking::DenseRank),
            _ => None,
        }
    }
}

/// What the operator keeps and emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopNSpec {
    /// How ranks are counted, and whether the rank is an output column
    /// (`Some`), or rows are only selected by position (`None`: `LIMIT`,
    /// `DISTINCT ON`).
    pub ranking: Option<Ranking>,
    /// Lowest rank kept (1-based).
    pub first: u64,
    /// Highest rank kept; `u64::MAX` for no bound.
    pub last: u64,
}

/// One ranked copy range of the output: row, rank (0 without a rank
/// column), copies.
type Ranked = (Vec<u8>, u64, i64);

/// Maintains the rows ranked within a range, per partition.
pub struct TopNOperator {
    state: OrderedPartitions,
    spec: TopNSpec,
    append_only: bool,
    schema: SchemaRef,
    stats: OperatorStats,
}

impl TopNOperator {
    /// Ranks rows of `input` within partitions of `partition_by`, ordered by
    /// `order_by` with `options`. The output schema is the input's, plus
    /// the rank column (`UInt64`) when `spec.ranking` is set.
    /// `append_only` says the input never retracts rows.
    pub fn try_new(
        input: &SchemaRef,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
        spec: TopNSpec,
        append_only: bool,
        schema: SchemaRef,
    ) -> Result<Self> {
        if spec.first == 0 || spec.first > spec.last {
            return Err(MillraceError::plan(format!(
                "top-N range {}..{} is empty",
                spec.first, spec.last
            )));
        }
        let expected = input.fields().len() + usize::from(spec.ranking.is_some());
        if schema.fields().len() != expected {
            return Err(MillraceError::plan(format!(
                "top-N output has {} columns, expected {expected}",
                schema.fields().len()
            )));
        }
        Ok(Self {
            state: OrderedPartitions::try_new(input, partition_by, order_by)?,
            spec,
            append_only,
            schema,
            stats: OperatorStats::default(),
        })
    }

    /// The same operator dropping each partition whose value in input
    /// `column` falls behind that column's watermark. The caller makes
    /// sure `column` is one of the partition expressions, as a plain
    /// column: then a partition behind the watermark can no longer change.
    pub fn with_watermark_partition(mut self, column: usize) -> Result<Self> {
        self.state.expire_by(column)?;
        Ok(self)
    }

    /// Partitions held.
    pub fn partitions(&self) -> usize {
        self.state.partitions.len()
    }

    /// The copies of `partition` whose rank lies in the range, in order.
    fn ranked(spec: &TopNSpec, partition: &Partition) -> Vec<Ranked> {
        let mut out = Vec::new();
        // Copies before the current entry, distinct order keys so far, and
        // where the current tie group started.
        let mut position = 0u64;
        let mut dense = 0u64;
        let mut tie_start = 0u64;
        let mut previous: Option<&[u8]> = None;
        for ((order, row), &weight) in partition {
            if weight <= 0 {
                continue;
            }
            let copies = weight as u64;
            if previous != Some(order.as_slice()) {
                dense += 1;
                tie_start = position;
                previous = Some(order);
            }
            match spec.ranking {
                Some(Ranking::Rank) | Some(Ranking::DenseRank) => {
                    let rank = if spec.ranking == Some(Ranking::Rank) {
                        tie_start + 1
                    } else {
                        dense
                    };
                    if rank > spec.last {
                        break;
                    }
                    if rank >= spec.first {
                        out.push((row.clone(), rank, weight));
                    }
                }
                ranking => {
                    // Copies numbered position+1 ..= position+copies; keep
                    // those within [first, last].
                    let from = (position + 1).max(spec.first);
                    let to = (position + copies).min(spec.last);
                    if ranking.is_some() {
                        for n in from..=to {
                            out.push((row.clone(), n, 1));
                        }
                    } else if to >= from {
                        out.push((row.clone(), 0, (to - from + 1) as i64));
                    }
                    if position + copies >= spec.last {
                        break;
                    }
                }
            }
            position += copies;
        }
        out
    }

    /// The last entry of a full range, over a partition holding only
    /// positive weights (an append-only input, trimmed): a new row sorting
    /// after it (after its order key, for `RANK` and `DENSE_RANK`, whose
    /// ties share a rank) can never enter the range. `None` while the range
    /// has room, or has no end.
    fn full_range_end<'p>(
        spec: &TopNSpec,
        partition: &'p Partition,
    ) -> Option<(&'p [u8], &'p [u8])> {
        if spec.last == u64::MAX {
            return None;
        }
        let mut copies = 0u64;
        let mut keys = 0u64;
        let mut previous: Option<&[u8]> = None;
        for ((order, _), &weight) in partition {
            if weight <= 0 {
                return None;
            }
            copies += weight as u64;
            if previous != Some(order.as_slice()) {
                keys += 1;
                previous = Some(order);
            }
        }
        let counted = match spec.ranking {
            Some(Ranking::DenseRank) => keys,
            _ => copies,
        };
        if counted < spec.last {
            return None;
        }
        partition
            .last_key_value()
            .map(|((order, row), _)| (order.as_slice(), row.as_slice()))
    }

    /// Whether a new row (order key, row, weight) ranks past a full range
    /// ending at `end` (see [`TopNOperator::full_range_end`]).
    fn ranks_past(spec: &TopNSpec, end: (&[u8], &[u8]), row: (&[u8], &[u8], i64)) -> bool {
        let (order, bytes, weight) = row;
        weight > 0
            && match spec.ranking {
                Some(Ranking::Rank) | Some(Ranking::DenseRank) => order > end.0,
                _ => (order, bytes) >= end,
            }
    }

    /// Drops rows that can never be ranked within the range again: over an
    /// append-only input, those ranked past `last`.
    fn trim(spec: &TopNSpec, partition: &mut Partition) {
        let mut kept = 0u64;
        let mut dense = 0u64;
        let mut previous: Option<Vec<u8>> = None;
        let mut cut: Option<(Vec<u8>, Vec<u8>)> = None;
        for ((order, row), &weight) in partition.iter() {
            if weight <= 0 {
                continue;
            }
            let new_group = previous.as_deref() != Some(order.as_slice());
            if new_group {
                dense += 1;
                let rank = match spec.ranking {
                    Some(Ranking::DenseRank) => dense,
                    _ => kept + 1,
                };
                if rank > spec.last {
                    cut = Some((order.clone(), row.clone()));
                    break;
                }
                previous = Some(order.clone());
            } else if spec.ranking.is_none() || spec.ranking == Some(Ranking::RowNumber) {
                // Within a tie group, row numbers still count up.
                if kept + 1 > spec.last {
                    cut = Some((order.clone(), row.clone()));
                    break;
                }
            }
            kept += weight as u64;
        }
        if let Some(cut) = cut {
            let _ = partition.split_off(&cut);
        }
    }
}

impl Operator for TopNOperator {
    fn describe(&self) -> String {
        let last = if self.spec.last == u64::MAX {
            "..".to_string()
        } else {
            format!("..={}", self.spec.last)
        };
        format!(
            "TopN ranks {}{last} by {} within {} partition keys{}{}",
            self.spec.first,
            self.state.order_key_count(),
            self.state.partition_key_count(),
            match self.spec.ranking {
                Some(r) => format!(", numbered by {r:?}"),
                None => String::new(),
            },
            match self.state.expiring_column() {
                Some(c) => format!(" expires=[{c}]"),
                None => String::new(),
            }
        )
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    super::ordered::checkpoint_by_partitions!();

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(delta)) = inputs.first() else {
            return Ok(None);
        };
        if delta.is_empty() {
            return Ok(None);
        }
        self.stats.rows_in += delta.num_rows() as u64;
        let encoded = self.state.encode(delta)?;
        let expiry_values = self.state.expiry_values(delta)?;
        let mut changes: Vec<Ranked> = Vec::new();
        for (key, mut indices) in encoded.by_partition() {
            // Over an append-only input, a row that ranks past a full range
            // now can never enter it: it is dropped before it touches the
            // state (most bids of a busy auction, for a top 10).
            if self.append_only {
                let end = self
                    .state
                    .partitions
                    .get(key)
                    .and_then(|p| Self::full_range_end(&self.spec, p));
                if let Some(end) = end {
                    indices.retain(|&i| !Self::ranks_past(&self.spec, end, encoded.entry(i)));
                }
                if indices.is_empty() {
                    continue;
                }
            }
            let first = indices.first().copied().unwrap_or(0);
            let partition = self.state.partition_mut(key, expiry_values.as_ref(), first);
            let before = Self::ranked(&self.spec, partition);
            encoded.apply(partition, &indices);
            self.stats.state_touched += indices.len() as u64;
            let after = Self::ranked(&self.spec, partition);
            if self.append_only {
                Self::trim(&self.spec, partition);
            }
            if partition.is_empty() {
                self.state.partitions.remove(key);
            }
            // after - before, as weights per (row, rank).
            let mut diff: HashMap<(Vec<u8>, u64), i64, RandomState> =
                HashMap::with_hasher(RandomState::default());
            for (row, rank, n) in after {
                *diff.entry((row, rank)).or_insert(0) += n;
            }
            for (row, rank, n) in before {
                *diff.entry((row, rank)).or_insert(0) -= n;
            }
            changes.extend(
                diff.into_iter()
                    .filter(|(_, n)| *n != 0)
                    .map(|((row, rank), n)| (row, rank, n)),
            );
        }
        if changes.is_empty() {
            return Ok(None);
        }
        let parser = self.state.input_rows.parser();
        let mut columns: Vec<ArrayRef> = self
            .state
            .input_rows
            .convert_rows(changes.iter().map(|(row, _, _)| parser.parse(row)))?;
        if self.spec.ranking.is_some() {
            let ranks: UInt64Array = changes.iter().map(|(_, rank, _)| Some(*rank)).collect();
            let rank_type = self.schema.field(columns.len()).data_type().clone();
            let ranks: ArrayRef = Arc::new(ranks);
            columns.push(if rank_type == DataType::UInt64 {
                ranks
            } else {
                datafusion::arrow::compute::cast(&ranks, &rank_type)?
            });
        }
        let out_rows = changes.len();
        let data = batch_from_columns(self.schema.clone(), columns, out_rows)?;
        let weights: Int64Array = changes.iter().map(|(_, _, n)| Some(*n)).collect();
        self.stats.rows_out += out_rows as u64;
        Ok(Some(ChangeBatch::try_new(data, weights)?))
    }

    fn advance(
        &mut self,
        inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        self.stats.state_touched += self.state.expire(inputs)? as u64;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    fn column(i: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(&format!("c{i}"), i))
    }

    /// Rows `(c0 partition, c1 value)`, top by c1 descending.
    fn operator(
        ranking: Option<Ranking>,
        first: u64,
        last: u64,
        append_only: bool,
    ) -> TopNOperator {
        let input = from_pretty("I I").unwrap().schema();
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        if ranking.is_some() {
            fields.push(Field::new("rank", DataType::UInt64, false));
        }
        TopNOperator::try_new(
            &input,
            vec![column(0)],
            vec![(
                column(1),
                SortOptions {
                    descending: true,
                    nulls_first: true,
                },
            )],
            TopNSpec {
                ranking,
                first,
                last,
            },
            append_only,
            Arc::new(Schema::new(fields)),
        )
        .unwrap()
    }

    fn step(op: &mut TopNOperator, text: &str) -> Vec<String> {
        match op.step(&[Some(from_pretty(text).unwrap())]).unwrap() {
            Some(out) => to_pretty_lines(&out).unwrap(),
            None => vec![],
        }
    }

    #[test]
    fn partitions_behind_the_watermark_are_dropped_and_their_rows_stay() {
        use crate::stream::watermark::Mark;
        use datafusion::common::ScalarValue;
        let mut op = operator(Some(Ranking::RowNumber), 1, 1, false)
            .with_watermark_partition(0)
            .unwrap();
        assert_eq!(
            step(&mut op, "I I\n 10 5 +1\n 10 7 +1\n 20 1 +1"),
            vec!["10 7 1 | +1", "20 1 1 | +1"]
        );
        assert_eq!(op.partitions(), 2);
        let mark = |v: i64| {
            let mut m = Watermarks::none();
            m.advance(0, Mark::Value(ScalarValue::Int64(Some(v))));
            m
        };
        // At 10, partition 10 is not behind yet; at 15 it is, and goes
        // without a change to the output.
        assert!(op
            .advance(&[&mark(10)], &Watermarks::none())
            .unwrap()
            .is_none());
        assert_eq!(op.partitions(), 2);
        assert!(op
            .advance(&[&mark(15)], &Watermarks::none())
            .unwrap()
            .is_none());
        assert_eq!(op.partitions(), 1);
        // Partition 20 is still maintained.
        assert_eq!(
            step(&mut op, "I I\n 20 9 +1"),
            vec!["20 1 1 | -1", "20 9 1 | +1"]
        );
        assert!(op.describe().contains("expires=[c0]"), "{}", op.describe());
    }

    #[test]
    fn row_numbers_shift_when_a_row_enters_above() {
        let mut op = operator(Some(Ranking::RowNumber), 1, 2, false);
        assert_eq!(
            step(&mut op, "I I\n 1 10 +1\n 1 5 +1\n 1 1 +1\n 2 7 +1"),
            vec!["1 10 1 | +1", "1 5 2 | +1", "2 7 1 | +1"]
        );
        // 20 takes first place: 10 moves to second, 5 leaves.
        let mut out = step(&mut op, "I I\n 1 20 +1");
        out.sort();
        assert_eq!(
            out,
            vec!["1 10 1 | -1", "1 10 2 | +1", "1 20 1 | +1", "1 5 2 | -1"]
        );
        // Deleting the leader brings 5 back.
        let mut out = step(&mut op, "I I\n 1 20 -1");
        out.sort();
        assert_eq!(
            out,
            vec!["1 10 1 | +1", "1 10 2 | -1", "1 20 1 | -1", "1 5 2 | +1"]
        );
    }

    #[test]
    fn ranks_share_ties_and_duplicates_count_as_copies() {
        let mut op = operator(Some(Ranking::Rank), 1, 2, false);
        let mut out = step(&mut op, "I I\n 1 9 +2\n 1 8 +1");
        out.sort();
        // Two copies of 9 share rank 1; 8 is third, past the range.
        assert_eq!(out, vec!["1 9 1 | +2"]);
        let mut dense = operator(Some(Ranking::DenseRank), 1, 2, false);
        let mut out = step(&mut dense, "I I\n 1 9 +2\n 1 8 +1\n 1 7 +1");
        out.sort();
        assert_eq!(out, vec!["1 8 2 | +1", "1 9 1 | +2"]);
    }

    #[test]
    fn limit_and_offset_select_positions_without_a_rank_column() {
        let mut op = operator(None, 2, 3, false);
        let mut out = step(&mut op, "I I\n 1 4 +1\n 1 3 +1\n 1 2 +1\n 1 1 +1");
        out.sort();
        assert_eq!(out, vec!["1 2 | +1", "1 3 | +1"]);
        let mut out = step(&mut op, "I I\n 1 3 -1");
        out.sort();
        assert_eq!(out, vec!["1 1 | +1", "1 3 | -1"]);
    }

    #[test]
    fn rows_past_a_full_range_are_dropped_before_they_touch_the_state() {
        let mut op = operator(Some(Ranking::Rank), 1, 2, true);
        step(&mut op, "I I\n 1 9 +1\n 1 8 +1");
        // 1 ranks past a full range: nothing changes, nothing is kept.
        assert!(step(&mut op, "I I\n 1 1 +1").is_empty());
        let kept: usize = op.state.partitions.values().map(|p| p.len()).sum();
        assert_eq!(kept, 2);
        // A tie with the last rank still enters: ties share it.
        assert_eq!(step(&mut op, "I I\n 1 8 +1"), vec!["1 8 2 | +1"]);
        // With row numbers, a tie with the last row is past the range.
        let mut numbered = operator(Some(Ranking::RowNumber), 1, 1, true);
        step(&mut numbered, "I I\n 1 9 +1");
        assert!(step(&mut numbered, "I I\n 1 9 +1").is_empty());
        assert_eq!(
            step(&mut numbered, "I I\n 1 10 +1"),
            vec!["1 10 1 | +1", "1 9 1 | -1"]
        );
    }

    #[test]
    fn append_only_inputs_keep_only_the_top_rows() {
        let mut op = operator(Some(Ranking::RowNumber), 1, 2, true);
        step(&mut op, "I I\n 1 1 +1\n 1 2 +1\n 1 3 +1\n 1 4 +1");
        let kept: usize = op.state.partitions.values().map(|p| p.len()).sum();
        assert_eq!(kept, 2);
        let mut out = step(&mut op, "I I\n 1 5 +1");
        out.sort();
        assert_eq!(
            out,
            vec!["1 3 2 | -1", "1 4 1 | -1", "1 4 2 | +1", "1 5 1 | +1"]
        );
    }

    #[test]
    fn a_restored_top_n_goes_on_exactly_like_the_original() {
        let epochs: Vec<Vec<Option<ChangeBatch>>> = [
            "I I\n 1 5 +1\n 1 7 +1\n 2 1 +1",
            "I I\n 1 9 +1\n 1 5 -1",
            "I I\n 2 3 +1\n 1 9 -1",
            "I I\n 1 8 +1\n 2 1 -1\n 2 4 +1",
        ]
        .iter()
        .map(|t| vec![Some(from_pretty(t).unwrap())])
        .collect();
        crate::stream::operator::checkpoint_testing::assert_restores_exactly(
            || Box::new(operator(Some(Ranking::RowNumber), 1, 2, false)),
            &epochs,
        );
    }
}
