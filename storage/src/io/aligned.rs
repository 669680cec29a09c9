//! [`AlignedBuf`]: a growable byte buffer whose start is aligned to [`BLOCK_BYTES`], for
//! `O_DIRECT` writes (the kernel DMAs straight from it, so its address, length and file
//! position must be multiples of the device's logical block size; 4096 covers 512- and
//! 4096-byte devices).
//!
//! *Design notes:* a `Vec<u8>` cannot carry an over-aligned allocation (it would free it with
//! the wrong layout), so this is a small owned type: pointer, length, capacity, allocated with
//! `Layout::from_size_align(cap, BLOCK_BYTES)`. It is the only `unsafe` of the buffer path;
//! the invariants are stated on the struct and every block says why it holds.
#![allow(unsafe_code)] // Aligned allocation; see the SAFETY comments.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Alignment of direct-I/O buffers, positions and lengths (a filesystem block).
pub const BLOCK_BYTES: usize = 4096;

/// A byte buffer whose first byte is [`BLOCK_BYTES`]-aligned.
///
/// ```
/// use taskbroker_storage::io::{AlignedBuf, BLOCK_BYTES};
/// let mut b = AlignedBuf::new();
/// b.extend_from_slice(b"hello");
/// b.pad_zeros_to(BLOCK_BYTES);
/// assert_eq!((b.len(), &b[..5], b[5]), (4096, &b"hello"[..], 0));
/// assert_eq!(b.as_ptr() as usize % BLOCK_BYTES, 0);
/// ```
pub struct AlignedBuf {
    /// Invariant: if `cap > 0`, allocated with `Layout::from_size_align(cap, BLOCK_BYTES)`
    /// and all `cap` bytes initialised (zeroed at allocation); else dangling.
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like `Vec<u8>`); no interior
// mutability, so sharing `&AlignedBuf` across threads only allows reads.
unsafe impl Send for AlignedBuf {}
// SAFETY: see `Send`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer (no allocation).
    pub fn new() -> Self {
        AlignedBuf {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// An empty buffer with room for at least `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        let mut b = AlignedBuf::new();
        b.reserve(cap);
        b
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Ensures room for `additional` more bytes (capacity a multiple of [`BLOCK_BYTES`]).
    pub fn reserve(&mut self, additional: usize) {
        let need = self.len.checked_add(additional).expect("capacity overflow");
        if need <= self.cap {
            return;
        }
        let new_cap = need
            .max(self.cap.saturating_mul(2))
            .next_multiple_of(BLOCK_BYTES);
        let layout = Layout::from_size_align(new_cap, BLOCK_BYTES).expect("buffer too large");
        // SAFETY: `layout` has a non-zero size (`new_cap >= need > cap >= 0`, rounded up to a
        // block); a null result is handled.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(new) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        if self.cap > 0 {
            // SAFETY: the old allocation holds `cap >= len` initialised bytes, the new one
            // `new_cap > len`; they are distinct allocations, so they do not overlap. The old
            // one is then freed with the layout it was allocated with (struct invariant).
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.as_ptr(), self.len);
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, BLOCK_BYTES),
                );
            }
        }
        self.ptr = new;
        self.cap = new_cap;
    }

    /// Appends `data`.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        // SAFETY: `reserve` made `len + data.len() <= cap`; `data` cannot alias our
        // allocation mutably (we hold `&mut self`).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            );
        }
        self.len += data.len();
    }

    /// Appends zeros up to length `len` (no-op if already that long).
    pub fn pad_zeros_to(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        self.reserve(len - self.len);
        // SAFETY: `reserve` made `len <= cap`; the bytes are ours and initialised.
        unsafe {
            std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, len - self.len);
        }
        self.len = len;
    }

    /// The bytes as a slice.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap >= len` initialised bytes (or dangling with
        // `len == 0`, which is allowed for an empty slice).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Sets the length to `len <= capacity()` (the bytes keep whatever they held: they are
    /// always initialised). For a read into the spare capacity.
    pub fn set_len_within_capacity(&mut self, len: usize) {
        assert!(len <= self.cap, "length beyond capacity");
        self.len = len;
    }

    /// Raw pointer to the first byte (block-aligned once allocated).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw mutable pointer to the first byte.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::new()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated with exactly this layout (struct invariant), freed once.
            unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, BLOCK_BYTES),
                )
            };
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_aligned_and_keeps_bytes() {
        let mut b = AlignedBuf::with_capacity(10);
        assert_eq!(b.capacity(), BLOCK_BYTES);
        for i in 0..10_000u32 {
            b.extend_from_slice(&i.to_le_bytes());
            assert_eq!(b.as_ptr() as usize % BLOCK_BYTES, 0);
        }
        assert_eq!(b.len(), 40_000);
        for i in 0..10_000usize {
            assert_eq!(&b[i * 4..i * 4 + 4], &(i as u32).to_le_bytes());
        }
        b.pad_zeros_to(40_000usize.next_multiple_of(BLOCK_BYTES));
        assert_eq!(b.len() % BLOCK_BYTES, 0);
        assert!(b[40_000..].iter().all(|x| *x == 0));
        b.clear();
        assert!(b.is_empty());
        assert!(b.capacity() >= 40_960);
        let e = AlignedBuf::new();
        assert_eq!(&e[..], &[] as &[u8]);
    }
}
