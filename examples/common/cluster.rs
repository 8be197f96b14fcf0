//! A word count run as several worker processes on Kafka, and the driver that runs it, kills
//! workers and checks the output (for `examples/cluster_wordcount.rs` and `tests/cluster.rs`).
//!
//! Topics: `lines` (the corpus), `words` (the repartition topic: a word's partition is its
//! key-group range), `counts` (the output: every running count `(word, n)`). Each worker runs
//! one job, `cluster-wordcount-<i>of<n>`, checkpointing to a shared object store:
//! ```text
//! lines (its partitions p % n == i) -> split -> KafkaSink (exactly once) -> words
//! words (its partitions) -> key_by word -> DropReplays -> count -> KafkaSink -> counts
//! ```
//! The driver starts the mock broker (or uses `--bootstrap`), feeds the corpus, starts the
//! workers, SIGKILLs a random one now and then and starts it again, waits until every count
//! update is in `counts`, stops the workers with SIGTERM (a final checkpoint), and checks:
//! every word's counts 1..=n exactly once. Repeated copies of an epoch (the mock shows aborted
//! transactions and keeps no commit markers) share their origin and count once, as
//! `DropReplays` counts them inside the job.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use snapflow::checkpoint::{CheckpointTiming, ObjectStoreCheckpointStorage};
use snapflow::kafka::{
    create_topic, decode_record, DropReplays, KafkaCodec, KafkaConfig, KafkaDelivery, KafkaLog,
    KafkaRecord, KafkaSink, ProcessShare, Repartition,
};
use snapflow::log::{LogOffset, PartitionId, ReplayableLog};
use snapflow::prelude::*;
use snapflow::{Error, Result};

pub(crate) const LINES: &str = "lines";
pub(crate) const WORDS: &str = "words";
pub(crate) const COUNTS: &str = "counts";
/// Partitions of each topic (a multiple of 1, 2 and 3 workers).
pub(crate) const PARTITIONS: u32 = 6;
const KEY_GROUPS: u32 = 128;
const VOCABULARY: u64 = 400;

/// What the driver runs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) workers: u32,
    pub(crate) kills: u32,
    pub(crate) seed: u64,
    pub(crate) lines: u64,
    /// A real cluster; `None`: a mock broker in the driver.
    pub(crate) bootstrap: Option<String>,
    /// Where worker logs, and (without `s3`) checkpoints, go.
    pub(crate) dir: PathBuf,
    /// An S3 endpoint (`http://127.0.0.1:PORT`, bucket `snapflow`) for the checkpoints.
    pub(crate) s3: Option<String>,
    /// How long the run may take before it fails.
    pub(crate) timeout: Duration,
    /// Lines fed per second while the workers run (0: the whole corpus before they start).
    pub(crate) rate: u64,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) words: u64,
    pub(crate) kills: u32,
    /// From starting the workers until every update was in `counts`.
    pub(crate) seconds: f64,
    /// Records in `counts`, and those that repeated an earlier one's origin.
    pub(crate) records: u64,
    pub(crate) repeats: u64,
    /// (lost, duplicated) count updates.
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
}

fn err(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `lines` lines of 8 words of a vocabulary of 400, from `seed`; and each word's count.
pub(crate) fn corpus(seed: u64, lines: u64) -> (Vec<String>, BTreeMap<String, u64>) {
    let mut rng = seed;
    let mut counts = BTreeMap::new();
    let text = (0..lines)
        .map(|_| {
            let words: Vec<String> = (0..8)
                .map(|_| format!("w{}", splitmix(&mut rng) % VOCABULARY))
                .collect();
            for w in &words {
                *counts.entry(w.clone()).or_insert(0) += 1;
            }
            words.join(" ")
        })
        .collect();
    (text, counts)
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// The checkpoint storage of job `name`: S3 at `s3`, or a local directory as object store.
fn storage(dir: &Path, s3: Option<&str>, name: &str) -> Result<Arc<dyn CheckpointStorage>> {
    let store: Arc<dyn object_store::ObjectStore> = match s3 {
        #[cfg(feature = "s3")]
        Some(endpoint) => super::s3::s3_store(endpoint, "snapflow", 5),
        #[cfg(not(feature = "s3"))]
        Some(_) => return Err(Error::Config("--s3 needs --features s3".into())),
        None => {
            let root = dir.join("checkpoints");
            std::fs::create_dir_all(&root)
                .map_err(|e| Error::Config(format!("{}: {e}", root.display())))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| Error::Config(format!("local store: {e}")))?,
            )
        }
    };
    Ok(Arc::new(ObjectStoreCheckpointStorage::new(
        store, "cluster", name,
    )?))
}

