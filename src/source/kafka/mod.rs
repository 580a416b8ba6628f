//! The Kafka source: `CREATE SOURCE ... WITH (connector = 'kafka', ...)`.
//!
//! Millrace assigns partitions itself rather than joining a consumer
//! group: each reader reads every partition of the topic, keeps each
//! partition's next offset, and finds partitions added while it runs.
//! Offsets are committed to a group only so that external lag tools see
//! progress. Payloads are decoded a poll at a time straight into Arrow
//! columns ([`decode`]); records that cannot be decoded are skipped and
//! counted, never fatal.

mod batch;
pub mod decode;
mod reader;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::options::{invalid, Options};
use super::{IncludeKind, SourceDecl, SourceSpec};
use crate::error::{MillraceError, Result};
use decode::{Encoding, PayloadDecoder};

/// Where a new reader starts in each partition.
#[derive(Debug, Clone)]
pub enum Startup {
    /// The oldest record still held.
    Earliest,
    /// Only records produced from now on.
    Latest,
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
    /// Explicit offsets per partition; unlisted partitions from the earliest.
    Offsets(BTreeMap<i32, i64>),
}

/// How record payloads map to changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// Every record is an inserted row.
    Plain,
    /// The record key identifies a row; a record replaces the key's row
    /// and a record with no value deletes it.
    Upsert,
    /// Debezium change events: `before` is retracted and `after` inserted.
    Debezium,
}

/// A parsed Kafka source.
#[derive(Clone)]
pub struct KafkaSource {
    /// The topic read.
    pub topic: String,
    /// librdkafka settings (`properties.*` with the prefix removed).
    pub client: BTreeMap<String, String>,
    /// Where readers start.
    pub startup: Startup,
    /// How records become changes.
    pub envelope: Envelope,
    /// The payload decoder's schema and encoding.
    pub encoding: Encoding,
    /// Columns decoded from the payload.
    pub value_schema: SchemaRef,
    /// The source's full schema: payload columns, then metadata columns.
    pub schema: SchemaRef,
    /// Metadata columns, in schema order after the payload columns.
    pub includes: Vec<IncludeKind>,
    /// Indices (in `value_schema`) of the declared primary key.
    pub primary_key: Vec<usize>,
    /// Group to commit read offsets to, for lag tools; `None` to commit none.
    pub commit_group: Option<String>,
    /// How often to look for new partitions.
    pub discovery_interval: Duration,
    /// Most records decoded per batch.
    pub max_batch_records: usize,
    /// Log one bad record in this many.
    pub log_every: u64,
    /// Reader threads per view; partition p goes to thread p mod threads.
    pub threads: usize,
}

/// Builds a Kafka source from its declaration.
pub fn build(decl: &SourceDecl<'_>) -> Result<SourceSpec> {
    let source = Arc::new(parse(decl)?);
    if decl.validate {
        check_topic(&source)?;
    } else {
        // Still refuse settings librdkafka does not know.
        consumer_config(&source, "millrace-check")
            .create::<BaseConsumer>()
            .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
    }
    let schema = source.schema.clone();
    let append_only = source.envelope == Envelope::Plain;
    let keyed = source.envelope == Envelope::Upsert
        || (source.envelope == Envelope::Debezium && !source.primary_key.is_empty());
    Ok(SourceSpec {
        connector: "kafka".into(),
        schema,
        append_only,
        keyed,
        make_generators: Box::new(move |ctx: &super::ReaderContext| {
            (0..source.threads)
                .map(|i| {
                    reader::KafkaReader::try_new(source.clone(), ctx, i)
                        .map(|r| Box::new(r) as Box<dyn super::BatchGenerator>)
                })
                .collect()
        }),
    })
}

