//! The checkpoint log: view state changes appended as one store value per
//! checkpoint, and folded into the keyed view namespaces now and then.
//!
//! Writing each changed operator key and contents row into the store's
//! B-tree at every checkpoint costs a tree update per key, and most keys
//! change again a few checkpoints later (a window's group is updated with
//! every event until the window closes, then deleted). So a checkpoint
//! appends its view state changes, encoded, as one entry of the
//! `checkpoint_log` namespace, in the same atomic write as the rest of the
//! checkpoint, and keeps them in memory, latest change per key. Every
//! [`MAX_ENTRIES`] checkpoints, or once the changes held reach
//! [`MAX_BYTES`], a checkpoint instead writes the held changes and its own
//! into the keyed namespaces and deletes the log entries, in one write: a
//! key changed many times between two such compactions is written once,
//! and a key created and deleted between them never. On start the log is
//! read back over the keyed namespaces ([`CheckpointLog::load`],
//! [`CheckpointLog::entries_of`]).
//!
//! Clearing a namespace (a view rebuilt or dropped) drops the changes
//! held for it; the caller deletes its keyed contents in the same write.
//!
//! An entry is a sequence of operations: kind (`0` clear a namespace's
//! logged changes, `1` put, `2` delete), the namespace (u16 length, bytes), then for put and
//! delete the key (u32 length, bytes) and for put the value (u32 length,
//! bytes). Lengths are little-endian.

use std::collections::{BTreeMap, HashMap};

use crate::error::{MillraceError, Result};
use crate::storage::{StateStore, WriteBatch};

/// The namespace of log entries, keyed by sequence number (u64,
/// big-endian).
pub const LOG_NAMESPACE: &str = "checkpoint_log";
/// Checkpoints logged before the next one compacts, unless
/// `MILLRACE_CHECKPOINT_LOG_ENTRIES` says otherwise.
pub const MAX_ENTRIES: usize = 64;
/// Bytes of held changes (keys and values) that make the next checkpoint
/// compact; a single checkpoint this large is written keyed at once.
pub const MAX_BYTES: usize = 128 << 20;

const CLEAR: u8 = 0;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// The view state changes of one checkpoint, in order.
#[derive(Debug, Default)]
pub struct StateOps {
    ops: Vec<(usize, Op)>,
    namespaces: Vec<String>,
    bytes: usize,
}

