//! One reader of a Kafka topic: assigns every partition to itself, polls
//! records in batches, decodes them and turns them into changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, StructArray, TimestampMicrosecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::{concat, filter_record_batch};
use datafusion::arrow::datatypes::DataType;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::batch::{Entry, KafkaRecord, Polled, RecordQueue};
use super::decode::PayloadDecoder;
use super::{consumer_config, partitions_of, Envelope, KafkaSource, Startup};
use crate::error::{MillraceError, Result};
use crate::source::{BatchGenerator, IncludeKind, ReaderContext, SourcePosition};
use crate::stream::change::{row_converter, ChangeBatch};

/// How long one poll waits for the first record.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often high watermarks are asked for and offsets committed.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Reads one topic for one view.
pub struct KafkaReader {
    client: ReaderClient,
    /// This reader's share: the partitions p with p mod threads == part.
    part: usize,
    d: Decoding,
    /// Partitions assigned so far.
    assigned: BTreeSet<i32>,
    /// Next offset to read per partition, as far as this reader knows.
    next_offsets: BTreeMap<i32, i64>,
    last_discovery: Option<Instant>,
    /// The startup mode has been applied: partitions found from now on
    /// are new, and read from their start.
    started: bool,
    /// For `timestamp` startup: partitions still skipping records older
    /// than the start time. A broker may resolve the time to a whole
    /// record batch; the records before it in that batch are dropped here.
    skip_before: BTreeMap<i32, i64>,
    last_stats: Instant,
    /// Broker errors seen, for rate-limited logging.
    errors_seen: u64,
    /// Does the blocking broker requests off this thread.
    watcher: Watcher,
}

/// Turning polled records into changes.
struct Decoding {
    source: Arc<KafkaSource>,
    ctx: ReaderContext,
    decoder: PayloadDecoder,
    /// For keyed sources (upsert, Debezium with a primary key): the
    /// schema of their batches, records with their keys, which the view's
    /// upsert operator turns into changes.
    keyed: Option<datafusion::arrow::datatypes::SchemaRef>,
    /// Bad records seen, for rate-limited logging.
    bad_seen: u64,
}

impl KafkaReader {
    /// A reader that has not yet talked to the broker.
    /// Reader `part` of the source's reader threads.
    pub fn try_new(source: Arc<KafkaSource>, ctx: &ReaderContext, part: usize) -> Result<Self> {
        let client = ReaderClient::try_new(&source, &ctx.source)?;
        // A resumed reader goes on from the checkpoint's offsets of the
        // partitions it reads (see `discover`).
        let next_offsets = match &ctx.resume {
            Some(SourcePosition::Offsets(offsets)) => offsets
                .iter()
                .filter(|(p, _)| reads_partition(source.threads, part, **p))
                .map(|(p, o)| (*p, *o))
                .collect(),
            _ => BTreeMap::new(),
        };
        let watcher = Watcher::start(&source, ctx)?;
        let decoder_schema = match source.envelope {
            Envelope::Debezium => super::debezium_schema(&source.value_schema),
            _ => source.value_schema.clone(),
        };
        let decoder = PayloadDecoder::try_new(decoder_schema, source.encoding.clone())?;
        let keyed = match source.envelope {
            Envelope::Plain => None,
            Envelope::Debezium if source.primary_key.is_empty() => None,
            _ => Some(crate::stream::upsert::keyed_schema(&source.schema)),
        };
        Ok(Self {
            client,
            part,
            d: Decoding {
                source,
                ctx: ctx.clone(),
                decoder,
                keyed,
                bad_seen: 0,
            },
            assigned: BTreeSet::new(),
            next_offsets,
            last_discovery: None,
            started: false,
            skip_before: BTreeMap::new(),
            last_stats: Instant::now(),
            errors_seen: 0,
            watcher,
        })
    }

