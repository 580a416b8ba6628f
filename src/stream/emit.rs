//! `EMIT ON WINDOW CLOSE`: a view's changes held back until the watermark
//! closes their window.
//!
//! Weights: the output is the input, delayed. A change to a row whose
//! window column is not yet behind that column's watermark waits; once the
//! watermark passes the row's value, the sum of all the changes the row
//! received is emitted, once. The watermark promises that no change with a
//! smaller value will come, so a released row is final: each window's rows
//! are emitted exactly once, with their final values, and a window whose
//! changes cancel out emits nothing.

use datafusion::arrow::datatypes::SchemaRef;

use super::change::ChangeBatch;
use super::operator::{Operator, OperatorStats, StateChanges, StateEntry};
use super::watermark::Watermarks;
use crate::error::{MillraceError, Result};

/// Holds changes until the watermark of `column` passes them.
pub struct EmitOnCloseOperator {
    schema: SchemaRef,
    column: usize,
    /// Changes not yet released.
    pending: Vec<ChangeBatch>,
    /// Rows in `pending` after its last consolidation.
    consolidated_rows: usize,
    stats: OperatorStats,
    /// Whether `pending` changed since the last checkpoint.
    changed: bool,
}

impl EmitOnCloseOperator {
    /// Holds rows of `schema` until the watermark of `column` passes them.
    pub fn try_new(schema: SchemaRef, column: usize) -> Result<Self> {
        if column >= schema.fields().len() {
            return Err(MillraceError::plan(
                "EMIT ON WINDOW CLOSE column is out of range",
            ));
        }
        Ok(Self {
            schema,
            column,
            pending: Vec::new(),
            consolidated_rows: 0,
            stats: OperatorStats::default(),
            changed: false,
        })
    }

    /// Rows waiting for their window to close.
    pub fn pending_rows(&self) -> usize {
        self.pending.iter().map(ChangeBatch::num_rows).sum()
    }
}

impl Operator for EmitOnCloseOperator {
    fn describe(&self) -> String {
        format!(
            "EmitOnWindowClose watermark_column={}",
            self.schema.field(self.column).name()
        )
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        if let Some(Some(delta)) = inputs.first() {
            self.stats.rows_in += delta.num_rows() as u64;
            if !delta.is_empty() {
                self.pending.push(delta.clone());
                self.changed = true;
            }
        }
        Ok(None)
    }

    fn advance(
        &mut self,
        inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        let Some(mark) = inputs.first().and_then(|m| m.get(self.column)) else {
            return Ok(None);
        };
        if self.pending.is_empty() {
            return Ok(None);
        }
        let all = ChangeBatch::concat(self.schema.clone(), &self.pending)?;
        let closed = mark.behind(all.data().column(self.column), false)?;
        let released = match closed.true_count() {
            0 => return Ok(None),
            n if n == all.num_rows() => {
                self.pending.clear();
                self.consolidated_rows = 0;
                all.consolidate()?
            }
            _ => {
                let open = datafusion::arrow::compute::not(&closed)?;
                let mut waiting = all.filter(&open)?;
                // The waiting rows are mostly one window's retractions and
                // re-insertions: summing them keeps the buffer near the
                // size of the open windows.
                if waiting.num_rows() > 2 * self.consolidated_rows.max(1024) {
                    waiting = waiting.consolidate()?;
                    self.consolidated_rows = waiting.num_rows();
                }
                self.pending = vec![waiting];
                all.filter(&closed)?.consolidate()?
            }
        };
        self.stats.state_touched += all.num_rows() as u64;
        self.changed = true;
        if released.is_empty() {
            return Ok(None);
        }
        self.stats.rows_out += released.num_rows() as u64;
        Ok(Some(released))
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

    /// The held changes, summed, as one entry (an Arrow IPC batch with the
    /// weights as its last column), rewritten whole when they changed:
    /// they are at most the open windows' rows.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        self.changed = false;
        if self.pending.is_empty() {
            out.delete(Vec::new());
            return Ok(());
        }
        let held = ChangeBatch::concat(self.schema.clone(), &self.pending)?.consolidate()?;
        self.consolidated_rows = held.num_rows();
        self.pending = vec![held.clone()];
        out.put(Vec::new(), held.to_ipc()?);
        Ok(())
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        if let Some((_, value)) = entries.first() {
            let held = ChangeBatch::from_ipc(&self.schema, value).map_err(|_| {
                MillraceError::storage(
                    "a checkpointed EMIT ON WINDOW CLOSE buffer does not match the view",
                )
            })?;
            self.consolidated_rows = held.num_rows();
            self.pending = vec![held];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::common::ScalarValue;

    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};
    use crate::stream::watermark::Mark;

    fn marks(v: i64) -> Watermarks {
        let mut m = Watermarks::none();
        m.advance(0, Mark::Value(ScalarValue::Int64(Some(v))));
        m
    }

    #[test]
    fn each_window_is_emitted_once_with_its_final_value() {
        let first = from_pretty("I I\n 0 1 +1\n 10 1 +1").unwrap();
        let mut op = EmitOnCloseOperator::try_new(first.schema(), 0).unwrap();
        assert!(op.step(&[Some(first)]).unwrap().is_none());
        assert!(op.advance(&[&marks(0)], &marks(0)).unwrap().is_none());
        // Window 0 goes from 1 to 2.
        let second = from_pretty("I I\n 0 1 -1\n 0 2 +1").unwrap();
        op.step(&[Some(second)]).unwrap();
        let out = op.advance(&[&marks(5)], &marks(5)).unwrap().unwrap();
        assert_eq!(to_pretty_lines(&out).unwrap(), vec!["0 2 | +1"]);
        assert_eq!(op.pending_rows(), 1);
        // Nothing new behind the watermark: nothing emitted.
        assert!(op.advance(&[&marks(6)], &marks(6)).unwrap().is_none());
        let end = {
            let mut m = Watermarks::none();
            m.advance(0, Mark::End);
            m
        };
        let out = op.advance(&[&end], &end).unwrap().unwrap();
        assert_eq!(to_pretty_lines(&out).unwrap(), vec!["10 1 | +1"]);
        assert_eq!(op.pending_rows(), 0);
    }

    #[test]
    fn a_restored_buffer_releases_what_the_original_would() {
        let first = from_pretty("I I\n 0 1 +1\n 10 1 +1\n 0 1 -1\n 0 2 +1").unwrap();
        let schema = first.schema();
        let mut op = EmitOnCloseOperator::try_new(schema.clone(), 0).unwrap();
        op.step(&[Some(first)]).unwrap();
        let mut changes = StateChanges::default();
        op.checkpoint(&mut changes).unwrap();
        let entries: Vec<StateEntry> = changes
            .ops()
            .filter_map(|(k, v)| v.map(|v| (k.to_vec(), v.to_vec())))
            .collect();
        assert_eq!(entries.len(), 1);
        let mut restored = EmitOnCloseOperator::try_new(schema, 0).unwrap();
        restored.restore(entries).unwrap();
        // Restored state equals the store's: nothing to write.
        let mut changes = StateChanges::default();
        restored.checkpoint(&mut changes).unwrap();
        assert!(changes.is_empty());
        for op in [&mut op, &mut restored] {
            let out = op.advance(&[&marks(5)], &marks(5)).unwrap().unwrap();
            assert_eq!(to_pretty_lines(&out).unwrap(), vec!["0 2 | +1"]);
            assert_eq!(op.pending_rows(), 1);
        }
        // A release rewrites the buffer.
        let mut changes = StateChanges::default();
        op.checkpoint(&mut changes).unwrap();
        assert_eq!(changes.len(), 1);
    }
}
