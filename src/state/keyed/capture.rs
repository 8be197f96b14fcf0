//! Snapshots of keyed state: [`KeyedStateBackend::capture`], the [`KeyedStateCapture`] it
//! returns and its encodings (to a [`KeyedSnapshot`], or straight to task snapshot bytes as
//! [`SnapshotParts`]), and the [`DeferredEncoding`] the task did for it.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::backend::KeyedStateBackend;
use super::kinds::StateKey;
use super::schema::StateSchema;
use super::slots::{CapturedGroups, DeferredStats};
use super::snapshot::{GroupEntryRef, KeyGroupBlob, KeyedSnapshot, Pending};
use crate::codec;
use crate::error::{Error, Result};
use crate::state::key_group::{KeyGroup, KeyGroupRange};
use crate::state::OperatorSnapshot;

/// The part of a capture's encoding that the task did itself, group by group, before writing
/// groups the capture had not encoded yet (see [`KeyedStateBackend::capture`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeferredEncoding {
    /// Key groups (of any state) the task encoded.
    pub groups: u64,
    /// The time the task spent encoding them.
    pub total: std::time::Duration,
    /// The longest single group encoding: the longest pause of the task's processing it caused.
    pub longest: std::time::Duration,
}

impl<K: StateKey> KeyedStateBackend<K> {
    /// Captures the state so that it can be encoded while the task goes on changing it. The
    /// capture shares the tables' key groups (copy-on-write): it costs O(states x key groups),
    /// whatever the number of entries. Each group is then encoded once, by whichever side
    /// needs it first: the capture's [`encode`](KeyedStateCapture::encode) (on any thread), or
    /// this backend, just before the first write to a group the newest capture has not
    /// encoded yet (so the write needs no copy; the capture's
    /// [`deferred_encoding`](KeyedStateCapture::deferred_encoding) says how much of it the
    /// task did). A write to a group shared with an older capture, or with the encoding in
    /// progress, copies the group.
    pub fn capture(&mut self) -> KeyedStateCapture<K> {
        let deferred = Arc::new(DeferredStats::default());
        // Each state's schema once: the registered ones', then the stored schema of each state
        // whose restored bytes are carried over unregistered (they are still in it).
        let mut schemas: Vec<Arc<StateSchema>> = self
            .tables
            .iter_mut()
            .map(|t| Arc::clone(t.schema()))
            .collect();
        schemas.extend(
            self.pending
                .values()
                .filter_map(|p| p.iter().find_map(|g| g.schema.clone())),
        );
        KeyedStateCapture {
            schemas,
            range: self.range,
            max_parallelism: self.max_parallelism,
            tables: self
                .tables
                .iter_mut()
                .map(|t| t.capture(&deferred))
                .collect(),
            pending: self.pending.clone(),
            deferred,
            _key: PhantomData,
        }
    }

    /// Captures and encodes in one step, on the calling thread.
    pub fn snapshot(&mut self) -> Result<KeyedSnapshot> {
        self.capture().encode()
    }
}

/// A clone of a backend's state taken by [`KeyedStateBackend::capture`], to be encoded off the
/// task's thread.
pub struct KeyedStateCapture<K> {
    range: KeyGroupRange,
    max_parallelism: u32,
    tables: Vec<Box<dyn CapturedGroups>>,
    schemas: Vec<Arc<StateSchema>>,
    pending: HashMap<String, Pending>,
    deferred: Arc<DeferredStats>,
    _key: PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for KeyedStateCapture<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStateCapture")
            .field("range", &self.range)
            .field("states", &self.tables.len())
            .finish()
    }
}

