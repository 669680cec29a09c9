//! Property tests: roundtrips of random batches, and decoding of hostile bytes never panics.

use proptest::prelude::*;

use super::*;

const BASE_MS: u64 = 1_600_000_000_000;

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn arb_record() -> impl Strategy<Value = TaskRecord> {
    (
        prop::option::of(arb_bytes(16)),
        arb_bytes(64),
        prop::collection::vec(("[a-z\u{e9}-]{0,12}", arb_bytes(12)), 0..4),
        any::<u32>(),
        prop::option::of(any::<u64>()),
        any::<u8>(),
    )
        .prop_map(
            |(key, payload, headers, delta, not_before_ms, priority)| TaskRecord {
                key,
                payload,
                headers: headers
                    .into_iter()
                    .map(|(n, v)| Header::new(n, v))
                    .collect(),
                timestamp_ms: BASE_MS + u64::from(delta),
                not_before_ms,
                priority,
            },
        )
}

fn arb_batch() -> impl Strategy<Value = (Vec<TaskRecord>, u64, u64)> {
    (
        prop::collection::vec(arb_record(), 0..8),
        any::<u64>(),
        0..u64::MAX / 2,
    )
}

fn encode(records: &[TaskRecord], producer_id: u64, first_sequence: u64) -> EncodedBatch {
    let mut b = BatchBuilder::new(producer_id, first_sequence, BASE_MS);
    for r in records {
        b.push(r.clone()).expect("small records fit");
    }
    b.finish()
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, value: u8 },
    Truncate { len: usize },
    Extend { tail: Vec<u8> },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        arb_bytes(64).prop_map(|tail| Mutation::Extend { tail }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::FlipBit { at, bit } if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
        }
        Mutation::SetByte { at, value } if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] = *value;
        }
        Mutation::Truncate { len } => bytes.truncate(len % (bytes.len() + 1)),
        Mutation::Extend { tail } => bytes.extend_from_slice(tail),
        _ => {}
    }
}

/// Rewrites the CRC and (optionally) the body length so a mutation reaches the bytecheck stage.
fn reseal(bytes: &mut [u8], fix_len: bool) {
    if bytes.len() < BATCH_HEADER_LEN {
        return;
    }
    if fix_len {
        let body_len = u32::try_from(bytes.len() - BATCH_HEADER_LEN).unwrap_or(u32::MAX);
        bytes[8..12].copy_from_slice(&body_len.to_le_bytes());
    }
    let mut head = [0u8; BATCH_HEADER_LEN];
    head.copy_from_slice(&bytes[..BATCH_HEADER_LEN]);
    let crc = batch_crc32c(&head, &bytes[BATCH_HEADER_LEN..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes `bytes` every way a caller can, at an aligned and a misaligned address, and reads
/// every field of every record when they validate. Must never panic.
fn decode_everything(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let _ = BatchHeader::decode(bytes);
    let aligned = aligned_copy(bytes);
    let result = validate(&aligned, &BatchLimits::default());
    if let Ok(view) = BatchView::new(&aligned) {
        assert_eq!(view.records().len(), view.header().record_count as usize);
        for r in view.records() {
            let _ = (r.key(), r.payload(), r.not_before_ms(), r.priority());
            let _ = (r.timestamp_ms(), r.headers().count(), r.to_task_record());
        }
    }
    let mut shifted = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len() + 1);
    shifted.push(0);
    shifted.extend_from_slice(bytes);
    let misaligned = validate(&shifted[1..], &BatchLimits::default());
    if bytes.len() >= BATCH_HEADER_LEN && !matches!(result, Err(BatchError::Misaligned)) {
        // Misalignment is only reported once the cheap checks and the CRC pass.
        match &result {
            Ok(_) => assert_eq!(misaligned, Err(BatchError::Misaligned)),
            Err(
                BatchError::Malformed(_)
                | BatchError::RecordCountMismatch { .. }
                | BatchError::TaskTooLarge { .. },
            ) => {
                assert_eq!(misaligned, Err(BatchError::Misaligned));
            }
            Err(e) => assert_eq!(misaligned.as_ref(), Err(e)),
        }
    }
    result
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_batches_roundtrip((records, producer_id, first_sequence) in arb_batch()) {
        let mut b = BatchBuilder::new(producer_id, first_sequence, BASE_MS);
        for r in &records {
            b.push(r.clone()).expect("small records fit");
        }
        let estimate = b.encoded_size_estimate();
        let batch = b.finish();
        prop_assert!(batch.as_bytes().len() <= estimate);
        let header = validate(batch.as_bytes(), &BatchLimits::default()).expect("valid");
        prop_assert_eq!(header.producer_id, producer_id);
        prop_assert_eq!(header.first_sequence, first_sequence);
        let view = BatchView::new(batch.as_bytes()).expect("valid");
        let decoded: Vec<TaskRecord> = view.records().map(|r| r.to_task_record()).collect();
        prop_assert_eq!(decoded, records);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in arb_bytes(512)) {
        let _ = decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        body in arb_bytes(512),
        record_count in 0u32..8,
    ) {
        // A correct header and CRC in front of random bytes: exercises the bytecheck stage.
        let mut bytes = encode(&[], 1, 0).as_bytes()[..BATCH_HEADER_LEN].to_vec();
        bytes[16..20].copy_from_slice(&record_count.to_le_bytes());
        bytes.extend_from_slice(&body);
        reseal(&mut bytes, true);
        let result = decode_everything(&bytes);
        let crc_failed = matches!(result, Err(BatchError::CrcMismatch { .. }));
        prop_assert!(!crc_failed);
    }

    #[test]
    fn mutated_batches_never_panic(
        (records, producer_id, first_sequence) in arb_batch(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        reseal_after in any::<bool>(),
    ) {
        let good = encode(&records, producer_id, first_sequence).as_bytes().to_vec();
        let mut bytes = good.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if reseal_after {
            reseal(&mut bytes, true);
        }
        let result = decode_everything(&bytes);
        if !reseal_after && bytes != good {
            // Changed bytes under the old CRC are refused (a CRC32C collision is 2^-32 likely).
            prop_assert!(result.is_err(), "mutated batch accepted: {:?}", result);
        }
    }
}
