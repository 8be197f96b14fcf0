//! Crash-consistent file primitives: the one place where the rules for durable writes live.
//!
//! Everything that must survive a crash is written through `write_atomic` (write a temp file
//! in the same directory, fsync it, rename it over the target, fsync the directory), or through
//! `write_renamed` (the same, with the directory fsync left to the caller, so that the files
//! of one checkpoint share one directory fsync; `write_enveloped_direct` is its variant that
//! bypasses the page cache for large files), and wrapped
//! in a checksummed envelope (`encode_envelope`), so a reader can tell a complete file from a
//! torn or corrupted one and never decodes bad bytes. Names that reach the file system are
//! checked by [`validate_name`].
//!
//! Every helper takes the [`FileSystem`] to act on: [`StdFs`] in production, a
//! [`SimDisk`](sim::SimDisk) in crash tests. Nothing that must survive a crash touches
//! `std::fs` outside [`fs`].
//!
//! Media assumptions (the same as most embedded stores): a `rename` within one directory is
//! atomic, an `fsync` that returns success means the file's bytes are durable, and an `fsync`
//! of a directory makes the entries created or renamed in it durable. A write that was not
//! followed by a successful fsync may be lost, torn, or reordered with other unsynced writes.

use std::path::Path;

use crate::error::{Error, Result};

mod direct;
pub mod fs;
pub mod sim;
pub(crate) use direct::{write_enveloped_direct, AlignedBuf};
pub use fs::{FileHandle, FileSystem, OpenMode, StdFs};

/// Size of the envelope header: magic (8) + payload length (8) + CRC32C (4).
pub(crate) const ENVELOPE_HEADER: usize = 20;

/// Wraps `payload` in a checksummed envelope: an 8-byte magic naming the file kind, the payload
/// length (u64, little endian), a CRC32C over the length and the payload, then the payload.
pub(crate) fn encode_envelope(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_HEADER + payload.len());
    out.extend_from_slice(&envelope_header(
        magic,
        payload.len(),
        crc32c::crc32c(payload),
    ));
    out.extend_from_slice(payload);
    out
}

/// The header [`encode_envelope`] puts before a payload of `len` bytes whose own CRC32C is
/// `payload_crc`: lets a caller that already checksummed the payload write header and payload
/// without copying the payload or reading it a second time.
pub(crate) fn envelope_header(
    magic: &[u8; 8],
    len: usize,
    payload_crc: u32,
) -> [u8; ENVELOPE_HEADER] {
    let len_bytes = (len as u64).to_le_bytes();
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&len_bytes), payload_crc, len);
    let mut header = [0u8; ENVELOPE_HEADER];
    header[..8].copy_from_slice(magic);
    header[8..16].copy_from_slice(&len_bytes);
    header[16..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks an envelope made by [`encode_envelope`] and returns its payload, or a sentence saying
/// what is wrong. A length field above `max_payload` is refused before anything is trusted.
pub(crate) fn decode_envelope<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    max_payload: u64,
) -> std::result::Result<&'a [u8], String> {
    if bytes.len() < ENVELOPE_HEADER {
        return Err(format!(
            "file is {} bytes, shorter than its {ENVELOPE_HEADER}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..8] != magic {
        return Err("wrong magic bytes: not a file of this kind".to_string());
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len > max_payload {
        return Err(format!(
            "payload length {len} exceeds the limit of {max_payload} bytes"
        ));
    }
    let body = &bytes[ENVELOPE_HEADER..];
    if body.len() as u64 != len {
        return Err(format!(
            "payload is {} bytes but the header says {len} (truncated or extended)",
            body.len()
        ));
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&bytes[16..20]);
    let expected = u32::from_le_bytes(crc_bytes);
    let actual = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
    if expected != actual {
        return Err(format!(
            "checksum mismatch (stored {expected:#010x}, computed {actual:#010x})"
        ));
    }
    Ok(body)
}

/// Replaces `path` with `bytes` so that after a crash the file holds either its old content or
/// the new one, never a mix: write `path.tmp`, fsync it, rename it over `path`, fsync the
/// directory. Returns only once the new content is durable.
pub(crate) fn write_atomic(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    write_renamed(fs, path, &[bytes])?;
    sync_dir(fs, path.parent().unwrap_or(Path::new(".")))
}

/// The first three steps of [`write_atomic`], for the concatenation of `parts` (written one
/// after the other, so a header and a large payload need not be copied into one buffer
/// first): write a temp file, fsync it, rename it over `path`; the directory is not fsynced. The caller must [`sync_dir`] the directory before
/// anything that depends on the new entry is made durable: this lets several files of one
/// directory share a single directory fsync (a checkpoint's state files, synced once before
/// the manifest that names them is written).
pub(crate) fn write_renamed(fs: &dyn FileSystem, path: &Path, parts: &[&[u8]]) -> Result<()> {
    let tmp = temp_path(path)?;
    {
        let f = fs
            .open(&tmp, OpenMode::Truncate)
            .map_err(|e| Error::io("create temp file", &tmp, e))?;
        // Small parts (headers between large ones) are gathered into one write; parts larger
        // than the buffer go straight to the file.
        const GATHER: usize = 64 << 10;
        let mut pos = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let flush = |buf: &mut Vec<u8>, pos: &mut u64| -> Result<()> {
            if !buf.is_empty() {
                f.write_at(buf, *pos)
                    .map_err(|e| Error::io("write temp file", &tmp, e))?;
                *pos += buf.len() as u64;
                buf.clear();
            }
            Ok(())
        };
        for part in parts {
            if part.len() >= GATHER {
                flush(&mut buf, &mut pos)?;
                f.write_at(part, pos)
                    .map_err(|e| Error::io("write temp file", &tmp, e))?;
                pos += part.len() as u64;
            } else {
                if buf.len() + part.len() > GATHER {
                    flush(&mut buf, &mut pos)?;
                }
                buf.extend_from_slice(part);
            }
        }
        flush(&mut buf, &mut pos)?;
        f.sync()
            .map_err(|e| Error::io("fsync temp file", &tmp, e))?;
    }
    fs.rename(&tmp, path)
        .map_err(|e| Error::io("rename temp file over", path, e))
}

/// The temp file a write of `path` goes through: `path.tmp`, in the same directory.
fn temp_path(path: &Path) -> Result<std::path::PathBuf> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Config(format!("{} has no parent directory", path.display())))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    Ok(dir.join(tmp_name))
}