#[derive(Debug)]
enum Op {
    Clear,
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl StateOps {
    /// The index of `namespace`, added once.
    fn namespace(&mut self, namespace: &str) -> usize {
        match self.namespaces.iter().rposition(|n| n == namespace) {
            Some(i) => i,
            None => {
                self.namespaces.push(namespace.to_string());
                self.namespaces.len() - 1
            }
        }
    }

    /// Voids the logged changes of `namespace` before this operation (the
    /// caller deletes its keyed contents in the same write).
    pub fn clear(&mut self, namespace: &str) {
        let ns = self.namespace(namespace);
        self.ops.push((ns, Op::Clear));
    }

    /// Sets `key` in `namespace` to `value`.
    pub fn put(&mut self, namespace: &str, key: Vec<u8>, value: Vec<u8>) {
        let ns = self.namespace(namespace);
        self.bytes += key.len() + value.len();
        self.ops.push((ns, Op::Put(key, value)));
    }

    /// Deletes `key` from `namespace`.
    pub fn delete(&mut self, namespace: &str, key: Vec<u8>) {
        let ns = self.namespace(namespace);
        self.bytes += key.len();
        self.ops.push((ns, Op::Delete(key)));
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + self.ops.len() * 16);
        for (ns, op) in &self.ops {
            let name = self.namespaces[*ns].as_bytes();
            let kind = match op {
                Op::Clear => CLEAR,
                Op::Put(..) => PUT,
                Op::Delete(_) => DELETE,
            };
            out.push(kind);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            match op {
                Op::Clear => {}
                Op::Put(k, v) => {
                    put_bytes(&mut out, k);
                    put_bytes(&mut out, v);
                }
                Op::Delete(k) => put_bytes(&mut out, k),
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || MillraceError::storage("a checkpoint log entry is malformed");
        let mut ops = Self::default();
        let mut rest = bytes;
        let take = |n: usize, rest: &mut &[u8]| -> Result<Vec<u8>> {
            let (head, tail) = rest.split_at_checked(n).ok_or_else(corrupt)?;
            *rest = tail;
            Ok(head.to_vec())
        };
        while let Some((&kind, tail)) = rest.split_first() {
            rest = tail;
            let len = u16::from_le_bytes(take(2, &mut rest)?.try_into().map_err(|_| corrupt())?);
            let name = String::from_utf8(take(len as usize, &mut rest)?).map_err(|_| corrupt())?;
            let field = |rest: &mut &[u8]| -> Result<Vec<u8>> {
                let len = u32::from_le_bytes(take(4, rest)?.try_into().map_err(|_| corrupt())?);
                take(len as usize, rest)
            };
            match kind {
                CLEAR => ops.clear(&name),
                PUT => {
                    let key = field(&mut rest)?;
                    let value = field(&mut rest)?;
                    ops.put(&name, key, value);
                }
                DELETE => {
                    let key = field(&mut rest)?;
                    ops.delete(&name, key);
                }
                _ => return Err(corrupt()),
            }
        }
        Ok(ops)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The changes held for one namespace since the last compaction.
#[derive(Debug, Default)]
struct Held {
    /// The latest value of each changed key (`None`: deleted).
    keys: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

/// The log's state: what is in the store's log, folded per key.
#[derive(Debug)]
pub struct CheckpointLog {
    /// Checkpoints logged before the next one compacts.
    max_entries: usize,
    held: HashMap<String, Held>,
    /// Sequence numbers of the log entries in the store.
    entries: Vec<u64>,
    next_seq: u64,
    bytes: usize,
}

impl Default for CheckpointLog {
    fn default() -> Self {
        Self {
            max_entries: MAX_ENTRIES,
            held: HashMap::new(),
            entries: Vec::new(),
            next_seq: 0,
            bytes: 0,
        }
    }
}

impl CheckpointLog {
    /// Reads the log entries in the store, in order. `max_entries`:
    /// checkpoints logged before one compacts (0 compacts every time).
    pub fn load(store: &dyn StateStore, max_entries: usize) -> Result<Self> {
        let mut log = Self {
            max_entries,
            ..Self::default()
        };
        for (key, value) in store.scan(LOG_NAMESPACE)? {
            let seq = <[u8; 8]>::try_from(key.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| MillraceError::storage("a malformed checkpoint log key"))?;
            log.hold(StateOps::decode(&value)?);
            log.entries.push(seq);
            log.next_seq = seq + 1;
        }
        Ok(log)
    }

    fn hold(&mut self, ops: StateOps) {
        let StateOps {
            ops: list,
            namespaces,
            ..
        } = ops;
        for (ns, op) in list {
            let held = self.held.entry(namespaces[ns].clone()).or_default();
            match op {
                Op::Clear => {
                    for (k, v) in held.keys.drain() {
                        self.bytes = self
                            .bytes
                            .saturating_sub(k.len() + v.map_or(0, |v| v.len()));
                    }
                }
                Op::Put(k, v) => {
                    let key_len = k.len();
                    self.bytes += key_len + v.len();
                    if let Some(old) = held.keys.insert(k, Some(v)) {
                        self.bytes = self
                            .bytes
                            .saturating_sub(key_len + old.map_or(0, |v| v.len()));
                    }
                }
                Op::Delete(k) => {
                    if let Some(old) = held.keys.get_mut(&k) {
                        self.bytes = self.bytes.saturating_sub(old.take().map_or(0, |v| v.len()));
                    } else {
                        self.bytes += k.len();
                        held.keys.insert(k, None);
                    }
                }
            }
        }
    }

    /// Adds one checkpoint's view state changes to `writes`: as a log
    /// entry, or, when it is time to compact, together with every held
    /// change as keyed writes.
    pub fn write(&mut self, ops: StateOps, writes: &mut WriteBatch) {
        let compact = self.entries.len() >= self.max_entries
            || self.bytes + ops.bytes >= MAX_BYTES
            || (self.entries.is_empty() && ops.bytes >= MAX_BYTES / 4);
        if !compact {
            if !ops.ops.is_empty() {
                self.append(ops, writes);
            }
            return;
        }
        crate::crash::hit("compaction");
        if self.held.is_empty() {
            // Nothing held: the checkpoint's own changes, in order. (A
            // clear comes before its namespace's other changes, and voids
            // only logged ones, of which there are none.)
            let StateOps {
                ops: list,
                namespaces,
                ..
            } = ops;
            for (ns, op) in list {
                match op {
                    Op::Clear => {}
                    Op::Put(k, v) => writes.put(&namespaces[ns], k, v),
                    Op::Delete(k) => writes.delete(&namespaces[ns], k),
                }
            }
        } else {
            self.hold(ops);
        }
        let mut held: Vec<(String, Held)> = self.held.drain().collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        for (ns, h) in held {
            for (key, value) in h.keys {
                match value {
                    Some(v) => writes.put(&ns, key, v),
                    None => writes.delete(&ns, key),
                }
            }
        }
        for seq in self.entries.drain(..) {
            writes.delete(LOG_NAMESPACE, seq.to_be_bytes().to_vec());
        }
        self.bytes = 0;
    }

    /// Adds `ops` to `writes` as the next log entry, and holds them.
    fn append(&mut self, ops: StateOps, writes: &mut WriteBatch) {
        writes.put(
            LOG_NAMESPACE,
            self.next_seq.to_be_bytes().to_vec(),
            ops.encode(),
        );
        self.entries.push(self.next_seq);
        self.next_seq += 1;
        self.hold(ops);
    }

    /// The keys of `namespace` as the last checkpoint left them: the
    /// store's keyed contents with the held changes over them, in key
    /// order.
    pub fn entries_of(
        &self,
        store: &dyn StateStore,
        namespace: &str,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(held) = self.held.get(namespace) else {
            return store.scan(namespace);
        };
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = store.scan(namespace)?.into_iter().collect();
        for (k, v) in &held.keys {
            match v {
                Some(v) => entries.insert(k.clone(), v.clone()),
                None => entries.remove(k),
            };
        }
        Ok(entries.into_iter().collect())
    }

    /// Forgets `namespace` (its view was dropped), adding to `writes` a log
    /// entry that clears it, so that a restart does not read the held
    /// changes back into it.
    pub fn forget(&mut self, namespace: &str, writes: &mut WriteBatch) {
        let mut ops = StateOps::default();
        ops.clear(namespace);
        self.append(ops, writes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RedbStore;

    fn keys(log: &CheckpointLog, store: &dyn StateStore, ns: &str) -> Vec<(String, String)> {
        log.entries_of(store, ns)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn logged_changes_read_back_over_the_keyed_state_and_compact_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let mut log = CheckpointLog::default();
        // The first checkpoint is logged.
        let mut ops = StateOps::default();
        ops.put("v/1", b"a".to_vec(), b"1".to_vec());
        ops.put("v/1", b"b".to_vec(), b"2".to_vec());
        ops.put("v/2", b"x".to_vec(), b"9".to_vec());
        let mut w = WriteBatch::default();
        log.write(ops, &mut w);
        store.write(w).unwrap();
        assert!(store.scan("v/1").unwrap().is_empty());
        assert_eq!(keys(&log, &store, "v/1"), pairs(&[("a", "1"), ("b", "2")]));
        // A restart reads it back.
        let mut log = CheckpointLog::load(&store, MAX_ENTRIES).unwrap();
        assert_eq!(keys(&log, &store, "v/1"), pairs(&[("a", "1"), ("b", "2")]));
        // Later changes win; a deletion hides the key; a cleared namespace
        // starts empty.
        let mut ops = StateOps::default();
        ops.put("v/1", b"a".to_vec(), b"3".to_vec());
        ops.delete("v/1", b"b".to_vec());
        ops.clear("v/2");
        ops.put("v/2", b"y".to_vec(), b"8".to_vec());
        let mut w = WriteBatch::default();
        log.write(ops, &mut w);
        store.write(w).unwrap();
        let log = CheckpointLog::load(&store, MAX_ENTRIES).unwrap();
        assert_eq!(keys(&log, &store, "v/1"), pairs(&[("a", "3")]));
        assert_eq!(keys(&log, &store, "v/2"), pairs(&[("y", "8")]));
        // Compaction writes the keyed state and empties the log.
        let mut log = log;
        log.entries.extend(std::iter::repeat_n(99, MAX_ENTRIES));
        let mut ops = StateOps::default();
        ops.put("v/1", b"c".to_vec(), b"4".to_vec());
        let mut w = WriteBatch::default();
        log.write(ops, &mut w);
        store.write(w).unwrap();
        assert!(store.scan(LOG_NAMESPACE).unwrap().is_empty());
        let log = CheckpointLog::load(&store, MAX_ENTRIES).unwrap();
        assert_eq!(keys(&log, &store, "v/1"), pairs(&[("a", "3"), ("c", "4")]));
        assert_eq!(store.scan("v/2").unwrap().len(), 1);
    }

    #[test]
    fn a_dropped_namespace_is_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let mut log = CheckpointLog::default();
        let mut ops = StateOps::default();
        ops.put("v/1", b"a".to_vec(), b"1".to_vec());
        let mut w = WriteBatch::default();
        log.write(ops, &mut w);
        log.forget("v/1", &mut w);
        store.write(w).unwrap();
        let log = CheckpointLog::load(&store, MAX_ENTRIES).unwrap();
        assert!(keys(&log, &store, "v/1").is_empty());
    }

    #[test]
    fn a_malformed_entry_is_an_error() {
        let mut ops = StateOps::default();
        ops.put("v/1", b"key".to_vec(), b"value".to_vec());
        let bytes = ops.encode();
        assert!(StateOps::decode(&bytes).is_ok());
        for cut in 1..bytes.len() {
            assert!(StateOps::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(StateOps::decode(&[7, 0, 0]).is_err());
    }
}