fn parse(decl: &SourceDecl<'_>) -> Result<KafkaSource> {
    let opts = Options::new(decl.options);
    let topic = opts
        .get("topic")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("a Kafka source needs WITH (topic = '...')"))?
        .to_string();
    let client = client_properties(decl.options)?;
    for key in decl.options.keys().filter(|k| k.starts_with("properties.")) {
        opts.get(key);
    }
    let startup = match opts
        .get("scan.startup.mode")
        .unwrap_or("earliest")
        .to_ascii_lowercase()
        .as_str()
    {
        "earliest" => Startup::Earliest,
        "latest" => Startup::Latest,
        "timestamp" => Startup::Timestamp(
            opts.parse("scan.startup.timestamp.millis")?
                .ok_or_else(|| {
                    invalid("scan.startup.mode = 'timestamp' needs scan.startup.timestamp.millis")
                })?,
        ),
        "specific_offsets" | "specific-offsets" => {
            let text = opts.get("scan.startup.specific.offsets").ok_or_else(|| {
                invalid("scan.startup.mode = 'specific_offsets' needs scan.startup.specific.offsets = 'partition:offset,...'")
            })?;
            Startup::Offsets(parse_offsets(text)?)
        }
        other => {
            return Err(invalid(format!(
            "invalid scan.startup.mode '{other}' (earliest, latest, timestamp or specific_offsets)"
        )))
        }
    };
    let (envelope, encode) = match &decl.format {
        None => (Envelope::Plain, "json".to_string()),
        Some((f, e)) => {
            let envelope = match f.as_str() {
                "plain" => Envelope::Plain,
                "upsert" => Envelope::Upsert,
                "debezium" => Envelope::Debezium,
                other => {
                    return Err(MillraceError::not_supported(format!(
                        "FORMAT {other} (PLAIN, UPSERT or DEBEZIUM)"
                    )))
                }
            };
            (envelope, e.clone())
        }
    };
    let encode_opts = Options::new(decl.encode_options);
    let encoding = match encode.as_str() {
        "json" => Encoding::Json,
        "csv" => {
            let delimiter = match encode_opts.get("delimiter").unwrap_or(",").as_bytes() {
                [b] => *b,
                _ => return Err(invalid("the CSV delimiter must be one character")),
            };
            Encoding::Csv { delimiter }
        }
        other => {
            return Err(MillraceError::not_supported(format!(
                "ENCODE {} (JSON or CSV)",
                other.to_ascii_uppercase()
            )))
        }
    };
    encode_opts.reject_unknown()?;
    if envelope != Envelope::Plain && !matches!(encoding, Encoding::Json) {
        return Err(MillraceError::not_supported(
            "FORMAT UPSERT or DEBEZIUM with ENCODE CSV (use ENCODE JSON)",
        ));
    }
    let value_schema = decl
        .declared
        .clone()
        .filter(|s| !s.fields().is_empty())
        .ok_or_else(|| {
            invalid(
                "a Kafka source needs its columns declared: CREATE SOURCE name (column type, ...)",
            )
        })?;
    let mut fields: Vec<Field> = value_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut includes = Vec::new();
    for inc in &decl.includes {
        let ty = match (&inc.what, &inc.data_type) {
            (IncludeKind::Key | IncludeKind::Header(_), None) => DataType::Binary,
            (
                IncludeKind::Key | IncludeKind::Header(_),
                Some(t @ (DataType::Binary | DataType::Utf8)),
            ) => t.clone(),
            (IncludeKind::Partition, None | Some(DataType::Int32)) => DataType::Int32,
            (IncludeKind::Offset, None | Some(DataType::Int64)) => DataType::Int64,
            (IncludeKind::Timestamp, None | Some(DataType::Timestamp(_, Some(_)))) => {
                crate::sql::types::timestamptz()
            }
            (what, Some(t)) => {
                return Err(invalid(format!(
                    "INCLUDE {what:?} AS {} cannot have type {}",
                    inc.column,
                    crate::sql::types::arrow_to_sql_name(t, None)
                )))
            }
        };
        if fields.iter().any(|f| f.name() == &inc.column) {
            return Err(MillraceError::plan(format!(
                "column \"{}\" specified more than once",
                inc.column
            )));
        }
        fields.push(Field::new(&inc.column, ty, true));
        includes.push(inc.what.clone());
    }
    let primary_key = decl
        .primary_key
        .iter()
        .map(|c| {
            value_schema.index_of(c).map_err(|_| {
                MillraceError::plan(format!(
                    "primary key column \"{c}\" is not a payload column of the source"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if envelope == Envelope::Plain && !primary_key.is_empty() {
        return Err(MillraceError::not_supported(
            "PRIMARY KEY on a FORMAT PLAIN source (use FORMAT UPSERT or DEBEZIUM for keyed rows)",
        ));
    }
    if envelope == Envelope::Upsert && !primary_key.is_empty() {
        return Err(MillraceError::not_supported(
            "PRIMARY KEY on a FORMAT UPSERT source: the record key identifies rows (INCLUDE key AS column to see it)",
        ));
    }
    let commit = opts.parse_or("commit.offsets", true)?;
    let group = opts.get("group.id").map(str::to_string);
    let discovery_ms: u64 = opts.parse_or("scan.partition.discovery.interval.ms", 5000)?;
    let max_batch_records: usize = opts.parse_or("max.batch.records", 10_000)?;
    let log_every: u64 = opts.parse_or("bad.record.log.every", 1000)?;
    let threads: usize = opts.parse_or("reader.threads", 2)?;
    opts.reject_unknown()?;
    if max_batch_records == 0 || log_every == 0 {
        return Err(invalid(
            "max.batch.records and bad.record.log.every must be positive",
        ));
    }
    // The decoder reads the declared columns, or for Debezium the envelope
    // around them.
    let decoder_schema = match envelope {
        Envelope::Debezium => debezium_schema(&value_schema),
        _ => value_schema.clone(),
    };
    PayloadDecoder::try_new(decoder_schema, encoding.clone())?;
    Ok(KafkaSource {
        topic,
        client,
        startup,
        envelope,
        encoding,
        value_schema,
        schema: Arc::new(Schema::new(fields)),
        includes,
        primary_key,
        commit_group: if commit {
            Some(group.unwrap_or_else(|| format!("millrace-{}", decl.name)))
        } else {
            None
        },
        discovery_interval: Duration::from_millis(discovery_ms.max(100)),
        max_batch_records,
        log_every,
        threads,
    })
}

/// The JSON shape of a Debezium change event, bare or wrapped in
/// `{"schema": ..., "payload": ...}`.
pub fn debezium_schema(value: &SchemaRef) -> SchemaRef {
    let row = DataType::Struct(value.fields().clone());
    let change = vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("op", DataType::Utf8, true),
    ];
    let mut fields = change.clone();
    fields.push(Field::new("payload", DataType::Struct(change.into()), true));
    Arc::new(Schema::new(fields))
}

/// `'0:100,1:200'` into partition → offset.
fn parse_offsets(text: &str) -> Result<BTreeMap<i32, i64>> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once(':').ok_or_else(|| {
            invalid(format!(
                "invalid partition offset '{part}' (expected partition:offset)"
            ))
        })?;
        let p: i32 = p
            .trim()
            .parse()
            .map_err(|_| invalid(format!("invalid partition '{p}'")))?;
        let o: i64 = o
            .trim()
            .parse()
            .map_err(|_| invalid(format!("invalid offset '{o}'")))?;
        if p < 0 || o < 0 {
            return Err(invalid(format!("invalid partition offset '{part}'")));
        }
        out.insert(p, o);
    }
    Ok(out)
}

/// Hands `record` to `send` until the producer's local queue has room,
/// calling `wait` (which should let deliveries complete) while it is full.
pub fn send_when_room<R>(
    mut record: R,
    mut send: impl FnMut(R) -> std::result::Result<(), (rdkafka::error::KafkaError, R)>,
    mut wait: impl FnMut(),
) -> std::result::Result<(), rdkafka::error::KafkaError> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                wait();
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// librdkafka settings from `properties.*` options: the prefix removed, and
/// `bootstrap.server` (RisingWave's spelling) as `bootstrap.servers`.
pub fn client_properties(options: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut client = BTreeMap::new();
    for (k, v) in options {
        if let Some(key) = k.strip_prefix("properties.") {
            let key = if key == "bootstrap.server" {
                "bootstrap.servers"
            } else {
                key
            };
            client.insert(key.to_string(), v.clone());
        }
    }
    if !client.contains_key("bootstrap.servers") {
        return Err(invalid(
            "a Kafka connector needs properties.bootstrap.server = 'host:port'",
        ));
    }
    Ok(client)
}

/// A consumer configuration: the user's properties over Millrace's
/// defaults (manual assignment, no auto commit).
fn consumer_config(source: &KafkaSource, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        .set("queued.min.messages", "200000")
        // After a lost connection, reconnect after a second rather than at
        // once, so that the reader sees the loss and starts from a fresh
        // client before the old one can fetch from a restarted broker.
        .set("reconnect.backoff.ms", "1000")
        .set("log_level", "3");
    for (k, v) in &source.client {
        config.set(k, v);
    }
    config
}

/// Fails unless the broker answers and the topic exists.
fn check_topic(source: &KafkaSource) -> Result<()> {
    let consumer: BaseConsumer = consumer_config(source, "millrace-check")
        .create()
        .map_err(|e| invalid(format!("invalid Kafka properties: {e}")))?;
    match partitions_of(&consumer, source, Duration::from_secs(10))? {
        Some(_) => Ok(()),
        None => Err(invalid(format!(
            "Kafka topic '{}' does not exist at {}",
            source.topic,
            source.servers()
        ))),
    }
}

impl KafkaSource {
    /// The bootstrap servers, for messages.
    pub fn servers(&self) -> &str {
        self.client
            .get("bootstrap.servers")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// The topic's partitions; `None` if the broker says it does not exist; an
/// error naming the broker if it cannot be asked.
fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    source: &KafkaSource,
    timeout: Duration,
) -> Result<Option<Vec<i32>>> {
    let servers = source.servers();
    let metadata = consumer
        .fetch_metadata(Some(&source.topic), timeout)
        .map_err(|e| {
            MillraceError::Io(std::io::Error::other(format!(
                "cannot reach Kafka at {servers}: {e}"
            )))
        })?;
    let Some(topic) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == source.topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
    else {
        return Ok(None);
    };
    let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(Some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_offsets("0:10, 1:20").unwrap(),
            BTreeMap::from([(0, 10), (1, 20)])
        );
        let e = parse_offsets("0-10").unwrap_err().to_string();
        assert!(e.contains("0-10"), "{e}");
    }
}
