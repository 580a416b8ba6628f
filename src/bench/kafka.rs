//! Nexmark over Kafka: preloading a topic with the generator's bid events as
//! JSON, a bare librdkafka consumer as the ceiling, and produce-to-visible
//! freshness measured through a real Postgres client.

// rdkafka's `send` hands the record back inside its error, so that it can
// be sent again: the error is large by design.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::process_cpu_seconds;
use crate::error::{MillraceError, Result};
use crate::source::build_source;
use crate::source::kafka::send_when_room;
use crate::sql::types::arrow_to_sql_name;

/// Partitions of the benchmark topic.
pub const PARTITIONS: i32 = 2;

fn kafka(e: impl std::fmt::Display) -> MillraceError {
    MillraceError::execution(format!("Kafka: {e}"))
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "3");
    c
}

/// Creates `topic` with [`PARTITIONS`] partitions.
async fn create_topic(brokers: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create().map_err(kafka)?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics([&new], &options).await.map_err(kafka)? {
        r.map_err(|(t, e)| kafka(format!("creating topic {t}: {e}")))?;
    }
    Ok(())
}

/// A consumer in `group` assigned every partition of `topic` from its
/// start, waiting at most 20 ms per fetch, with `extra` settings.
fn assigned_consumer(
    brokers: &str,
    topic: &str,
    group: &str,
    extra: &[(&str, &str)],
) -> Result<BaseConsumer> {
    let mut config = client(brokers);
    config.set("group.id", group).set("fetch.wait.max.ms", "20");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().map_err(kafka)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka)?;
    }
    consumer.assign(&tpl).map_err(kafka)?;
    Ok(consumer)
}

/// `CREATE SOURCE name (columns of the Nexmark table) WITH (connector =
/// 'kafka', ...)`, reading `topic` from its start.
pub fn source_sql(
    name: &str,
    nexmark_options: &BTreeMap<String, String>,
    brokers: &str,
    topic: &str,
) -> Result<String> {
    let spec = build_source(None, nexmark_options)?;
    let columns: Vec<String> = spec
        .schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), arrow_to_sql_name(f.data_type(), None)))
        .collect();
    Ok(format!(
        "CREATE SOURCE {name} ({}) WITH (connector = 'kafka', topic = '{topic}', \
         properties.bootstrap.server = '{brokers}', scan.startup.mode = 'earliest') \
         FORMAT PLAIN ENCODE JSON",
        columns.join(", ")
    ))
}

/// Creates `topic` (two partitions) and fills it with the rows of the
/// Nexmark source `options` as JSON, alternating partitions by batch.
/// Returns the number of records.
pub fn preload(brokers: &str, topic: &str, options: &BTreeMap<String, String>) -> Result<u64> {
    futures::executor::block_on(create_topic(brokers, topic))?;
    let producer: BaseProducer = client(brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .map_err(kafka)?;
    let spec = build_source(None, options)?;
    let mut records = 0u64;
    let mut partition = 0;
    for mut generator in (spec.make_generators)(&Default::default())? {
        while let Some(change) = generator.next_batch()? {
            let mut writer = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(Vec::new());
            writer.write(change.data())?;
            writer.finish()?;
            let buf = writer.into_inner();
            for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let record: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(topic).partition(partition).payload(line);
                send_when_room(
                    record,
                    |r| producer.send(r),
                    || {
                        producer.poll(Duration::from_millis(5));
                    },
                )
                .map_err(kafka)?;
                records += 1;
            }
            producer.poll(Duration::ZERO);
            partition = (partition + 1) % PARTITIONS;
        }
    }
    producer.flush(Duration::from_secs(300)).map_err(kafka)?;
    Ok(records)
}

/// What a bare consumer measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerRun {
    /// Records read.
    pub records: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// CPU seconds of this process.
    pub cpu_seconds: f64,
}

