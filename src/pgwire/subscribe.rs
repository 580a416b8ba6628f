//! `SUBSCRIBE`: a table's or materialized view's changes streamed to a
//! client through a cursor.
//!
//! `DECLARE c CURSOR FOR SUBSCRIBE TO v [WITH (snapshot = false)]` opens the
//! stream; each `FETCH n FROM c` answers up to `n` change rows (`FETCH ALL`:
//! every row available), waiting until at least one is there. A row is
//! `(epoch, weight, columns...)`: `weight` +1 for a row inserted, -1 for a
//! row deleted (an update is both, in one epoch), and `epoch` the commit
//! that made the change. With the snapshot (the default) the first rows
//! are the current contents, at the last committed epoch. When the
//! relation is dropped the stream ends and `FETCH` answers no rows.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio::sync::mpsc::Receiver;

use crate::error::MillraceError;
use crate::sql::engine::SubscribedChange;

/// An open subscription, read by `FETCH`.
#[derive(Debug)]
pub struct Subscription {
    schema: SchemaRef,
    changes: Receiver<SubscribedChange>,
    /// Rows received and not yet fetched.
    pending: VecDeque<RecordBatch>,
    ended: bool,
}

/// The rows a subscription answers: `epoch`, `weight`, then the
/// relation's columns.
pub fn output_schema(relation: &Schema) -> SchemaRef {
    let mut fields = vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("weight", DataType::Int64, false),
    ];
    fields.extend(
        relation
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    Arc::new(Schema::new(fields))
}

impl Subscription {
    /// A subscription reading `changes` of a relation with `schema`.
    pub fn new(schema: &Schema, changes: Receiver<SubscribedChange>) -> Self {
        Self {
            schema: output_schema(schema),
            changes,
            pending: VecDeque::new(),
            ended: false,
        }
    }

    /// The schema of the rows `fetch` answers.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn push(&mut self, (epoch, change): SubscribedChange) -> Result<(), MillraceError> {
        let change = change.consolidate()?;
        if change.is_empty() {
            return Ok(());
        }
        let rows = change.num_rows();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![epoch as i64; rows])),
            Arc::new(change.weights().clone()),
        ];
        columns.extend(change.data().columns().iter().cloned());
        self.pending
            .push_back(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }

    /// Up to `max` rows (0: all available), waiting until at least one is
    /// there unless the stream has ended.
    pub async fn fetch(&mut self, max: usize) -> Result<Vec<RecordBatch>, MillraceError> {
        while self.pending.is_empty() && !self.ended {
            match self.changes.recv().await {
                Some(change) => self.push(change)?,
                None => self.ended = true,
            }
        }
        // Whatever else has already arrived is answered too.
        while let Ok(change) = self.changes.try_recv() {
            self.push(change)?;
        }
        let mut out = Vec::new();
        let mut left = if max == 0 { usize::MAX } else { max };
        while left > 0 {
            let Some(batch) = self.pending.pop_front() else {
                break;
            };
            if batch.num_rows() <= left {
                left -= batch.num_rows();
                out.push(batch);
            } else {
                out.push(batch.slice(0, left));
                self.pending
                    .push_front(batch.slice(left, batch.num_rows() - left));
                left = 0;
            }
        }
        Ok(out)
    }
}