impl<K: StateKey> KeyedStateCapture<K> {
    /// How much of this capture the task's backend encoded itself so far (final once the
    /// capture has been encoded: every group is encoded by then).
    pub fn deferred_encoding(&self) -> DeferredEncoding {
        let d = &self.deferred;
        DeferredEncoding {
            groups: d.groups.load(Ordering::Relaxed),
            total: std::time::Duration::from_nanos(d.total_nanos.load(Ordering::Relaxed)),
            longest: std::time::Duration::from_nanos(d.longest_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Encodes the captured state as one checksummed blob per non-empty key group.
    pub fn encode(&self) -> Result<KeyedSnapshot> {
        let mut groups = Vec::new();
        for gi in 0..self.range.len() {
            let entries = self.group_entries(gi)?;
            if entries.is_empty() {
                continue;
            }
            let bytes = codec::encode(&entries, "key group blob")?;
            groups.push(KeyGroupBlob {
                key_group: KeyGroup(self.range.start + gi as u16),
                crc32c: crc32c::crc32c(&bytes),
                bytes,
            });
        }
        Ok(KeyedSnapshot {
            max_parallelism: self.max_parallelism,
            range: self.range,
            groups,
            schemas: self.schemas.iter().map(|s| (**s).clone()).collect(),
        })
    }

    /// The bytes of `TaskSnapshot { keyed: Some(self.encode()?), operator }.to_bytes()`,
    /// produced without building the blobs first: each key group's blob is checksummed and
    /// written from its parts (each state's encoded entries, copied once, into the result).
    pub fn encode_task_snapshot(&self, operator: &OperatorSnapshot) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_task_snapshot_into(operator, &mut out)?;
        Ok(out)
    }

    /// [`encode_task_snapshot`](Self::encode_task_snapshot), appending to `out` (a buffer
    /// reused from one checkpoint to the next). On error, `out` may hold part of the bytes.
    pub fn encode_task_snapshot_into(
        &self,
        operator: &OperatorSnapshot,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let parts = self.task_snapshot_parts(operator)?;
        out.reserve(parts.len());
        for part in parts.iter() {
            out.extend_from_slice(part);
        }
        Ok(())
    }

    /// The bytes of [`encode_task_snapshot`](Self::encode_task_snapshot) as parts whose
    /// concatenation they are: the headers, written into one small buffer, and each key
    /// group's encoded entries, borrowed from the capture. Checkpoints hand the parts to the
    /// storage, which writes them without joining them first.
    pub(crate) fn task_snapshot_parts(
        &self,
        operator: &OperatorSnapshot,
    ) -> Result<SnapshotParts<'_>> {
        use crate::codec::msgpack::{write, write_array_len, write_bin_len, EncodeError};
        let enc = |r: std::result::Result<(), EncodeError>| {
            r.map_err(|e| Error::encode("task snapshot", e))
        };
        let mut out = SnapshotParts::default();
        // As rmp-serde writes `TaskSnapshot { keyed: Some(KeyedSnapshot { max_parallelism,
        // range, groups, schemas }), operator }`: structs as arrays of their fields, `Some(x)`
        // as `x`.
        enc(write_array_len(&mut out.small, 2))?;
        enc(write_array_len(&mut out.small, 4))?;
        enc(write(&self.max_parallelism, &mut out.small))?;
        enc(write(&self.range, &mut out.small))?;
        let groups = (0..self.range.len()).filter(|gi| !self.group_is_empty(*gi));
        enc(write_array_len(&mut out.small, groups.clone().count()))?;
        // A blob is `[[name, kind, data], ...]`: `heads` holds its bytes other than the data,
        // `ends[i]` where the part before entry i's data ends.
        let (mut heads, mut ends) = (Vec::new(), Vec::new());
        for gi in groups {
            let entries = self.group_entries(gi)?;
            heads.clear();
            ends.clear();
            enc(write_array_len(&mut heads, entries.len()))?;
            for e in &entries {
                enc(write_array_len(&mut heads, 3))?;
                enc(write(e.name, &mut heads))?;
                enc(write(&e.kind, &mut heads))?;
                enc(write_bin_len(&mut heads, e.data.len()))?;
                ends.push(heads.len());
            }
            let starts = || std::iter::once(0).chain(ends.iter().copied());
            let blob = || {
                starts()
                    .zip(&ends)
                    .zip(&entries)
                    .flat_map(|((s, &e), entry)| [&heads[s..e], entry.data])
            };
            let crc = blob().fold(0, crc32c::crc32c_append);
            let len = blob().map(<[u8]>::len).sum();
            // KeyGroupBlob { key_group, crc32c, bytes }
            enc(write_array_len(&mut out.small, 3))?;
            enc(write(
                &KeyGroup(self.range.start + gi as u16),
                &mut out.small,
            ))?;
            enc(write(&crc, &mut out.small))?;
            enc(write_bin_len(&mut out.small, len))?;
            for ((s, &e), entry) in starts().zip(&ends).zip(&entries) {
                out.small.extend_from_slice(&heads[s..e]);
                out.borrowed(entry.data);
            }
        }
        enc(write_array_len(&mut out.small, self.schemas.len()))?;
        for s in &self.schemas {
            enc(write(&**s, &mut out.small))?;
        }
        enc(write(operator, &mut out.small))?;
        out.seal();
        Ok(out)
    }

    /// The entries of key group `gi` (index in the range): each state's, encoding them if
    /// the task has not, then the restored bytes of states not registered again.
    fn group_entries(&self, gi: usize) -> Result<Vec<GroupEntryRef<'_>>> {
        let mut entries = Vec::new();
        for t in &self.tables {
            if let Some(data) = t.group_bytes(gi)? {
                entries.push(GroupEntryRef {
                    name: t.name(),
                    kind: t.kind(),
                    data,
                });
            }
        }
        for (name, pending) in &self.pending {
            for p in pending.iter().filter(|p| p.gi == gi) {
                entries.push(GroupEntryRef {
                    name,
                    kind: p.kind,
                    data: &p.data,
                });
            }
        }
        Ok(entries)
    }

    /// Whether key group `gi` (index in the range) holds anything to encode.
    fn group_is_empty(&self, gi: usize) -> bool {
        self.tables.iter().all(|t| t.group_is_empty(gi))
            && self.pending.values().all(|p| p.iter().all(|g| g.gi != gi))
    }
}

/// Bytes as a sequence of parts: runs of `small` (headers) between borrowed slices.
#[derive(Debug, Default)]
pub(crate) struct SnapshotParts<'a> {
    small: Vec<u8>,
    /// Where the run of `small` not yet in `parts` starts.
    sealed: usize,
    parts: Vec<Part<'a>>,
}

#[derive(Debug)]
enum Part<'a> {
    Small(std::ops::Range<usize>),
    Borrowed(&'a [u8]),
}

impl<'a> SnapshotParts<'a> {
    /// Ends the current run of `small` (if any) as a part.
    fn seal(&mut self) {
        if self.sealed < self.small.len() {
            self.parts.push(Part::Small(self.sealed..self.small.len()));
            self.sealed = self.small.len();
        }
    }

    /// Appends a borrowed slice after what `small` holds so far.
    fn borrowed(&mut self, bytes: &'a [u8]) {
        self.seal();
        if !bytes.is_empty() {
            self.parts.push(Part::Borrowed(bytes));
        }
    }

    /// The parts, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.parts.iter().map(|p| match p {
            Part::Small(r) => &self.small[r.clone()],
            Part::Borrowed(b) => b,
        })
    }

    /// The length of the concatenation.
    pub(crate) fn len(&self) -> usize {
        self.iter().map(<[u8]>::len).sum()
    }
}