/// Reads `records` records of `topic` from its start with a plain
/// librdkafka consumer that only counts them: the ceiling the broker sets.
pub fn bare_consumer(brokers: &str, topic: &str, records: u64) -> Result<ConsumerRun> {
    let consumer = assigned_consumer(
        brokers,
        topic,
        "millrace-bench-bare",
        &[
            ("enable.auto.commit", "false"),
            ("queued.min.messages", "200000"),
        ],
    )?;
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < records {
        if start.elapsed() > Duration::from_secs(600) {
            return Err(kafka(format!(
                "bare consumer read {read} of {records} in 600 s"
            )));
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.map_err(kafka)?;
            bytes += rdkafka::message::Message::payload(&m).map_or(0, |p| p.len());
            read += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(ConsumerRun {
        records: read,
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: process_cpu_seconds() - cpu,
    })
}

/// Produce-to-visible latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Freshness {
    /// Target produce rate (events/s).
    pub rate: u64,
    /// Events produced.
    pub produced: u64,
    /// Observations made.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// The same for a bare consumer reading records produced the same way,
    /// measured alone right after (produce to consumed): what the broker
    /// allows.
    pub bare_p50_ms: f64,
    /// 99th percentile of the bare consumer.
    pub bare_p99_ms: f64,
    /// Worst of the bare consumer.
    pub bare_max_ms: f64,
}

/// The value at quantile `q` of sorted `samples`.
fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// A producer thread writing `{"seq": n}` for n in `0..rate * seconds` to
/// `topic` at `rate` records per second, paced per millisecond, spread over
/// the partitions. It records when each record was handed to librdkafka, in
/// nanoseconds since `origin`, in the returned vector.
struct PacedProducer {
    thread: std::thread::JoinHandle<Result<()>>,
    sent: Arc<Vec<AtomicU64>>,
    total: u64,
}

impl PacedProducer {
    fn start(brokers: &str, topic: &str, rate: u64, seconds: u64, origin: Instant) -> Self {
        let total = rate * seconds;
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
        let producer_sent = sent.clone();
        let brokers = brokers.to_string();
        let topic = topic.to_string();
        let thread = std::thread::spawn(move || -> Result<()> {
            let producer: BaseProducer = client(&brokers)
                // A few milliseconds of batching: without it, this producer
                // cannot keep 50,000 records/s flowing into the test broker.
                .set("linger.ms", "5")
                .create()
                .map_err(kafka)?;
            let per_ms = (rate / 1000).max(1);
            let mut seq = 0u64;
            while seq < total {
                let due = Duration::from_micros(seq * 1_000_000 / rate);
                let now = origin.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                }
                for _ in 0..per_ms.min(total - seq) {
                    let value = format!("{{\"seq\": {seq}}}");
                    producer_sent[seq as usize]
                        .store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let record: BaseRecord<'_, [u8], str> = BaseRecord::to(&topic)
                        .partition((seq % PARTITIONS as u64) as i32)
                        .payload(value.as_str());
                    send_when_room(
                        record,
                        |r| producer.send(r),
                        || {
                            producer.poll(Duration::from_millis(1));
                        },
                    )
                    .map_err(kafka)?;
                    seq += 1;
                }
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(30)).map_err(kafka)?;
            Ok(())
        });
        Self {
            thread,
            sent,
            total,
        }
    }

    /// Nanoseconds since the origin at which record `seq` was produced.
    fn sent_at(&self, seq: u64) -> Option<u64> {
        self.sent
            .get(usize::try_from(seq).ok()?)
            .map(|at| at.load(Ordering::Relaxed))
    }

    fn join(self) -> Result<()> {
        self.thread
            .join()
            .map_err(|_| MillraceError::execution("producer thread panicked"))?
    }
}