    /// Assigns partitions not yet assigned: on the first call from the
    /// startup mode, later ones (added while running) from their start.
    fn discover(&mut self) -> Result<()> {
        self.last_discovery = Some(Instant::now());
        let Some(partitions) = partitions_of(
            &self.client.consumer,
            &self.d.source,
            Duration::from_secs(1),
        )?
        else {
            self.topic_gone()?;
            return Err(MillraceError::execution(format!(
                "Kafka topic '{}' does not exist at {}",
                self.d.source.topic,
                self.d.source.servers()
            )));
        };
        // A reader resumed from a checkpoint reads partitions the checkpoint
        // does not know from their start, not from the startup mode: their
        // records may have been produced while the server was down.
        let first = !self.started && self.d.ctx.resume.is_none();
        self.started = true;
        let new: Vec<i32> = partitions
            .into_iter()
            .filter(|p| self.mine(*p) && !self.assigned.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        // Only partitions the broker can already answer for: fetching one
        // that is still being set up gets an error reply, and some brokers'
        // error replies trip librdkafka (see docs/kafka.md).
        for &p in &new {
            if let Err(e) = self.client.consumer.fetch_watermarks(
                &self.d.source.topic,
                p,
                Duration::from_secs(2),
            ) {
                return Err(MillraceError::execution(format!(
                    "Kafka partition {p} of '{}' is not ready: {e}",
                    self.d.source.topic
                )));
            }
        }
        let mut tpl = TopicPartitionList::new();
        let topic = self.d.source.topic.as_str();
        for &p in &new {
            let offset = if let Some(&o) = self.next_offsets.get(&p) {
                // Resuming after a lost connection.
                Offset::Offset(o)
            } else if first {
                match &self.d.source.startup {
                    Startup::Earliest | Startup::Timestamp(_) => Offset::Beginning,
                    Startup::Latest => Offset::End,
                    Startup::Offsets(map) => map
                        .get(&p)
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o)),
                }
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, p, offset)
                .map_err(kafka_error)?;
        }
        if let (true, Startup::Timestamp(ts)) = (first, &self.d.source.startup) {
            let mut times = TopicPartitionList::new();
            for &p in &new {
                times
                    .add_partition_offset(topic, p, Offset::Offset(*ts))
                    .map_err(kafka_error)?;
            }
            let found = self
                .client
                .consumer
                .offsets_for_times(times, Duration::from_secs(10))
                .map_err(kafka_error)?;
            for &p in &new {
                self.skip_before.insert(p, *ts);
            }
            for e in found.elements() {
                // No record at or after the time: start at the end.
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                };
                tpl.set_partition_offset(topic, e.partition(), offset)
                    .map_err(kafka_error)?;
            }
        }
        // Records of these partitions go to the reader's record queue.
        for &p in &new {
            self.client
                .queue
                .add_partition(&self.client.consumer, topic, p)?;
        }
        self.client
            .consumer
            .incremental_assign(&tpl)
            .map_err(kafka_error)?;
        let mut progress = lock(&self.d.ctx.progress.partitions);
        for &p in &new {
            self.assigned.insert(p);
            progress.entry(p).or_default();
        }
        info!(source = %self.d.ctx.source, view = %self.d.ctx.view, topic, partitions = ?new, "Kafka partitions assigned");
        Ok(())
    }

    /// Whether partition `p` is this reader's.
    fn mine(&self, p: i32) -> bool {
        reads_partition(self.d.source.threads, self.part, p)
    }

    /// The topic was deleted: forget its partitions. If it is created
    /// again, that is a new topic, read from its start.
    fn topic_gone(&mut self) -> Result<()> {
        if self.assigned.is_empty() && self.next_offsets.is_empty() {
            return Ok(());
        }
        warn!(source = %self.d.ctx.source, topic = %self.d.source.topic, "Kafka topic deleted; it will be read from its start if created again");
        // A fresh client rather than unassigning: the old one may still be
        // fetching the lost topic, and some brokers answer such fetches in a
        // way that trips librdkafka (see docs/kafka.md).
        self.client = ReaderClient::try_new(&self.d.source, &self.d.ctx.source)?;
        self.assigned.clear();
        self.next_offsets.clear();
        let part = self.part;
        let threads = self.d.source.threads;
        lock(&self.d.ctx.progress.partitions).retain(|p, _| (*p as usize) % threads != part);
        Ok(())
    }

    /// The broker connection dropped: stop fetching until discovery sees
    /// the topic again, then resume at this reader's own offsets (or from
    /// the start, if the topic is gone by then).
    fn connection_lost(&mut self) -> Result<()> {
        // A fresh client: the old one keeps no fetch state that could
        // meet a restarted broker before discovery has looked at it.
        self.client = ReaderClient::try_new(&self.d.source, &self.d.ctx.source)?;
        self.assigned.clear();
        // Look for the topic at the next call.
        self.last_discovery = None;
        Ok(())
    }

    /// High watermarks for the progress view, and offsets committed for
    /// lag tools.
    fn refresh_stats(&mut self) {
        self.last_stats = Instant::now();
        self.watcher.watch(&self.assigned);
        // Only partitions being read: committing for a topic the broker
        // has lost is pointless (and upsets some brokers).
        let committable: Vec<(i32, i64)> = self
            .next_offsets
            .iter()
            .filter(|(p, _)| self.assigned.contains(p))
            .map(|(&p, &o)| (p, o))
            .collect();
        if self.d.source.commit_group.is_some() && !committable.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in committable {
                let _ = tpl.add_partition_offset(&self.d.source.topic, p, Offset::Offset(o));
            }
            if let Err(e) = self.client.consumer.commit(&tpl, CommitMode::Async) {
                self.broker_error("offset commit failed", &e);
            }
        }
    }

    fn broker_error(&mut self, what: &str, e: &KafkaError) {
        broker_error(&mut self.errors_seen, &self.d, what, e);
    }
}