/// The worker process: its share of the job until SIGTERM, then a final checkpoint.
pub(crate) fn worker(args: &[String]) -> Result<()> {
    // RUST_LOG=snapflow=debug shows a worker's job in its log file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let share = ProcessShare::from_args(args)?
        .ok_or_else(|| Error::Config("a worker needs --process i --of n".into()))?;
    let bootstrap = arg(args, "--bootstrap").ok_or_else(|| Error::Config("--bootstrap".into()))?;
    let dir = PathBuf::from(arg(args, "--dir").ok_or_else(|| Error::Config("--dir".into()))?);
    let name = share.job_name("cluster-wordcount");
    let config = KafkaConfig::new(bootstrap);
    let job = JobBuilder::with_config(
        &name,
        JobConfig {
            parallelism: 1,
            max_parallelism: KEY_GROUPS,
            checkpoints: CheckpointTiming::every(Duration::from_millis(250))
                .with_timeout(Duration::from_secs(20)),
            ..JobConfig::default()
        },
    );
    job.checkpoint_storage(storage(&dir, arg(args, "--s3"), &name)?);
    let lines = Arc::new(KafkaLog::open_share(config.clone(), LINES, share)?);
    let words = Repartition::new(config.clone(), WORDS, PARTITIONS, KEY_GROUPS)?;
    job.source("lines", lines.source::<String>(KafkaCodec::MessagePack))
        .flat_map("split", |r: KafkaRecord<String>, out| {
            for w in r.value.split_whitespace() {
                out.emit(w.to_string());
            }
        })
        .sink(
            "to-words",
            words.sink(&format!("{name}-words"), |w: &String| w.as_str())?,
        );
    let (_, owned) = words.source::<String>(share)?;
    let counts = KafkaSink::new(
        config,
        COUNTS,
        KafkaDelivery::ExactlyOnce {
            transactional_id_prefix: format!("{name}-counts"),
        },
        KafkaCodec::MessagePack,
    )?
    .with_key(|(w, _): &(String, u64)| w.as_bytes().to_vec());
    job.source("words", owned)
        .key_by(|r: &KafkaRecord<String>| r.value.clone())
        .process("drop-replays", DropReplays::new())
        .map("one", |r: KafkaRecord<String>| (r.value, 1u64))
        .key_by(|(w, _): &(String, u64)| w.clone())
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("to-counts", counts);
    actix::System::new().block_on(async move {
        // SIGTERM's default action would end the worker with no final checkpoint: the
        // handler goes in first, and the ready mark tells the driver it may stop us.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Config(format!("SIGTERM handler: {e}")))?;
        std::fs::write(ready_mark(&dir, share.index() as usize), b"")
            .map_err(|e| Error::Config(format!("ready mark: {e}")))?;
        let handle = job.build()?.start().await?;
        tokio::select! {
            _ = term.recv() => handle.stop(),
            r = handle.wait() => { r?; return Ok(()); }
        }
        handle.wait().await.map(|_| ())
    })
}

/// The file a worker creates once SIGTERM stops it with a final checkpoint.
fn ready_mark(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("worker-{i}.ready"))
}

/// Produces the corpus into `lines`, round robin over its partitions, `rate` lines per
/// second (0: as fast as it goes).
fn feed(bootstrap: &str, text: &[String], rate: u64) -> Result<()> {
    let started = Instant::now();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(err("producer"))?;
    for (i, line) in text.iter().enumerate() {
        if rate > 0 && i as u64 % 100 == 0 {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                p.flush(Duration::from_secs(10)).map_err(err("flush"))?;
                std::thread::sleep(wait);
            }
        }
        let value = rmp_serde::to_vec(line).map_err(|e| Error::Config(e.to_string()))?;
        let mut record = BaseRecord::<[u8], [u8]>::to(LINES)
            .partition((i as u32 % PARTITIONS) as i32)
            .payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, r))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    p.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => return Err(err("produce")(e)),
            }
        }
    }
    p.flush(Duration::from_secs(60)).map_err(err("flush"))
}

