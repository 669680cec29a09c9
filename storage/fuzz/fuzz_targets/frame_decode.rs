#![no_main]
//! `decode_frame`, `decode_index` and `decode_slot` must never panic on arbitrary bytes.

use libfuzzer_sys::fuzz_target;
use taskbroker_storage::log::frame::decode_frame;
use taskbroker_storage::log::index::decode_index;
use taskbroker_storage::meta::decode_slot;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = decode_frame(data, 1 << 20) {
        assert!(f.frame_len <= data.len());
        assert_eq!(f.payload.len(), f.header.payload_len as usize);
    }
    let _ = decode_index(data);
    let _ = decode_slot(u32::from_le_bytes(*b"TBMT"), data);
});
