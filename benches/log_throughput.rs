//! FileLog throughput: appends of 100-byte records in batches of 1,000 with an fsync every
//! 10 ms, and sequential reads. Run: `cargo bench --bench log_throughput`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use snapflow::{FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog, SyncPolicy};

const P0: PartitionId = PartitionId(0);
const RECORD: usize = 100;
const BATCH: usize = 1000;

fn options() -> FileLogOptions {
    FileLogOptions {
        partitions: 1,
        sync: SyncPolicy::Interval {
            every: Duration::from_millis(10),
            max_records: u64::MAX,
        },
        ..FileLogOptions::default()
    }
}

fn records() -> Vec<Vec<u8>> {
    (0..BATCH).map(|i| vec![(i % 251) as u8; RECORD]).collect()
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), options()).expect("open");
    let recs = records();
    let slices: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
    let mut g = c.benchmark_group("file_log");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("append_100B_x1000_sync_10ms", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let t = Instant::now();
                log.append_batch(P0, &slices).expect("append");
                spent += t.elapsed();
                if i % 2000 == 1999 {
                    // Keep the disk footprint bounded; not timed.
                    let end = log.end_offset(P0).expect("end");
                    log.truncate_before(P0, end).expect("retention");
                }
            }
            spent
        })
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(
        dir.path(),
        FileLogOptions {
            sync: SyncPolicy::Os,
            ..options()
        },
    )
    .expect("open");
    let recs = records();
    let slices: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
    let total = 1_000_000u64;
    for _ in 0..total / BATCH as u64 {
        log.append_batch(P0, &slices).expect("append");
    }
    log.sync().expect("sync");
    let mut g = c.benchmark_group("file_log");
    g.throughput(Throughput::Elements(total));
    g.sample_size(20);
    g.bench_function("sequential_read_100B_1M", |b| {
        b.iter(|| {
            let mut at = LogOffset(0);
            let mut n = 0u64;
            loop {
                let batch = log.read(P0, at, 1024).expect("read");
                if batch.is_empty() {
                    break;
                }
                n += batch
                    .iter()
                    .map(|(_, p)| p.len() as u64 / RECORD as u64)
                    .sum::<u64>();
                at = batch.next_offset();
            }
            assert_eq!(n, total);
        })
    });
    g.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
