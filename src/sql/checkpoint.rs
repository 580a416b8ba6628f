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
//! Layout, two namespaces per view. `view_state/<catalog id>`: `l` the
//! dataflow's layout; `a` + sequence (u64, big-endian) a batch of
//! append-only contents (Arrow IPC). `view_runs/<catalog id>`: runs
//! (see [`read_runs`]) by sequence (u64, big-endian), which applied in
//! order give the view's keyed state: `o` + node (u32, big-endian) + key
//! an operator's state, `c` + row a contents row and its count. Runs are
//! compacted into a base once they outgrow it. Reader
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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The namespace holding view `id`'s runs: its operator state and keyed
/// contents rows, as runs of changes (see [`read_runs`]).
pub fn view_runs_namespace(id: u64) -> String {
    format!("view_runs/{id}")
}

/// What the layout value starts with for views whose state is kept in
/// runs; a checkpoint of an earlier layout (one store key per operator
/// state key and contents row) does not match, and the view is rebuilt.
pub const STATE_FORMAT: &str = "state in runs\n";

/// A view's runs are compacted into one base once the runs written since
/// the last base hold at least as many bytes as that base, and at least
/// this many (unless `MILLRACE_CHECKPOINT_COMPACT_BYTES` says otherwise;
/// the crash tests set it low, so that they compact often).
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// The least bytes of runs that start a compaction: `COMPACT_MIN_BYTES`,
/// or `MILLRACE_CHECKPOINT_COMPACT_BYTES`.
pub fn compact_min_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("MILLRACE_CHECKPOINT_COMPACT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(COMPACT_MIN_BYTES)
    })
}
/// The largest run a checkpoint or compaction writes (a larger state is
/// several runs), unless one operation alone is larger. Kept a little
/// under 16 MiB: the store gives a value a power-of-two region of pages,
/// and a run just over 16 MiB would take 32.
pub const BASE_CHUNK_BYTES: usize = (16 << 20) - (64 << 10);

/// Each checkpoint's runs take sequence numbers in a slot of their own,
/// `RUN_SLOT` numbers wide, starting at the slot's first number. The gap
/// leaves room below every slot boundary for a background compaction's
/// base (see [`base_piece_seq`]), which must sort before the runs written
/// while it ran.
pub const RUN_SLOT: u64 = 1 << 20;

/// Where, in the slot before its cut, a background compaction puts the
/// pieces of its base: above any run a checkpoint writes there (a
/// checkpoint would need half a million 16 MiB pieces to reach it).
pub const BASE_PIECES_AT: u64 = 1 << 19;

/// The first sequence number of the slot after the one holding `seq`.
pub fn slot_after(seq: u64) -> u64 {
    (seq / RUN_SLOT + 1).saturating_mul(RUN_SLOT)
}

/// The sequence number of piece `piece` of the base that a compaction of
/// every run before `cut` (a slot boundary, at least [`RUN_SLOT`])
/// writes: in the last slot before `cut`, after its runs. The runs that
/// compaction replaces are deleted in the same write, so the base's
/// numbers are free or freed; the runs written while it ran are at `cut`
/// or later, after the base.
pub fn base_piece_seq(cut: u64, piece: usize) -> Result<u64> {
    let piece = piece as u64;
    if cut < RUN_SLOT || piece >= RUN_SLOT - BASE_PIECES_AT {
        return Err(MillraceError::storage(
            "a compacted base does not fit below its cut",
        ));
    }
    Ok(cut - RUN_SLOT + BASE_PIECES_AT + piece)
}

/// The key of run `seq` in a view's runs namespace.
pub fn run_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// The sequence number of a run key.
pub fn split_run_key(key: &[u8]) -> Result<u64> {
    let seq: [u8; 8] = key
        .try_into()
        .map_err(|_| MillraceError::storage("a checkpointed run key is damaged"))?;
    Ok(u64::from_be_bytes(seq))
}

