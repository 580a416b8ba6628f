//! [`StateStore`] on redb: one redb table holds every namespace, with keys
//! prefixed by `namespace \0` (as in the sled store), and each
//! [`WriteBatch`] is one redb write transaction committed with
//! `Durability::Immediate`, so it is on disk when `write` returns.
//!
//! redb keeps a checksum of every page and a two-slot commit header. On
//! open, [`RedbStore::open`] runs redb's integrity check: a file left by a
//! crash rolls back to its last committed transaction, and a file whose
//! committed pages fail their checksums is refused with an error naming the
//! file, never read.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{namespaced_key, StateStore, WriteBatch};
use crate::error::{MillraceError, Result};

/// The one table; see the module docs.
const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("millrace");

/// The redb-backed state store, in one file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the store in file `path`, checking every page of
    /// an existing file against its checksum first.
    pub fn open(path: &Path) -> Result<Self> {
        let refused = |e: &dyn std::fmt::Display| {
            MillraceError::storage(format!(
                "cannot open state store {}: {e}; the file is damaged, restore it from a backup or move it away to start empty",
                path.display()
            ))
        };
        // redb reports most damage as errors, but some (a damaged page of
        // its allocator state) as a panic while opening. Nothing of the
        // store is shared yet, so a panic here leaves nothing half-done:
        // turn it into the same refusal.
        let opened = std::panic::catch_unwind(|| -> Result<Database> {
            let mut db = Database::create(path).map_err(|e| refused(&e))?;
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    path = %path.display(),
                    "state store was repaired after an unclean shutdown: back to its last committed write"
                ),
                Err(e) => return Err(refused(&e)),
            }
            Ok(db)
        });
        let db = match opened {
            Ok(db) => db?,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the store failed while reading it");
                return Err(refused(&why));
            }
        };
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> MillraceError {
        MillraceError::storage(format!("state store {}: {e}", self.path.display()))
    }
}

impl StateStore for RedbStore {
    fn scan(&self, namespace: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = namespaced_key(namespace, &[]);
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(STATE) {
            Ok(t) => t,
            // Nothing was ever written.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.error(e)),
        };
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8]>(prefix.as_slice()..)
            .map_err(|e| self.error(e))?
        {
            let (k, v) = entry.map_err(|e| self.error(e))?;
            let Some(key) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            out.push((key.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = namespaced_key(namespace, key);
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let value = table
            .get(key.as_slice())
            .map_err(|e| self.error(e))?
            .map(|v| v.value().to_vec());
        Ok(value)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(STATE).map_err(|e| self.error(e))?;
            let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = batch
                .ops
                .into_iter()
                .map(|op| (namespaced_key(&op.namespace, &op.key), op.value))
                .collect();
            // In key order, each B-tree page is copied once per commit
            // rather than once per key that lands on it (a checkpoint's
            // keys come in hash order). The sort is stable: writes to one
            // key keep their order.
            ops.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in ops {
                match value {
                    Some(v) => {
                        table
                            .insert(key.as_slice(), v.as_slice())
                            .map_err(|e| self.error(e))?;
                    }
                    None => {
                        table.remove(key.as_slice()).map_err(|e| self.error(e))?;
                    }
                }
            }
        }
        crate::crash::hit("store-commit");
        txn.commit().map_err(|e| self.error(e))
    }

    fn drop_namespace(&self, namespace: &str) -> Result<()> {
        let prefix = namespaced_key(namespace, &[]);
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(STATE).map_err(|e| self.error(e))?;
            let mut end = prefix.clone();
            // The namespace's keys all start with `namespace \0`: they sort
            // before `namespace \x01`.
            if let Some(last) = end.last_mut() {
                *last = 1;
            }
            table
                .retain_in::<&[u8], _>(prefix.as_slice()..end.as_slice(), |_, _| false)
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    fn flush(&self) -> Result<()> {
        // Every write is already durable.
        Ok(())
    }
}
