//! The sink log: how the engine makes a sink send only checkpointed
//! changes, and send them again after a restart until they are delivered.
//!
//! A logged sink (see [`crate::sink`]) collects each epoch's change to its
//! relation in `pending`. A checkpoint writes the pending changes, summed
//! into one change, as the sink's next log entry, together with the last
//! sequence number the sink reported delivered; log entries up to that
//! number are deleted in the same write. Only when the write is durable is
//! the entry handed to the sink's thread. So an entry is sent only if the
//! state that made it survives a crash, and after a crash every entry
//! after the last recorded delivery is sent again. The keys are laid out
//! in [`super::checkpoint`].
//!
//! A sink's thread holds at most [`MAX_HANDED`] undelivered entries: while
//! the external system refuses them, later entries stay in the store only,
//! and are read back and handed over as deliveries catch up (each
//! delivery makes the next checkpoint, which hands over more).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::checkpoint::{
    decode_sequence, sink_log_key, split_sink_log_key, SINK_LOG_NAMESPACE, SINK_PROGRESS_NAMESPACE,
};
use crate::error::Result;
use crate::sink::SinkHandle;
use crate::storage::{StateStore, WriteBatch};
use crate::stream::ChangeBatch;

/// The running sinks, by name.
pub type Sinks = HashMap<String, SinkHandle>;

/// Undelivered log entries a sink's thread holds at most.
pub const MAX_HANDED: usize = 16;

/// Adds each logged sink's pending changes as its next log entry, and its
/// delivered sequence number, to checkpoint `writes`. The entries are
/// handed over by [`hand_over`] once the write is durable.
pub fn write_pending(sinks: &mut Sinks, writes: &mut WriteBatch) -> Result<()> {
    for sink in sinks.values_mut().filter(|s| s.logged) {
        let delivered = sink.progress.delivered_seq.load(Ordering::SeqCst);
        if sink.recorded_delivered != Some(delivered) {
            writes.put(
                SINK_PROGRESS_NAMESPACE,
                sink.id.to_be_bytes().to_vec(),
                delivered.to_be_bytes().to_vec(),
            );
            while let Some(seq) = sink.log.front().copied().filter(|s| *s <= delivered) {
                writes.delete(SINK_LOG_NAMESPACE, sink_log_key(sink.id, seq));
                sink.log.pop_front();
            }
            sink.recorded_delivered = Some(delivered);
        }
        sink.in_flight = None;
        if sink.pending.is_empty() {
            continue;
        }
        let change = ChangeBatch::concat(sink.schema.clone(), &sink.pending)?.consolidate()?;
        if change.is_empty() {
            continue;
        }
        let seq = sink.next_seq;
        sink.next_seq += 1;
        writes.put(
            SINK_LOG_NAMESPACE,
            sink_log_key(sink.id, seq),
            change.to_ipc()?,
        );
        sink.in_flight = Some((seq, change));
    }
    Ok(())
}

/// After a durable checkpoint: every pending change is in the log; hands
/// the new entries to the sinks.
pub fn hand_over(sinks: &mut Sinks, store: &dyn StateStore) -> Result<()> {
    for sink in sinks.values_mut().filter(|s| s.logged) {
        sink.pending.clear();
        let fresh = sink.in_flight.take();
        if let Some((seq, _)) = &fresh {
            sink.log.push_back(*seq);
        }
        catch_up(sink, store, fresh)?;
    }
    Ok(())
}

/// Hands the sink the log entries after the last one handed, up to
/// [`MAX_HANDED`] undelivered; `fresh` is an entry just written, kept in
/// memory, which spares reading it back.
fn catch_up(
    sink: &mut SinkHandle,
    store: &dyn StateStore,
    fresh: Option<(u64, ChangeBatch)>,
) -> Result<()> {
    let delivered = sink.progress.delivered_seq.load(Ordering::SeqCst);
    let mut held = sink
        .log
        .iter()
        .filter(|s| **s > delivered && **s <= sink.handed)
        .count();
    let next: Vec<u64> = sink
        .log
        .iter()
        .copied()
        .filter(|s| *s > sink.handed)
        .take(MAX_HANDED.saturating_sub(held))
        .collect();
    let mut fresh = fresh;
    for seq in next {
        let change = match fresh.take() {
            Some((s, change)) if s == seq => change,
            _ => {
                let bytes = store
                    .get(SINK_LOG_NAMESPACE, &sink_log_key(sink.id, seq))?
                    .ok_or_else(|| {
                        crate::error::MillraceError::storage(format!(
                            "sink log entry {seq} of sink {} is missing",
                            sink.id
                        ))
                    })?;
                ChangeBatch::from_ipc(&sink.schema, &bytes)?
            }
        };
        sink.send_logged(seq, change);
        sink.handed = seq;
        held += 1;
    }
    debug_assert!(held <= MAX_HANDED);
    Ok(())
}