/// Reads `counts` as it fills, through a `KafkaLog` (as a job would): each record once per
/// origin.
struct Output {
    log: KafkaLog,
    positions: Vec<LogOffset>,
    origins: HashSet<(String, u64, u64)>,
    updates: HashMap<(String, u64), u64>,
    records: u64,
}

impl Output {
    fn new(bootstrap: &str) -> Result<Output> {
        let log = KafkaLog::open(KafkaConfig::new(bootstrap), COUNTS)?;
        Ok(Output {
            positions: vec![LogOffset(0); log.partitions() as usize],
            log,
            origins: HashSet::new(),
            updates: HashMap::new(),
            records: 0,
        })
    }

    /// Takes what the log has now; true when every partition was read to its end.
    fn poll(&mut self) -> Result<bool> {
        let mut at_end = true;
        for p in 0..self.positions.len() {
            let partition = PartitionId(p as u32);
            let batch = self.log.read(partition, self.positions[p], 4096)?;
            for (_, bytes) in batch.iter() {
                self.records += 1;
                let r = decode_record::<(String, u64)>(KafkaCodec::MessagePack, bytes)?;
                let o = r
                    .origin
                    .ok_or_else(|| Error::Config("a count without an origin".into()))?;
                if self.origins.insert((o.transactional_id, o.epoch, o.seq)) {
                    *self.updates.entry(r.value).or_insert(0) += 1;
                }
            }
            self.positions[p] = batch.next_offset();
            at_end &= self.positions[p] >= self.log.end_offset(partition)?;
        }
        Ok(at_end)
    }

