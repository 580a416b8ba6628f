//! The Kafka sink: a relation's changes as JSON messages on a topic.
//!
//! By default the producer is idempotent, and a sink log entry counts as
//! delivered once the broker acknowledged all its messages: after a crash
//! the entries after the last recorded delivery are sent again (at least
//! once). With `exactly_once = 'true'` each log entry is one Kafka
//! transaction that also writes the entry's sequence number to a progress
//! topic; after a restart the sink reads the last committed sequence there
//! (`read_committed`) and skips every entry up to it, so a reader with
//! `isolation.level = read_committed` sees each change once.

// rdkafka's `send` hands the record back inside its error, so that it can
// be sent again: the error is large by design.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::encode::encode_change;
use super::{SinkFormat, SinkProgress, SinkSpec, SinkTarget, SinkWriter};
use crate::error::{MillraceError, Result};
use crate::source::kafka::{client_properties, send_when_room};
use crate::source::options::{invalid, Options};
use crate::stream::change::ChangeBatch;

/// Builds a Kafka sink.
pub fn build(
    target: &SinkTarget<'_>,
    options: &BTreeMap<String, String>,
    format: SinkFormat,
) -> Result<SinkSpec> {
    let opts = Options::new(options);
    let topic = opts
        .get("topic")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("a Kafka sink needs WITH (topic = '...')"))?
        .to_string();
    let client = client_properties(options)?;
    for key in options.keys().filter(|k| k.starts_with("properties.")) {
        opts.get(key);
    }
    let key_columns = match opts.get("primary_key") {
        Some(list) => list
            .split(',')
            .map(|c| {
                let c = c.trim().to_ascii_lowercase();
                target.schema.index_of(&c).map_err(|_| {
                    invalid(format!(
                        "primary_key column \"{c}\" is not a column of \"{}\"",
                        target.relation
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None => target.primary_key.clone(),
    };
    if format == SinkFormat::Upsert && key_columns.is_empty() {
        return Err(invalid(format!(
            "FORMAT UPSERT needs a key: \"{}\" has no primary key, so name its key columns with primary_key = 'col, ...'",
            target.relation
        )));
    }
    let snapshot = opts.parse_or("snapshot", true)?;
    let exactly_once = opts.parse_or("exactly_once", false)?;
    let progress_topic = opts
        .get("progress_topic")
        .unwrap_or(DEFAULT_PROGRESS_TOPIC)
        .to_string();
    if progress_topic.is_empty() {
        return Err(invalid("progress_topic must not be empty"));
    }
    if client.contains_key("transactional.id") {
        return Err(invalid(
            "properties.transactional.id is not for sinks: exactly_once = 'true' names the sink's transactions itself",
        ));
    }
    opts.reject_unknown()?;
    let mut config = ClientConfig::new();
    config
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("log_level", "3");
    for (k, v) in &client {
        config.set(k, v);
    }
    let producer: ThreadedProducer<DeliveryCounter> = config
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
    if target.validate {
        let servers = client.get("bootstrap.servers").cloned().unwrap_or_default();
        let md = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| {
                MillraceError::Io(std::io::Error::other(format!(
                    "cannot reach Kafka at {servers}: {e}"
                )))
            })?;
        let exists = md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(invalid(format!(
                "Kafka topic '{topic}' does not exist at {servers}"
            )));
        }
        if exactly_once && !has_topic(&md, &progress_topic) {
            create_progress_topic(&config, &progress_topic)?;
        }
    }
    drop(producer);
    let sink = target.name.to_string();
    // Stable across restarts, and unique to this sink: a sink dropped and
    // created again is a new sink with a new id.
    let transactional_id = format!("millrace-sink-{}-{}", target.id, target.name);
    Ok(SinkSpec {
        connector: "kafka".into(),
        format,
        snapshot,
        needs_log: exactly_once,
        make_writer: Box::new(move |progress: Arc<SinkProgress>| {
            let context = DeliveryCounter {
                progress: Some(progress.clone()),
                sink: sink.clone(),
            };
            let (topic, key_columns, sink) = (topic.clone(), key_columns.clone(), sink.clone());
            let (producer, transactions) = if exactly_once {
                let mut config = config.clone();
                config.set("transactional.id", &transactional_id);
                let producer = transactional_producer(&config, context)?;
                let committed = committed_sequence(&client, &progress_topic, &transactional_id)?;
                let transactions = Transactions {
                    config,
                    progress_topic: progress_topic.clone(),
                    key: transactional_id.clone(),
                    committed,
                };
                (producer, Some(transactions))
            } else {
                let producer: ThreadedProducer<DeliveryCounter> = config
                    .create_with_context(context)
                    .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
                (producer, None)
            };
            Ok(Box::new(KafkaSinkWriter {
                producer,
                topic,
                format,
                key_columns,
                progress,
                transactions,
                sink,
            }) as Box<dyn SinkWriter>)
        }),
    })
}

/// The progress topic of `exactly_once` sinks unless `progress_topic` names
/// another.
pub const DEFAULT_PROGRESS_TOPIC: &str = "millrace_sink_progress";

/// How long a transaction's commit, or a log entry's acknowledgement, may
/// take before the entry is written again.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

fn has_topic(md: &rdkafka::metadata::Metadata, topic: &str) -> bool {
    md.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// Creates the progress topic (one partition; compacted, as only the last
/// record per sink matters).
fn create_progress_topic(config: &ClientConfig, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = futures::executor::block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .map_err(|e| kafka_io(format!("creating the sink progress topic '{topic}': {e}")))?;
    for r in results {
        match r {
            Ok(_) => {}
            // Created meanwhile by another sink.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                return Err(kafka_io(format!(
                    "creating the sink progress topic '{t}': {e}"
                )))
            }
        }
    }
    Ok(())
}