impl Decoding {
    /// Turns a poll's records into a change batch.
    fn decode<M: KafkaRecord>(&mut self, messages: &[M]) -> Result<ChangeBatch> {
        let envelope = self.source.envelope;
        // Which records carry a payload to decode: all of them, except
        // upsert tombstones (no value), which delete their key.
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(messages.len());
        let mut payload_of: Vec<Option<u32>> = Vec::with_capacity(messages.len());
        let mut early_bad: Vec<(usize, String)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if envelope == Envelope::Upsert && m.key().is_none() {
                early_bad.push((i, "an upsert record without a key".into()));
                payload_of.push(None);
                continue;
            }
            match m.payload() {
                None if envelope == Envelope::Upsert => payload_of.push(None),
                None => {
                    early_bad.push((i, "a record without a value".into()));
                    payload_of.push(None);
                }
                Some(p) => {
                    payload_of.push(Some(payloads.len() as u32));
                    payloads.push(p);
                }
            }
        }
        let decoded = self.decoder.decode(&payloads)?;
        // Map decoded payload rows back to messages.
        let mut row_of_payload: Vec<Option<u32>> = vec![None; payloads.len()];
        for (row, &p) in decoded.good.iter().enumerate() {
            row_of_payload[p as usize] = Some(row as u32);
        }
        let mut bad_payload = vec![None; payloads.len()];
        for (p, reason) in decoded.bad {
            bad_payload[p] = Some(reason);
        }
        let mut bad = early_bad;
        // kept: (message index, decoded row or None for a tombstone)
        let mut kept: Vec<(usize, Option<u32>)> = Vec::with_capacity(messages.len());
        for (i, slot) in payload_of.iter().enumerate() {
            match slot {
                Some(p) => match row_of_payload[*p as usize] {
                    Some(row) => kept.push((i, Some(row))),
                    None => {
                        let reason = bad_payload[*p as usize]
                            .take()
                            .unwrap_or_else(|| "undecodable payload".into());
                        bad.push((i, reason));
                    }
                },
                None if envelope == Envelope::Upsert && messages[i].key().is_some() => {
                    kept.push((i, None))
                }
                None => {}
            }
        }
        bad.sort_by_key(|(i, _)| *i);
        self.count_bad(messages, &bad);
        match envelope {
            Envelope::Plain => {
                let rows: UInt32Array = kept.iter().map(|(_, r)| r.unwrap_or(0)).collect();
                let values = take_batch(&decoded.rows, &rows)?;
                let data = self.with_metadata(values, messages, kept.iter().map(|(i, _)| *i))?;
                Ok(ChangeBatch::with_uniform_weight(data, 1))
            }
            Envelope::Upsert => {
                // Tombstones take row 0 of a null row appended to the values.
                let nulls = RecordBatch::new_empty(self.source.value_schema.clone());
                let padded = pad_with_null_row(&decoded.rows, &nulls)?;
                let null_row = decoded.rows.num_rows() as u32;
                let rows: UInt32Array = kept.iter().map(|(_, r)| r.unwrap_or(null_row)).collect();
                let values = take_batch(&padded, &rows)?;
                let data = self.with_metadata(values, messages, kept.iter().map(|(i, _)| *i))?;
                let keys: Vec<&[u8]> = kept
                    .iter()
                    .map(|(i, _)| messages[*i].key().unwrap_or_default())
                    .collect();
                let present: Vec<bool> = kept.iter().map(|(_, r)| r.is_some()).collect();
                match &self.keyed {
                    Some(schema) => crate::stream::upsert::records(schema, &data, &keys, &present),
                    None => Err(MillraceError::execution(
                        "upsert source without keyed state",
                    )),
                }
            }
            Envelope::Debezium => self.debezium(&decoded.rows, messages, &kept),
        }
    }

    /// Debezium events into retractions of `before` and inserts of
    /// `after`, keyed by the primary key when one is declared.
    fn debezium<M: KafkaRecord>(
        &mut self,
        envelopes: &RecordBatch,
        messages: &[M],
        kept: &[(usize, Option<u32>)],
    ) -> Result<ChangeBatch> {
        let rows: UInt32Array = kept.iter().map(|(_, r)| r.unwrap_or(0)).collect();
        let events = take_batch(envelopes, &rows)?;
        // Wrapped events carry their change in `payload`.
        let (before, after, op) = debezium_parts(&events)?;
        let value_schema = self.source.value_schema.clone();
        let as_batch = |s: &StructArray| -> Result<RecordBatch> {
            Ok(RecordBatch::try_new(
                value_schema.clone(),
                s.columns().to_vec(),
            )?)
        };
        let before_rows = as_batch(&before)?;
        let after_rows = as_batch(&after)?;
        let message_index: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
        let full_before =
            self.with_metadata(before_rows, messages, message_index.iter().copied())?;
        let full_after = self.with_metadata(after_rows, messages, message_index.iter().copied())?;
        let (before_rows, after_rows) = (full_before.clone(), full_after.clone());
        // A delete needs its before image, anything else its after image;
        // other events (truncates, heartbeats) change no row.
        let is_delete: Vec<bool> = (0..op.len())
            .map(|i| op.is_valid(i) && op.value(i) == "d")
            .collect();
        let usable: datafusion::arrow::array::BooleanArray = (0..op.len())
            .map(|i| {
                Some(if is_delete[i] {
                    before.is_valid(i)
                } else {
                    after.is_valid(i)
                })
            })
            .collect();
        let before_rows = filter_record_batch(&before_rows, &usable)?;
        let after_rows = filter_record_batch(&after_rows, &usable)?;
        let is_delete: Vec<bool> = is_delete
            .iter()
            .zip(usable.values().iter())
            .filter(|(_, u)| *u)
            .map(|(d, _)| *d)
            .collect();
        match self.keyed.clone() {
            Some(keyed_schema) => {
                // Deletes are keyed by `before`, the rest by `after`.
                let converter = row_converter(
                    &self
                        .source
                        .value_schema
                        .project(&self.source.primary_key)?
                        .into(),
                )?;
                let pk = &self.source.primary_key;
                let key_cols = |b: &RecordBatch| -> Vec<ArrayRef> {
                    pk.iter().map(|&c| b.column(c).clone()).collect()
                };
                let before_keys = converter.convert_columns(&key_cols(&before_rows))?;
                let after_keys = converter.convert_columns(&key_cols(&after_rows))?;
                let keys: Vec<&[u8]> = (0..is_delete.len())
                    .map(|i| {
                        if is_delete[i] {
                            before_keys.row(i).data()
                        } else {
                            after_keys.row(i).data()
                        }
                    })
                    .collect();
                let present: Vec<bool> = is_delete.iter().map(|d| !d).collect();
                let data = merge_rows(&before_rows, &after_rows, &is_delete)?;
                crate::stream::upsert::records(&keyed_schema, &data, &keys, &present)
            }
            None => {
                // Without a key, the before image is retracted as it is:
                // the table must log full before images.
                let has_before: datafusion::arrow::array::BooleanArray = (0..before.len())
                    .map(|i| Some(before.is_valid(i)))
                    .collect();
                let has_after: datafusion::arrow::array::BooleanArray =
                    (0..after.len()).map(|i| Some(after.is_valid(i))).collect();
                let gone = filter_record_batch(&full_before, &has_before)?;
                let came = filter_record_batch(&full_after, &has_after)?;
                let schema = self.source.schema.clone();
                ChangeBatch::concat(
                    schema,
                    &[
                        ChangeBatch::with_uniform_weight(gone, -1),
                        ChangeBatch::with_uniform_weight(came, 1),
                    ],
                )
            }
        }
    }

    /// Appends the `INCLUDE` columns for `messages` (in `order`) to `values`.
    fn with_metadata<M: KafkaRecord>(
        &self,
        values: RecordBatch,
        messages: &[M],
        order: impl Iterator<Item = usize> + Clone,
    ) -> Result<RecordBatch> {
        let mut columns = values.columns().to_vec();
        for (what, field) in self.source.includes.iter().zip(
            self.source
                .schema
                .fields()
                .iter()
                .skip(values.num_columns()),
        ) {
            let column: ArrayRef = match what {
                IncludeKind::Partition => {
                    let mut b = Int32Builder::new();
                    order
                        .clone()
                        .for_each(|i| b.append_value(messages[i].partition()));
                    Arc::new(b.finish())
                }
                IncludeKind::Offset => {
                    let mut b = Int64Builder::new();
                    order
                        .clone()
                        .for_each(|i| b.append_value(messages[i].offset()));
                    Arc::new(b.finish())
                }
                IncludeKind::Timestamp => {
                    let mut b =
                        TimestampMicrosecondBuilder::new().with_timezone(crate::sql::types::UTC);
                    order.clone().for_each(|i| {
                        b.append_option(messages[i].timestamp_millis().map(|ms| ms * 1000))
                    });
                    Arc::new(b.finish())
                }
                IncludeKind::Key => {
                    bytes_column(field.data_type(), order.clone().map(|i| messages[i].key()))
                }
                IncludeKind::Header(name) => {
                    // Converted once per column, not per record; a name
                    // holding a NUL byte matches no header.
                    let name = std::ffi::CString::new(name.as_str()).ok();
                    bytes_column(
                        field.data_type(),
                        order
                            .clone()
                            .map(|i| name.as_deref().and_then(|n| messages[i].header(n))),
                    )
                }
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(self.source.schema.clone(), columns)?)
    }

    /// Counts bad records per partition and logs one in `log_every`.
    fn count_bad<M: KafkaRecord>(&mut self, messages: &[M], bad: &[(usize, String)]) {
        if bad.is_empty() {
            return;
        }
        self.ctx
            .progress
            .bad_records
            .fetch_add(bad.len() as u64, Ordering::Relaxed);
        let mut progress = lock(&self.ctx.progress.partitions);
        for (i, reason) in bad {
            let m = &messages[*i];
            progress.entry(m.partition()).or_default().errors += 1;
            if self.bad_seen.is_multiple_of(self.source.log_every) {
                warn!(
                    source = %self.ctx.source,
                    topic = %self.source.topic,
                    partition = m.partition(),
                    offset = m.offset(),
                    reason = %reason,
                    skipped = self.bad_seen + 1,
                    "skipped a record that cannot be decoded"
                );
            }
            self.bad_seen += 1;
        }
    }
}

