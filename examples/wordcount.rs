//! Word count, exactly once: a deterministic corpus in a `FileLog`, a job
//! `source -> flat_map(split) -> key_by(word) -> count -> FileSink` at parallelism 2 with a
//! checkpoint every 200 ms, then a check of the committed output against a direct count.
//!
//! Run: `cargo run --release --example wordcount [-- --lines N] [-- --no-checkpoints]`

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::state::ValueState;
use snapflow::{FileSink, TypedLog};

/// Counts each word and emits `(word, count)` for every word once the input ends.
#[derive(Clone, Default)]
struct CountWords {
    count: Option<ValueState<u64>>,
}

impl KeyedOperator<String, String, (String, u64)> for CountWords {
    fn open(&mut self, ctx: &mut KeyedContext<'_, String>) -> Result<()> {
        self.count = Some(ctx.state().value_state("count")?);
        Ok(())
    }

    fn process(
        &mut self,
        _word: String,
        ctx: &mut KeyedContext<'_, String>,
        _out: &mut Collector<(String, u64)>,
    ) -> Result<()> {
        if let Some(count) = &self.count {
            *count.get_or_insert_with(ctx.state(), || 0)? += 1;
        }
        Ok(())
    }

    fn end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Collector<(String, u64)>,
    ) -> Result<()> {
        if let Some(count) = &self.count {
            let all: Vec<(String, u64)> = count
                .entries(ctx.state())?
                .map(|(w, c)| (w.clone(), *c))
                .collect();
            for pair in all {
                out.emit(pair);
            }
        }
        Ok(())
    }
}

/// splitmix64: a deterministic stream of pseudo-random numbers.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn vocabulary(n: usize) -> Vec<String> {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "or", "um", "be", "di", "fa",
        "go",
    ];
    (0..n)
        .map(|i| {
            let mut w = String::new();
            let mut x = i + 1;
            while x > 0 {
                w.push_str(SYLLABLES[x % 16]);
                x /= 16;
            }
            w
        })
        .collect()
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let lines: u64 = args
        .iter()
        .position(|a| a == "--lines")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let checkpoints = !args.iter().any(|a| a == "--no-checkpoints");
    let root = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("snapflow-examples")
        .join("wordcount");
    let _ = std::fs::remove_dir_all(&root);

    // 1. The corpus, and the count the job must reproduce.
    let started = Instant::now();
    let words = vocabulary(5_000);
    let log: Arc<dyn ReplayableLog> = Arc::new(FileLog::open(
        root.join("log"),
        FileLogOptions {
            partitions: 2,
            sync: SyncPolicy::Os,
            ..FileLogOptions::default()
        },
    )?);
    let typed = TypedLog::<String>::new(Arc::clone(&log));
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut rng = 42u64;
    let mut batch = Vec::with_capacity(1000);
    let mut total_words = 0u64;
    for i in 0..lines {
        let n = 3 + splitmix(&mut rng) % 10;
        let mut line = String::new();
        for j in 0..n {
            // Skewed: low indexes are far more frequent.
            let u = (splitmix(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
            let w = &words[((u * u * u) * words.len() as f64) as usize];
            if j > 0 {
                line.push(' ');
            }
            line.push_str(w);
            *expected.entry(w.clone()).or_insert(0) += 1;
            total_words += 1;
        }
        batch.push(line);
        if batch.len() == 1000 || i + 1 == lines {
            typed.append_batch(PartitionId((i / 1000 % 2) as u32), &batch)?;
            batch.clear();
        }
    }
    log.sync()?;
    println!(
        "corpus: {lines} lines, {total_words} words, {} distinct, written in {:.2?}",
        expected.len(),
        started.elapsed()
    );

    // 2. The job.
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming {
            interval: checkpoints.then_some(Duration::from_millis(200)),
            ..CheckpointTiming::default()
        },
        ..JobConfig::default()
    };
    let out_dir = root.join("out");
    let job = JobBuilder::with_config("wordcount", config);
    // Without this line the checkpoints would go to ./snapflow/wordcount/ (the default).
    job.checkpoint_dir(root.join("checkpoints"));
    job.source(
        "lines",
        LogSource::<String>::msgpack(Arc::clone(&log)).bounded(),
    )
    .flat_map("split", |line: String, out| {
        for w in line.split_whitespace() {
            out.emit(w.to_string());
        }
    })
    .key_by(|w: &String| w.clone())
    .process("count", CountWords::default())
    .sink(
        "out",
        FileSink::new(&out_dir, |(w, c): &(String, u64), line: &mut String| {
            let _ = write!(line, "{w} {c}");
        }),
    );
    let report = job.build()?.run()?;
    let secs = report.elapsed.as_secs_f64();

    // 3. Figures.
    let mut durations: Vec<Duration> = report
        .metrics
        .checkpoints
        .iter()
        .map(|c| c.duration)
        .collect();
    durations.sort();
    let median = durations
        .get(durations.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = durations.last().copied().unwrap_or_default();
    println!(
        "state: checkpoints in {}",
        root.join("checkpoints").join("wordcount").display()
    );
    println!(
        "job: {:.2} s, {:.0} words/s, checkpoints {} ({}), median {:.1} ms, max {:.1} ms, aborted {}",
        secs,
        total_words as f64 / secs,
        report.checkpoints_completed,
        if checkpoints { "every 200 ms + final" } else { "final only" },
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        report.metrics.checkpoints_aborted
    );

    // 4. Verify the committed output.
    let mut committed: HashMap<String, u64> = HashMap::new();
    let mut duplicates = 0;
    for line in FileSink::<(String, u64)>::read_committed(&out_dir)? {
        let (w, c) = line.rsplit_once(' ').unwrap_or((line.as_str(), "0"));
        if committed
            .insert(w.to_string(), c.parse().unwrap_or(0))
            .is_some()
        {
            duplicates += 1;
        }
    }
    let mut top: Vec<(&String, &u64)> = committed.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!(
        "top words: {}",
        top.iter()
            .take(8)
            .map(|(w, c)| format!("{w}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let wrong = expected
        .iter()
        .filter(|(w, c)| committed.get(*w) != Some(c))
        .count();
    let extra = committed
        .keys()
        .filter(|w| !expected.contains_key(*w))
        .count();
    if wrong == 0 && extra == 0 && duplicates == 0 {
        println!("verified: the committed counts of all {} words ({total_words} occurrences) equal the direct count", expected.len());
        Ok(())
    } else {
        println!(
            "FAILED: {wrong} words with a wrong count, {extra} unexpected, {duplicates} duplicated"
        );
        std::process::exit(1);
    }
}
