//! Windows on keyed streams, built on keyed state (one map of window to accumulator per key)
//! and event-time timers.
//!
//! A record's windows come from its timestamp and the [`WindowAssigner`]; its value is folded
//! into each window's accumulator, and an event-time timer is registered at the window's last
//! millisecond. When the watermark passes it, the window's result is emitted as a
//! [`WindowResult`]; its state is kept for the allowed lateness (a late record within it adds
//! to the window and emits an updated result), then dropped. A record for a window whose
//! lateness has passed is late: dropped and counted, or written to a side log. Session windows
//! of one key that touch are merged, accumulators and all.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::TaskId;
use crate::codec;
use crate::error::{Error, Result};
use crate::log::ReplayableLog;
use crate::runtime::channel::Collector;
use crate::runtime::graph::{KeyedStream, Stream};
use crate::runtime::operator::{Data, KeyedContext, KeyedOperator};
use crate::runtime::time::{TimeDomain, Timestamp, Window, WindowAssigner};
use crate::state::{Aggregator, MapState, StateKey, StateValue};

/// The result of one window of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The window function's result.
    pub value: R,
}

/// An [`Aggregator`] whose accumulators can be merged, as session windows need.
pub trait WindowAggregator: Aggregator {
    /// Folds `other` into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
}

/// How a window folds records and what it emits.
trait WindowFn<K, T>: Send + Sync + 'static {
    type Acc: StateValue;
    type Out: Data;
    fn create(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, value: T);
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    fn finish(&self, key: &K, window: Window, acc: &Self::Acc) -> Self::Out;
}

struct ReduceFn<T>(Arc<dyn Fn(T, T) -> T + Send + Sync>);

impl<K, T: StateValue + Sync> WindowFn<K, T> for ReduceFn<T> {
    type Acc = Option<T>;
    type Out = T;
    fn create(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, value: T) {
        *acc = Some(match acc.take() {
            Some(a) => (self.0)(a, value),
            None => value,
        });
    }
    fn merge(&self, acc: &mut Option<T>, other: Option<T>) {
        if let Some(o) = other {
            <Self as WindowFn<K, T>>::add(self, acc, o);
        }
    }
    fn finish(&self, _key: &K, _window: Window, acc: &Option<T>) -> T {
        match acc {
            Some(v) => v.clone(),
            // A window exists only once a record was added to it.
            None => unreachable_empty(),
        }
    }
}

#[cold]
fn unreachable_empty() -> ! {
    panic!("invariant: a reduce window holds at least one record")
}

struct AggFn<A>(Arc<A>);

impl<K, T, A> WindowFn<K, T> for AggFn<A>
where
    A: WindowAggregator<In = T>,
    A::Out: Data,
{
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> A::Acc {
        self.0.create_accumulator()
    }
    fn add(&self, acc: &mut A::Acc, value: T) {
        self.0.add(acc, value);
    }
    fn merge(&self, acc: &mut A::Acc, other: A::Acc) {
        self.0.merge(acc, other);
    }
    fn finish(&self, _key: &K, _window: Window, acc: &A::Acc) -> A::Out {
        self.0.result(acc)
    }
}

/// The function of a full-window `process`.
type ProcessWindow<K, T, R> = Arc<dyn Fn(&K, Window, &[T]) -> R + Send + Sync>;

struct ProcessFn<K, T, R>(ProcessWindow<K, T, R>);

impl<K: 'static, T: StateValue, R: Data> WindowFn<K, T> for ProcessFn<K, T, R> {
    type Acc = Vec<T>;
    type Out = R;
    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<T>, value: T) {
        acc.push(value);
    }
    fn merge(&self, acc: &mut Vec<T>, other: Vec<T>) {
        acc.extend(other);
    }
    fn finish(&self, key: &K, window: Window, acc: &Vec<T>) -> R {
        (self.0)(key, window, acc)
    }
}

/// Encodes a late record for the side log.
type LateEncoder<T> = Arc<dyn Fn(&T) -> Result<Vec<u8>> + Send + Sync>;

/// The side log late records go to, in each window task that has one.
const LATE_RECORDS: &str = "late-records";

/// A record that arrived after its windows' allowed lateness, as written to the log of
/// [`WindowedStream::late_records_to`]: once, when the checkpoint after its arrival completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateRecord {
    /// The window task that dropped it.
    pub task: TaskId,
    /// Its event time.
    pub timestamp: Timestamp,
    /// The task's watermark when it arrived.
    pub watermark: Timestamp,
    /// The record, MessagePack-encoded.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
    /// The task's epoch it arrived in: with `seq`, what tells this record apart when a restore
    /// writes it again.
    pub epoch: u64,
    /// Its position among the task's late records of the epoch.
    pub seq: u32,
}

impl LateRecord {
    /// Decodes the late record as a `T`.
    pub fn decode_record<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        codec::decode(&self.record, "a late record")
    }

    /// The side-output identity of an encoded late record.
    fn identify(bytes: &[u8]) -> Option<(TaskId, u64, u32)> {
        let r: LateRecord = codec::decode(bytes, "late record").ok()?;
        Some((r.task, r.epoch, r.seq))
    }
}

