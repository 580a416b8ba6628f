//! The contract every incremental operator fulfils.
//!
//! The dataflow advances in epochs. In each epoch an operator receives, for
//! each of its inputs, the change (delta) that input underwent in the epoch,
//! and returns the change of its own output. An operator's output collection
//! after epoch `e` is always the operator's function applied to its input
//! collections after epoch `e`; the deltas are how it gets there without
//! recomputing.

use datafusion::arrow::datatypes::SchemaRef;

use super::change::ChangeBatch;
use super::watermark::Watermarks;
use crate::error::Result;

/// Counters an operator keeps about its work, used by tests and `EXPLAIN`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OperatorStats {
    /// Rows received across all inputs.
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// State entries (groups, join rows) read or written.
    pub state_touched: u64,
}

/// An incremental operator: maps input deltas to an output delta per epoch.
pub trait Operator: Send {
    /// One-line description for `EXPLAIN`.
    fn describe(&self) -> String;

    /// Schema of the rows this operator emits.
    fn schema(&self) -> SchemaRef;

    /// Processes one epoch. `inputs[i]` is the delta of input `i` in this
    /// epoch (`None` when it did not change). Returns the output delta, or
    /// `None` when the output did not change.
    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>>;

    /// Work counters since creation.
    fn stats(&self) -> OperatorStats;

    /// Called once per epoch after [`Operator::step`] when the graph carries
    /// watermarks, with each input's watermarks and this operator's output
    /// watermarks after the epoch. A stateful operator drops the state no
    /// future change can touch; one that holds rows back (`EMIT ON WINDOW
    /// CLOSE`) returns the rows the watermark released. The default does
    /// nothing.
    fn advance(
        &mut self,
        _inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        Ok(None)
    }

    /// The watermarks this operator itself sets on its output (a scan of a
    /// relation with a declared watermark), after the last step.
    fn own_watermarks(&self) -> Watermarks {
        Watermarks::none()
    }

    /// The earliest time (nanoseconds since the Unix epoch) at which the
    /// operator has a change scheduled (a temporal filter), if any: an
    /// epoch must run then even when no input changes.
    fn next_due(&self) -> Option<i64> {
        None
    }

    /// True when the operator keeps state between epochs.
    fn is_stateful(&self) -> bool {
        false
    }
}