/// A view's runs as stored (see [`view_runs_namespace`]), in order: each
/// run's sequence number and bytes. A run is a sequence of puts and
/// deletes of keys in one store value, built as a
/// [`crate::stream::operator::StateChanges`]: a checkpoint writes a view's
/// state changes as one run instead of one store key each, so that its
/// cost follows the bytes that changed and not the number of keys (each
/// store key is a B-tree update).
pub fn read_runs(store: &dyn crate::storage::StateStore, id: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut runs = Vec::new();
    for (key, value) in store.scan(&view_runs_namespace(id))? {
        runs.push((split_run_key(&key)?, value));
    }
    runs.sort_by_key(|(seq, _)| *seq);
    Ok(runs)
}

/// The put that records `base_end` as where a view's base ends (under
/// [`BASE_END_KEY`] of its namespace `ns`).
pub fn put_base_end(writes: &mut crate::storage::WriteBatch, ns: &str, base_end: u64) {
    writes.put(ns, BASE_END_KEY.to_vec(), base_end.to_be_bytes().to_vec());
}

/// The operations of one run, in order: each key with its value, or
/// `None` for a delete. A damaged run yields an error and ends.
pub fn run_ops(run: &[u8]) -> crate::stream::operator::codec::Ops<'_> {
    crate::stream::operator::codec::ops(run)
}

/// The key under which a view's namespace records where its base ends:
/// the sequence number (u64, big-endian) of the first run after it.
pub const BASE_END_KEY: &[u8] = b"b";

/// The keyed state a view's runs give when applied in order, without
/// copying a key or value (everything is borrowed from the runs).
///
/// The runs before the base's end (written by one compaction, or by the
/// first checkpoint of a new or rebuilt view) hold each key at most once:
/// they are visited as they are, and only the runs after them, usually
/// few, are folded into a map. A base holding all of a large state is so
/// read once, in order, with one lookup per key in that (small) map, and
/// can be read by several threads at once (each taking its own keys).
pub struct FoldedRuns<'a> {
    base: Vec<&'a [u8]>,
    later: HashMap<&'a [u8], Option<&'a [u8]>, datafusion::common::hash_utils::RandomState>,
}

impl<'a> FoldedRuns<'a> {
    /// Folds `runs` (in order, as [`read_runs`] gives them): those before
    /// `base_end` are the base.
    pub fn of_runs(runs: &'a [(u64, Vec<u8>)], base_end: u64) -> Result<Self> {
        let split = runs.partition_point(|(seq, _)| *seq < base_end);
        let (base, later) = runs.split_at(split);
        Self::try_new(
            base.iter().map(|(_, r)| r.as_slice()).collect(),
            later.iter().map(|(_, r)| r.as_slice()),
        )
    }

    /// Folds the `later` runs (in order) over the `base` runs.
    pub fn try_new(base: Vec<&'a [u8]>, later: impl IntoIterator<Item = &'a [u8]>) -> Result<Self> {
        let later: Vec<&'a [u8]> = later.into_iter().collect();
        // Sized for every operation up front (a key written twice is
        // counted twice): growing the map as it fills cost a fifth of a
        // compaction's time.
        let mut operations = 0;
        for run in &later {
            for op in run_ops(run) {
                op?;
                operations += 1;
            }
        }
        let mut folded = HashMap::with_capacity_and_hasher(
            operations,
            datafusion::common::hash_utils::RandomState::default(),
        );
        for run in later {
            for op in run_ops(run) {
                let (key, value) = op?;
                folded.insert(key, value);
            }
        }
        Ok(Self {
            base,
            later: folded,
        })
    }

    /// Calls `visit` with each live key and its latest value: the base's
    /// keys that no later run changed, in the base's order, then the later
    /// runs' live keys.
    pub fn for_each(&self, mut visit: impl FnMut(&'a [u8], &'a [u8]) -> Result<()>) -> Result<()> {
        for run in &self.base {
            for op in run_ops(run) {
                // A delete in a base is of a key that is nowhere else in it
                // (one checkpoint writes each key once).
                if let (key, Some(value)) = op? {
                    if self.later.is_empty() || !self.later.contains_key(key) {
                        visit(key, value)?;
                    }
                }
            }
        }
        for (key, value) in &self.later {
            if let Some(value) = value {
                visit(key, value)?;
            }
        }
        Ok(())
    }
}

