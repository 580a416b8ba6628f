//! Durable storage behind a narrow [`StateStore`] trait.
//!
//! Everything Millrace persists (the catalog and table contents) goes through
//! this trait: keyed byte values grouped into namespaces, written in atomic
//! batches. The engine never sees the embedded store behind it, so the store
//! can be swapped (see `docs/architecture.md`).

mod sled_store;

pub use sled_store::SledStore;

use crate::error::Result;

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

    /// Applies `batch` atomically.
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Deletes every key of `namespace`.
    fn drop_namespace(&self, namespace: &str) -> Result<()>;

    /// Blocks until everything written so far is on disk.
    fn flush(&self) -> Result<()>;
}
