//! Exactly-once views over Kafka, proven by killing the server: a seeded
//! producer writes keyed events to a three-partition topic while the
//! server checkpoints every 100 ms and is killed with SIGKILL at random
//! moments, ten times, and restarted each time. Meanwhile a reader asserts
//! that the last committed epoch and an append-only count never go
//! backwards, across the restarts too. At the end every view (aggregates,
//! a join with a table, a windowed aggregate, and an aggregate over an
//! upsert source of the same topic, whose records carry keys) must equal a
//! recomputation over everything produced: nothing lost, nothing counted
//! twice, and each key's last row only.
//!
//! Two Kafka sinks run through the same kills: an upsert sink of the
//! per-key aggregate (the default, at least once), whose last message per
//! key must equal the recomputation, and an `exactly_once` sink of an
//! append-only view, which must deliver every event, and each once to a
//! `read_committed` reader on a broker that hides aborted transactions.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::Broker;
use common::TestServer;
use rand::{Rng, SeedableRng};

/// Partitions of the topic.
const PARTITIONS: i64 = 3;
/// Keys of the events; the table names all but the last.
const KEYS: i64 = 7;
/// Record keys of the events: event `id` has key `id % SLOTS`, a multiple
/// of [`PARTITIONS`] so that every key stays in one partition (upsert
/// order is per partition).
const SLOTS: i64 = 150;
/// Event time of event 0, in milliseconds since the Unix epoch.
const BASE_MS: i64 = 1_798_761_600_000;

/// The fields of event `id`: key, amount, event time (ms).
fn event(id: i64) -> (i64, i64, i64) {
    (id % KEYS, (id * 37) % 1000, BASE_MS + id * 3)
}

