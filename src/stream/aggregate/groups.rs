//! The group table of the aggregate: group keys in Arrow row format mapped
//! to dense group ids, which index every per-aggregate state vector.
//!
//! Ids of groups that disappear are reused, so state vectors stay as long as
//! the largest number of groups alive at once. Hashes are computed per batch
//! over the key columns (vectorized) and kept per group, so growing the table
//! never rehashes key bytes.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::row::Rows;
use datafusion::common::hash_utils::{create_hashes, RandomState};
use hashbrown::HashTable;

use crate::error::Result;

/// Seed of the group hash. It differs from the seed used to route rows to
/// worker shards: with the same seed, every hash inside one shard would have
/// the same low bits and crowd the table's buckets.
const GROUP_HASH_SEED: u64 = 0x6d69_6c6c_7261_6365;

/// Group keys to dense ids.
#[derive(Default)]
pub(super) struct GroupTable {
    table: HashTable<u32>,
    keys: Vec<Box<[u8]>>,
    hashes: Vec<u64>,
    free: Vec<u32>,
    hash_buffer: Vec<u64>,
}

impl GroupTable {
    /// Hashes the key columns of a batch; call before [`GroupTable::intern`].
    pub(super) fn hash_batch(&mut self, key_columns: &[ArrayRef], rows: usize) -> Result<()> {
        self.hash_buffer.clear();
        self.hash_buffer.resize(rows, 0);
        create_hashes(
            key_columns,
            &RandomState::with_seed(GROUP_HASH_SEED),
            &mut self.hash_buffer,
        )?;
        Ok(())
    }

    /// The id of the group of row `row` of `rows` (hashed by the last
    /// [`GroupTable::hash_batch`]), creating the group when it is new. A new
    /// group takes a removed group's id (whose state was reset when it was
    /// removed) or, when there is none, one past the largest id so far.
    pub(super) fn intern(&mut self, rows: &Rows, row: usize) -> u32 {
        let key = rows.row(row).data();
        let hash = self.hash_buffer[row];
        let keys = &self.keys;
        if let Some(&id) = self
            .table
            .find(hash, |&id| keys[id as usize].as_ref() == key)
        {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = key.into();
                self.hashes[id as usize] = hash;
                id
            }
            None => {
                self.keys.push(key.into());
                self.hashes.push(hash);
                self.keys.len() as u32 - 1
            }
        };
        let hashes = &self.hashes;
        self.table
            .insert_unique(hash, id, |&id| hashes[id as usize]);
        id
    }

    /// The key of group `id` in row format.
    pub(super) fn key(&self, id: u32) -> &[u8] {
        &self.keys[id as usize]
    }

    /// Removes group `id`; its id may be handed out again.
    pub(super) fn remove(&mut self, id: u32) {
        let hash = self.hashes[id as usize];
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == id) {
            entry.remove();
            self.keys[id as usize] = Box::default();
            self.free.push(id);
        }
    }

    /// Number of live groups.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}
