//! Shared by the chaos examples: a deterministic corpus in a `FileLog`, the word-count job, and
//! the exactly-once check of its committed output.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use snapflow::prelude::*;
use snapflow::FileSink;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes at least `target_words` words (lines of 3 to 12 words from a vocabulary of 2,000)
/// into a new `FileLog` at `dir`, fsynced. Returns the word counts and the number of words.
pub(crate) fn write_corpus(
    dir: &Path,
    seed: u64,
    target_words: u64,
) -> Result<(HashMap<String, u64>, u64)> {
    let log: Arc<dyn ReplayableLog> = Arc::new(FileLog::open(dir, corpus_options())?);
    let typed = TypedLog::<String>::new(Arc::clone(&log));
    let mut expected: HashMap<String, u64> = HashMap::new();
    let (mut rng, mut words, mut lines) = (seed, 0u64, 0u64);
    let mut batch = Vec::new();
    while words < target_words {
        let n = 3 + splitmix(&mut rng) % 10;
        let mut line = String::new();
        for j in 0..n {
            let w = format!("w{}", splitmix(&mut rng) % 2_000);
            if j > 0 {
                line.push(' ');
            }
            line.push_str(&w);
            *expected.entry(w).or_insert(0) += 1;
            words += 1;
        }
        batch.push(line);
        lines += 1;
        if batch.len() == 1000 {
            typed.append_batch(PartitionId((lines / 1000 % 2) as u32), &batch)?;
            batch.clear();
        }
    }
    typed.append_batch(PartitionId(0), &batch)?;
    log.sync()?;
    Ok((expected, words))
}

/// The corpus log's options (two partitions).
pub(crate) fn corpus_options() -> FileLogOptions {
    FileLogOptions {
        partitions: 2,
        sync: SyncPolicy::Os,
        ..FileLogOptions::default()
    }
}

/// Adds `lines -> pace -> split -> key_by(word) -> count -> FileSink(out)` to `job`. The pace
/// stage sleeps a little on some lines, so the job runs for a few seconds.
pub(crate) fn wordcount(job: &JobBuilder, log: Arc<dyn ReplayableLog>, out: &Path) {
    let lines = job
        .source("lines", LogSource::<String>::msgpack(log).bounded())
        .map("pace", |line: String| {
            if line.len() % 7 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            line
        });
    count_words(lines, out);
}

/// `lines -> split -> key_by(word) -> count -> FileSink(out)`: every word's running count.
pub(crate) fn count_words(lines: Stream<String>, out: &Path) {
    lines
        .flat_map("split", |line: String, out| {
            for w in line.split_whitespace() {
                out.emit((w.to_string(), 1u64));
            }
        })
        .key_by(|(w, _): &(String, u64)| w.clone())
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink(
            "out",
            FileSink::new(out, |(w, c): &(String, u64), l: &mut String| {
                let _ = write!(l, "{w} {c}");
            }),
        );
}

/// The number following `name` on the command line, if any.
pub(crate) fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Checks the committed running counts: every word must show 1..=n exactly once. Returns
/// (records, lost, duplicated).
pub(crate) fn check(out: &Path, expected: &HashMap<String, u64>) -> Result<(u64, u64, u64)> {
    let mut seen: HashMap<(String, u64), u64> = HashMap::new();
    let mut records = 0u64;
    for line in FileSink::<(String, u64)>::read_committed(out)? {
        let (w, c) = line.rsplit_once(' ').unwrap_or((line.as_str(), "0"));
        *seen
            .entry((w.to_string(), c.parse().unwrap_or(0)))
            .or_insert(0) += 1;
        records += 1;
    }
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (w, n) in expected {
        for c in 1..=*n {
            match seen.remove(&(w.clone(), c)).unwrap_or(0) {
                0 => lost += 1,
                m => duplicated += m - 1,
            }
        }
    }
    duplicated += seen.values().sum::<u64>();
    Ok((records, lost, duplicated))
}
