//! Durable storage behind a narrow [`StateStore`] trait.
//!
//! Everything Millrace persists (the catalog and table contents) goes through
//! this trait: keyed byte values grouped into namespaces, written in atomic,
//! durable batches. The engine never sees the embedded store behind it. Two
//! implementations exist, redb (the default) and sled, chosen per data
//! directory when it is created; `docs/storage.md` has the measurements
//! behind the default.

mod redb_store;
mod sled_store;

use std::path::Path;
use std::sync::Arc;

pub use redb_store::RedbStore;
pub use sled_store::SledStore;

use crate::error::{MillraceError, Result};

/// Which embedded store holds a data directory's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// redb: one file, `state.redb`, page checksums, fsync per commit.
    Redb,
    /// sled: a directory, `state`.
    Sled,
}

impl StoreKind {
    /// The store a new data directory gets.
    pub const DEFAULT: StoreKind = StoreKind::Redb;

    /// The name used in options and messages.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Redb => "redb",
            StoreKind::Sled => "sled",
        }
    }

    /// Where this store keeps its state inside a data directory.
    fn path_in(self, dir: &Path) -> std::path::PathBuf {
        match self {
            StoreKind::Redb => dir.join("state.redb"),
            StoreKind::Sled => dir.join("state"),
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = MillraceError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "redb" => Ok(StoreKind::Redb),
            "sled" => Ok(StoreKind::Sled),
            other => Err(MillraceError::storage(format!(
                "unknown state store \"{other}\": expected redb or sled"
            ))),
        }
    }
}

/// Opens the state store of data directory `dir`. A directory that already
/// holds a store keeps it: asking for the other kind is an error, since
/// the state is not converted. A new directory gets `requested`, or
/// [`StoreKind::DEFAULT`].
pub fn open_in(dir: &Path, requested: Option<StoreKind>) -> Result<Arc<dyn StateStore>> {
    let existing: Vec<StoreKind> = [StoreKind::Redb, StoreKind::Sled]
        .into_iter()
        .filter(|k| k.path_in(dir).exists())
        .collect();
    let kind = match (existing.as_slice(), requested) {
        ([], r) => r.unwrap_or(StoreKind::DEFAULT),
        ([found], None) => *found,
        ([found], Some(r)) if *found == r => r,
        ([found], Some(r)) => {
            return Err(MillraceError::storage(format!(
                "the data directory {} holds a {} state store; it cannot be opened as {} (start without --state-store, or use a new data directory)",
                dir.display(),
                found.name(),
                r.name()
            )))
        }
        _ => {
            return Err(MillraceError::storage(format!(
                "the data directory {} holds both a redb and a sled state store; move one away",
                dir.display()
            )))
        }
    };
    std::fs::create_dir_all(dir)?;
    let path = kind.path_in(dir);
    Ok(match kind {
        StoreKind::Redb => Arc::new(RedbStore::open(&path)?),
        StoreKind::Sled => Arc::new(SledStore::open(&path)?),
    })
}

