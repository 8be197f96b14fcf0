//! Recovery time: how long from a task's failure to the first record processed by the restored
//! keyed task, for 10 thousand and for 1 million keys of state. A keyed sum over an endless
//! synthetic log checkpoints every 200 ms; a chaos monkey stops the keyed task from outside 20
//! times; the job's metrics record each recovery.
//!
//! Run: `cargo run --release --example recovery_bench`

use std::sync::Arc;
use std::time::Duration;

use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::{CheckpointTiming, LocalCheckpointStorage};
use snapflow::log::GeneratorLog;
use snapflow::prelude::*;
use snapflow::state::ValueState;
use snapflow::CollectSink;

/// Sums per key; emits nothing.
#[derive(Clone, Default)]
struct Sum {
    sum: Option<ValueState<u64>>,
}

impl KeyedOperator<u64, u64, u64> for Sum {
    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.sum = Some(ctx.state().value_state("sum")?);
        Ok(())
    }
    fn process(
        &mut self,
        x: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<u64>,
    ) -> Result<()> {
        if let Some(s) = &self.sum {
            *s.get_or_insert_with(ctx.state(), || 0)? += x;
        }
        Ok(())
    }
}

async fn measure(keys: u64, kills: u32) -> Result<Vec<Duration>> {
    let dir = std::env::temp_dir().join(format!("snapflow-recovery-{keys}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(200)),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::ZERO,
            max_attempts: u32::MAX,
        },
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("recovery", config);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(&dir, "recovery")?));
    // The first kill comes after every key has state and a checkpoint holds it.
    job.chaos(
        ChaosMonkey::new(keys)
            .random_interval(Duration::from_millis(600), Duration::from_millis(900))
            .kills(vec![Kill::StopFromOutside])
            .only_vertices(&["sum"])
            .max_kills(kills),
    );
    let decode = move |b: &[u8]| -> Result<u64> { Ok(GeneratorLog::number(b)? % keys) };
    job.source(
        "numbers",
        LogSource::with_decoder(Arc::new(GeneratorLog::numbers(2, None)), decode),
    )
    .key_by(|k: &u64| *k)
    .process("sum", Sum::default())
    .sink("none", CollectSink::new());
    let handle = job.build()?.start().await?;
    while handle.metrics().recoveries.len() < kills as usize {
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    let recoveries = handle.metrics().recoveries;
    let state = handle
        .metrics()
        .checkpoints
        .last()
        .map(|c| c.bytes)
        .unwrap_or(0);
    handle.cancel();
    let _ = handle.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("  ({keys} keys: the last checkpoint held {state} bytes of state)");
    Ok(recoveries)
}

fn main() -> Result<()> {
    snapflow::chaos::quiet_chaos_panics();
    let kills = 20;
    for keys in [10_000u64, 1_000_000] {
        let system = actix::System::new();
        let mut r = system.block_on(measure(keys, kills))?;
        r.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "recovery keys={keys} kills={} failure-to-first-record median_ms={:.1} max_ms={:.1} min_ms={:.1}",
            r.len(),
            ms(r[r.len() / 2]),
            ms(r[r.len() - 1]),
            ms(r[0])
        );
    }
    Ok(())
}