/// The window operator: one instance per keyed task.
struct WindowOperator<K, T, F: WindowFn<K, T>> {
    name: String,
    assigner: WindowAssigner,
    timestamp: Arc<dyn Fn(&T) -> Timestamp + Send + Sync>,
    lateness: i64,
    late_log: Option<(Arc<dyn ReplayableLog>, LateEncoder<T>)>,
    f: Arc<F>,
    windows: Option<MapState<Window, F::Acc>>,
    _k: PhantomData<fn() -> K>,
}

impl<K, T, F: WindowFn<K, T>> Clone for WindowOperator<K, T, F> {
    fn clone(&self) -> Self {
        WindowOperator {
            name: self.name.clone(),
            assigner: self.assigner,
            timestamp: Arc::clone(&self.timestamp),
            lateness: self.lateness,
            late_log: self.late_log.clone(),
            f: Arc::clone(&self.f),
            windows: None,
            _k: PhantomData,
        }
    }
}

impl<K: StateKey, T: Data, F: WindowFn<K, T>> WindowOperator<K, T, F> {
    fn state(&self) -> Result<&MapState<Window, F::Acc>> {
        self.windows
            .as_ref()
            .ok_or_else(|| Error::Internal("window state used before open".into()))
    }

    fn is_late(&self, w: &Window, watermark: Timestamp) -> bool {
        w.max_timestamp().saturating_add(self.lateness) <= watermark
    }

    fn late(&self, record: &T, ts: Timestamp, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        ctx.count_late_record();
        if let Some((_, encode)) = &self.late_log {
            let record = encode(record)?;
            let watermark = ctx.current_watermark();
            ctx.side.push(LATE_RECORDS, |id| {
                let late = LateRecord {
                    task: id.task.clone(),
                    timestamp: ts,
                    watermark,
                    record,
                    epoch: id.epoch,
                    seq: id.seq,
                };
                codec::encode(&late, "late record")
            })?;
        }
        Ok(())
    }

    /// Registers the window's timers that are still ahead of the watermark: its firing (unless
    /// it has fired: a late record's update was just emitted) and its cleanup.
    fn register(&self, w: &Window, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        if ctx.current_watermark() < w.max_timestamp() {
            ctx.register_event_timer(w.max_timestamp())?;
        }
        if self.lateness > 0 {
            ctx.register_event_timer(w.max_timestamp().saturating_add(self.lateness))?;
        }
        Ok(())
    }

    fn unregister(&self, w: &Window, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        ctx.delete_event_timer(w.max_timestamp())?;
        if self.lateness > 0 {
            ctx.delete_event_timer(w.max_timestamp().saturating_add(self.lateness))?;
        }
        Ok(())
    }

    fn emit(
        &self,
        w: Window,
        acc: &F::Acc,
        ctx: &KeyedContext<'_, K>,
        out: &mut Collector<WindowResult<K, F::Out>>,
    ) -> Result<()> {
        let key = ctx
            .current_key()
            .cloned()
            .ok_or_else(|| Error::Internal("window fired without a key".into()))?;
        let value = self.f.finish(&key, w, acc);
        out.emit(WindowResult {
            key,
            window: w,
            value,
        });
        Ok(())
    }
}

