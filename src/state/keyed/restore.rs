//! Restoring keyed state: [`KeyedStateBackend::restore`] from the blobs of any number of
//! snapshots, with its checks (coverage, checksums, each key's group), and what it took in
//! ([`RestoreStats`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::backend::KeyedStateBackend;
use super::kinds::StateKey;
use super::schema::StateSchema;
use super::snapshot::{GroupEntry, KeyGroupBlob, KeyedSnapshot, PendingGroup};
use crate::codec;
use crate::error::{Error, Result};
use crate::state::key_group::{key_group_for, KeyGroup};

/// What a restore took in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Key groups restored.
    pub key_groups: usize,
    /// Blobs skipped because their group belongs to another task.
    pub skipped_key_groups: usize,
}

/// Checks, without knowing the value type, that every key of an encoded `HashMap<K, _>`
/// belongs to key group `kg`.
fn check_keys<K: StateKey>(bytes: &[u8], kg: KeyGroup, max_p: u32, name: &str) -> Result<()> {
    use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};
    struct Keys<K> {
        kg: KeyGroup,
        max_p: u32,
        _k: PhantomData<K>,
    }
    impl<'de, K: StateKey> Visitor<'de> for Keys<K> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of keyed state")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            while let Some(k) = map.next_key::<K>()? {
                map.next_value::<IgnoredAny>()?;
                let g = key_group_for(&k, self.max_p);
                if g != self.kg {
                    return Err(A::Error::custom(format!(
                        "holds a key of key group {g} in the blob of group {}",
                        self.kg
                    )));
                }
            }
            Ok(())
        }
    }
    let mut input = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut input);
    let visited = de.deserialize_map(Keys::<K> {
        kg,
        max_p,
        _k: PhantomData,
    });
    let rest = de.into_inner().len();
    match visited {
        Ok(()) if rest == 0 => Ok(()),
        Ok(()) => Err(Error::StateCorrupt {
            key_group: Some(kg),
            reason: format!("state '{name}': {rest} trailing bytes"),
        }),
        Err(e) => Err(Error::StateCorrupt {
            key_group: Some(kg),
            reason: format!("state '{name}': {e}"),
        }),
    }
}