/// `ms` (milliseconds since the Unix epoch, within the first day after
/// [`BASE_MS`]) as an ISO 8601 timestamp.
fn iso_time(ms: i64) -> String {
    let since = ms - BASE_MS;
    let (s, milli) = (since / 1000, since % 1000);
    format!(
        "2027-01-01T{:02}:{:02}:{:02}.{milli:03}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Produces events 0, 1, ... to `topic` (event `id` to partition
/// `id % PARTITIONS`) at about `per_second`, until `stop`; `produced` is the
/// number acknowledged so far.
fn produce(
    broker_servers: String,
    topic: String,
    per_second: u64,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicI64>,
) -> anyhow::Result<()> {
    let broker = Broker::external(&broker_servers);
    let tx = broker.producer()?;
    let started = Instant::now();
    let mut id = 0i64;
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..20 {
            let (k, amount, ts) = event(id);
            let value = format!(
                r#"{{"id": {id}, "k": {k}, "amount": {amount}, "ts": "{}"}}"#,
                iso_time(ts)
            );
            let slot = (id % SLOTS).to_string();
            tx.send(
                &topic,
                common::kafka::Record {
                    partition: Some((id % PARTITIONS) as i32),
                    key: Some(slot.as_bytes()),
                    value: Some(value.as_bytes()),
                    ..Default::default()
                },
            )?;
            id += 1;
        }
        tx.flush()?;
        produced.store(id, Ordering::SeqCst);
        let due = Duration::from_secs_f64(id as f64 / per_second as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// The views' contents recomputed over events `0..n`, as the test's
/// queries print them.
fn expected(n: i64) -> BTreeMap<&'static str, Vec<String>> {
    let mut per_key: BTreeMap<i64, (i64, i64, i64, i64)> = BTreeMap::new();
    let mut per_name: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut per_second: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for id in 0..n {
        let (k, amount, ts) = event(id);
        let e = per_key.entry(k).or_insert((0, 0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 += amount;
        e.2 = e.2.min(id);
        e.3 = e.3.max(id);
        if k < KEYS - 1 {
            let e = per_name.entry(format!("key {k}")).or_default();
            e.0 += 1;
            e.1 += amount;
        }
        let e = per_second.entry(ts.div_euclid(1000)).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    BTreeMap::from([
        (
            "per_key",
            per_key
                .iter()
                .map(|(k, (c, s, lo, hi))| format!("{k}|{c}|{s}|{lo}|{hi}"))
                .collect(),
        ),
        (
            "per_name",
            per_name
                .iter()
                .map(|(name, (c, s))| format!("{name}|{c}|{s}"))
                .collect(),
        ),
        (
            "per_second",
            per_second
                .iter()
                .map(|(sec, (c, s))| format!("{sec}|{c}|{s}"))
                .collect(),
        ),
        ("total", vec![format!("{n}")]),
        (
            "latest",
            // The upsert source holds each slot's last event.
            vec![format!(
                "{}|{}",
                n.min(SLOTS),
                (n.saturating_sub(SLOTS)..n).sum::<i64>()
            )],
        ),
    ])
}

/// The queries whose answers [`expected`] predicts.
const QUERIES: [(&str, &str); 5] = [
    (
        "per_key",
        "SELECT k || '|' || n || '|' || amount || '|' || lo || '|' || hi FROM per_key ORDER BY k",
    ),
    (
        "per_name",
        "SELECT name || '|' || n || '|' || amount FROM per_name ORDER BY name",
    ),
    (
        "per_second",
        "SELECT CAST(extract(epoch FROM window_start) AS BIGINT) || '|' || n || '|' || amount \
         FROM per_second ORDER BY window_start",
    ),
    ("total", "SELECT CAST(n AS TEXT) FROM total"),
    ("latest", "SELECT n || '|' || ids FROM latest"),
];

async fn column(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

/// What the reader saw: the largest committed epoch and count so far.
#[derive(Default)]
struct Seen {
    epoch: AtomicI64,
    count: AtomicI64,
    reads: AtomicI64,
}

/// Reads the last committed epoch and the append-only count over and over
/// from whichever server is up (`port`, 0 while none is), asserting that
/// neither ever decreases; ends at `stop`.
async fn watch_monotonic(
    port: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::SeqCst) {
        let p = port.load(Ordering::SeqCst);
        let connected = match p {
            0 => None,
            p => tokio_postgres::connect(
                &format!("host=127.0.0.1 port={p} user=millrace dbname=dev"),
                tokio_postgres::NoTls,
            )
            .await
            .ok(),
        };
        let Some((client, connection)) = connected else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        tokio::spawn(connection);
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let epoch = client
                .query_opt("SELECT epoch FROM millrace_catalog.checkpoints", &[])
                .await;
            let count = client.query_opt("SELECT n FROM total", &[]).await;
            let (Ok(epoch), Ok(count)) = (epoch, count) else {
                break;
            };
            let epoch: Option<i64> = epoch.and_then(|r| r.get(0));
            let count: Option<i64> = count.map(|r| r.get(0));
            if let Some(e) = epoch {
                let before = seen.epoch.fetch_max(e, Ordering::SeqCst);
                anyhow::ensure!(
                    e >= before,
                    "the committed epoch went back from {before} to {e}"
                );
            }
            if let Some(c) = count {
                let before = seen.count.fetch_max(c, Ordering::SeqCst);
                anyhow::ensure!(c >= before, "the count went back from {before} to {c}");
            }
            seen.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_kafka_count_every_event_once_across_sigkills() -> anyhow::Result<()> {
    let cycles: usize = std::env::var("MILLRACE_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let broker = Broker::start()?;
    let topic = broker.unique_topic("checkpointed");
    broker.create_topic(&topic, PARTITIONS as i32)?;
    let keys_topic = broker.unique_topic("per-key-out");
    broker.create_topic(&keys_topic, 2)?;
    let copy_topic = broker.unique_topic("copy-out");
    broker.create_topic(&copy_topic, 2)?;
    let progress_topic = broker.unique_topic("sink-progress");
    let temp = tempfile::tempdir()?;
    let dir = temp.path().to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261128);
    let interval = std::env::var("MILLRACE_TEST_CHECKPOINT_MS").unwrap_or_else(|_| "100".into());
    let args = ["--checkpoint-interval-ms", interval.as_str()];

    let stop_producer = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicI64::new(0));
    let mut producer = None;
    let port = Arc::new(AtomicI64::new(0));
    let stop_reader = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let reader = tokio::spawn(watch_monotonic(
        port.clone(),
        stop_reader.clone(),
        seen.clone(),
    ));

    for cycle in 0..cycles {
        let server = TestServer::start_on(&dir, &args)?;
        if cycle == 0 {
            let names: Vec<String> = (0..KEYS - 1).map(|k| format!("({k}, 'key {k}')")).collect();
            server
                .connect()
                .await?
                .batch_execute(&format!(
                    "CREATE TABLE names (k BIGINT, name TEXT);
                     INSERT INTO names VALUES {};
                     CREATE SOURCE events (id BIGINT, k BIGINT, amount BIGINT, ts TIMESTAMP)
                       WITH (connector = 'kafka', topic = '{topic}',
                             properties.bootstrap.server = '{servers}',
                             scan.startup.mode = 'latest')
                       FORMAT PLAIN ENCODE JSON;
                     CREATE MATERIALIZED VIEW per_key AS
                       SELECT k, count(*) AS n, sum(amount) AS amount, min(id) AS lo, max(id) AS hi
                       FROM events GROUP BY k;
                     CREATE MATERIALIZED VIEW per_name AS
                       SELECT names.name, count(*) AS n, sum(events.amount) AS amount
                       FROM events JOIN names ON events.k = names.k GROUP BY names.name;
                     CREATE MATERIALIZED VIEW per_second AS
                       SELECT window_start, count(*) AS n, sum(amount) AS amount
                       FROM TUMBLE(events, ts, INTERVAL '1' SECOND)
                       GROUP BY window_start;
                     CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n FROM events;
                     CREATE MATERIALIZED VIEW copy AS SELECT id, k FROM events;
                     CREATE SOURCE slots (id BIGINT, k BIGINT, amount BIGINT, ts TIMESTAMP)
                       INCLUDE key AS slot VARCHAR
                       WITH (connector = 'kafka', topic = '{topic}',
                             properties.bootstrap.server = '{servers}',
                             scan.startup.mode = 'latest')
                       FORMAT UPSERT ENCODE JSON;
                     CREATE MATERIALIZED VIEW latest AS
                       SELECT count(*) AS n, sum(id) AS ids FROM slots;
                     CREATE SINK per_key_out FROM per_key
                       WITH (connector = 'kafka', topic = '{keys_topic}',
                             properties.bootstrap.server = '{servers}', primary_key = 'k')
                       FORMAT UPSERT ENCODE JSON;
                     CREATE SINK copy_out FROM copy
                       WITH (connector = 'kafka', topic = '{copy_topic}',
                             properties.bootstrap.server = '{servers}',
                             exactly_once = 'true', progress_topic = '{progress_topic}')
                       FORMAT PLAIN ENCODE JSON;",
                    names.join(", "),
                    servers = broker.servers
                ))
                .await?;
            // The views read from the topic's end as of their start, and
            // after a restart from their checkpoint, never from the end
            // again: a restart that fell back to the startup mode would
            // skip what was produced while the server was down. So
            // production starts once every reader has its partitions.
            let client = server.connect().await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let assigned: i64 = client
                    .query_one(
                        "SELECT count(*) FROM millrace_catalog.source_partitions",
                        &[],
                    )
                    .await?
                    .get(0);
                if assigned == 6 * PARTITIONS || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (servers, topic) = (broker.servers.clone(), topic.clone());
            let (stop, produced) = (stop_producer.clone(), produced.clone());
            producer = Some(std::thread::spawn(move || {
                produce(servers, topic, 3000, stop, produced)
            }));
        }
        port.store(i64::from(server.port), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        port.store(0, Ordering::SeqCst);
        server.kill()?;
    }

    // The last start: stop producing, and let the views catch up.
    let server = TestServer::start_on(&dir, &args)?;
    port.store(i64::from(server.port), Ordering::SeqCst);
    stop_producer.store(true, Ordering::SeqCst);
    producer
        .ok_or_else(|| anyhow::anyhow!("no cycle ran"))?
        .join()
        .map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    let n = produced.load(Ordering::SeqCst);
    let client = server.connect().await?;
    // Each view has its own reader: wait until every one has read all.
    let expected = expected(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answers = BTreeMap::new();
    loop {
        answers.clear();
        for (view, sql) in QUERIES {
            answers.insert(view, column(&client, sql).await?);
        }
        if answers.iter().all(|(v, a)| expected[v] == *a) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_reader.store(true, Ordering::SeqCst);
    reader.await??;
    assert!(
        seen.reads.load(Ordering::SeqCst) > cycles as i64,
        "the reader barely read"
    );
    assert!(n > 1000, "the producer barely produced ({n} events)");
    for (view, _) in QUERIES {
        assert_eq!(
            answers[view], expected[view],
            "view {view} after {cycles} kills, {n} events"
        );
    }
    let restored: i64 = client
        .query_one("SELECT views FROM millrace_catalog.checkpoints", &[])
        .await?
        .get(0);
    assert_eq!(restored, 6, "every view is checkpointed");
    check_sinks(&broker, &keys_topic, &copy_topic, n, &expected["per_key"])?;
    server.stop()?;
    Ok(())
}

/// The sinks' topics hold what the views made of events `0..n`: the last
/// message of each key of the upsert sink is the key's aggregate, and the
/// exactly-once sink holds every event (once, on a broker that isolates
/// transactions).
fn check_sinks(
    broker: &Broker,
    keys_topic: &str,
    copy_topic: &str,
    n: i64,
    per_key: &[String],
) -> anyhow::Result<()> {
    let field = |v: &serde_json::Value, f: &str| -> anyhow::Result<i64> {
        v.get(f)
            .and_then(|x| x.as_i64())
            .ok_or_else(|| anyhow::anyhow!("no number {f} in {v}"))
    };
    // The sinks deliver after the views commit: wait for them too.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (latest, copies) = loop {
        let mut latest: BTreeMap<i64, String> = BTreeMap::new();
        for (_, _, value) in broker.read_all(keys_topic, usize::MAX, Duration::from_secs(60))? {
            let v: serde_json::Value = serde_json::from_slice(&value.unwrap_or_default())?;
            let k = field(&v, "k")?;
            let line = format!(
                "{k}|{}|{}|{}|{}",
                field(&v, "n")?,
                field(&v, "amount")?,
                field(&v, "lo")?,
                field(&v, "hi")?
            );
            latest.insert(k, line);
        }
        let mut copies: HashMap<i64, usize> = HashMap::new();
        for (_, _, value) in broker.read_all(copy_topic, usize::MAX, Duration::from_secs(60))? {
            let v: serde_json::Value = serde_json::from_slice(&value.unwrap_or_default())?;
            let id = field(&v, "id")?;
            anyhow::ensure!(
                field(&v, "k")? == id % KEYS,
                "event {id} with the wrong key"
            );
            *copies.entry(id).or_default() += 1;
        }
        let done = latest.values().cloned().collect::<Vec<_>>() == per_key
            && (0..n).all(|id| copies.contains_key(&id));
        if done || Instant::now() > deadline {
            break (latest, copies);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        latest.values().cloned().collect::<Vec<_>>(),
        per_key,
        "the upsert sink's last message per key"
    );
    let missing: Vec<i64> = (0..n).filter(|id| !copies.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "the exactly-once sink lost {} of {n} events, the first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let unknown: Vec<&i64> = copies.keys().filter(|id| !(0..n).contains(*id)).collect();
    assert!(unknown.is_empty(), "events never produced: {unknown:?}");
    let repeated = copies.values().filter(|c| **c > 1).count();
    if broker.hides_aborted_transactions()? {
        assert_eq!(repeated, 0, "events delivered more than once");
    } else {
        eprintln!(
            "this broker serves aborted transactions to read_committed readers: \
             {repeated} of {n} events were read more than once, so exactly-once delivery is not checked here"
        );
    }
    Ok(())
}
