//! The contract every incremental operator fulfils.
//!
//! The dataflow advances in epochs. In each epoch an operator receives, for
//! each of its inputs, the change (delta) that input underwent in the epoch,
//! and returns the change of its own output. An operator's output collection
//! after epoch `e` is always the operator's function applied to its input
//! collections after epoch `e`; the deltas are how it gets there without
//! recomputing.

use datafusion::arrow::datatypes::SchemaRef;

use super::change::ChangeBatch;
use super::watermark::Watermarks;
use crate::error::Result;

/// Counters an operator keeps about its work, used by tests and `EXPLAIN`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OperatorStats {
    /// Rows received across all inputs.
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// State entries (groups, join rows) read or written.
    pub state_touched: u64,
}

/// An incremental operator: maps input deltas to an output delta per epoch.
pub trait Operator: Send {
    /// One-line description for `EXPLAIN`.
    fn describe(&self) -> String;

    /// Schema of the rows this operator emits.
    fn schema(&self) -> SchemaRef;

    /// Processes one epoch. `inputs[i]` is the delta of input `i` in this
    /// epoch (`None` when it did not change). Returns the output delta, or
    /// `None` when the output did not change.
    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>>;

    /// Work counters since creation.
    fn stats(&self) -> OperatorStats;

    /// Called once per epoch after [`Operator::step`] when the graph carries
    /// watermarks, with each input's watermarks and this operator's output
    /// watermarks after the epoch. A stateful operator drops the state no
    /// future change can touch; one that holds rows back (`EMIT ON WINDOW
    /// CLOSE`) returns the rows the watermark released. The default does
    /// nothing.
    fn advance(
        &mut self,
        _inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        Ok(None)
    }

    /// The watermarks this operator itself sets on its output (a scan of a
    /// relation with a declared watermark), after the last step.
    fn own_watermarks(&self) -> Watermarks {
        Watermarks::none()
    }

    /// The earliest time (nanoseconds since the Unix epoch) at which the
    /// operator has a change scheduled (a temporal filter), if any: an
    /// epoch must run then even when no input changes.
    fn next_due(&self) -> Option<i64> {
        None
    }

    /// True when the operator keeps state between epochs.
    fn is_stateful(&self) -> bool {
        false
    }

    /// True when the operator can write its state at checkpoints and read
    /// it back ([`Operator::checkpoint`], [`Operator::restore`]). Stateless
    /// operators trivially can.
    fn checkpointable(&self) -> bool {
        !self.is_stateful()
    }

    /// From now on, remember which parts of the state change, so that a
    /// checkpoint writes only those. Called once, when the engine takes
    /// checkpoints: on a new operator before its first epoch, or right
    /// after [`Operator::restore`] (the state then equals the store's).
    fn track_changes(&mut self) {}

    /// Writes into `out` the state changed since the last checkpoint (all
    /// of it at the first), as keys of the operator's own part of the store.
    fn checkpoint(&mut self, _out: &mut StateChanges) -> Result<()> {
        Ok(())
    }

    /// Restores the state from every entry the operator's checkpoints left
    /// in the store, on a new operator that has run no epoch.
    fn restore(&mut self, _entries: Vec<StateEntry>) -> Result<()> {
        Ok(())
    }
}

/// One key and value of an operator's checkpointed state.
pub type StateEntry = (Vec<u8>, Vec<u8>);

/// The changes an operator's checkpoint makes to its part of the store:
/// puts, and deletes of keys whose state is gone. Applied in order; one
/// checkpoint changes each key at most once.
///
/// The operations are packed back to back in one buffer (see
/// [`codec::put_op`]), so that a checkpoint of many small changes (a
/// join's new rows) allocates nothing per change.
#[derive(Debug, Default)]
pub struct StateChanges {
    bytes: Vec<u8>,
    /// What every key starts with (see [`StateChanges::with_prefix`]).
    prefix: Vec<u8>,
    count: usize,
}

