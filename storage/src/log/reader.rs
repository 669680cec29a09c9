//! Reading frames back from segment files.
//!
//! *Design notes:* a `Cursor` walks a segment from a sparse-index position with large
//! positional reads (`READ_CHUNK_BYTES`), verifying every frame's CRC and index. Payloads are
//! sliced out of the read buffer without copying when the buffer is 16-aligned (the common
//! case with the system allocator); otherwise they are copied into an aligned allocation, so
//! callers can always rely on 16-byte payload alignment.

use std::path::Path;

use bytes::Bytes;

use super::frame::{
    decode_frame, decode_header, skip_padding, FrameError, FrameHeader, FRAME_ALIGN_BYTES,
    FRAME_HEADER_BYTES,
};
use crate::io::DiskFile;
use crate::StorageError;

/// Bytes read per positional read while scanning; bounds read amplification and memory.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Returns `payload` as 16-byte-aligned `Bytes`, copying only if it is not aligned already.
pub fn aligned(payload: Bytes) -> Bytes {
    if (payload.as_ptr() as usize).is_multiple_of(FRAME_ALIGN_BYTES) {
        return payload;
    }
    copy_aligned(&payload)
}

/// Copies `data` into a fresh 16-byte-aligned allocation.
pub fn copy_aligned(data: &[u8]) -> Bytes {
    let mut v = vec![0u8; data.len() + FRAME_ALIGN_BYTES];
    let start = v
        .as_ptr()
        .align_offset(FRAME_ALIGN_BYTES)
        .min(FRAME_ALIGN_BYTES);
    v[start..start + data.len()].copy_from_slice(data);
    // `Bytes::from(Vec)` keeps the allocation, so the slice stays aligned.
    let b = Bytes::from(v).slice(start..start + data.len());
    debug_assert!((b.as_ptr() as usize).is_multiple_of(FRAME_ALIGN_BYTES) || b.is_empty());
    b
}

/// One frame read from a file.
#[derive(Debug, Clone)]
pub(crate) struct ReadFrame {
    pub(crate) header: FrameHeader,
    pub(crate) pos: u64,
    pub(crate) payload: Bytes,
}

/// Sequential frame reader over `[pos, end)` of one segment file.
pub(crate) struct Cursor<'a> {
    file: &'a dyn DiskFile,
    path: &'a Path,
    pub(crate) pos: u64,
    end: u64,
    salt: u32,
    window: Bytes,
    window_pos: u64,
    payload_max: u32,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(
        file: &'a dyn DiskFile,
        path: &'a Path,
        pos: u64,
        end: u64,
        salt: u32,
        payload_max: u32,
    ) -> Self {
        Cursor {
            file,
            path,
            pos,
            end,
            salt,
            window: Bytes::new(),
            window_pos: pos,
            payload_max,
        }
    }

    async fn ensure(&mut self, len: usize) -> Result<(), StorageError> {
        let have_end = self.window_pos + self.window.len() as u64;
        if self.pos >= self.window_pos && self.pos + len as u64 <= have_end {
            return Ok(());
        }
        let want = (self.end - self.pos).min(len.max(READ_CHUNK_BYTES) as u64) as usize;
        if want < len {
            return Err(StorageError::corrupt(
                self.path,
                self.pos,
                format!(
                    "frame of {len} bytes extends past the end of data at {}",
                    self.end
                ),
            ));
        }
        let (n, buf) = self
            .file
            .read_at(vec![0u8; want], self.pos)
            .await
            .map_err(|e| StorageError::io("read", self.path, e))?;
        if n < len {
            return Err(StorageError::corrupt(
                self.path,
                self.pos,
                format!("short read: wanted {len} bytes, the file has {n}"),
            ));
        }
        let mut window = Bytes::from(buf);
        window.truncate(n);
        self.window = window;
        self.window_pos = self.pos;
        Ok(())
    }

    /// Moves past group padding: a frame ending before `end` is followed, within its group,
    /// by the next frame, or by zeros up to the block boundary where the next group starts.
    pub(crate) async fn skip_padding(&mut self) -> Result<(), StorageError> {
        let block = crate::io::BLOCK_BYTES as u64;
        let boundary = self.pos.next_multiple_of(block);
        if self.pos < self.end && boundary != self.pos && boundary < self.end {
            let gap = (boundary - self.pos) as usize;
            self.ensure(gap).await?;
            let at = (self.pos - self.window_pos) as usize;
            self.pos = skip_padding(self.pos, &self.window[at..at + gap]);
        }
        Ok(())
    }

    /// The next frame, or `None` at the end of data.
    pub(crate) async fn next(&mut self) -> Result<Option<ReadFrame>, StorageError> {
        self.skip_padding().await?;
        if self.pos >= self.end {
            return Ok(None);
        }
        self.ensure(FRAME_HEADER_BYTES).await?;
        let at = (self.pos - self.window_pos) as usize;
        let header = match decode_header(&self.window[at..], self.payload_max) {
            Ok(h) => h,
            Err(e) => return Err(self.bad(e)),
        };
        let len = header.frame_len() as usize;
        self.ensure(len).await?;
        let at = (self.pos - self.window_pos) as usize;
        let frame =
            decode_frame(&self.window[at..at + len], self.payload_max).map_err(|e| self.bad(e))?;
        if header.salt != self.salt {
            return Err(StorageError::corrupt(
                self.path,
                self.pos,
                format!(
                    "frame of another segment life (salt {:#010x}, expected {:#010x})",
                    header.salt, self.salt
                ),
            ));
        }
        let payload_len = frame.payload.len();
        let payload = aligned(
            self.window
                .slice(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + payload_len),
        );
        let out = ReadFrame {
            header,
            pos: self.pos,
            payload,
        };
        self.pos += len as u64;
        Ok(Some(out))
    }

    fn bad(&self, e: FrameError) -> StorageError {
        StorageError::corrupt(self.path, self.pos, format!("invalid frame: {e}"))
    }
}

/// Finds the file position of frame `target` (or the end of data if `target` is the next
/// index), scanning from a sparse entry `(idx, pos)`.
pub(crate) async fn find_frame_pos(
    file: &dyn DiskFile,
    path: &Path,
    start: (u64, u64),
    target: u64,
    end: u64,
    salt: u32,
    payload_max: u32,
) -> Result<u64, StorageError> {
    let (mut idx, pos) = start;
    let mut cur = Cursor::new(file, path, pos, end, salt, payload_max);
    while idx < target {
        match cur.next().await? {
            Some(f) if f.header.index == idx => idx += 1,
            Some(f) => {
                return Err(StorageError::corrupt(
                    path,
                    f.pos,
                    format!("expected frame index {idx}, found {}", f.header.index),
                ))
            }
            None => {
                return Err(StorageError::corrupt(
                    path,
                    cur.pos,
                    format!("frame {target} not found before the end of data"),
                ))
            }
        }
    }
    // The frame's own start, past any group padding in front of it: a truncation there then
    // leaves the blocks of earlier groups alone.
    cur.skip_padding().await?;
    Ok(cur.pos)
}