fn kafka_io(message: String) -> MillraceError {
    MillraceError::Io(std::io::Error::other(message))
}

/// A transactional producer, its earlier incarnation's open transaction
/// aborted (fenced) by `init_transactions`.
fn transactional_producer(
    config: &ClientConfig,
    context: DeliveryCounter,
) -> Result<ThreadedProducer<DeliveryCounter>> {
    let producer: ThreadedProducer<DeliveryCounter> = config
        .create_with_context(context)
        .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
    producer
        .init_transactions(DELIVERY_TIMEOUT)
        .map_err(|e| kafka_io(format!("starting Kafka transactions: {e}")))?;
    Ok(producer)
}

/// The client context of the progress topic's reader: the end of a
/// partition is what it waits for, not an error to log.
struct ProgressReader;

impl ClientContext for ProgressReader {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition comes as a partition's error or, from
        // librdkafka's error callback, as a global one.
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(%error, reason, "reading the sink progress topic");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProgressReader {}

/// The last sequence number committed for `key` on the progress topic,
/// read with `read_committed` to its end (0 if none).
fn committed_sequence(client: &BTreeMap<String, String>, topic: &str, key: &str) -> Result<u64> {
    let mut config = ClientConfig::new();
    for (k, v) in client {
        config.set(k, v);
    }
    config
        .set("group.id", format!("{key}-progress"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("log_level", "3");
    let consumer: BaseConsumer<ProgressReader> = config
        .create_with_context(ProgressReader)
        .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| kafka_io(format!("reading the sink progress topic '{topic}': {e}")))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(kafka_io(format!(
            "the sink progress topic '{topic}' does not exist"
        )));
    }
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| kafka_io(e.to_string()))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| kafka_io(format!("reading the sink progress topic '{topic}': {e}")))?;
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut committed = 0;
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            return Err(kafka_io(format!(
                "reading the sink progress topic '{topic}' did not reach its end within {} s",
                DELIVERY_TIMEOUT.as_secs()
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => {
                return Err(kafka_io(format!(
                    "reading the sink progress topic '{topic}': {e}"
                )))
            }
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                if m.key() == Some(key.as_bytes()) {
                    let seq = m
                        .payload()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| {
                            kafka_io(format!(
                                "a malformed record for '{key}' on the sink progress topic '{topic}'"
                            ))
                        })?;
                    committed = committed.max(seq);
                }
            }
        }
    }
    Ok(committed)
}

/// Counts deliveries and failures as the broker acknowledges them.
#[derive(Default)]
struct DeliveryCounter {
    progress: Option<Arc<SinkProgress>>,
    sink: String,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        let Some(progress) = &self.progress else {
            return;
        };
        match result {
            Ok(_) => {
                progress.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => progress.failed(&self.sink, format!("Kafka delivery failed: {e}")),
        }
    }
}