impl BatchGenerator for KafkaReader {
    fn next_batch(&mut self) -> Result<Option<ChangeBatch>> {
        let schema = self.d.source.schema.clone();
        let empty = move || Ok(Some(ChangeBatch::empty(schema.clone())));
        // Without partitions (waiting for the topic, or none of its
        // partitions are this reader's), look again every 200 ms.
        let interval = Duration::from_millis(200).min(self.d.source.discovery_interval);
        // Once partitions are assigned, the watcher thread looks for new
        // ones (see `Watcher`); until then, this thread looks itself.
        let discovery_due = match self.last_discovery {
            None => true,
            Some(_) if self.watcher.partitions_changed() => true,
            Some(t) => self.assigned.is_empty() && t.elapsed() >= interval,
        };
        if discovery_due {
            if let Err(e) = self.discover() {
                self.errors_seen += 1;
                if self.errors_seen.is_power_of_two() {
                    warn!(source = %self.d.ctx.source, error = %e, count = self.errors_seen, "Kafka source waiting for its topic");
                }
                if self.assigned.is_empty() {
                    std::thread::sleep(Duration::from_millis(200));
                    return empty();
                }
            }
        }
        if self.last_stats.elapsed() >= STATS_INTERVAL {
            self.refresh_stats();
        }
        // The consumer's own queue holds what is not a record: errors (a
        // lost connection among them) and commit replies. Records of this
        // reader's partitions go to its record queue; one found here
        // anyway is read all the same.
        let mut lost = false;
        let mut stray: Vec<BorrowedMessage<'_>> = Vec::new();
        while let Some(event) = self.client.consumer.poll(Duration::ZERO) {
            match event {
                Ok(m) => stray.push(m),
                Err(e) => {
                    broker_error(&mut self.errors_seen, &self.d, "Kafka poll error", &e);
                    lost |= connection_gone(e.rdkafka_error_code());
                }
            }
        }
        let wait = if stray.is_empty() {
            POLL_WAIT
        } else {
            Duration::ZERO
        };
        let mut polled = Polled::new();
        let max = self.d.source.max_batch_records.saturating_sub(stray.len());
        self.client.queue.take(wait, max, &mut polled);
        let mut records: Vec<Entry<'_>> = Vec::with_capacity(polled.len());
        for entry in polled.entries() {
            match entry.error() {
                None => records.push(entry),
                Some(code) => {
                    let e = KafkaError::MessageConsumption(code);
                    broker_error(&mut self.errors_seen, &self.d, "Kafka fetch error", &e);
                    lost |= connection_gone(Some(code));
                }
            }
        }
        lost |= self
            .client
            .consumer
            .context()
            .lost
            .swap(false, Ordering::SeqCst);
        let mut changes = Vec::new();
        let mut positions = Positions {
            skip_before: &mut self.skip_before,
            next_offsets: &mut self.next_offsets,
        };
        if let Some(change) = positions.accept(&mut self.d, stray)? {
            changes.push(change);
        }
        if let Some(change) = positions.accept(&mut self.d, records)? {
            changes.push(change);
        }
        drop(polled);
        if lost {
            self.connection_lost()?;
        }
        match changes.len() {
            0 => empty(),
            1 => Ok(changes.pop()),
            _ => Ok(Some(ChangeBatch::concat(
                self.d.source.schema.clone(),
                &changes,
            )?)),
        }
    }