impl StateChanges {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.op(&[key.as_ref()], Some(value.as_ref()));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.op(&[key.as_ref()], None);
    }

    /// Sets, or deletes when `value` is `None`, the key made of
    /// `key_parts` put together.
    pub fn op(&mut self, key_parts: &[&[u8]], value: Option<&[u8]>) {
        codec::put_op(&mut self.bytes, &self.prefix, key_parts, value);
        self.count += 1;
    }

    /// Sets the key made of `key_parts` to `rows` with their weights, in
    /// the layout of [`codec::put_weighted_rows_op`], written straight
    /// into the changes (no value is built apart and copied).
    pub fn put_weighted_rows<'a>(
        &mut self,
        key_parts: &[&[u8]],
        rows: impl Iterator<Item = (&'a [u8], i64)> + Clone,
    ) {
        codec::put_weighted_rows_op(&mut self.bytes, &self.prefix, key_parts, rows);
        self.count += 1;
    }

    /// Runs `f` with `prefix` put before every key it writes (a
    /// partitioned operator's shard number, a view's operator number).
    pub fn with_prefix<T>(&mut self, prefix: &[u8], f: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.prefix.len();
        self.prefix.extend_from_slice(prefix);
        let result = f(self);
        self.prefix.truncate(before);
        result
    }

    /// How many operations there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether a put of a `key_len`-byte key and a `value_len`-byte value
    /// would take these changes past `limit` bytes (never when empty).
    pub fn would_exceed(&self, key_len: usize, value_len: usize, limit: usize) -> bool {
        !self.bytes.is_empty()
            && self.bytes.len() + 9 + self.prefix.len() + key_len + value_len > limit
    }

    /// Bytes of the operations so far.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The operations' bytes (in the layout of [`codec::put_op`]), leaving
    /// these changes empty.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        self.count = 0;
        std::mem::take(&mut self.bytes)
    }

    /// The operations in order: each key with its value, or `None` for a
    /// delete.
    pub fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        // The buffer is only ever written by `put_op`: it always parses.
        codec::ops(&self.bytes).map_while(|op| op.ok())
    }
}

/// Little-endian encoding helpers for checkpointed state values.
pub mod codec {
    use crate::error::{MillraceError, Result};

    /// Reads fixed-size and length-prefixed fields from a value in order.
    pub struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        /// A reader at the start of `bytes`.
        pub fn new(bytes: &'a [u8]) -> Self {
            Self { bytes }
        }