/// Makes the directory entries of `dir` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Creates `dir` and any missing parents, making every new entry durable: walking down from
/// the first missing ancestor, each directory is created and then its parent is fsynced (the
/// existing ancestor for the first one, the directory just created for the next), so after a
/// crash no created level can be missing while a deeper one was reported durable.
pub(crate) fn create_dir_durable(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    if fs.is_dir(dir) {
        return Ok(());
    }
    // The missing directories, deepest first. An empty path is the current directory.
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || fs.is_dir(d) {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs.create_dir(d) {
            Ok(()) => {}
            // Created meanwhile by someone else: still sync its parent below, it costs little.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && fs.is_dir(d) => {}
            Err(e) => return Err(Error::io("create directory", d, e)),
        }
        match d.parent() {
            Some(p) if p.as_os_str().is_empty() => sync_dir(fs, Path::new("."))?,
            Some(p) => sync_dir(fs, p)?,
            None => {}
        }
    }
    Ok(())
}

/// Reads a whole file, refusing files larger than `max_bytes` before reading them.
pub(crate) fn read_bounded(
    fs: &dyn FileSystem,
    path: &Path,
    max_bytes: u64,
) -> Result<std::result::Result<Vec<u8>, String>> {
    let f = fs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat", path, e))?;
    if len > max_bytes {
        return Ok(Err(format!(
            "file is {len} bytes, above the limit of {max_bytes}"
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    fs::read_exact_at(f.as_ref(), &mut bytes, 0).map_err(|e| Error::io("read", path, e))?;
    Ok(Ok(bytes))
}

/// The longest name accepted by [`validate_name`].
pub(crate) const MAX_NAME_LEN: usize = 128;

/// Checks that a name given by a user can be used as one path component: 1 to 128 characters
/// from `[A-Za-z0-9._-]`, not starting with a dot (so not `.`, `..` or a hidden file). This
/// rules out path traversal, absolute paths, separators and NUL bytes.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let refuse = |reason| {
        Err(Error::InvalidName {
            kind,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return refuse("it starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return refuse("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_crc_covers_length_then_payload_for_every_size() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 4096, 100_003] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
            let env = encode_envelope(b"SNAPTEST", &payload);
            let mut covered = (n as u64).to_le_bytes().to_vec();
            covered.extend_from_slice(&payload);
            assert_eq!(
                env[16..20],
                crc32c::crc32c(&covered).to_le_bytes(),
                "size {n}"
            );
            assert_eq!(&env[..8], b"SNAPTEST");
            assert_eq!(
                decode_envelope(b"SNAPTEST", &env, n as u64),
                Ok(&payload[..])
            );
        }
    }

    #[test]
    fn envelope_detects_every_truncation_and_flip() {
        let payload = b"hello checkpoint".to_vec();
        let bytes = encode_envelope(b"TESTFILE", &payload);
        assert_eq!(
            decode_envelope(b"TESTFILE", &bytes, 1024).expect("valid"),
            &payload[..]
        );
        for cut in 0..bytes.len() {
            assert!(
                decode_envelope(b"TESTFILE", &bytes[..cut], 1024).is_err(),
                "cut {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode_envelope(b"TESTFILE", &b, 1024).is_err(), "flip {i}");
        }
    }

    #[test]
    fn envelope_refuses_lengths_above_the_limit() {
        let bytes = encode_envelope(b"TESTFILE", &[0u8; 100]);
        let err = decode_envelope(b"TESTFILE", &bytes, 99).expect_err("too big");
        assert!(err.contains("exceeds"), "{err}");
    }

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\0b", ".hidden", "é",
        ] {
            assert!(validate_name("job", bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name("job", &long).is_err());
        for good in ["job", "word-count_2", "v1.0", "A9"] {
            validate_name("job", good).expect("valid name");
        }
    }

    #[test]
    fn create_dir_durable_creates_every_missing_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_durable(&StdFs, &deep).expect("create three levels");
        assert!(deep.is_dir());
        create_dir_durable(&StdFs, &deep).expect("an existing directory is fine");
        let sibling = dir.path().join("a").join("d");
        create_dir_durable(&StdFs, &sibling).expect("create one level under an existing one");
        assert!(sibling.is_dir());
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(
            create_dir_durable(&StdFs, &file.join("g")).is_err(),
            "a file in the way is an error"
        );
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_atomic(&StdFs, &p, b"one").expect("write");
        write_atomic(&StdFs, &p, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