impl<K: StateKey, T: Data, F: WindowFn<K, T>> KeyedOperator<K, T, WindowResult<K, F::Out>>
    for WindowOperator<K, T, F>
{
    fn open(&mut self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        self.windows = Some(ctx.state().map_state(&format!("{}.windows", self.name))?);
        if let Some((log, _)) = &self.late_log {
            let state = Some(&mut *ctx.operator);
            ctx.side
                .register(LATE_RECORDS, Arc::clone(log), LateRecord::identify, state)?;
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<WindowResult<K, F::Out>>,
    ) -> Result<()> {
        let ts = (self.timestamp)(&record);
        let wm = ctx.current_watermark();
        let windows = self.state()?.clone();
        if self.assigner.merges() {
            let mut w = self.assigner.assign(ts)[0];
            if self.is_late(&w, wm) {
                return self.late(&record, ts, ctx);
            }
            let touching: Vec<(Window, F::Acc)> = windows
                .entries(ctx.state())?
                .filter(|(e, _)| e.touches(&w))
                .map(|(e, a)| (*e, a.clone()))
                .collect();
            let mut acc = self.f.create();
            for (e, a) in touching {
                windows.remove(ctx.state(), &e)?;
                self.unregister(&e, ctx)?;
                self.f.merge(&mut acc, a);
                w = w.cover(&e);
            }
            self.f.add(&mut acc, record);
            if wm >= w.max_timestamp() {
                self.emit(w, &acc, ctx, out)?;
            }
            windows.put(ctx.state(), w, acc)?;
            return self.register(&w, ctx);
        }
        let mut counted_late = false;
        for w in self.assigner.assign(ts) {
            if self.is_late(&w, wm) {
                if !counted_late {
                    counted_late = true;
                    self.late(&record, ts, ctx)?;
                }
                continue;
            }
            let mut acc = match windows.get(ctx.state(), &w)? {
                Some(a) => a.clone(),
                None => self.f.create(),
            };
            self.f.add(&mut acc, record.clone());
            if wm >= w.max_timestamp() {
                // Within the allowed lateness after the window fired: an updated result.
                self.emit(w, &acc, ctx, out)?;
            }
            windows.put(ctx.state(), w, acc)?;
            self.register(&w, ctx)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ts: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<WindowResult<K, F::Out>>,
    ) -> Result<()> {
        if domain != TimeDomain::EventTime {
            return Ok(());
        }
        let windows = self.state()?.clone();
        let mine: Vec<(Window, F::Acc)> = windows
            .entries(ctx.state())?
            .filter(|(w, _)| {
                w.max_timestamp() == ts || w.max_timestamp().saturating_add(self.lateness) == ts
            })
            .map(|(w, a)| (*w, a.clone()))
            .collect();
        for (w, acc) in mine {
            if w.max_timestamp() == ts {
                self.emit(w, &acc, ctx, out)?;
            }
            if w.max_timestamp().saturating_add(self.lateness) == ts {
                windows.remove(ctx.state(), &w)?;
            }
        }
        Ok(())
    }
}

/// A keyed stream cut into windows; finish it with [`reduce`](Self::reduce),
/// [`aggregate`](Self::aggregate) or [`process`](Self::process).
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    assigner: WindowAssigner,
    timestamp: Arc<dyn Fn(&T) -> Timestamp + Send + Sync>,
    lateness: i64,
    late_log: Option<(Arc<dyn ReplayableLog>, LateEncoder<T>)>,
}

impl<K, T> std::fmt::Debug for WindowedStream<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedStream")
            .field("assigner", &self.assigner)
            .field("lateness", &self.lateness)
            .finish()
    }
}

impl<K: StateKey, T: Data> KeyedStream<K, T> {
    /// Cuts the stream into windows by event time: `timestamp` reads a record's time (ms), which
    /// the source's watermark must cover (see [`LogSource::event_time`](crate::LogSource::event_time)).
    pub fn window(
        self,
        assigner: WindowAssigner,
        timestamp: impl Fn(&T) -> Timestamp + Send + Sync + 'static,
    ) -> WindowedStream<K, T> {
        WindowedStream {
            keyed: self,
            assigner,
            timestamp: Arc::new(timestamp),
            lateness: 0,
            late_log: None,
        }
    }
}

impl<K: StateKey, T: Data> WindowedStream<K, T> {
    /// Keeps each window's state this many ms after it fired: records arriving meanwhile add to
    /// it and emit an updated result (default 0).
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.lateness = ms.max(0);
        self
    }

    /// Writes records that arrive after their windows' allowed lateness to `log`, as
    /// [`LateRecord`]s, besides counting them; each appears once, when the checkpoint after
    /// its arrival completes (a replay does not write it again). Without it they are only
    /// counted.
    pub fn late_records_to(mut self, log: Arc<dyn ReplayableLog>) -> Self
    where
        T: Serialize,
    {
        self.late_log = Some((log, Arc::new(|r: &T| codec::encode(r, "late record"))));
        self
    }

    fn finish<F: WindowFn<K, T>>(self, name: &str, f: F) -> Stream<WindowResult<K, F::Out>> {
        if let Err(e) = self.assigner.validate() {
            self.keyed.stream_errors(e.to_string());
        }
        let op = WindowOperator {
            name: name.to_string(),
            assigner: self.assigner,
            timestamp: self.timestamp,
            lateness: self.lateness,
            late_log: self.late_log,
            f: Arc::new(f),
            windows: None,
            _k: PhantomData,
        };
        self.keyed.process(name, op)
    }

    /// Folds each window's records with `f` and emits the result.
    pub fn reduce(
        self,
        name: &str,
        f: impl Fn(T, T) -> T + Send + Sync + 'static,
    ) -> Stream<WindowResult<K, T>>
    where
        T: StateValue + Sync,
    {
        self.finish(name, ReduceFn(Arc::new(f)))
    }

    /// Aggregates each window's records with `agg` and emits its result.
    pub fn aggregate<A>(self, name: &str, agg: A) -> Stream<WindowResult<K, A::Out>>
    where
        A: WindowAggregator<In = T>,
        A::Out: Data,
    {
        self.finish(name, AggFn(Arc::new(agg)))
    }

    /// Keeps each window's records and calls `f` with all of them when it fires.
    pub fn process<R: Data>(
        self,
        name: &str,
        f: impl Fn(&K, Window, &[T]) -> R + Send + Sync + 'static,
    ) -> Stream<WindowResult<K, R>>
    where
        T: StateValue,
    {
        self.finish(name, ProcessFn(Arc::new(f)))
    }
}