        /// The next `n` bytes.
        pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
            if self.bytes.len() < n {
                return Err(MillraceError::storage(
                    "a checkpointed state value is shorter than its layout",
                ));
            }
            let (head, rest) = self.bytes.split_at(n);
            self.bytes = rest;
            Ok(head)
        }

        /// The next `N` bytes as an array.
        fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
            let mut a = [0u8; N];
            a.copy_from_slice(self.take(N)?);
            Ok(a)
        }

        /// The next `i64`.
        pub fn i64(&mut self) -> Result<i64> {
            Ok(i64::from_le_bytes(self.array()?))
        }

        /// The next `i128`.
        pub fn i128(&mut self) -> Result<i128> {
            Ok(i128::from_le_bytes(self.array()?))
        }

        /// The next `f64`.
        pub fn f64(&mut self) -> Result<f64> {
            Ok(f64::from_le_bytes(self.array()?))
        }

        /// The next `u32`.
        pub fn u32(&mut self) -> Result<u32> {
            Ok(u32::from_le_bytes(self.array()?))
        }

        /// The next length-prefixed byte string.
        pub fn bytes(&mut self) -> Result<&'a [u8]> {
            let n = self.u32()? as usize;
            self.take(n)
        }

        /// How many bytes are left to read.
        pub fn remaining(&self) -> usize {
            self.bytes.len()
        }

        /// Whether every byte was read.
        pub fn is_done(&self) -> bool {
            self.bytes.is_empty()
        }
    }

    /// Appends one operation of a sequence of puts and deletes: the key's
    /// length (u32), the key (given in parts, written together), a flag
    /// (1 put, 0 delete), and for a put the value's length (u32) and the
    /// value. Operator checkpoints ([`super::StateChanges`]) and the runs
    /// a view's checkpoint writes use this one layout. The key is
    /// `prefix` followed by `key_parts`.
    pub fn put_op(out: &mut Vec<u8>, prefix: &[u8], key_parts: &[&[u8]], value: Option<&[u8]>) {
        let key_len: usize = prefix.len() + key_parts.iter().map(|p| p.len()).sum::<usize>();
        out.reserve(9 + key_len + value.map(<[u8]>::len).unwrap_or(0));
        out.extend_from_slice(&(key_len as u32).to_le_bytes());
        out.extend_from_slice(prefix);
        for part in key_parts {
            out.extend_from_slice(part);
        }
        match value {
            Some(v) => {
                out.push(1);
                put_bytes(out, v);
            }
            None => out.push(0),
        }
    }

    /// A put as [`put_op`] writes it, whose value is `rows` with their
    /// weights: a count (u32), then each row length-prefixed and its weight
    /// (i64), all little-endian. Appended to `out` without building the
    /// value apart.
    pub fn put_weighted_rows_op<'a>(
        out: &mut Vec<u8>,
        prefix: &[u8],
        key_parts: &[&[u8]],
        rows: impl Iterator<Item = (&'a [u8], i64)> + Clone,
    ) {
        let (count, value_len) = rows.clone().fold((0usize, 4usize), |(n, len), (row, _)| {
            (n + 1, len + 12 + row.len())
        });
        let key_len: usize = prefix.len() + key_parts.iter().map(|p| p.len()).sum::<usize>();
        out.reserve(9 + key_len + value_len);
        out.extend_from_slice(&(key_len as u32).to_le_bytes());
        out.extend_from_slice(prefix);
        for part in key_parts {
            out.extend_from_slice(part);
        }
        out.push(1);
        out.extend_from_slice(&(value_len as u32).to_le_bytes());
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for (row, w) in rows {
            put_bytes(out, row);
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// The operations [`put_op`] wrote into `bytes`, in order: each key
    /// with its value, or `None` for a delete. Damaged bytes yield one
    /// error, then nothing.
    pub fn ops(bytes: &[u8]) -> Ops<'_> {
        Ops {
            reader: Reader::new(bytes),
            failed: false,
        }
    }

    /// The iterator [`ops`] returns.
    pub struct Ops<'a> {
        reader: Reader<'a>,
        failed: bool,
    }

    /// `bytes` of operations ([`put_op`]) cut between operations into
    /// pieces of at most `limit` bytes (an operation alone may be larger).
    pub fn split_ops(bytes: &[u8], limit: usize) -> Result<Vec<&[u8]>> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut ops = ops(bytes);
        loop {
            let before = bytes.len() - ops.reader.remaining();
            if ops.next().transpose()?.is_none() {
                break;
            }
            let after = bytes.len() - ops.reader.remaining();
            if after - start > limit && before > start {
                pieces.push(&bytes[start..before]);
                start = before;
            }
        }
        if start < bytes.len() {
            pieces.push(&bytes[start..]);
        }
        Ok(pieces)
    }

    impl<'a> Ops<'a> {
        fn next_op(&mut self) -> Result<(&'a [u8], Option<&'a [u8]>)> {
            let key = self.reader.bytes()?;
            match self.reader.take(1)? {
                [1] => Ok((key, Some(self.reader.bytes()?))),
                [0] => Ok((key, None)),
                _ => Err(MillraceError::storage(
                    "a checkpointed operation is damaged",
                )),
            }
        }
    }

    impl<'a> Iterator for Ops<'a> {
        type Item = Result<(&'a [u8], Option<&'a [u8]>)>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.failed || self.reader.is_done() {
                return None;
            }
            let op = self.next_op();
            self.failed = op.is_err();
            Some(op)
        }
    }

    /// Appends `b` with its length in front.
    pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }

    /// The rows of values [`put_weighted_rows_op`] wrote, decoded with
    /// `converter` into one change of `schema` (`None` when there are no
    /// rows).
    pub fn decode_weighted_rows<'a>(
        values: impl Iterator<Item = &'a [u8]>,
        converter: &datafusion::arrow::row::RowConverter,
        schema: &datafusion::arrow::datatypes::SchemaRef,
    ) -> Result<Option<crate::stream::ChangeBatch>> {
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        for value in values {
            let mut r = Reader::new(value);
            for _ in 0..r.u32()? {
                rows.push(r.bytes()?);
                weights.push(r.i64()?);
            }
        }
        weighted_rows_batch(&rows, weights, converter, schema)
    }

    /// `rows` (row format) with `weights`, decoded with `converter` into
    /// one change of `schema` (`None` when there are no rows).
    pub fn weighted_rows_batch(
        rows: &[&[u8]],
        weights: Vec<i64>,
        converter: &datafusion::arrow::row::RowConverter,
        schema: &datafusion::arrow::datatypes::SchemaRef,
    ) -> Result<Option<crate::stream::ChangeBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let parser = converter.parser();
        let columns = converter.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        let data = crate::stream::change::batch_from_columns(schema.clone(), columns, rows.len())?;
        Ok(Some(crate::stream::ChangeBatch::try_new(
            data,
            datafusion::arrow::array::Int64Array::from(weights),
        )?))
    }
}

