//! Reading a [`KeyedSnapshot`] without the state types: per state, its entry count and bytes
//! ([`KeyedSnapshot::summaries`]), and its entries as dynamic MessagePack values
//! ([`KeyedSnapshot::entries`]), for tools such as the `snapflow` command-line tool. Blobs are
//! checked (checksum) before they are decoded; corrupt bytes are [`Error::StateCorrupt`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer as _, MapAccess, Visitor};

use super::snapshot::{GroupEntry, KeyGroupBlob, KeyedSnapshot};
use crate::codec;
use crate::error::{Error, Result};
use crate::state::Dynamic;

/// One keyed state of a snapshot: how many keys hold it and how many encoded bytes it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedStateSummary {
    /// The state's name.
    pub name: String,
    /// Its kind (`Value`, `List`, ...).
    pub kind: String,
    /// Keys with a value.
    pub entries: u64,
    /// Encoded bytes of its entries.
    pub bytes: u64,
}

fn decode_blob(blob: &KeyGroupBlob) -> Result<Vec<GroupEntry>> {
    let crc = crc32c::crc32c(&blob.bytes);
    if crc != blob.crc32c {
        return Err(Error::StateCorrupt {
            key_group: Some(blob.key_group),
            reason: format!(
                "blob checksum {crc:#010x} differs from the stored {:#010x}",
                blob.crc32c
            ),
        });
    }
    codec::decode(&blob.bytes, "key group blob").map_err(|e| Error::StateCorrupt {
        key_group: Some(blob.key_group),
        reason: e.to_string(),
    })
}

/// Visits an encoded map, handing each (key, value) to `f`.
fn each_entry(
    bytes: &[u8],
    mut f: impl FnMut(Dynamic, Dynamic),
) -> std::result::Result<(), String> {
    struct Entries<'f, F>(&'f mut F);
    impl<'de, F: FnMut(Dynamic, Dynamic)> Visitor<'de> for Entries<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of keyed state")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            while let Some((k, v)) = map.next_entry::<Dynamic, Dynamic>()? {
                (self.0)(k, v);
            }
            Ok(())
        }
    }
    let mut input = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut input);
    de.deserialize_map(Entries(&mut f))
        .map_err(|e| e.to_string())
}

impl KeyedSnapshot {
    /// Every state in the snapshot, by name, with its entry count and encoded bytes.
    pub fn summaries(&self) -> Result<Vec<KeyedStateSummary>> {
        let mut by_name: BTreeMap<String, KeyedStateSummary> = BTreeMap::new();
        for blob in &self.groups {
            for e in decode_blob(blob)? {
                let s = by_name
                    .entry(e.name.clone())
                    .or_insert_with(|| KeyedStateSummary {
                        name: e.name.clone(),
                        kind: format!("{:?}", e.kind),
                        entries: 0,
                        bytes: 0,
                    });
                s.bytes += e.data.len() as u64;
                each_entry(&e.data, |_, _| s.entries += 1).map_err(|reason| {
                    Error::StateCorrupt {
                        key_group: Some(blob.key_group),
                        reason: format!("state '{}': {reason}", e.name),
                    }
                })?;
            }
        }
        Ok(by_name.into_values().collect())
    }

    /// The (key, value) entries of state `name`, in key-group order, decoded without their
    /// types.
    pub fn entries(&self, name: &str) -> Result<Vec<(Dynamic, Dynamic)>> {
        let mut out = Vec::new();
        for blob in &self.groups {
            for e in decode_blob(blob)?.into_iter().filter(|e| e.name == name) {
                each_entry(&e.data, |k, v| out.push((k, v))).map_err(|reason| {
                    Error::StateCorrupt {
                        key_group: Some(blob.key_group),
                        reason: format!("state '{name}': {reason}"),
                    }
                })?;
            }
        }
        Ok(out)
    }
}
