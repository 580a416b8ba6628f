//! [`StateStore`] on sled: one sled tree holds every namespace, with keys
//! prefixed by `namespace \0`, so that a batch touching several namespaces is
//! one atomic sled batch. sled buffers writes in memory; each `write` ends
//! with a flush so that it is durable when it returns.

use std::path::Path;

use super::{namespaced_key as prefixed, StateStore, WriteBatch};
use crate::error::{MillraceError, Result};

/// The sled-backed state store.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: &Path) -> Result<Self> {
        // sled releases its file lock only when its background flusher
        // ends, shortly after the last handle is dropped: a store reopened
        // by the same process right away (a test, the store benchmark)
        // waits for that, briefly. Another process holding the store is
        // still refused, after the wait.
        let mut waited = std::time::Duration::ZERO;
        let step = std::time::Duration::from_millis(50);
        let db = loop {
            match sled::Config::new()
                .path(path)
                .flush_every_ms(Some(200))
                .open()
            {
                Ok(db) => break db,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && waited < std::time::Duration::from_secs(2) =>
                {
                    std::thread::sleep(step);
                    waited += step;
                }
                Err(e) => {
                    return Err(MillraceError::storage(format!(
                        "cannot open state store at {}: {e}",
                        path.display()
                    )))
                }
            }
        };
        let tree = db.open_tree("millrace").map_err(MillraceError::storage)?;
        Ok(Self { db, tree })
    }
}

impl StateStore for SledStore {
    fn scan(&self, namespace: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = prefixed(namespace, &[]);
        self.tree
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(MillraceError::storage)?;
                Ok((k[prefix.len()..].to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self
            .tree
            .get(prefixed(namespace, key))
            .map_err(MillraceError::storage)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut sled_batch = sled::Batch::default();
        for op in batch.ops {
            let key = prefixed(&op.namespace, &op.key);
            match op.value {
                Some(v) => sled_batch.insert(key, v),
                None => sled_batch.remove(key),
            }
        }
        self.tree
            .apply_batch(sled_batch)
            .map_err(MillraceError::storage)?;
        self.flush()
    }

    fn drop_namespace(&self, namespace: &str) -> Result<()> {
        let prefix = prefixed(namespace, &[]);
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(MillraceError::storage)?;
            batch.remove(k);
        }
        self.tree
            .apply_batch(batch)
            .map_err(MillraceError::storage)?;
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(MillraceError::storage)?;
        Ok(())
    }
}