/// Restores an operator whose state is the rows it was fed: feeds it
/// `epochs` (each one step's inputs), dropping its output, which the view
/// already holds.
pub fn replay(op: &mut dyn Operator, epochs: Vec<Vec<Option<ChangeBatch>>>) -> Result<()> {
    for inputs in epochs {
        if inputs.iter().any(Option::is_some) {
            op.step(&inputs)?;
        }
    }
    Ok(())
}

/// Checks an operator's checkpoints: one copy runs every epoch, taking a
/// checkpoint after each into a map that stands for the store; at each
/// epoch a second copy is restored from that map and must go on exactly
/// as the first (same output for every later epoch).
#[cfg(test)]
pub mod checkpoint_testing {
    use std::collections::BTreeMap;

    use super::{Operator, StateChanges};
    use crate::stream::change::ChangeBatch;
    use crate::stream::pretty::to_pretty_lines;

    fn lines(out: Option<ChangeBatch>) -> Vec<String> {
        let mut v = out
            .map(|b| to_pretty_lines(&b.consolidate().unwrap()).unwrap())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs `epochs` (each the inputs of one step) through operators made
    /// by `make`, restoring a fresh copy after every epoch and comparing.
    pub fn assert_restores_exactly(
        make: impl Fn() -> Box<dyn Operator>,
        epochs: &[Vec<Option<ChangeBatch>>],
    ) {
        assert_restores_exactly_at(make, epochs, |_| {});
    }

    /// [`assert_restores_exactly`] where `before(e)` runs before every step
    /// of epoch `e` (it sets the time a temporal filter reads).
    pub fn assert_restores_exactly_at(
        make: impl Fn() -> Box<dyn Operator>,
        epochs: &[Vec<Option<ChangeBatch>>],
        before: impl Fn(usize),
    ) {
        let mut original = make();
        original.track_changes();
        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut written = 0usize;
        for cut in 0..epochs.len() {
            before(cut);
            original.step(&epochs[cut]).unwrap();
            let mut changes = StateChanges::default();
            original.checkpoint(&mut changes).unwrap();
            written += changes.len();
            for (k, v) in changes.ops() {
                match v {
                    Some(v) => store.insert(k.to_vec(), v.to_vec()),
                    None => store.remove(k),
                };
            }
            // A copy restored here must continue like the original.
            let mut restored = make();
            restored
                .restore(store.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap();
            restored.track_changes();
            let mut reference = make();
            reference.track_changes();
            for (i, e) in epochs[..=cut].iter().enumerate() {
                before(i);
                reference.step(e).unwrap();
            }
            for (later, e) in epochs[cut + 1..].iter().enumerate() {
                before(cut + 1 + later);
                assert_eq!(
                    lines(restored.step(e).unwrap()),
                    lines(reference.step(e).unwrap()),
                    "restored after epoch {cut}, epoch {} differs",
                    cut + 1 + later
                );
            }
        }
        assert!(written > 0, "the operator never wrote any state");
    }
}

#[cfg(test)]
mod tests {
    use super::codec;

    #[test]
    fn weighted_rows_read_back_as_written() {
        let rows: Vec<(&[u8], i64)> = vec![(b"ab", 3), (b"", -1), (b"xyz", 1)];
        for n in [0, 1, 3] {
            let mut out = Vec::new();
            codec::put_weighted_rows_op(&mut out, b"p", &[b"k", b"ey"], rows[..n].iter().copied());
            let ops: Vec<_> = codec::ops(&out)
                .collect::<crate::error::Result<_>>()
                .unwrap();
            assert_eq!(ops.len(), 1, "{n} rows");
            let (key, value) = ops[0];
            assert_eq!(key, b"pkey");
            // Read as `decode_weighted_rows` reads a value.
            let mut r = codec::Reader::new(value.expect("a put"));
            let mut got = Vec::new();
            for _ in 0..r.u32().unwrap() {
                got.push((r.bytes().unwrap(), r.i64().unwrap()));
            }
            assert!(r.take(1).is_err(), "{n} rows: bytes left over");
            assert_eq!(got, rows[..n], "{n} rows");
        }
    }
}
