//! The on-disk framing of one log record.
//!
//! ```text
//! +------------+------------+----------------+-------------------+
//! | len: u32le | crc: u32le | offset: u64le  | payload: len bytes |
//! +------------+------------+----------------+-------------------+
//! ```
//! `crc` is CRC32C over the `len` bytes, the `offset` bytes and the payload, so a flipped bit
//! anywhere in the frame (including its length) is caught. Storing the offset in the frame
//! makes every record self-identifying: a stale or wrong index entry can never make a read
//! return another record's bytes.

/// Bytes before the payload.
pub(crate) const FRAME_HEADER: usize = 16;

/// Appends the frame of `payload` at `offset` to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, offset: u64, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let off = offset.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&len), &off), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&off);
    out.extend_from_slice(payload);
}

/// What a byte slice starting at a frame boundary holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameCheck {
    /// A complete frame whose checksum matches.
    Valid {
        /// The offset stored in the frame.
        offset: u64,
        /// The payload's length.
        len: usize,
    },
    /// The slice ends before the frame does: the header, or the payload its length announces.
    Incomplete {
        /// Bytes the frame needs in all (header included), when the header could be read.
        needed: Option<usize>,
    },
    /// The length field exceeds the maximum record size. Nothing of that size is allocated.
    TooLarge {
        /// The length field's value.
        len: u64,
    },
    /// The frame is complete but its checksum does not match.
    BadChecksum,
}

/// Checks the frame at the start of `buf` without copying it.
pub(crate) fn check_frame(buf: &[u8], max_record: u32) -> FrameCheck {
    if buf.len() < FRAME_HEADER {
        return FrameCheck::Incomplete { needed: None };
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max_record {
        return FrameCheck::TooLarge { len: len as u64 };
    }
    let total = FRAME_HEADER + len as usize;
    if buf.len() < total {
        return FrameCheck::Incomplete {
            needed: Some(total),
        };
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[0..4]), &buf[8..total]);
    if crc != stored {
        return FrameCheck::BadChecksum;
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&buf[8..16]);
    FrameCheck::Valid {
        offset: u64::from_le_bytes(off),
        len: len as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_in_a_frame_is_detected() {
        let mut f = Vec::new();
        encode_frame(&mut f, 42, b"payload bytes");
        assert_eq!(
            check_frame(&f, 1024),
            FrameCheck::Valid {
                offset: 42,
                len: 13
            }
        );
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(
                    !matches!(
                        check_frame(&g, 1024),
                        FrameCheck::Valid {
                            offset: 42,
                            len: 13
                        }
                    ),
                    "flip at byte {byte} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn a_length_above_the_limit_is_refused_before_reading_the_payload() {
        let mut f = Vec::new();
        encode_frame(&mut f, 0, &[7u8; 64]);
        assert_eq!(check_frame(&f, 63), FrameCheck::TooLarge { len: 64 });
    }
}
