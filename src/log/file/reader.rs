//! [`FrameReader`]: reads and checks the frames of a segment file region in order, through a
//! reusable buffer, reporting each as a [`Next`].

use super::layout::READ_CHUNK;
use crate::log::frame::{check_frame, FrameCheck, FRAME_HEADER};
use crate::storage::{fs::read_exact_at, FileHandle};

/// Reads frames sequentially from a file region through a reusable buffer.
pub(super) struct FrameReader<'a> {
    file: &'a dyn FileHandle,
    pos: u64,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
    max_record: u32,
}

pub(super) enum Next {
    End,
    Frame {
        pos: u64,
        offset: u64,
        start: usize,
        len: usize,
    },
    Bad {
        reason: String,
    },
}

impl<'a> FrameReader<'a> {
    pub(super) fn new(file: &'a dyn FileHandle, pos: u64, limit: u64, max_record: u32) -> Self {
        FrameReader {
            file,
            pos,
            limit,
            buf: Vec::new(),
            buf_start: pos,
            max_record,
        }
    }

    pub(super) fn payload(&self, start: usize, len: usize) -> &[u8] {
        &self.buf[start..start + len]
    }

    pub(super) fn next(&mut self) -> std::io::Result<Next> {
        loop {
            if self.pos >= self.limit {
                return Ok(Next::End);
            }
            let in_buf = (self.pos - self.buf_start) as usize;
            let avail = if in_buf <= self.buf.len() {
                &self.buf[in_buf..]
            } else {
                &[][..]
            };
            match check_frame(avail, self.max_record) {
                FrameCheck::Valid { offset, len } => {
                    let pos = self.pos;
                    self.pos += (FRAME_HEADER + len) as u64;
                    return Ok(Next::Frame {
                        pos,
                        offset,
                        start: in_buf + FRAME_HEADER,
                        len,
                    });
                }
                FrameCheck::Incomplete { needed } => {
                    let need = needed.unwrap_or(FRAME_HEADER) as u64;
                    let left = self.limit - self.pos;
                    if need > left {
                        return Ok(Next::Bad {
                            reason: format!(
                                "incomplete frame: needs {need} bytes, {left} remain in the segment"
                            ),
                        });
                    }
                    if (avail.len() as u64) >= need {
                        // Cannot happen: check_frame asked for more than is buffered.
                        return Ok(Next::Bad {
                            reason: "frame check inconsistent".into(),
                        });
                    }
                    let n = need.max(READ_CHUNK as u64).min(left) as usize;
                    self.buf.clear();
                    self.buf.resize(n, 0);
                    self.buf_start = self.pos;
                    if let Err(e) = read_exact_at(self.file, &mut self.buf, self.pos) {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            self.buf.clear();
                            return Ok(Next::Bad {
                                reason: "the segment file is shorter than expected".into(),
                            });
                        }
                        return Err(e);
                    }
                }
                FrameCheck::TooLarge { len } => {
                    return Ok(Next::Bad {
                        reason: format!(
                            "length field {len} exceeds the maximum record size {}",
                            self.max_record
                        ),
                    })
                }
                FrameCheck::BadChecksum => {
                    return Ok(Next::Bad {
                        reason: "checksum mismatch".into(),
                    })
                }
            }
        }
    }
}