    /// Reads until every partition is at its end.
    fn drain(&mut self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        while !self.poll()? {
            if Instant::now() > until {
                return Err(Error::Config("counts: no end in 60 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// (lost, duplicated) against each word's count.
    fn check(&self, want: &BTreeMap<String, u64>) -> (u64, u64) {
        let mut seen = self.updates.clone();
        let (mut lost, mut duplicated) = (0, 0);
        for (w, n) in want {
            for c in 1..=*n {
                match seen.remove(&(w.clone(), c)).unwrap_or(0) {
                    0 => lost += 1,
                    m => duplicated += m - 1,
                }
            }
        }
        (lost, duplicated + seen.values().sum::<u64>())
    }
}

/// How the driver starts worker `i` of `n`: the command, given the worker's arguments.
pub(crate) type Spawn<'a> = &'a dyn Fn(&[String]) -> Command;

struct Workers<'a> {
    spawn: Spawn<'a>,
    args: Vec<Vec<String>>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Workers<'_> {
    fn start(&mut self, i: usize) -> Result<()> {
        let log = |kind: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("worker-{i}.{kind}")))
                .map_err(|e| Error::Config(format!("worker log: {e}")))
        };
        let _ = std::fs::remove_file(ready_mark(&self.dir, i));
        let child = (self.spawn)(&self.args[i])
            .stdout(Stdio::from(log("out")?))
            .stderr(Stdio::from(log("err")?))
            .spawn()
            .map_err(|e| Error::Config(format!("starting worker {i}: {e}")))?;
        if i < self.children.len() {
            self.children[i] = child;
        } else {
            self.children.push(child);
        }
        Ok(())
    }

    /// An error if a worker exited on its own.
    fn check_alive(&mut self) -> Result<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                let tail = std::fs::read_to_string(self.dir.join(format!("worker-{i}.err")))
                    .unwrap_or_default();
                let tail: String = tail.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                return Err(Error::Config(format!(
                    "worker {i} exited ({status}):\n{tail}"
                )));
            }
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let c = &mut self.children[i];
        c.kill()
            .map_err(|e| Error::Config(format!("SIGKILL worker {i}: {e}")))?;
        c.wait()
            .map_err(|e| Error::Config(format!("reaping worker {i}: {e}")))?;
        self.start(i)
    }

    /// SIGTERM to every worker (each stops with a final checkpoint), then waits for them.
    fn stop(&mut self) -> Result<()> {
        // A worker restarted a moment ago may not handle SIGTERM yet.
        let until = Instant::now() + Duration::from_secs(60);
        for i in 0..self.children.len() {
            while !ready_mark(&self.dir, i).exists() {
                self.check_alive()?;
                if Instant::now() > until {
                    return Err(Error::Config(format!("worker {i} not ready in 60 s")));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for c in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let until = Instant::now() + Duration::from_secs(60);
        for (i, c) in self.children.iter_mut().enumerate() {
            loop {
                match c.try_wait() {
                    Ok(Some(s)) if s.success() => break,
                    Ok(Some(s)) => return Err(Error::Config(format!("worker {i} stopped: {s}"))),
                    _ if Instant::now() > until => {
                        let _ = c.kill();
                        return Err(Error::Config(format!("worker {i} did not stop in 60 s")));
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Workers<'_> {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The broker's bootstrap address, and the mock cluster when the driver runs one; the three
/// topics created.
fn broker(
    o: &Options,
) -> Result<(
    String,
    Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
)> {
    match &o.bootstrap {
        Some(b) => {
            let config = KafkaConfig::new(b);
            for t in [LINES, WORDS, COUNTS] {
                create_topic(&config, t, PARTITIONS, 1)?;
            }
            Ok((b.clone(), None))
        }
        None => {
            let mock = MockCluster::new(1).map_err(err("mock cluster"))?;
            for t in [LINES, WORDS, COUNTS] {
                mock.create_topic(t, PARTITIONS as i32, 1)
                    .map_err(err("create topic"))?;
            }
            Ok((mock.bootstrap_servers(), Some(mock)))
        }
    }
}

/// Runs the whole cluster word count; see the module documentation.
pub(crate) fn drive(o: &Options, spawn: Spawn<'_>) -> Result<Outcome> {
    let (bootstrap, _mock) = broker(o)?;
    #[cfg(feature = "s3")]
    if let Some(endpoint) = &o.s3 {
        super::s3::create_bucket(endpoint, "snapflow").map_err(Error::Config)?;
    }
    let (text, want) = corpus(o.seed, o.lines);
    let feeder = if o.rate == 0 {
        feed(&bootstrap, &text, 0)?;
        None
    } else {
        let (b, rate) = (bootstrap.clone(), o.rate);
        Some(std::thread::spawn(move || feed(&b, &text, rate)))
    };
    let words: u64 = want.values().sum();
    let args = (0..o.workers)
        .map(|i| {
            let mut a: Vec<String> = ["--process", &i.to_string(), "--of", &o.workers.to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend(["--bootstrap".into(), bootstrap.clone()]);
            a.extend(["--dir".into(), o.dir.display().to_string()]);
            if let Some(s3) = &o.s3 {
                a.extend(["--s3".into(), s3.clone()]);
            }
            a
        })
        .collect();
    let mut workers = Workers {
        spawn,
        args,
        children: Vec::new(),
        dir: o.dir.clone(),
    };
    let started = Instant::now();
    for i in 0..o.workers as usize {
        workers.start(i)?;
    }
    let mut output = Output::new(&bootstrap)?;
    let mut rng = o.seed ^ 0x5EED;
    let gap = |rng: &mut u64| Duration::from_millis(700 + splitmix(rng) % 1300);
    let (mut kills, mut next_kill) = (0, Instant::now() + gap(&mut rng));
    while (output.updates.len() as u64) < words {
        output.poll()?;
        workers.check_alive()?;
        if kills < o.kills && Instant::now() >= next_kill {
            let victim = (splitmix(&mut rng) % u64::from(o.workers)) as usize;
            println!(
                "SIGKILL worker {victim} at {:.1} s",
                started.elapsed().as_secs_f64()
            );
            workers.kill(victim)?;
            kills += 1;
            next_kill = Instant::now() + gap(&mut rng);
        }
        if started.elapsed() > o.timeout {
            let ends: Vec<String> = (0..PARTITIONS)
                .map(|p| {
                    let end = output.log.end_offset(PartitionId(p));
                    format!("{:?}@{:?}", end.map(|e| e.0), output.positions[p as usize])
                })
                .collect();
            return Err(Error::Config(format!(
                "{} of {words} count updates after {:?} (partition ends and read positions: {})",
                output.updates.len(),
                o.timeout,
                ends.join(" ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(f) = feeder {
        f.join()
            .map_err(|_| Error::Config("the feeder panicked".into()))??;
    }
    workers.stop()?;
    output.drain()?;
    let (lost, duplicated) = output.check(&want);
    Ok(Outcome {
        words,
        kills,
        seconds,
        records: output.records,
        repeats: output.records - output.origins.len() as u64,
        lost,
        duplicated,
    })
}
