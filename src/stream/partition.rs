//! Partitioned execution of a stateful operator across worker threads.
//!
//! Weights: the operator's own. Each input row goes to exactly one of `n`
//! copies of the operator, chosen by the hash of its key (group key or join
//! key), so every copy owns a disjoint set of keys and sees every row of
//! those keys; the output is the sum of the copies' outputs. The copies run
//! in parallel, one thread each, within the epoch.

use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::physical_expr::PhysicalExpr;

use super::change::{evaluate_keys, ChangeBatch};
use super::operator::{Operator, OperatorStats, StateChanges, StateEntry};
use super::watermark::Watermarks;
use crate::error::{MillraceError, Result};

/// `n` copies of an operator, each owning the keys that hash to it.
pub struct PartitionedOperator {
    shards: Vec<Box<dyn Operator>>,
    keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    key_types: Vec<DataType>,
    schema: SchemaRef,
}

impl PartitionedOperator {
    /// Wraps `shards` (identical operators); `keys[i]` are the key
    /// expressions of input `i`, all evaluated to `key_types` before hashing
    /// so that equal keys from different inputs meet in the same shard.
    pub fn try_new(
        shards: Vec<Box<dyn Operator>>,
        keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
        key_types: Vec<DataType>,
    ) -> Result<Self> {
        let schema = shards.first().map(|s| s.schema()).ok_or_else(|| {
            MillraceError::plan("a partitioned operator needs at least one shard")
        })?;
        if keys
            .iter()
            .any(|k| k.len() != key_types.len() || k.is_empty())
        {
            return Err(MillraceError::plan(
                "partition keys do not match their types",
            ));
        }
        Ok(Self {
            shards,
            keys,
            key_types,
            schema,
        })
    }

    /// Splits one input's delta into a delta per shard.
    fn route(&self, input: usize, delta: &ChangeBatch) -> Result<Vec<Option<ChangeBatch>>> {
        let n = delta.num_rows();
        let arrays = evaluate_keys(&self.keys[input], &self.key_types, delta.data())?;
        let mut hashes = vec![0u64; n];
        create_hashes(&arrays, &RandomState::with_seed(0), &mut hashes)?;
        let shards = self.shards.len() as u64;
        let mut indices: Vec<Vec<u32>> =
            vec![Vec::with_capacity(n / self.shards.len() + 1); self.shards.len()];
        for (row, h) in hashes.iter().enumerate() {
            indices[(h % shards) as usize].push(row as u32);
        }
        indices
            .into_iter()
            .map(|idx| {
                if idx.is_empty() {
                    Ok(None)
                } else if idx.len() == n {
                    Ok(Some(delta.clone()))
                } else {
                    Ok(Some(delta.take(&UInt32Array::from(idx))?))
                }
            })
            .collect()
    }
}

impl Operator for PartitionedOperator {
    fn describe(&self) -> String {
        let inner = self
            .shards
            .first()
            .map(|s| s.describe())
            .unwrap_or_default();
        format!("{inner} workers={}", self.shards.len())
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let mut per_shard: Vec<Vec<Option<ChangeBatch>>> =
            vec![vec![None; inputs.len()]; self.shards.len()];
        for (i, input) in inputs.iter().enumerate() {
            if let Some(delta) = input {
                for (s, part) in self.route(i, delta)?.into_iter().enumerate() {
                    per_shard[s][i] = part;
                }
            }
        }
        let outputs: Vec<Result<Option<ChangeBatch>>> =
            std::thread::scope(|scope| {
                let mut work = self
                    .shards
                    .iter_mut()
                    .zip(per_shard)
                    .filter(|(_, ins)| ins.iter().any(Option::is_some));
                // The first shard with work runs on this thread; the rest on
                // their own.
                let first = work.next();
                let spawned: Vec<_> = work
                    .map(|(shard, ins)| scope.spawn(move || shard.step(&ins)))
                    .collect();
                let mut results = Vec::with_capacity(spawned.len() + 1);
                if let Some((shard, ins)) = first {
                    results.push(shard.step(&ins));
                }
                for h in spawned {
                    results.push(h.join().unwrap_or_else(|_| {
                        Err(MillraceError::execution("a worker thread panicked"))
                    }));
                }
                results
            });
        let mut parts = Vec::new();
        for out in outputs {
            if let Some(b) = out? {
                parts.push(b);
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(ChangeBatch::concat(self.schema.clone(), &parts)?))
    }

    fn stats(&self) -> OperatorStats {
        self.shards.iter().fold(OperatorStats::default(), |acc, s| {
            let st = s.stats();
            OperatorStats {
                rows_in: acc.rows_in + st.rows_in,
                rows_out: acc.rows_out + st.rows_out,
                state_touched: acc.state_touched + st.state_touched,
            }
        })
    }

    fn is_stateful(&self) -> bool {
        self.shards.iter().any(|s| s.is_stateful())
    }

    fn checkpointable(&self) -> bool {
        self.shards.len() <= usize::from(u8::MAX) && self.shards.iter().all(|s| s.checkpointable())
    }

    fn track_changes(&mut self) {
        for shard in &mut self.shards {
            shard.track_changes();
        }
    }

    /// Each shard's keys, behind one byte: the shard's number.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        for (i, shard) in self.shards.iter_mut().enumerate() {
            let tag = u8::try_from(i)
                .map_err(|_| MillraceError::execution("too many shards to checkpoint"))?;
            out.with_prefix(&[tag], |out| shard.checkpoint(out))?;
        }
        Ok(())
    }

    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        let mut parts: Vec<Vec<StateEntry>> = vec![Vec::new(); self.shards.len()];
        for (mut key, value) in entries {
            let Some(&tag) = key.first() else {
                return Err(MillraceError::storage(
                    "a checkpointed shard entry has no shard",
                ));
            };
            let part = parts.get_mut(usize::from(tag)).ok_or_else(|| {
                MillraceError::storage(format!(
                    "the checkpoint was taken with more than {} workers",
                    self.shards.len()
                ))
            })?;
            key.remove(0);
            part.push((key, value));
        }
        for (shard, part) in self.shards.iter_mut().zip(parts) {
            shard.restore(part)?;
        }
        Ok(())
    }

    fn advance(
        &mut self,
        inputs: &[&Watermarks],
        output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        let mut parts = Vec::new();
        for shard in &mut self.shards {
            if let Some(b) = shard.advance(inputs, output)? {
                parts.push(b);
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(ChangeBatch::concat(self.schema.clone(), &parts)?))
    }
}
