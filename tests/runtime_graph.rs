//! Invalid job graphs are refused at build time with an error saying why.

mod common;

use std::sync::Arc;

use snapflow::prelude::*;
use snapflow::CollectSink;

fn log() -> Arc<dyn ReplayableLog> {
    Arc::new(MemoryLog::new(1))
}

fn err_of(job: JobBuilder) -> Error {
    job.build().expect_err("the graph must be refused")
}

#[test]
fn invalid_job_graphs_are_refused_with_their_error() {
    // Parallelism 0 and above the max parallelism.
    for p in [0u32, 129] {
        let job = common::memory_job("g", JobConfig::default());
        job.source("src", LogSource::<u64>::msgpack(log()))
            .parallelism(p)
            .sink("out", CollectSink::new());
        assert!(
            matches!(err_of(job), Error::InvalidParallelism { parallelism, max_parallelism: 128 } if parallelism == p)
        );
    }
    // A stream nobody consumes.
    let job = common::memory_job("g", JobConfig::default());
    let s = job.source("src", LogSource::<u64>::msgpack(log()));
    let _dangling = s.map("double", |x: u64| x * 2);
    let e = err_of(job);
    assert!(
        matches!(&e, Error::InvalidGraph(m) if m.contains("never consumed")),
        "{e}"
    );
    // No sink at all (the source dangles too).
    let job = common::memory_job("g", JobConfig::default());
    let _ = job.source("src", LogSource::<u64>::msgpack(log()));
    assert!(matches!(err_of(job), Error::InvalidGraph(_)));
    // No source.
    assert!(
        matches!(err_of(common::memory_job("g", JobConfig::default())), Error::InvalidGraph(m) if m.contains("no source"))
    );
    // Two vertices with one name.
    let job = common::memory_job("g", JobConfig::default());
    job.source("same", LogSource::<u64>::msgpack(log()))
        .sink("same", CollectSink::new());
    assert!(matches!(err_of(job), Error::InvalidGraph(m) if m.contains("same")));
    // Names that are not safe file names.
    let job = common::memory_job("g", JobConfig::default());
    job.source("../x", LogSource::<u64>::msgpack(log()))
        .sink("out", CollectSink::new());
    assert!(matches!(err_of(job), Error::InvalidName { .. }));
    assert!(matches!(
        err_of(common::memory_job("a/b", JobConfig::default())),
        Error::InvalidName { .. }
    ));
    // A forward edge between different parallelisms.
    let job = common::memory_job("g", JobConfig::default());
    job.source("src", LogSource::<u64>::msgpack(log()))
        .parallelism(2)
        .forward()
        .map("m", |x: u64| x)
        .parallelism(3)
        .sink("out", CollectSink::new());
    assert!(matches!(err_of(job), Error::InvalidGraph(m) if m.contains("forward")));
    // parallelism() on a union is refused rather than guessed.
    let job = common::memory_job("g", JobConfig::default());
    let a = job.source("a", LogSource::<u64>::msgpack(log()));
    let b = job.source("b", LogSource::<u64>::msgpack(log()));
    a.union(b).parallelism(2).sink("out", CollectSink::new());
    assert!(matches!(err_of(job), Error::InvalidGraph(m) if m.contains("union")));
    // A valid graph builds.
    let job = common::memory_job("g", JobConfig::default());
    job.source("src", LogSource::<u64>::msgpack(log()))
        .key_by(|x: &u64| *x)
        .reduce("r", |a, b| a + b)
        .sink("out", CollectSink::new());
    job.build().expect("a valid graph builds");
}