/// What a compaction of a view's runs produced: the base that replaces
/// them.
pub struct CompactedBase {
    /// The runs before this sequence number are the ones compacted.
    pub cut: u64,
    /// The bytes of runs written since the previous compaction when this
    /// one started (all of them before `cut`).
    pub covered_run_bytes: u64,
    /// The sequence numbers of the runs the base replaces.
    pub replaced: Vec<u64>,
    /// The base: each live key once, in pieces of at most
    /// [`BASE_CHUNK_BYTES`] (unless one operation alone is larger).
    pub pieces: Vec<Vec<u8>>,
}

/// Folds every run of view `id` before `cut` (those before `base_end`
/// being its current base) into a new base. Reads only committed runs, so
/// it runs beside the checkpoints that write later ones. Gives up with an
/// error once `cancel` is set.
pub fn compact(
    store: &dyn crate::storage::StateStore,
    id: u64,
    cut: u64,
    base_end: u64,
    covered_run_bytes: u64,
    cancel: &AtomicBool,
) -> Result<CompactedBase> {
    let cancelled = || MillraceError::storage("the compaction was cancelled");
    let mut runs = read_runs(store, id)?;
    runs.retain(|(seq, _)| *seq < cut);
    if cancel.load(Ordering::Relaxed) {
        return Err(cancelled());
    }
    let folded = FoldedRuns::of_runs(&runs, base_end)?;
    let mut pieces = Vec::new();
    let mut base = crate::stream::operator::StateChanges::default();
    folded.for_each(|key, value| {
        if base.would_exceed(key.len(), value.len(), BASE_CHUNK_BYTES) {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            pieces.push(base.take_bytes());
        }
        base.put(key, value);
        Ok(())
    })?;
    if !base.is_empty() {
        pieces.push(base.take_bytes());
    }
    Ok(CompactedBase {
        cut,
        covered_run_bytes,
        replaced: runs.iter().map(|(seq, _)| *seq).collect(),
        pieces,
    })
}

/// A compaction of one view's runs on a thread of its own, so that the
/// thread running the dataflow only writes its result (see
/// `docs/storage.md`, "View state in runs"). Dropping it cancels the
/// compaction and waits for the thread.
pub struct PendingCompaction {
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<CompactedBase>>>,
}

impl PendingCompaction {
    /// Starts compacting view `id`'s runs before `cut` (see [`compact`]).
    pub fn start(
        store: Arc<dyn crate::storage::StateStore>,
        id: u64,
        cut: u64,
        base_end: u64,
        covered_run_bytes: u64,
    ) -> Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("compact-view-{id}"))
            .spawn(move || compact(store.as_ref(), id, cut, base_end, covered_run_bytes, &flag))
            .map_err(|e| MillraceError::storage(format!("cannot start a compaction: {e}")))?;
        Ok(Self {
            cancel,
            thread: Some(thread),
        })
    }

    /// The compaction's result once its thread is done, `None` while it
    /// runs (and after the result was taken).
    pub fn finished(&mut self) -> Option<Result<CompactedBase>> {
        if !self.thread.as_ref()?.is_finished() {
            return None;
        }
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err(MillraceError::storage("a compaction thread panicked"))),
        )
    }
}