    fn rows_per_second(&self) -> Option<f64> {
        None
    }

    fn position(&self) -> Option<SourcePosition> {
        Some(SourcePosition::Offsets(self.next_offsets.clone()))
    }
}

/// Whether reader `part` of `threads` reads partition `p`.
fn reads_partition(threads: usize, part: usize, p: i32) -> bool {
    (p as usize) % threads.max(1) == part
}

/// Where the reader is in each partition, updated as records are taken.
struct Positions<'a> {
    skip_before: &'a mut BTreeMap<i32, i64>,
    next_offsets: &'a mut BTreeMap<i32, i64>,
}

impl Positions<'_> {
    /// Counts `records` as read and decodes those past any startup time
    /// into a change; `None` when no record is left.
    fn accept<M: KafkaRecord>(
        &mut self,
        d: &mut Decoding,
        mut records: Vec<M>,
    ) -> Result<Option<ChangeBatch>> {
        if !self.skip_before.is_empty() {
            let skip = &mut *self.skip_before;
            records.retain(|m| {
                let Some(&start) = skip.get(&m.partition()) else {
                    return true;
                };
                if m.timestamp_millis().is_some_and(|t| t < start) {
                    return false;
                }
                skip.remove(&m.partition());
                true
            });
        }
        if records.is_empty() {
            return Ok(None);
        }
        // Positions and byte counts first: a record counts as read even if
        // it turns out to be bad.
        {
            // Records of one partition arrive in runs; update per run.
            let mut progress = lock(&d.ctx.progress.partitions);
            let mut run_start = 0;
            while run_start < records.len() {
                let partition = records[run_start].partition();
                let mut run_end = run_start;
                let mut bytes = 0u64;
                while run_end < records.len() && records[run_end].partition() == partition {
                    bytes += records[run_end].size() as u64;
                    run_end += 1;
                }
                let next = records[run_end - 1].offset() + 1;
                let p = progress.entry(partition).or_default();
                p.next_offset = next;
                p.records += (run_end - run_start) as u64;
                p.bytes += bytes;
                self.next_offsets.insert(partition, next);
                run_start = run_end;
            }
        }
        d.decode(&records).map(Some)
    }
}