/// What an `exactly_once` sink needs for its transactions.
struct Transactions {
    /// The producer's configuration, to start it again after a failure.
    config: ClientConfig,
    progress_topic: String,
    /// The key of this sink's records on the progress topic (its
    /// transactional id).
    key: String,
    /// The last sequence number committed.
    committed: u64,
}

struct KafkaSinkWriter {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    format: SinkFormat,
    key_columns: Vec<usize>,
    progress: Arc<SinkProgress>,
    transactions: Option<Transactions>,
    sink: String,
}

impl KafkaSinkWriter {
    /// Queues the messages of `change` (and, in a transaction, the
    /// progress record `seq`).
    fn send_all(
        &self,
        change: &ChangeBatch,
        progress_record: Option<(&str, &str, u64)>,
    ) -> Result<()> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let messages = encode_change(change, self.format, &self.key_columns, now_ms)?;
        let wait = || std::thread::sleep(Duration::from_millis(5));
        for (key, value) in &messages {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic);
            if let Some(k) = key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            // A full local queue waits for deliveries (the producer's own
            // thread polls them).
            send_when_room(record, |r| self.producer.send(r), wait).map_err(|e| {
                MillraceError::execution(format!("Kafka sink to topic '{}': {e}", self.topic))
            })?;
        }
        if let Some((topic, key, seq)) = progress_record {
            let value = seq.to_string();
            let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(value.as_bytes());
            send_when_room(record, |r| self.producer.send(r), wait).map_err(|e| {
                MillraceError::execution(format!("Kafka sink progress to topic '{topic}': {e}"))
            })?;
        }
        Ok(())
    }

    /// Writes `change` as one transaction with its progress record.
    fn write_transaction(&mut self, change: &ChangeBatch, seq: Option<u64>) -> Result<()> {
        let Some(t) = &self.transactions else {
            return Ok(());
        };
        if seq.is_some_and(|s| s <= t.committed) {
            return Ok(());
        }
        let progress_topic = t.progress_topic.clone();
        let key = t.key.clone();
        let attempt = self
            .producer
            .begin_transaction()
            .map_err(|e| MillraceError::execution(format!("beginning a Kafka transaction: {e}")))
            .and_then(|()| {
                self.send_all(
                    change,
                    seq.map(|s| (progress_topic.as_str(), key.as_str(), s)),
                )
            })
            .and_then(|()| {
                self.producer
                    .commit_transaction(DELIVERY_TIMEOUT)
                    .map_err(|e| {
                        MillraceError::execution(format!("committing a Kafka transaction: {e}"))
                    })
            });
        match attempt {
            Ok(()) => {
                if let (Some(t), Some(s)) = (&mut self.transactions, seq) {
                    t.committed = s;
                }
                Ok(())
            }
            Err(e) => {
                // Abort, or start over with a new producer (which fences
                // and aborts this one's transaction) when abort fails too.
                if self.producer.abort_transaction(DELIVERY_TIMEOUT).is_err() {
                    if let Some(t) = &self.transactions {
                        let context = DeliveryCounter {
                            progress: Some(self.progress.clone()),
                            sink: self.sink.clone(),
                        };
                        self.producer = transactional_producer(&t.config, context)?;
                    }
                }
                Err(e)
            }
        }
    }
}

impl SinkWriter for KafkaSinkWriter {
    fn write(&mut self, change: &ChangeBatch, seq: Option<u64>) -> Result<()> {
        if self.transactions.is_some() {
            return self.write_transaction(change, seq);
        }
        if seq.is_none() {
            return self.send_all(change, None);
        }
        // A log entry is delivered once every message is acknowledged.
        let errors = self.progress.errors.load(Ordering::SeqCst);
        self.send_all(change, None)?;
        self.producer.flush(DELIVERY_TIMEOUT).map_err(|e| {
            MillraceError::execution(format!("Kafka sink to topic '{}': {e}", self.topic))
        })?;
        if self.progress.errors.load(Ordering::SeqCst) != errors {
            return Err(MillraceError::execution(format!(
                "Kafka sink to topic '{}': some messages were not delivered; sending the change again",
                self.topic
            )));
        }
        Ok(())
    }
}

impl Drop for KafkaSinkWriter {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}