/// The store key of `key` in `namespace`: `namespace \0 key`, so that one
/// ordered keyspace holds every namespace and a prefix scan reads one.
pub(crate) fn namespaced_key(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// One change in a [`WriteBatch`]: `value: None` deletes the key.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// The namespace (like a table in the store).
    pub namespace: String,
    /// The key within the namespace.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// A set of writes applied atomically: after a crash either all or none are
/// visible.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// The writes, applied in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Sets `key` to `value` in `namespace`.
    pub fn put(&mut self, namespace: &str, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp {
            namespace: namespace.to_string(),
            key,
            value: Some(value),
        });
    }

    /// Deletes `key` from `namespace`.
    pub fn delete(&mut self, namespace: &str, key: Vec<u8>) {
        self.ops.push(WriteOp {
            namespace: namespace.to_string(),
            key,
            value: None,
        });
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A durable key-value store with namespaces and atomic batches.
pub trait StateStore: Send + Sync {
    /// Every key and value of `namespace`, in key order.
    fn scan(&self, namespace: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The value of `key` in `namespace`, if any.
    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `batch` atomically and durably: when it returns, a crash of
    /// the process or the machine keeps all of it, and before, none.
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Deletes every key of `namespace`, durably.
    fn drop_namespace(&self, namespace: &str) -> Result<()>;

    /// Blocks until everything written so far is on disk (a no-op for a
    /// store whose writes are durable when they return).
    fn flush(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(dir: &Path) -> Vec<(StoreKind, Arc<dyn StateStore>)> {
        [StoreKind::Redb, StoreKind::Sled]
            .into_iter()
            .map(|k| {
                let sub = dir.join(k.name());
                (k, open_in(&sub, Some(k)).expect("open"))
            })
            .collect()
    }

    /// A write in a test: namespace, key, and value or `None` to delete.
    type TestOp<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    fn batch(ops: &[TestOp<'_>]) -> WriteBatch {
        let mut b = WriteBatch::default();
        for (ns, k, v) in ops {
            match v {
                Some(v) => b.put(ns, k.to_vec(), v.to_vec()),
                None => b.delete(ns, k.to_vec()),
            }
        }
        b
    }

    #[test]
    fn namespaces_are_separate_ordered_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (kind, store) in both(dir.path()) {
            store
                .write(batch(&[
                    ("t1", b"b", Some(b"2")),
                    ("t1", b"a", Some(b"1")),
                    // A namespace whose name extends another's.
                    ("t10", b"a", Some(b"x")),
                    ("t", b"z", Some(b"y")),
                ]))
                .expect("write");
            store
                .write(batch(&[("t1", b"b", None), ("t1", b"c", Some(b"3"))]))
                .expect("write");
            drop(store);
            let store = open_in(&dir.path().join(kind.name()), None)
                .unwrap_or_else(|e| panic!("reopen {kind:?}: {e}"));
            let t1 = store.scan("t1").expect("scan");
            assert_eq!(
                t1,
                vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"c".to_vec(), b"3".to_vec())
                ],
                "{kind:?}"
            );
            assert_eq!(store.scan("t10").expect("scan").len(), 1, "{kind:?}");
            assert_eq!(store.scan("t").expect("scan").len(), 1, "{kind:?}");
            assert_eq!(store.get("t1", b"c").expect("get"), Some(b"3".to_vec()));
            assert_eq!(store.get("t1", b"b").expect("get"), None, "{kind:?}");
            assert_eq!(store.get("t10", b"a").expect("get"), Some(b"x".to_vec()));
            assert_eq!(store.get("never", b"a").expect("get"), None, "{kind:?}");
            store.drop_namespace("t1").expect("drop");
            assert!(store.scan("t1").expect("scan").is_empty(), "{kind:?}");
            assert_eq!(store.scan("t10").expect("scan").len(), 1, "{kind:?}");
            assert!(store.scan("never").expect("scan").is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn a_data_directory_keeps_its_store_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(dir.path(), Some(StoreKind::Sled)).expect("open");
        drop(store);
        let err = open_in(dir.path(), Some(StoreKind::Redb))
            .err()
            .expect("asking for the other kind fails");
        assert!(
            err.to_string().contains("holds a sled state store"),
            "{err}"
        );
        // Without a request it opens as what it is.
        assert!(open_in(dir.path(), None).is_ok());
        assert!("lmdb".parse::<StoreKind>().is_err());
        assert_eq!("REDB".parse::<StoreKind>().ok(), Some(StoreKind::Redb));
    }

    /// A store with `rows` keys of 100-byte values, closed.
    fn filled_redb(dir: &Path, rows: u32) -> std::path::PathBuf {
        let store = open_in(dir, Some(StoreKind::Redb)).expect("open");
        let mut b = WriteBatch::default();
        for i in 0..rows {
            b.put("rows", i.to_be_bytes().to_vec(), vec![(i % 251) as u8; 100]);
        }
        store.write(b).expect("write");
        drop(store);
        StoreKind::Redb.path_in(dir)
    }

    #[test]
    fn a_bit_flipped_redb_file_is_refused_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = filled_redb(dir.path(), 20_000);
        let mut bytes = std::fs::read(&path).expect("read");
        // Flip one bit in every 4 KiB page after the header: whichever
        // pages hold the data, some are damaged.
        let mut at = 4096 + 1000;
        while at < bytes.len() {
            bytes[at] ^= 0x10;
            at += 4096;
        }
        std::fs::write(&path, &bytes).expect("write");
        let err = open_in(dir.path(), None)
            .err()
            .expect("a damaged store must not open");
        let text = err.to_string();
        assert!(text.contains("state.redb"), "{text}");
        assert!(text.contains("damaged"), "{text}");
    }

    #[test]
    fn a_single_flipped_bit_anywhere_is_refused_or_rolled_back_never_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = filled_redb(dir.path(), 20_000);
        let clean = std::fs::read(&path).expect("read");
        let expected = |i: u32| vec![(i % 251) as u8; 100];
        for tenth in 1..10 {
            let mut bytes = clean.clone();
            let at = clean.len() * tenth / 10 + 17;
            bytes[at] ^= 0x04;
            std::fs::write(&path, &bytes).expect("write");
            let Ok(store) = open_in(dir.path(), None) else {
                continue;
            };
            let Ok(rows) = store.scan("rows") else {
                continue;
            };
            // What is served is a committed state: all of the one write,
            // or (rolled back) nothing.
            if !rows.is_empty() {
                assert_eq!(rows.len(), 20_000, "flip at {at}");
                for (k, v) in rows {
                    let i = u32::from_be_bytes(k.as_slice().try_into().expect("key"));
                    assert_eq!(v, expected(i), "flip at {at}, key {i}");
                }
            }
        }
    }

    #[test]
    fn a_truncated_redb_file_is_refused_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = filled_redb(dir.path(), 20_000);
        let len = std::fs::metadata(&path).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(len / 2).expect("truncate");
        drop(file);
        match open_in(dir.path(), None) {
            Err(e) => assert!(e.to_string().contains("state.redb"), "{e}"),
            // If redb could roll back to an intact earlier commit, what it
            // serves must be exactly that commit: here, the empty store.
            Ok(store) => {
                let rows = store.scan("rows").expect("scan");
                assert!(rows.is_empty() || rows.len() == 20_000, "{}", rows.len());
            }
        }
    }
}
