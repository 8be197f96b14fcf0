//! Sizes of the on-disk format that the other files of the log share (the segment header,
//! the read chunk) and the error for data that fails its checks.

use std::path::Path;

use crate::error::Error;
use crate::log::{LogOffset, PartitionId};

pub(super) const SEGMENT_HEADER: u64 = 16;
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// The largest segment size accepted: index positions are u32.
pub(super) const MAX_SEGMENT_BYTES: u64 = 1 << 30;

pub(super) fn corrupt(
    partition: PartitionId,
    offset: u64,
    path: &Path,
    reason: impl Into<String>,
) -> Error {
    Error::LogCorrupt {
        partition,
        offset: LogOffset(offset),
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