/// Whether an error means the broker connection is gone.
fn connection_gone(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    )
}

/// A Kafka client of one reader: the consumer, and the queue its records
/// are taken from. The queue is dropped first, as it must be.
struct ReaderClient {
    queue: RecordQueue,
    consumer: WatchedConsumer,
}

impl ReaderClient {
    fn try_new(source: &KafkaSource, source_name: &str) -> Result<Self> {
        let consumer = new_consumer(source, source_name)?;
        Ok(Self {
            queue: RecordQueue::try_new(&consumer)?,
            consumer,
        })
    }
}

/// A consumer for `source`, committing (if at all) to its group.
fn new_consumer(source: &KafkaSource, source_name: &str) -> Result<WatchedConsumer> {
    let group = source
        .commit_group
        .clone()
        .unwrap_or_else(|| format!("millrace-{source_name}"));
    consumer_config(source, &group)
        .create_with_context(LossWatch::default())
        .map_err(|e| MillraceError::execution(format!("cannot create Kafka consumer: {e}")))
}

/// The consumer type: a base consumer that notices lost connections.
type WatchedConsumer = BaseConsumer<LossWatch>;

/// Notes when every broker connection is lost. librdkafka reports that
/// through this callback (while the reader polls), not as a poll error.
#[derive(Default)]
struct LossWatch {
    lost: AtomicBool,
}

