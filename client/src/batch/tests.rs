//! Unit tests of the batch codec as a whole: builder → bytes → validate / view.

use super::record::{ArchivedWireBody, ArchivedWireHeader, ArchivedWireRecord};
use super::*;

const BASE_MS: u64 = 1_700_000_000_000;

fn full_record(i: u32) -> TaskRecord {
    TaskRecord {
        key: Some(format!("key-{i}").into_bytes()),
        payload: vec![i as u8; (i % 7) as usize + 1],
        headers: vec![
            Header::new("trace-id", format!("t{i}")),
            Header::new("a-much-longer-header-name", vec![0xff; 3]),
        ],
        timestamp_ms: BASE_MS + u64::from(i),
        not_before_ms: Some(BASE_MS + 60_000 + u64::from(i)),
        priority: (i % 256) as u8,
    }
}

fn build(records: &[TaskRecord]) -> EncodedBatch {
    let mut b = BatchBuilder::new(99, 1_000, BASE_MS);
    for r in records {
        b.push(r.clone()).expect("fits");
    }
    b.finish()
}

/// Checks that `records` survive encode → validate → view unchanged.
fn assert_roundtrip(records: &[TaskRecord]) {
    let mut b = BatchBuilder::new(99, 1_000, BASE_MS);
    for r in records {
        b.push(r.clone()).expect("fits");
    }
    assert_eq!(b.len(), records.len());
    let estimate = b.encoded_size_estimate();
    let batch = b.finish();
    let bytes = batch.as_bytes();
    assert!(bytes.len() <= estimate, "{} > {estimate}", bytes.len());
    assert_eq!(bytes.as_ptr().addr() % BODY_ALIGN, 0);

    let header = validate(bytes, &BatchLimits::default()).expect("valid");
    assert_eq!(&header, batch.header());
    assert_eq!(header.record_count as usize, records.len());
    assert_eq!(header.producer_id, 99);
    assert_eq!(header.first_sequence, 1_000);
    assert_eq!(header.base_timestamp_ms, BASE_MS);
    assert_eq!(header.total_len(), bytes.len());

    let view = BatchView::new(bytes).expect("valid");
    assert_eq!(view.len(), records.len());
    assert_eq!(view.as_bytes(), bytes);
    let decoded: Vec<TaskRecord> = view.records().map(|r| r.to_task_record()).collect();
    assert_eq!(decoded, records);
    for (i, r) in view.records().enumerate() {
        assert_eq!(r.index(), i);
        assert_eq!(view.record(i).map(|x| x.payload()), Some(r.payload()));
    }
    assert!(view.record(records.len()).is_none());
}