impl Drop for PendingCompaction {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The key of the position of the reader of `source` feeding view `id`.
pub fn position_key(view_id: u64, source: &str) -> Vec<u8> {
    let mut key = view_id.to_be_bytes().to_vec();
    key.extend_from_slice(source.as_bytes());
    key
}

/// What the keys of operator `node`'s state start with: the operator
/// prefix and the node (u32, big-endian); the operator's own key follows.
pub fn operator_prefix(node: usize) -> Result<[u8; 5]> {
    let node = u32::try_from(node)
        .map_err(|_| MillraceError::execution("too many operators to checkpoint"))?;
    let [a, b, c, d] = node.to_be_bytes();
    Ok([OPERATOR_PREFIX, a, b, c, d])
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
    /// The sequence number of the view's next run.
    pub next_run: u64,
    /// Bytes of the runs written since the last compaction.
    pub run_bytes: u64,
    /// Bytes of the runs the last compaction left (or, after a restore,
    /// of all runs read).
    pub base_bytes: u64,
    /// The sequence number of the first run after the base (see
    /// [`BASE_END_KEY`]).
    pub base_end: u64,
    /// How many times the base's bytes of runs start the next compaction
    /// (0 counts as 1): doubled, up to [`MAX_COMPACT_FACTOR`], while
    /// compactions find little superseded state (a growing state, such as
    /// a join's rows), back to 1 once they find much.
    pub compact_factor: u64,
    /// The compaction running beside the checkpoints, if any; its result
    /// is written by the first checkpoint after it ends.
    pub compaction: Option<PendingCompaction>,
}

/// The most times its base's bytes a view's runs grow to before they are
/// compacted: so the store holds at most about `1 + MAX_COMPACT_FACTOR`
/// times a view's live state.
pub const MAX_COMPACT_FACTOR: u64 = 4;

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
        let k = [&operator_prefix(7).unwrap()[..], b"xyz"].concat();
        assert_eq!(split_operator_key(&k).unwrap(), (7, b"xyz".to_vec()));
        assert!(split_operator_key(b"c123").is_err());
        let k = sink_log_key(3, 900);
        assert_eq!(split_sink_log_key(&k).unwrap(), (3, 900));
        assert!(split_sink_log_key(&k[..15]).is_err());
        assert_eq!(decode_sequence(&7u64.to_be_bytes()).unwrap(), 7);
        assert!(decode_sequence(b"x").is_err());
    }

    #[test]
    fn runs_apply_in_order_and_refuse_damage() {
        let mut first = crate::stream::operator::StateChanges::default();
        first.op(&[b"o", b"1"], Some(b"one"));
        first.op(&[b"o2"], Some(b"two"));
        first.op(&[b"c9"], Some(b""));
        let first = first.take_bytes();
        let mut second = crate::stream::operator::StateChanges::default();
        second.op(&[b"o1"], Some(b"uno"));
        second.op(&[b"o2"], None);
        second.op(&[b"o3"], None);
        let second = second.take_bytes();
        let collect = |folded: FoldedRuns<'_>| live_keys(&folded);
        let want = vec![
            (b"c9".to_vec(), b"".to_vec()),
            (b"o1".to_vec(), b"uno".to_vec()),
        ];
        // The same state whether the first run is a base or folded too.
        let folded = FoldedRuns::try_new(vec![], [first.as_slice(), second.as_slice()]).unwrap();
        assert_eq!(collect(folded), want);
        let folded = FoldedRuns::try_new(vec![first.as_slice()], [second.as_slice()]).unwrap();
        assert_eq!(collect(folded), want);
        // Cut anywhere but between two operations, a run is refused, as a
        // base and as a later run.
        for cut in (1..first.len()).filter(|c| ![14, 28].contains(c)) {
            assert!(
                FoldedRuns::try_new(vec![], [&first[..cut]]).is_err(),
                "cut at {cut}"
            );
            let base = FoldedRuns::try_new(vec![&first[..cut]], []).unwrap();
            assert!(base.for_each(|_, _| Ok(())).is_err(), "cut at {cut}");
        }
        // Cut into pieces between operations: each piece parses alone,
        // and no piece of more than one operation exceeds the limit.
        use crate::stream::operator::codec::split_ops;
        let whole = [first.as_slice(), second.as_slice()].concat();
        for limit in [0, 1, 14, 27, 28, 40, 1000] {
            let pieces = split_ops(&whole, limit).unwrap();
            assert_eq!(pieces.concat(), whole, "limit {limit}");
            for piece in &pieces {
                let ops = run_ops(piece).collect::<Result<Vec<_>>>().unwrap();
                assert!(piece.len() <= limit || ops.len() == 1, "limit {limit}");
            }
        }
        assert!(split_ops(&whole[..whole.len() - 1], 16).is_err());
        assert_eq!(split_run_key(&run_key(77)).unwrap(), 77);
        assert!(split_run_key(b"short").is_err());
    }

    /// The live keys and values of `folded`, sorted.
    fn live_keys(folded: &FoldedRuns<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut got = Vec::new();
        folded
            .for_each(|k, v| {
                got.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        got.sort();
        got
    }

    /// The live keys of view `id`'s runs, as a restart reads them.
    fn live_state(
        store: &dyn crate::storage::StateStore,
        id: u64,
        base_end: u64,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let runs = read_runs(store, id).unwrap();
        live_keys(&FoldedRuns::of_runs(&runs, base_end).unwrap())
    }

    #[test]
    fn a_background_compaction_keeps_the_runs_written_while_it_ran() {
        use crate::storage::WriteBatch;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::storage::open_in(dir.path(), None).unwrap();
        let ns = view_runs_namespace(5);
        let run = |ops: &[(&[u8], Option<&[u8]>)]| {
            let mut run = crate::stream::operator::StateChanges::default();
            for (k, v) in ops {
                run.op(&[k], *v);
            }
            run.take_bytes()
        };
        // A base (slot 0), then two checkpoints' runs (slots 1 and 2).
        let mut writes = WriteBatch::default();
        writes.put(
            &ns,
            run_key(0),
            run(&[(b"a", Some(b"1")), (b"b", Some(b"1"))]),
        );
        writes.put(
            &ns,
            run_key(RUN_SLOT),
            run(&[(b"a", Some(b"2")), (b"c", Some(b"1"))]),
        );
        writes.put(&ns, run_key(2 * RUN_SLOT), run(&[(b"b", None)]));
        store.write(writes).unwrap();
        assert_eq!(slot_after(2 * RUN_SLOT), 3 * RUN_SLOT);
        assert_eq!(slot_after(2 * RUN_SLOT + 3), 3 * RUN_SLOT);
        let cut = 3 * RUN_SLOT;
        let mut pending = PendingCompaction::start(store.clone(), 5, cut, RUN_SLOT, 3).unwrap();
        // A checkpoint written while it runs changes a key it folds.
        let mut writes = WriteBatch::default();
        writes.put(&ns, run_key(cut), run(&[(b"c", None), (b"d", Some(b"1"))]));
        store.write(writes).unwrap();
        let base = loop {
            if let Some(result) = pending.finished() {
                break result.unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!((base.cut, base.covered_run_bytes), (cut, 3));
        assert_eq!(base.replaced, vec![0, RUN_SLOT, 2 * RUN_SLOT]);
        let before = live_state(store.as_ref(), 5, RUN_SLOT);
        let mut writes = WriteBatch::default();
        for seq in &base.replaced {
            writes.delete(&ns, run_key(*seq));
        }
        for (i, piece) in base.pieces.into_iter().enumerate() {
            let seq = base_piece_seq(cut, i).unwrap();
            assert!(seq < cut && seq > 2 * RUN_SLOT);
            writes.put(&ns, run_key(seq), piece);
        }
        store.write(writes).unwrap();
        let after = live_state(store.as_ref(), 5, cut);
        assert_eq!(before, after);
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"2".to_vec()),
            (b"d".to_vec(), b"1".to_vec()),
        ];
        assert_eq!(after, want);
        assert!(base_piece_seq(RUN_SLOT - 1, 0).is_err());
        assert!(base_piece_seq(cut, (RUN_SLOT - BASE_PIECES_AT) as usize).is_err());
        // Dropped while running, a compaction is cancelled and its thread
        // joined; the store is untouched.
        drop(PendingCompaction::start(store.clone(), 5, 2 * cut, cut, 1).unwrap());
        assert_eq!(live_state(store.as_ref(), 5, cut), want);
    }
}