impl rdkafka::ClientContext for LossWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if connection_gone(error.rdkafka_error_code()) {
            self.lost.store(true, Ordering::SeqCst);
        }
        tracing::debug!(%error, reason, "Kafka client error");
    }
}

impl rdkafka::consumer::ConsumerContext for LossWatch {}

/// Logs broker trouble at a falling rate: the 1st, 2nd, 4th, 8th... time.
fn broker_error(seen: &mut u64, d: &Decoding, what: &str, e: &KafkaError) {
    *seen += 1;
    if seen.is_power_of_two() {
        warn!(source = %d.ctx.source, topic = %d.source.topic, error = %e, count = *seen, "{what}");
    }
}

fn kafka_error(e: KafkaError) -> MillraceError {
    MillraceError::execution(format!("Kafka: {e}"))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Rows `indices` of `batch`.
fn take_batch(batch: &RecordBatch, indices: &UInt32Array) -> Result<RecordBatch> {
    // Usually every record decoded and is kept in order: nothing to copy.
    let identity = indices.len() == batch.num_rows()
        && indices.null_count() == 0
        && indices
            .values()
            .iter()
            .enumerate()
            .all(|(i, &v)| v as usize == i);
    if identity {
        return Ok(batch.clone());
    }
    Ok(datafusion::arrow::compute::take_record_batch(
        batch, indices,
    )?)
}

/// `rows` followed by one all-NULL row.
fn pad_with_null_row(rows: &RecordBatch, empty: &RecordBatch) -> Result<RecordBatch> {
    let columns = rows
        .columns()
        .iter()
        .zip(empty.schema().fields())
        .map(|(c, f)| {
            let null = datafusion::arrow::array::new_null_array(f.data_type(), 1);
            Ok(concat(&[c.as_ref(), null.as_ref()])?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(rows.schema(), columns)?)
}

/// Row i from `after` unless `from_before[i]`.
fn merge_rows(
    before: &RecordBatch,
    after: &RecordBatch,
    from_before: &[bool],
) -> Result<RecordBatch> {
    let mask: datafusion::arrow::array::BooleanArray =
        from_before.iter().map(|b| Some(*b)).collect();
    let columns = before
        .columns()
        .iter()
        .zip(after.columns())
        .map(|(b, a)| Ok(datafusion::arrow::compute::kernels::zip::zip(&mask, b, a)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(before.schema(), columns)?)
}

/// The `before`, `after` and `op` of decoded Debezium events, from the top
/// level or from `payload`, whichever the event used.
fn debezium_parts(
    events: &RecordBatch,
) -> Result<(
    StructArray,
    StructArray,
    datafusion::arrow::array::StringArray,
)> {
    let top_before = events.column(0).as_struct();
    let top_after = events.column(1).as_struct();
    let top_op = events.column(2).as_string::<i32>();
    let payload = events.column(3).as_struct();
    let wrapped: datafusion::arrow::array::BooleanArray = (0..payload.len())
        .map(|i| Some(payload.is_valid(i)))
        .collect();
    let pick = |inner: &ArrayRef, top: &dyn Array| -> Result<ArrayRef> {
        Ok(datafusion::arrow::compute::kernels::zip::zip(
            &wrapped, inner, &top,
        )?)
    };
    let before = pick(payload.column(0), top_before)?;
    let after = pick(payload.column(1), top_after)?;
    let op = pick(payload.column(2), top_op)?;
    Ok((
        before.as_struct().clone(),
        after.as_struct().clone(),
        op.as_string::<i32>().clone(),
    ))
}

/// A key or header column of `ty` (bytea or text); text that is not UTF-8
/// becomes NULL.
fn bytes_column<'a>(ty: &DataType, values: impl Iterator<Item = Option<&'a [u8]>>) -> ArrayRef {
    match ty {
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            values.for_each(|v| b.append_option(v.and_then(|v| std::str::from_utf8(v).ok())));
            Arc::new(b.finish())
        }
        _ => {
            let mut b = BinaryBuilder::new();
            values.for_each(|v| b.append_option(v));
            Arc::new(b.finish())
        }
    }
}

/// A thread with its own Kafka client that does the reader's blocking
/// requests: high watermarks for the progress view, once a second, and the
/// topic's partition list, once per discovery interval. Each is a round trip
/// to the broker; on the reader's thread that wait would delay every record
/// behind it. The reader runs its own discovery only when the watcher sees
/// the partition list change (or the topic vanish), and at startup.
struct Watcher {
    partitions: Arc<std::sync::Mutex<Vec<i32>>>,
    changed: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// How often the watcher looks at its clocks.
const WATCH_TICK: Duration = Duration::from_millis(100);

impl Watcher {
    fn start(source: &Arc<KafkaSource>, ctx: &ReaderContext) -> Result<Self> {
        let client: BaseConsumer = consumer_config(source, "millrace-watcher")
            .create()
            .map_err(kafka_error)?;
        let partitions: Arc<std::sync::Mutex<Vec<i32>>> = Arc::default();
        let changed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (watched, flag, stopped) = (partitions.clone(), changed.clone(), stop.clone());
        let (source, progress) = (source.clone(), ctx.progress.clone());
        std::thread::Builder::new()
            .name(format!("{}-watcher", ctx.source))
            .spawn(move || {
                let mut last_marks = Instant::now();
                let mut last_listing = Instant::now();
                // The partition list as last seen: `None` before the first
                // look, `Some(None)` while the topic is missing.
                let mut listing: Option<Option<Vec<i32>>> = None;
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(WATCH_TICK);
                    if last_listing.elapsed() >= source.discovery_interval {
                        last_listing = Instant::now();
                        if let Ok(now) = partitions_of(&client, &source, Duration::from_secs(1)) {
                            // The first look counts as a change too: the
                            // reader's own first look came earlier.
                            if listing.as_ref() != Some(&now) {
                                flag.store(true, Ordering::SeqCst);
                            }
                            listing = Some(now);
                        }
                    }
                    if last_marks.elapsed() >= STATS_INTERVAL {
                        last_marks = Instant::now();
                        let list = lock(&watched).clone();
                        for p in list {
                            if let Ok((_, high)) = client.fetch_watermarks(
                                &source.topic,
                                p,
                                Duration::from_millis(500),
                            ) {
                                lock(&progress.partitions)
                                    .entry(p)
                                    .or_default()
                                    .high_watermark = Some(high);
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            partitions,
            changed,
            stop,
        })
    }

    /// From now on, watch the watermarks of `assigned`.
    fn watch(&self, assigned: &BTreeSet<i32>) {
        *lock(&self.partitions) = assigned.iter().copied().collect();
    }

    /// Whether the topic's partitions changed since the last call.
    fn partitions_changed(&self) -> bool {
        self.changed.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        // Progress for lag tools, once more on the way out.
        if self.d.source.commit_group.is_some() && !self.next_offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (&p, &o) in &self.next_offsets {
                let _ = tpl.add_partition_offset(&self.d.source.topic, p, Offset::Offset(o));
            }
            let _ = self.client.consumer.commit(&tpl, CommitMode::Sync);
        }
    }
}