/// Rewrites the CRC after a test tampered with the header or body.
fn reseal(bytes: &mut [u8]) {
    let mut head = [0u8; BATCH_HEADER_LEN];
    head.copy_from_slice(&bytes[..BATCH_HEADER_LEN]);
    let crc = batch_crc32c(&head, &bytes[BATCH_HEADER_LEN..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn check(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let aligned = aligned_copy(bytes);
    let result = validate(&aligned, &BatchLimits::default());
    // BatchView agrees with validate whenever the limits do not matter.
    let limit_error = matches!(
        result,
        Err(BatchError::TaskTooLarge { .. }
            | BatchError::TooManyRecords { .. }
            | BatchError::TooLarge { .. })
    );
    if !limit_error {
        assert_eq!(BatchView::new(&aligned).map(|v| *v.header()), result);
    }
    result
}

#[test]
fn roundtrip_empty_batch() {
    assert_roundtrip(&[]);
    let batch = BatchBuilder::new(1, 0, 0).finish();
    let view = batch.view().expect("valid");
    assert!(view.is_empty());
    assert_eq!(view.records().count(), 0);
}

#[test]
fn roundtrip_record_with_no_fields() {
    assert_roundtrip(&[TaskRecord::new(Vec::new(), BASE_MS)]);
    assert_roundtrip(
        &[TaskRecord::default(), TaskRecord::default()].map(|mut r| {
            r.timestamp_ms = BASE_MS;
            r
        }),
    );
}

#[test]
fn roundtrip_all_fields() {
    let record = TaskRecord {
        key: Some(b"order-17".to_vec()),
        payload: b"{\"resize\": [640, 480]}".to_vec(),
        headers: vec![
            Header::new("content-type", "application/json"),
            Header::new("empty", Vec::new()),
            Header::new("", b"empty name".to_vec()),
        ],
        timestamp_ms: BASE_MS + u64::from(u32::MAX),
        not_before_ms: Some(u64::MAX),
        priority: u8::MAX,
    };
    assert_roundtrip(std::slice::from_ref(&record));
    let batch = build(&[record]);
    let view = batch.view().expect("valid");
    let r = view.record(0).expect("one record");
    assert_eq!(r.key(), Some(&b"order-17"[..]));
    assert_eq!(r.header("content-type"), Some(&b"application/json"[..]));
    assert_eq!(r.header("missing"), None);
    assert_eq!(r.headers().len(), 3);
    assert_eq!(r.not_before_ms(), Some(u64::MAX));
    assert_eq!(r.priority(), 255);
    assert_eq!(r.timestamp_ms(), BASE_MS + u64::from(u32::MAX));
}

#[test]
fn roundtrip_empty_key_differs_from_no_key() {
    let mut with_empty = TaskRecord::new(b"p".to_vec(), BASE_MS);
    with_empty.key = Some(Vec::new());
    let without = TaskRecord::new(b"p".to_vec(), BASE_MS);
    assert_roundtrip(&[with_empty, without]);
}

#[test]
fn roundtrip_many_records() {
    let records: Vec<TaskRecord> = (0..10_000).map(full_record).collect();
    assert_roundtrip(&records);
}

#[test]
fn roundtrip_large_payload() {
    assert_roundtrip(&[TaskRecord::new(vec![0xab; 1 << 20], BASE_MS)]);
}

#[test]
fn header_of_encoded_batch_matches_bytes() {
    let batch = build(&[full_record(1), full_record(2)]);
    assert_eq!(
        BatchHeader::decode(batch.as_bytes()).as_ref(),
        Ok(batch.header())
    );
    assert_eq!(batch.header().sequences(), 1_000..1_002);
    let bytes = batch.clone().into_bytes();
    assert_eq!(&bytes[..], batch.as_bytes());
}

#[test]
fn every_header_check() {
    let good = build(&[full_record(1)]).as_bytes().to_vec();
    assert!(check(&good).is_ok());

    let mut b = good.clone();
    b[0..4].copy_from_slice(b"KFKA");
    assert_eq!(check(&b), Err(BatchError::BadMagic { found: *b"KFKA" }));

    let mut b = good.clone();
    b[4] = 2;
    assert_eq!(
        check(&b),
        Err(BatchError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );

    let mut b = good.clone();
    b[5] = 1;
    assert_eq!(check(&b), Err(BatchError::UnknownFlags { flags: 1 }));

    let mut b = good.clone();
    b[7] = 1;
    assert_eq!(check(&b), Err(BatchError::ReservedNotZero { offset: 6 }));

    let mut b = good.clone();
    b[23] = 1;
    assert_eq!(check(&b), Err(BatchError::ReservedNotZero { offset: 20 }));

    let mut b = good.clone();
    b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        check(&b),
        Err(BatchError::SequenceOverflow { .. })
    ));

    // A huge announced body is refused before waiting for it.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        check(&b),
        Err(BatchError::TooLarge {
            len: BATCH_HEADER_LEN + u32::MAX as usize,
            max: 16 << 20
        })
    );
    assert_eq!(
        BatchView::new(&aligned_copy(&b)).map(|v| *v.header()),
        Err(BatchError::TooLarge {
            len: BATCH_HEADER_LEN + u32::MAX as usize,
            max: BATCH_BYTES_MAX
        })
    );

    let mut b = good.clone();
    b.push(0);
    assert_eq!(
        check(&b),
        Err(BatchError::TrailingBytes {
            expected: good.len(),
            got: good.len() + 1
        })
    );

    let mut b = good.clone();
    b[12] ^= 1;
    assert!(matches!(check(&b), Err(BatchError::CrcMismatch { .. })));

    // Header fields are covered by the CRC too.
    let mut b = good.clone();
    b[32] ^= 1; // producer_id
    assert!(matches!(check(&b), Err(BatchError::CrcMismatch { .. })));
}

#[test]
fn flipped_payload_byte_is_a_crc_mismatch() {
    let batch = build(&[TaskRecord::new(b"hello, payload".to_vec(), BASE_MS)]);
    let good = batch.as_bytes();
    let at = BATCH_HEADER_LEN
        + good[BATCH_HEADER_LEN..]
            .windows(5)
            .position(|w| w == b"hello")
            .expect("payload is stored verbatim");
    let mut b = good.to_vec();
    b[at] ^= 0x20;
    assert_eq!(
        check(&b),
        Err(BatchError::CrcMismatch {
            expected: batch.header().crc32c,
            actual: batch_crc32c(
                b[..BATCH_HEADER_LEN].try_into().expect("48 bytes"),
                &b[BATCH_HEADER_LEN..]
            ),
        })
    );
}

#[test]
fn truncated_at_every_length_is_a_typed_error() {
    let good = build(&[full_record(1), full_record(2)]).as_bytes().to_vec();
    for len in 0..good.len() {
        let needed = if len < BATCH_HEADER_LEN {
            BATCH_HEADER_LEN
        } else {
            good.len()
        };
        assert_eq!(
            check(&good[..len]),
            Err(BatchError::Truncated { needed, got: len }),
            "len {len}"
        );
    }
}

#[test]
fn body_that_fails_bytecheck_is_malformed() {
    let good = build(&[full_record(1)]).as_bytes().to_vec();
    // Garbage body with a correct CRC: only bytecheck can catch it.
    let mut b = good.clone();
    for byte in &mut b[BATCH_HEADER_LEN..] {
        *byte = 0xa5;
    }
    reseal(&mut b);
    assert!(matches!(check(&b), Err(BatchError::Malformed(_))));

    // A body too short for the root.
    let mut b = good[..BATCH_HEADER_LEN].to_vec();
    b[8..12].copy_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    reseal(&mut b);
    assert!(matches!(check(&b), Err(BatchError::Malformed(_))));
}

#[test]
fn header_count_must_match_body() {
    let mut b = build(&[full_record(1), full_record(2)]).as_bytes().to_vec();
    b[16..20].copy_from_slice(&3u32.to_le_bytes());
    reseal(&mut b);
    assert_eq!(
        check(&b),
        Err(BatchError::RecordCountMismatch { header: 3, body: 2 })
    );
}

#[test]
fn limits_are_enforced_on_validate() {
    let batch = build(&[full_record(1), full_record(2)]);
    let bytes = batch.as_bytes();
    let len = bytes.len();
    let tight = BatchLimits {
        batch_bytes_max: len - 1,
        ..BatchLimits::default()
    };
    assert_eq!(
        validate(bytes, &tight),
        Err(BatchError::TooLarge { len, max: len - 1 })
    );
    let huge = BatchLimits {
        batch_bytes_max: usize::MAX,
        ..BatchLimits::default()
    };
    assert_eq!(huge.effective_batch_bytes_max(), BATCH_BYTES_MAX);

    let few = BatchLimits {
        records_max: 1,
        ..BatchLimits::default()
    };
    assert_eq!(
        validate(bytes, &few),
        Err(BatchError::TooManyRecords { count: 2, max: 1 })
    );

    let second_len = full_record(2).data_len();
    let small_tasks = BatchLimits {
        task_bytes_max: second_len - 1,
        ..BatchLimits::default()
    };
    assert!(full_record(1).data_len() < second_len);
    assert_eq!(
        validate(bytes, &small_tasks),
        Err(BatchError::TaskTooLarge {
            index: 1,
            len: second_len,
            max: second_len - 1
        })
    );
}

#[test]
fn misaligned_input_is_refused_then_recovered() {
    let batch = build(&[full_record(1)]);
    let mut shifted = AlignedBuf::default();
    shifted.0.push(0);
    shifted.0.extend_from_slice(batch.as_bytes());
    let misaligned = &shifted.0[1..];
    assert_ne!(misaligned.as_ptr().addr() % BODY_ALIGN, 0);
    assert_eq!(
        validate(misaligned, &BatchLimits::default()),
        Err(BatchError::Misaligned)
    );
    assert_eq!(
        BatchView::new(misaligned).map(|v| *v.header()),
        Err(BatchError::Misaligned)
    );
    let copy = aligned_copy(misaligned);
    assert_eq!(copy.as_ptr().addr() % BODY_ALIGN, 0);
    assert_eq!(
        validate(&copy, &BatchLimits::default()).as_ref(),
        Ok(batch.header())
    );
}

/// A 16-byte aligned growable buffer for tests that need to control the offset.
#[derive(Default)]
struct AlignedBuf(rkyv::util::AlignedVec<16>);

#[test]
fn builder_enforces_limits() {
    let limits = BatchLimits {
        batch_bytes_max: 4096,
        task_bytes_max: 100,
        records_max: 3,
    };
    let mut b = BatchBuilder::with_limits(1, 0, BASE_MS, limits);

    let big = TaskRecord::new(vec![0; 101], BASE_MS);
    assert_eq!(
        b.push(big),
        Err(BatchError::TaskTooLarge {
            index: 0,
            len: 101,
            max: 100
        })
    );
    let early = TaskRecord::new(Vec::new(), BASE_MS - 1);
    assert_eq!(
        b.push(early),
        Err(BatchError::TimestampOutOfRange {
            timestamp_ms: BASE_MS - 1,
            base_timestamp_ms: BASE_MS
        })
    );
    let late = TaskRecord::new(Vec::new(), BASE_MS + u64::from(u32::MAX) + 1);
    assert!(matches!(
        b.push(late),
        Err(BatchError::TimestampOutOfRange { .. })
    ));
    assert!(b.is_empty());

    for _ in 0..3 {
        b.push(TaskRecord::new(vec![1; 10], BASE_MS)).expect("fits");
    }
    let fourth = TaskRecord::new(vec![1; 10], BASE_MS);
    assert_eq!(
        b.check(&fourth),
        Err(BatchError::TooManyRecords { count: 4, max: 3 })
    );
    assert_eq!(
        b.push(fourth),
        Err(BatchError::TooManyRecords { count: 4, max: 3 })
    );
    assert_eq!(b.len(), 3);
    let batch = b.finish();
    assert_eq!(
        validate(batch.as_bytes(), &limits).as_ref(),
        Ok(batch.header())
    );
}

#[test]
fn builder_stops_before_batch_bytes_max() {
    let limits = BatchLimits {
        batch_bytes_max: 64 << 10,
        ..BatchLimits::default()
    };
    let mut b = BatchBuilder::with_limits(1, 0, BASE_MS, limits);
    let err = loop {
        if let Err(e) = b.push(full_record(b.len() as u32)) {
            break e;
        }
    };
    assert!(matches!(err, BatchError::TooLarge { max, .. } if max == 64 << 10));
    assert!(b.encoded_size_estimate() <= 64 << 10);
    let batch = b.finish();
    assert!(batch.as_bytes().len() <= 64 << 10);
    assert!(validate(batch.as_bytes(), &limits).is_ok());
}

#[test]
fn builder_refuses_sequence_overflow() {
    let mut b = BatchBuilder::new(1, u64::MAX - 1, BASE_MS);
    b.push(TaskRecord::new(Vec::new(), BASE_MS)).expect("fits");
    assert_eq!(
        b.push(TaskRecord::new(Vec::new(), BASE_MS)),
        Err(BatchError::SequenceOverflow {
            first_sequence: u64::MAX - 1,
            record_count: 2
        })
    );
    let batch = b.finish();
    assert_eq!(batch.header().sequences(), u64::MAX - 1..u64::MAX);
    assert!(batch.view().is_ok());
}

#[test]
fn errors_display_their_fields() {
    let e = BatchError::TaskTooLarge {
        index: 3,
        len: 2_000_000,
        max: 1_048_576,
    };
    assert_eq!(
        e.to_string(),
        "record 3 is 2000000 bytes, over the per-task limit of 1048576 bytes"
    );
    assert!(BatchError::BadMagic { found: *b"XXXX" }
        .to_string()
        .contains("58"));
}

/// The archived layout is part of the wire format; rkyv's format features (endianness, pointer
/// width, alignment) are unified across the dependency graph, so a change anywhere shows here.
#[test]
fn archived_layout_is_pinned() {
    use std::mem::{align_of, size_of};
    assert_eq!(
        (
            size_of::<ArchivedWireBody>(),
            align_of::<ArchivedWireBody>()
        ),
        (8, 4)
    );
    assert_eq!(
        (
            size_of::<ArchivedWireHeader>(),
            align_of::<ArchivedWireHeader>()
        ),
        (16, 4)
    );
    assert_eq!(
        (
            size_of::<ArchivedWireRecord>(),
            align_of::<ArchivedWireRecord>()
        ),
        (56, 8)
    );
}

const GOLDEN_V1: &[u8] = include_bytes!("testdata/golden_v1.bin");

fn golden_batch() -> EncodedBatch {
    let mut b = BatchBuilder::new(0x0102_0304_0506_0708, 77, 1_700_000_000_000);
    b.push(TaskRecord {
        key: Some(b"k1".to_vec()),
        payload: b"first payload".to_vec(),
        headers: vec![
            Header::new("trace", "abc"),
            Header::new("long-header-name", "v"),
        ],
        timestamp_ms: 1_700_000_000_005,
        not_before_ms: Some(1_700_000_060_000),
        priority: 9,
    })
    .expect("fits");
    b.push(TaskRecord::new(b"second".to_vec(), 1_700_000_000_000))
        .expect("fits");
    b.finish()
}

/// Bytes written by format version 1 must stay readable, and the encoder must keep writing
/// them. Regenerate only for a new format version:
/// `TASKBROKER_BLESS=1 cargo test -p taskbroker-client golden`.
#[test]
fn golden_v1_bytes_are_stable() {
    let batch = golden_batch();
    if std::env::var_os("TASKBROKER_BLESS").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/batch/testdata/golden_v1.bin"
        );
        std::fs::write(path, batch.as_bytes()).expect("write golden file");
    }
    assert_eq!(batch.as_bytes(), GOLDEN_V1, "the encoder's output changed");
    let stored = aligned_copy(GOLDEN_V1);
    let view = BatchView::new(&stored).expect("golden batch is valid");
    assert_eq!(view.header().producer_id, 0x0102_0304_0506_0708);
    assert_eq!(view.header().sequences(), 77..79);
    let records: Vec<TaskRecord> = view.records().map(|r| r.to_task_record()).collect();
    assert_eq!(records[0].payload, b"first payload");
    assert_eq!(records[0].not_before_ms, Some(1_700_000_060_000));
    assert_eq!(records[1].timestamp_ms, 1_700_000_000_000);
}