/// Starts `millrace serve` (from `exe`) on a loopback port, declares a
/// Kafka source and a view over a new topic, produces `rate` events per
/// second for `seconds`, and meanwhile queries the view over the Postgres
/// protocol in a loop. Each answer shows the newest event visible; its
/// age at that moment is one freshness sample. Then, alone, a bare consumer
/// reads a second topic produced the same way: the broker's own latency.
/// The two run one after the other so that neither takes CPU from the
/// other on a small machine.
pub async fn freshness(exe: &Path, brokers: &str, rate: u64, seconds: u64) -> Result<Freshness> {
    use tokio::io::AsyncBufReadExt;
    let topic = format!("millrace-fresh-{}", std::process::id());
    create_topic(brokers, &topic).await?;
    let dir = std::env::temp_dir().join(format!("millrace-fresh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = tokio::process::Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| MillraceError::execution("no server stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next_line().await? {
            Some(l) => {
                if let Some(a) = l.strip_prefix("listening on ") {
                    break a.to_string();
                }
            }
            None => {
                return Err(MillraceError::execution(
                    "the server exited before listening",
                ))
            }
        }
    };
    let port = addr.rsplit(':').next().unwrap_or("0");
    let (pg, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=bench dbname=bench"),
        tokio_postgres::NoTls,
    )
    .await
    .map_err(|e| MillraceError::execution(format!("connecting to the server: {e}")))?;
    tokio::spawn(conn);
    let pg_err = |e: tokio_postgres::Error| MillraceError::execution(format!("query: {e}"));
    pg.batch_execute(&format!(
        "CREATE SOURCE fresh (seq BIGINT) WITH (connector = 'kafka', topic = '{topic}',
         properties.bootstrap.server = '{brokers}', scan.startup.mode = 'earliest')
         FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW fresh_v AS SELECT max(seq) AS seq, count(*) AS n FROM fresh;"
    ))
    .await
    .map_err(pg_err)?;
    // Give the reader time to find its partitions.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let origin = Instant::now();
    let producer = PacedProducer::start(brokers, &topic, rate, seconds, origin);
    let total = producer.total;
    let mut samples: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    loop {
        let row = pg
            .query_one("SELECT seq, n FROM fresh_v", &[])
            .await
            .map_err(pg_err)?;
        let seq: Option<i64> = row.get(0);
        let n: i64 = row.get(1);
        let now = origin.elapsed().as_nanos() as u64;
        if let Some(at) = seq.and_then(|s| producer.sent_at(s as u64)) {
            // Only while production runs: afterwards the newest event
            // just ages.
            if !producer.thread.is_finished() {
                samples.push(now.saturating_sub(at) as f64 / 1e6);
            }
        }
        if n as u64 >= total || Instant::now() > deadline {
            break;
        }
    }
    producer.join()?;
    drop(pg);
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    if samples.is_empty() {
        return Err(MillraceError::execution("no freshness samples"));
    }
    samples.sort_by(|a, b| a.total_cmp(b));

    let bare_topic = format!("millrace-fresh-bare-{}", std::process::id());
    create_topic(brokers, &bare_topic).await?;
    let bare_brokers = brokers.to_string();
    let mut bare = tokio::task::spawn_blocking(move || {
        bare_consumer_latencies(&bare_brokers, &bare_topic, rate, seconds)
    })
    .await
    .map_err(|_| MillraceError::execution("consumer thread panicked"))??;
    bare.sort_by(|a, b| a.total_cmp(b));
    Ok(Freshness {
        rate,
        produced: total,
        samples: samples.len(),
        p50_ms: quantile(&samples, 0.5),
        p99_ms: quantile(&samples, 0.99),
        max_ms: quantile(&samples, 1.0),
        bare_p50_ms: quantile(&bare, 0.5),
        bare_p99_ms: quantile(&bare, 0.99),
        bare_max_ms: quantile(&bare, 1.0),
    })
}

/// A bare consumer reading `topic` while a [`PacedProducer`] writes it: the
/// time from produce to consumed of every record, in milliseconds.
fn bare_consumer_latencies(
    brokers: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
) -> Result<Vec<f64>> {
    let consumer = assigned_consumer(brokers, topic, "millrace-bench-fresh", &[])?;
    // Let the consumer find its partitions before production starts.
    let warm = Instant::now() + Duration::from_secs(2);
    while Instant::now() < warm {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let origin = Instant::now();
    let producer = PacedProducer::start(brokers, topic, rate, seconds, origin);
    let mut latencies = Vec::with_capacity(producer.total as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while (latencies.len() as u64) < producer.total && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(kafka)?;
        let now = origin.elapsed().as_nanos() as u64;
        let seq = rdkafka::message::Message::payload(&m)
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|t| {
                t.trim_end_matches('}')
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
        if let Some(at) = seq.and_then(|s| producer.sent_at(s)) {
            latencies.push(now.saturating_sub(at) as f64 / 1e6);
        }
    }
    producer.join()?;
    Ok(latencies)
}
