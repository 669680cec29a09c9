//! Fuzzes the record-batch decoder: `BatchHeader::decode`, `validate` and `BatchView` must never
//! panic, and a batch they accept must survive re-encoding unchanged in content.
//!
//! Input: the first byte selects a mode, the rest is the batch.
//! - even: the bytes as they are (exercises framing, header and CRC checks);
//! - odd: body length and CRC are fixed up first, so the fuzzer reaches rkyv's bytecheck.

#![no_main]

use libfuzzer_sys::fuzz_target;
use taskbroker_client::batch::{
    aligned_copy, batch_crc32c, validate, BatchBuilder, BatchHeader, BatchLimits, BatchView,
    TaskRecord, BATCH_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= BATCH_HEADER_LEN {
        let body_len = u32::try_from(bytes.len() - BATCH_HEADER_LEN).unwrap_or(u32::MAX);
        bytes[8..12].copy_from_slice(&body_len.to_le_bytes());
        let mut head = [0u8; BATCH_HEADER_LEN];
        head.copy_from_slice(&bytes[..BATCH_HEADER_LEN]);
        let crc = batch_crc32c(&head, &bytes[BATCH_HEADER_LEN..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    let _ = BatchHeader::decode(&bytes);
    // A misaligned copy must be refused or validated, never read out of alignment.
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let _ = validate(&shifted[1..], &BatchLimits::default());

    let aligned = aligned_copy(&bytes);
    let _ = validate(&aligned, &BatchLimits::default());
    let Ok(view) = BatchView::new(&aligned) else {
        return;
    };
    let header = *view.header();
    assert_eq!(view.len(), header.record_count as usize);
    let records: Vec<TaskRecord> = view.records().map(|r| r.to_task_record()).collect();

    // Re-encode what was accepted: the content must come back identical.
    let mut builder = BatchBuilder::with_limits(
        header.producer_id,
        header.first_sequence,
        header.base_timestamp_ms,
        BatchLimits::HARD,
    );
    for record in &records {
        builder
            .push(record.clone())
            .expect("an accepted record fits a batch with hard limits");
    }
    let again = builder.finish();
    let view2 = BatchView::new(again.as_bytes()).expect("re-encoded batch is valid");
    let records2: Vec<TaskRecord> = view2.records().map(|r| r.to_task_record()).collect();
    assert_eq!(records, records2);
});