/// After a failed checkpoint write: nothing it held is in the log.
pub fn abandon_in_flight(sinks: &mut Sinks) {
    for sink in sinks.values_mut() {
        sink.in_flight = None;
    }
}

/// Once checkpoints have stopped (after a failed write), logged sinks are
/// handed their pending changes as they commit, unlogged.
pub fn release_pending(sinks: &mut Sinks) {
    for sink in sinks.values_mut().filter(|s| !s.pending.is_empty()) {
        for change in std::mem::take(&mut sink.pending) {
            sink.send(&change);
        }
    }
}

/// Whether a sink delivered entries that the store does not record yet (a
/// checkpoint would then trim the log).
pub fn delivery_unrecorded(sinks: &Sinks) -> bool {
    sinks.values().any(|s| {
        s.logged && s.recorded_delivered != Some(s.progress.delivered_seq.load(Ordering::SeqCst))
    })
}

/// Adds the deletion of sink `id`'s log and progress to `batch`.
pub fn forget(store: &dyn StateStore, id: u64, batch: &mut WriteBatch) -> Result<()> {
    batch.delete(SINK_PROGRESS_NAMESPACE, id.to_be_bytes().to_vec());
    for (key, _) in store.scan(SINK_LOG_NAMESPACE)? {
        if key.starts_with(&id.to_be_bytes()) {
            batch.delete(SINK_LOG_NAMESPACE, key);
        }
    }
    Ok(())
}

