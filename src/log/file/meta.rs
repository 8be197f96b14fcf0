//! `log.meta`: the stored format version, partition count and largest record size of a log,
//! and reading, checking and writing it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::layout::{MAX_SEGMENT_BYTES, SEGMENT_HEADER};
use crate::error::{Error, Result};
use crate::log::frame::FRAME_HEADER;
use crate::storage::{self, FileSystem};

const META_MAGIC: &[u8; 8] = b"SNAPLOGM";
pub(super) const META_FILE: &str = "log.meta";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LogMeta {
    pub(super) version: u32,
    pub(super) partitions: u32,
    /// The largest record payload appends may have written: the highest `max_record_bytes` the
    /// log was opened with. Absent in logs created before it was stored.
    #[serde(default)]
    pub(super) max_record_bytes: Option<u32>,
}

/// True when `max` is a record size limit a log can have: above 0, and a frame of that size
/// fits in the largest segment.
pub(super) fn valid_max_record(max: u32) -> bool {
    max > 0 && u64::from(max) + SEGMENT_HEADER + FRAME_HEADER as u64 <= MAX_SEGMENT_BYTES
}

pub(super) fn read_meta(fs: &dyn FileSystem, path: &Path) -> Result<LogMeta> {
    let bytes = match storage::read_bounded(fs, path, 4096)? {
        Ok(b) => b,
        Err(reason) => return Err(Error::Config(format!("{}: {reason}", path.display()))),
    };
    let payload = storage::decode_envelope(META_MAGIC, &bytes, 4096).map_err(|reason| {
        Error::Config(format!(
            "{} is not a valid log meta file: {reason}",
            path.display()
        ))
    })?;
    let meta: LogMeta = crate::codec::decode(payload, "log meta file")?;
    if meta.version != 1 {
        return Err(Error::Config(format!(
            "{}: unsupported log format version {}",
            path.display(),
            meta.version
        )));
    }
    if let Some(max) = meta.max_record_bytes {
        if !valid_max_record(max) {
            return Err(Error::Config(format!(
                "{}: invalid stored max_record_bytes {max}",
                path.display()
            )));
        }
    }
    Ok(meta)
}

pub(super) fn write_meta(fs: &dyn FileSystem, path: &Path, meta: &LogMeta) -> Result<()> {
    let payload = crate::codec::encode_named(meta, "log meta file")?;
    storage::write_atomic(fs, path, &storage::encode_envelope(META_MAGIC, &payload))
}
