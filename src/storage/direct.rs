//! Direct writes: large files written with `O_DIRECT` (Linux), from an aligned buffer straight
//! to the device, instead of being copied into the kernel's page cache first.
//!
//! Why: a checkpoint of a large keyed state is written several times a second and read back
//! only on recovery. A buffered write costs the writing thread a copy of every byte into the
//! page cache, plus the page cache's own management and write-back, on the cores the operators
//! run on (at K = 1 M keys and 100 ms checkpoints, `perf` put about 9 ms of kernel time on each
//! checkpoint, most of it `copy_folio_from_iter_atomic`); the cached pages also push the job's
//! own memory out of the cache. A direct write costs one copy into the aligned buffer.
//!
//! The durability protocol is unchanged: the temp file is written, truncated to its exact
//! length (the write itself is padded to whole blocks), fsynced, and renamed; the caller
//! fsyncs the directory, as for [`write_renamed`](super::write_renamed). A file system that
//! refuses `O_DIRECT` (`EINVAL`, e.g. tmpfs on older kernels) makes the write report `false`
//! so the caller falls back to a buffered write.

use std::path::Path;

use super::{envelope_header, ENVELOPE_HEADER};
use crate::error::Result;

/// The alignment of the buffer address, file offsets and lengths of a direct write: 4 KiB,
/// which covers devices with 512-byte and 4 KiB logical blocks.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A reusable buffer that hands out windows starting at a [`DIRECT_ALIGN`] boundary (safe
/// code: an over-allocated `Vec` and an offset into it).
#[derive(Debug, Default)]
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
}

impl AlignedBuf {
    /// An aligned window of `len` bytes (their content is unspecified).
    fn window(&mut self, len: usize) -> &mut [u8] {
        let need = len + DIRECT_ALIGN;
        if self.raw.len() < need {
            // A fresh buffer rather than a resize: the old content need not be copied. With an
            // eighth more room, so that writers of slightly different sizes sharing a pool of
            // buffers do not reallocate each other's.
            self.raw = vec![0; need + need / 8];
        }
        let off = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.raw[off..off + len]
    }

    /// The bytes held, for deciding whether to keep the buffer.
    pub(crate) fn capacity(&self) -> usize {
        self.raw.len()
    }
}

/// Copies the concatenation of `parts` (a payload) into `window` after room for its envelope
/// header, checksumming each part as it lands (while it is in the cache), then writes the
/// header. Returns the payload's CRC32C.
fn envelope_into(window: &mut [u8], magic: &[u8; 8], parts: &[&[u8]], len: usize) -> u32 {
    let mut at = ENVELOPE_HEADER;
    let mut crc = 0;
    for part in parts {
        let dest = &mut window[at..at + part.len()];
        dest.copy_from_slice(part);
        crc = crc32c::crc32c_append(crc, dest);
        at += part.len();
    }
    window[..ENVELOPE_HEADER].copy_from_slice(&envelope_header(magic, len, crc));
    crc
}

/// Writes the [envelope](super::encode_envelope) of the concatenation of `parts` to `path` as
/// [`write_renamed`](super::write_renamed) would, but with `O_DIRECT`, through `buf`. Returns
/// the payload's CRC32C, and whether the file was written: `false`, with `path` untouched,
/// when the file system refuses direct I/O (the caller then writes the file the buffered way,
/// with the CRC already known).
#[cfg(target_os = "linux")]
pub(crate) fn write_enveloped_direct(
    path: &Path,
    magic: &[u8; 8],
    parts: &[&[u8]],
    buf: &mut AlignedBuf,
) -> Result<(u32, bool)> {
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use crate::error::Error;

    let len: usize = parts.iter().map(|p| p.len()).sum();
    let total = ENVELOPE_HEADER + len;
    let padded = total.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let window = buf.window(padded);
    let crc = envelope_into(window, magic, parts, len);
    window[total..].fill(0);

    let tmp = super::temp_path(path)?;
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&tmp)
    {
        Ok(f) => f,
        Err(e) if refused(&e) => return Ok((crc, false)),
        Err(e) => return Err(Error::io("create temp file", &tmp, e)),
    };
    // A short write would leave the rest unaligned, which the kernel refuses with EINVAL: that
    // too ends in the buffered fallback, which rewrites the temp file from the start.
    match (&file).write_all(window) {
        Ok(()) => {}
        Err(e) if refused(&e) => return Ok((crc, false)),
        Err(e) => return Err(Error::io("write temp file", &tmp, e)),
    }
    file.set_len(total as u64)
        .map_err(|e| Error::io("truncate temp file", &tmp, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync temp file", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| Error::io("rename temp file over", path, e))?;
    Ok((crc, true))
}

/// Direct I/O is only implemented for Linux: elsewhere every write is buffered.
#[cfg(not(target_os = "linux"))]
pub(crate) fn write_enveloped_direct(
    _path: &Path,
    _magic: &[u8; 8],
    parts: &[&[u8]],
    _buf: &mut AlignedBuf,
) -> Result<(u32, bool)> {
    Ok((
        parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p)),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_windows_start_on_a_block_boundary_whatever_the_length() {
        let mut buf = AlignedBuf::default();
        for len in [0, 1, 4095, 4096, 4097, 1 << 20, 10] {
            let w = buf.window(len);
            assert_eq!(w.len(), len);
            assert_eq!(w.as_ptr() as usize % DIRECT_ALIGN, 0, "len {len}");
        }
    }

    #[test]
    fn an_envelope_built_from_parts_equals_the_one_built_from_the_joined_payload() {
        let parts: [&[u8]; 4] = [b"head", b"", &[7; 5000], b"tail"];
        let payload = parts.concat();
        let mut buf = AlignedBuf::default();
        let total = ENVELOPE_HEADER + payload.len();
        let window = buf.window(total);
        let crc = envelope_into(window, b"SNAPTEST", &parts, payload.len());
        assert_eq!(crc, crc32c::crc32c(&payload));
        assert_eq!(
            window,
            &super::super::encode_envelope(b"SNAPTEST", &payload)[..]
        );
    }
}
