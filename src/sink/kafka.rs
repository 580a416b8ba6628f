//! The Kafka sink: a relation's changes as JSON messages on a topic.

// rdkafka's `send` hands the record back inside its error, so that it can
// be sent again: the error is large by design.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

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
    }
    drop(producer);
    let sink = target.name.to_string();
    Ok(SinkSpec {
        connector: "kafka".into(),
        format,
        snapshot,
        make_writer: Box::new(move |progress: Arc<SinkProgress>| {
            let producer: ThreadedProducer<DeliveryCounter> = config
                .create_with_context(DeliveryCounter {
                    progress: Some(progress.clone()),
                    sink: sink.clone(),
                })
                .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
            Ok(Box::new(KafkaSinkWriter {
                producer,
                topic,
                format,
                key_columns,
            }) as Box<dyn SinkWriter>)
        }),
    })
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

struct KafkaSinkWriter {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    format: SinkFormat,
    key_columns: Vec<usize>,
}

impl SinkWriter for KafkaSinkWriter {
    fn write(&mut self, change: &ChangeBatch) -> Result<()> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let messages = encode_change(change, self.format, &self.key_columns, now_ms)?;
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
            send_when_room(
                record,
                |r| self.producer.send(r),
                || std::thread::sleep(Duration::from_millis(5)),
            )
            .map_err(|e| {
                MillraceError::execution(format!("Kafka sink to topic '{}': {e}", self.topic))
            })?;
        }
        Ok(())
    }
}

impl Drop for KafkaSinkWriter {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}