/// At start, after the catalog and the views are restored: hands every
/// sink the log entries after its last recorded delivery, and deletes the
/// log of sinks that no longer exist. Returns the logged sinks whose first
/// checkpoint was never written (created just before a crash): they start
/// as new sinks, with their snapshot, at the next checkpoint.
pub fn resume(sinks: &mut Sinks, store: &dyn StateStore) -> Result<Vec<String>> {
    let mut delivered: HashMap<u64, u64> = HashMap::new();
    for (key, value) in store.scan(SINK_PROGRESS_NAMESPACE)? {
        if let Ok(id) = <[u8; 8]>::try_from(key.as_slice()) {
            delivered.insert(u64::from_be_bytes(id), decode_sequence(&value)?);
        }
    }
    let mut entries: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    for (key, value) in store.scan(SINK_LOG_NAMESPACE)? {
        entries.insert(split_sink_log_key(&key)?, value);
    }
    let live: HashSet<u64> = sinks.values().map(|s| s.id).collect();
    let mut cleanup = WriteBatch::default();
    for id in delivered.keys().filter(|id| !live.contains(id)) {
        cleanup.delete(SINK_PROGRESS_NAMESPACE, id.to_be_bytes().to_vec());
    }
    for (id, seq) in entries.keys().filter(|(id, _)| !live.contains(id)) {
        cleanup.delete(SINK_LOG_NAMESPACE, sink_log_key(*id, *seq));
    }
    let mut unstarted = Vec::new();
    for (name, sink) in sinks.iter_mut() {
        let done = delivered.get(&sink.id).copied();
        if sink.logged && done.is_none() {
            unstarted.push(name.clone());
        }
        let done = done.unwrap_or(0);
        sink.progress.delivered_seq.store(done, Ordering::SeqCst);
        sink.recorded_delivered = (sink.logged && delivered.contains_key(&sink.id)).then_some(done);
        sink.next_seq = sink.next_seq.max(done + 1);
        sink.handed = done;
        for ((_, seq), bytes) in entries.range((sink.id, 0)..=(sink.id, u64::MAX)) {
            sink.next_seq = sink.next_seq.max(seq + 1);
            if *seq <= done {
                cleanup.delete(SINK_LOG_NAMESPACE, sink_log_key(sink.id, *seq));
                continue;
            }
            if sink.logged {
                sink.log.push_back(*seq);
            } else {
                let change = ChangeBatch::from_ipc(&sink.schema, bytes)?;
                // The relation is no longer checkpointed: the entries go
                // out once, and the log is gone.
                sink.send(&change);
                cleanup.delete(SINK_LOG_NAMESPACE, sink_log_key(sink.id, *seq));
            }
        }
    }
    if !cleanup.is_empty() {
        store.write(cleanup)?;
    }
    for sink in sinks.values_mut().filter(|s| s.logged) {
        catch_up(sink, store, None)?;
    }
    Ok(unstarted)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sink::{spawn_sink, SinkFormat, SinkProgress, SinkWriter};
    use crate::storage::RedbStore;
    use crate::stream::pretty::from_pretty;

    /// Refuses every write until `open`, then records the sequence
    /// numbers it delivered.
    struct Gate {
        open: Arc<AtomicBool>,
        delivered: Arc<Mutex<Vec<u64>>>,
    }

    impl SinkWriter for Gate {
        fn write(&mut self, _: &ChangeBatch, seq: Option<u64>) -> Result<()> {
            if !self.open.load(Ordering::SeqCst) {
                return Err(crate::error::MillraceError::execution("closed"));
            }
            if let (Some(s), Ok(mut d)) = (seq, self.delivered.lock()) {
                d.push(s);
            }
            Ok(())
        }
    }

    /// A logged sink `id` whose writer is a [`Gate`].
    fn gated_sink(
        id: u64,
        change: &ChangeBatch,
        open: &Arc<AtomicBool>,
        delivered: &Arc<Mutex<Vec<u64>>>,
    ) -> SinkHandle {
        let (gate_open, gate_delivered) = (open.clone(), delivered.clone());
        let mut sink = spawn_sink(
            id,
            "out",
            "t",
            change.schema(),
            "test".into(),
            SinkFormat::Plain,
            Box::new(move |_: Arc<SinkProgress>| {
                Ok(Box::new(Gate {
                    open: gate_open.clone(),
                    delivered: gate_delivered.clone(),
                }) as Box<dyn SinkWriter>)
            }),
        )
        .unwrap();
        sink.logged = true;
        sink
    }

    #[test]
    fn a_restart_sends_what_came_after_the_last_recorded_delivery_and_forgets_dropped_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let change = from_pretty("I\n 1 +1").unwrap();
        let entry = change.to_ipc().unwrap();
        // Sink 7 delivered entry 1 of 3; sink 9 no longer exists.
        let mut w = WriteBatch::default();
        w.put(
            SINK_PROGRESS_NAMESPACE,
            7u64.to_be_bytes().to_vec(),
            1u64.to_be_bytes().to_vec(),
        );
        w.put(
            SINK_PROGRESS_NAMESPACE,
            9u64.to_be_bytes().to_vec(),
            0u64.to_be_bytes().to_vec(),
        );
        for (id, seq) in [(7, 1), (7, 2), (7, 3), (9, 1)] {
            w.put(SINK_LOG_NAMESPACE, sink_log_key(id, seq), entry.clone());
        }
        store.write(w).unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let mut sinks: Sinks =
            HashMap::from([("out".to_string(), gated_sink(7, &change, &open, &delivered))]);
        assert!(resume(&mut sinks, &store).unwrap().is_empty());
        let deadline = Instant::now() + Duration::from_secs(30);
        while delivered.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*delivered.lock().unwrap(), vec![2, 3]);
        assert_eq!(sinks["out"].next_seq, 4);
        let left: Vec<(u64, u64)> = store
            .scan(SINK_LOG_NAMESPACE)
            .unwrap()
            .iter()
            .map(|(k, _)| split_sink_log_key(k).unwrap())
            .collect();
        assert_eq!(
            left,
            vec![(7, 2), (7, 3)],
            "entry 1 and sink 9's log are gone"
        );
        assert_eq!(store.scan(SINK_PROGRESS_NAMESPACE).unwrap().len(), 1);
        // A logged sink without a progress record never had its first
        // checkpoint: it starts as new.
        let mut fresh: Sinks = HashMap::from([(
            "new".to_string(),
            gated_sink(11, &change, &open, &delivered),
        )]);
        assert_eq!(resume(&mut fresh, &store).unwrap(), vec!["new".to_string()]);
    }

    #[test]
    fn a_refusing_sink_holds_a_bounded_backlog_and_later_gets_every_entry_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let change = from_pretty("I\n 1 +1").unwrap();
        let mut sinks: Sinks =
            HashMap::from([("out".to_string(), gated_sink(7, &change, &open, &delivered))]);
        let checkpoint = |sinks: &mut Sinks| {
            let mut writes = WriteBatch::default();
            write_pending(sinks, &mut writes).unwrap();
            store.write(writes).unwrap();
            hand_over(sinks, &store).unwrap();
        };
        for _ in 0..40 {
            sinks.get_mut("out").unwrap().pending.push(change.clone());
            checkpoint(&mut sinks);
            assert!(sinks["out"].handed as usize <= MAX_HANDED);
        }
        assert_eq!(sinks["out"].undelivered(), 40);
        open.store(true, Ordering::SeqCst);
        // Each delivery makes a checkpoint, which hands over more.
        let deadline = Instant::now() + Duration::from_secs(30);
        while delivered.lock().unwrap().len() < 40 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            checkpoint(&mut sinks);
        }
        assert_eq!(*delivered.lock().unwrap(), (1..=40).collect::<Vec<u64>>());
        checkpoint(&mut sinks);
        assert_eq!(sinks["out"].undelivered(), 0);
        assert!(store.scan(SINK_LOG_NAMESPACE).unwrap().is_empty());
    }
}
