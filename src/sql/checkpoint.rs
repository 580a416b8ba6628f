//! Checkpoints: how the state of materialized views and the positions of
//! the source readers feeding them are laid out in the state store, and
//! what a view remembers between two checkpoints.
//!
//! A checkpoint is one atomic store write holding, for every view whose
//! operators can checkpoint, the operator state and the contents rows that
//! changed since the previous checkpoint, the position of every reader
//! feeding such a view, and the epoch the whole cut belongs to. On start,
//! the engine reads the last checkpoint back instead of rebuilding those
//! views, and their readers go on from the saved positions, so every row
//! a source produced is counted exactly once. `docs/durability.md` states
//! what that promises.
//!
//! Layout, one namespace per view (`view_state/<catalog id>`):
//! `l` the dataflow's layout; `o` + node (u32, big-endian) + key an
//! operator's state; `c` + row a contents row and its count; `a` + sequence
//! (u64, big-endian) a batch of append-only contents (Arrow IPC). Reader
//! positions live in `source_positions` under view id and source name; the
//! last checkpoint's epoch and time under `checkpoint`.
//!
//! Sinks keep a log: each checkpoint writes the changes a sink's relation
//! made since the previous one as one entry of `sink_log`, keyed by sink id
//! and a sequence number (both u64, big-endian), and `sink_progress` holds,
//! per sink id, the last sequence the sink delivered. A sink is handed an
//! entry only once its checkpoint is durable, and after a restart it is
//! handed again every entry after the one it last delivered.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::error::{MillraceError, Result};
use crate::stream::ChangeBatch;

/// The namespace of the last checkpoint's epoch and time.
pub const CHECKPOINT_NAMESPACE: &str = "checkpoint";
/// The key of the last checkpoint's record.
pub const LAST_CHECKPOINT_KEY: &[u8] = b"last";
/// The key marking view checkpoints as stale: a table was changed while
/// checkpoints could not be written, so the views are rebuilt on start.
pub const STALE_VIEWS_KEY: &[u8] = b"stale_views";
/// The namespace of reader positions.
pub const POSITIONS_NAMESPACE: &str = "source_positions";

/// The namespace of sink log entries (see the module documentation).
pub const SINK_LOG_NAMESPACE: &str = "sink_log";
/// The namespace of the last sequence number each sink delivered.
pub const SINK_PROGRESS_NAMESPACE: &str = "sink_progress";

/// The key of sink `sink_id`'s log entry `seq`.
pub fn sink_log_key(sink_id: u64, seq: u64) -> Vec<u8> {
    let mut key = sink_id.to_be_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sink id and sequence number of a `sink_log` key.
pub fn split_sink_log_key(key: &[u8]) -> Result<(u64, u64)> {
    let (id, seq) = key
        .split_first_chunk::<8>()
        .and_then(|(id, rest)| Some((id, rest.first_chunk::<8>()?)))
        .filter(|_| key.len() == 16)
        .ok_or_else(|| MillraceError::storage("a malformed sink log key"))?;
    Ok((u64::from_be_bytes(*id), u64::from_be_bytes(*seq)))
}

/// A sequence number as stored in `sink_progress`.
pub fn decode_sequence(bytes: &[u8]) -> Result<u64> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| MillraceError::storage("a malformed sink progress record"))?;
    Ok(u64::from_be_bytes(b))
}

/// Key prefix of a view's dataflow layout.
pub const LAYOUT_KEY: &[u8] = b"l";
/// Key prefix of operator state.
pub const OPERATOR_PREFIX: u8 = b'o';
/// Key prefix of keyed contents rows.
pub const ROW_PREFIX: u8 = b'c';
/// Key prefix of append-only contents batches.
pub const APPENDED_PREFIX: u8 = b'a';

/// The namespace holding view `id`'s checkpointed state.
pub fn view_namespace(id: u64) -> String {
    format!("view_state/{id}")
}

/// The key of the position of the reader of `source` feeding view `id`.
pub fn position_key(view_id: u64, source: &str) -> Vec<u8> {
    let mut key = view_id.to_be_bytes().to_vec();
    key.extend_from_slice(source.as_bytes());
    key
}

/// The store key of operator `node`'s state key `key`.
pub fn operator_key(node: usize, key: &[u8]) -> Result<Vec<u8>> {
    let node = u32::try_from(node)
        .map_err(|_| MillraceError::execution("too many operators to checkpoint"))?;
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(OPERATOR_PREFIX);
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(key);
    Ok(k)
}

/// Splits an operator key into its node and the operator's own key.
pub fn split_operator_key(key: &[u8]) -> Result<(usize, Vec<u8>)> {
    match key {
        [OPERATOR_PREFIX, a, b, c, d, rest @ ..] => {
            Ok((u32::from_be_bytes([*a, *b, *c, *d]) as usize, rest.to_vec()))
        }
        _ => Err(MillraceError::storage(
            "a checkpointed operator key is damaged",
        )),
    }
}

/// The last committed checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// The epoch the checkpoint's state belongs to.
    pub epoch: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub committed_at_ms: i64,
}

impl CheckpointRecord {
    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.epoch.to_le_bytes().to_vec();
        out.extend_from_slice(&self.committed_at_ms.to_le_bytes());
        out
    }

    /// The record [`CheckpointRecord::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || MillraceError::storage("the last checkpoint's record is damaged");
        if bytes.len() != 16 {
            return Err(bad());
        }
        let (e, t) = bytes.split_at(8);
        Ok(Self {
            epoch: u64::from_le_bytes(e.try_into().map_err(|_| bad())?),
            committed_at_ms: i64::from_le_bytes(t.try_into().map_err(|_| bad())?),
        })
    }
}

/// What a checkpointed view's contents did since the last checkpoint.
#[derive(Default)]
pub struct ViewChanges {
    /// Keyed contents: each changed row with its count now (0: gone).
    pub rows: HashMap<Arc<[u8]>, i64>,
    /// Append-only contents: the batches appended.
    pub appended: Vec<ChangeBatch>,
    /// The next sequence number of an appended batch.
    pub next_sequence: u64,
    /// The store's state for the view is not valid (a new or rebuilt
    /// view): the next checkpoint clears it and writes everything.
    pub reset: bool,
}

/// A batch as Arrow IPC stream bytes.
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut out, batch.schema_ref())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(out)
}

/// The batches of Arrow IPC stream `bytes`.
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(bytes, None)?;
    reader
        .map(|b| b.map_err(MillraceError::from))
        .collect::<Result<Vec<_>>>()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_operator_keys_round_trip() {
        let r = CheckpointRecord {
            epoch: 42,
            committed_at_ms: 1_700_000_000_123,
        };
        assert_eq!(CheckpointRecord::decode(&r.encode()).unwrap(), r);
        assert!(CheckpointRecord::decode(&[1, 2, 3]).is_err());
        let k = operator_key(7, b"xyz").unwrap();
        assert_eq!(split_operator_key(&k).unwrap(), (7, b"xyz".to_vec()));
        assert!(split_operator_key(b"c123").is_err());
        let k = sink_log_key(3, 900);
        assert_eq!(split_sink_log_key(&k).unwrap(), (3, 900));
        assert!(split_sink_log_key(&k[..15]).is_err());
        assert_eq!(decode_sequence(&7u64.to_be_bytes()).unwrap(), 7);
        assert!(decode_sequence(b"x").is_err());
    }
}
