//! Scan: the entry of a relation's changes into a dataflow.
//!
//! Weights: passes every row through with its weight unchanged, keeping only
//! the projected columns (`out(r[proj]) += in(r)`).
//!
//! A scan of a relation with a declared watermark (`WATERMARK FOR ts AS
//! ...`) first drops the changes whose event time is behind the watermark
//! (weight set to 0, counted as late), then advances the watermark over the
//! rows it let through (see [`super::watermark`]).

use datafusion::arrow::datatypes::SchemaRef;

use super::change::{batch_from_columns, ChangeBatch};
use super::operator::{Operator, OperatorStats, StateChanges, StateEntry};
use super::watermark::{Mark, WatermarkTracker, Watermarks};
use crate::error::Result;

/// Reads a relation's delta, keeping the projected columns.
pub struct ScanOperator {
    relation: String,
    projection: Vec<usize>,
    schema: SchemaRef,
    stats: OperatorStats,
    /// The relation's declared watermark, applied to its changes.
    tracker: Option<WatermarkTracker>,
    /// The watermark as of the last checkpoint.
    checkpointed: Option<Mark>,
}

impl ScanOperator {
    /// A scan of `relation` emitting the columns at `projection`, under `schema`.
    pub fn try_new(relation: String, projection: Vec<usize>, schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            relation,
            projection,
            schema,
            stats: OperatorStats::default(),
            tracker: None,
            checkpointed: None,
        })
    }

    /// The same scan applying the relation's declared watermark.
    pub fn with_watermark(mut self, tracker: WatermarkTracker) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// The output position of the relation's event-time column, when the
    /// scan has a declared watermark and keeps that column.
    pub fn marked_column(&self) -> Option<usize> {
        let column = self.tracker.as_ref()?.spec().column;
        self.projection.iter().position(|&c| c == column)
    }
}

impl Operator for ScanOperator {
    fn describe(&self) -> String {
        let cols: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        match &self.tracker {
            Some(t) => format!(
                "Scan {} [{}] watermark={}: {}",
                self.relation,
                cols.join(", "),
                t.spec().column_name,
                t.spec().text
            ),
            None => format!("Scan {} [{}]", self.relation, cols.join(", ")),
        }
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let Some(Some(delta)) = inputs.first() else {
            return Ok(None);
        };
        self.stats.rows_in += delta.num_rows() as u64;
        let admitted;
        let delta = match &mut self.tracker {
            Some(tracker) => {
                admitted = tracker.admit(delta)?.0;
                tracker.observe(&admitted)?;
                &admitted
            }
            None => delta,
        };
        self.stats.rows_out += delta.num_rows() as u64;
        let columns = self
            .projection
            .iter()
            .map(|&i| delta.data().column(i).clone())
            .collect();
        let data = batch_from_columns(self.schema.clone(), columns, delta.num_rows())?;
        Ok(Some(delta.with_data(data)?))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    /// The declared watermark, when it moved: one entry with an empty key.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        let Some(mark) = self.tracker.as_ref().and_then(|t| t.mark()) else {
            return Ok(());
        };
        if self.checkpointed.as_ref() != Some(mark) {
            out.put(Vec::new(), mark.encode()?);
            self.checkpointed = Some(mark.clone());
        }
        Ok(())
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        if let (Some(tracker), Some((_, value))) = (&mut self.tracker, entries.first()) {
            let mark = Mark::decode(value)?;
            tracker.restore(mark.clone());
            self.checkpointed = Some(mark);
        }
        Ok(())
    }

    fn advance(
        &mut self,
        inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        // The relation's stream ended: its watermark goes to the end.
        if let Some(tracker) = &mut self.tracker {
            let column = tracker.spec().column;
            let ended = inputs
                .first()
                .and_then(|m| m.get(column))
                .is_some_and(|m| *m == Mark::End);
            if ended && tracker.mark() != Some(&Mark::End) {
                tracker.end();
            }
        }
        Ok(None)
    }

    fn own_watermarks(&self) -> Watermarks {
        let mut marks = Watermarks::none();
        if let (Some(column), Some(mark)) = (
            self.marked_column(),
            self.tracker.as_ref().and_then(|t| t.mark()),
        ) {
            marks.advance(column, mark.clone());
        }
        marks
    }
}