impl<K: StateKey> KeyedStateBackend<K> {
    /// Replaces all state with the key groups this backend owns found in `snapshots`. Blobs of
    /// other groups are skipped. The snapshots' ranges (not only their blobs: a snapshot covers
    /// the empty groups of its range too) must together cover every owned key group exactly
    /// once. A group not covered or covered twice, a blob outside its snapshot's range, a
    /// checksum mismatch, a key in the wrong group or a different max parallelism is an error
    /// ([`Error::StateCorrupt`]), and leaves the backend empty.
    pub fn restore<'a>(
        &mut self,
        snapshots: impl IntoIterator<Item = &'a KeyedSnapshot>,
    ) -> Result<RestoreStats> {
        let result = self.restore_inner(snapshots);
        if result.is_err() {
            self.clear();
        }
        result
    }

    fn restore_inner<'a>(
        &mut self,
        snapshots: impl IntoIterator<Item = &'a KeyedSnapshot>,
    ) -> Result<RestoreStats> {
        self.clear();
        let mut stats = RestoreStats::default();
        let mut seen = HashSet::new();
        // Which owned key groups some snapshot's range covers (blob or not).
        let mut covered = vec![false; self.range.len()];
        for snap in snapshots {
            self.check_snapshot(snap, &mut covered)?;
            let schemas: HashMap<&str, Arc<StateSchema>> = snap
                .schemas
                .iter()
                .map(|s| (s.name.as_str(), Arc::new(s.clone())))
                .collect();
            let r = snap.range;
            for blob in &snap.groups {
                let kg = blob.key_group;
                if !r.contains(kg) {
                    return Err(Error::StateCorrupt {
                        key_group: Some(kg),
                        reason: format!("blob outside its snapshot's key-group range {r}"),
                    });
                }
                if !self.range.contains(kg) {
                    stats.skipped_key_groups += 1;
                    continue;
                }
                if !seen.insert(kg) {
                    return Err(Error::StateCorrupt {
                        key_group: Some(kg),
                        reason: "key group has more than one blob in the snapshot".into(),
                    });
                }
                self.restore_blob(blob, &schemas)?;
                stats.key_groups += 1;
            }
        }
        if let Some(gi) = covered.iter().position(|c| !c) {
            let missing = covered.iter().filter(|c| !**c).count();
            return Err(Error::StateCorrupt {
                key_group: Some(KeyGroup(self.range.start + gi as u16)),
                reason: format!(
                    "no snapshot covers this key group ({missing} of the {} key groups of {} are not covered): restoring would silently drop their state",
                    self.range.len(),
                    self.range
                ),
            });
        }
        Ok(stats)
    }

    /// Checks that `snap` fits this backend (same number of key groups, a range within it)
    /// and marks the owned groups it covers in `covered`, refusing a group covered twice.
    fn check_snapshot(&self, snap: &KeyedSnapshot, covered: &mut [bool]) -> Result<()> {
        if snap.max_parallelism != self.max_parallelism {
            return Err(Error::StateCorrupt {
                key_group: None,
                reason: format!(
                    "the snapshot has {} key groups but the vertex has {}: max parallelism cannot change",
                    snap.max_parallelism, self.max_parallelism
                ),
            });
        }
        let r = snap.range;
        if r.start > r.end || u32::from(r.end) > self.max_parallelism {
            return Err(Error::StateCorrupt {
                key_group: None,
                reason: format!(
                    "the snapshot's key-group range {r} is not within [0, {})",
                    self.max_parallelism
                ),
            });
        }
        // The owned groups this snapshot covers: its range within ours.
        for g in r.start.max(self.range.start)..r.end.min(self.range.end) {
            let gi = usize::from(g - self.range.start);
            if std::mem::replace(&mut covered[gi], true) {
                return Err(Error::StateCorrupt {
                    key_group: Some(KeyGroup(g)),
                    reason: "key group covered by more than one snapshot".into(),
                });
            }
        }
        Ok(())
    }

    /// Restores one owned key group's blob: its checksum, then each state's entries, stored
    /// under `schemas` (kept aside, after checking their keys, for a state not registered yet).
    fn restore_blob(
        &mut self,
        blob: &KeyGroupBlob,
        schemas: &HashMap<&str, Arc<StateSchema>>,
    ) -> Result<()> {
        let kg = blob.key_group;
        if crc32c::crc32c(&blob.bytes) != blob.crc32c {
            return Err(Error::StateCorrupt {
                key_group: Some(kg),
                reason: "blob checksum mismatch".into(),
            });
        }
        let entries: Vec<GroupEntry> =
            codec::decode(&blob.bytes, "key group blob").map_err(|e| Error::StateCorrupt {
                key_group: Some(kg),
                reason: e.to_string(),
            })?;
        let gi = usize::from(kg.0 - self.range.start);
        for entry in entries {
            let schema = schemas.get(entry.name.as_str());
            match self.by_name.get(&entry.name) {
                Some(&id) => {
                    let table = &mut self.tables[id];
                    if table.kind() != entry.kind {
                        return Err(Error::StateTypeMismatch {
                            name: entry.name,
                            existing: format!("{:?}", table.kind()),
                            requested: format!("{:?} (in the restored snapshot)", entry.kind),
                        });
                    }
                    table.restore_group(
                        gi,
                        kg,
                        &entry.data,
                        Some(self.max_parallelism),
                        schema.map(|s| &**s),
                    )?;
                }
                None => {
                    check_keys::<K>(&entry.data, kg, self.max_parallelism, &entry.name)?;
                    self.pending
                        .entry(entry.name)
                        .or_default()
                        .push(PendingGroup {
                            gi,
                            kg,
                            kind: entry.kind,
                            data: entry.data,
                            schema: schema.cloned(),
                        });
                }
            }
        }
        Ok(())
    }
}
