//! The public contract of `FileLog`: round trips, torn tails, corruption, retention, limits.

use std::fs;
use std::path::{Path, PathBuf};

use snapflow::{Error, FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog, SyncPolicy};

const P0: PartitionId = PartitionId(0);

/// The bytes of one index entry: offset - base, position, and their CRC32C (the format the
/// module documentation of `FileLog` gives).
const INDEX_ENTRY: usize = 12;

fn index_entry(rel: u32, pos: u32) -> Vec<u8> {
    let mut b = rel.to_le_bytes().to_vec();
    b.extend_from_slice(&pos.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn opts(partitions: u32) -> FileLogOptions {
    FileLogOptions {
        partitions,
        segment_bytes: 2048,
        index_interval_bytes: 256,
        sync: SyncPolicy::EveryAppend,
        ..FileLogOptions::default()
    }
}

fn payload(p: u32, i: u64) -> Vec<u8> {
    let len = (i * 37 % 150) as usize;
    (0..len)
        .map(|j| (i as usize + j + p as usize) as u8)
        .collect()
}

fn read_all(log: &FileLog, p: PartitionId) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = log.start_offset(p).expect("start");
    loop {
        let batch = log.read(p, at, 7).expect("read");
        if batch.is_empty() {
            return out;
        }
        let mut expect = at;
        for (o, bytes) in batch.iter() {
            assert_eq!(o, expect, "offsets are consecutive");
            expect = expect.next();
            out.push(bytes.to_vec());
        }
        at = batch.next_offset();
    }
}

fn segment_files(dir: &Path, p: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(format!("p-{p:05}")))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
fn log_round_trip_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 300u64;
    {
        let log = FileLog::open(dir.path(), opts(3)).expect("open");
        for i in 0..n {
            let p = (i % 3) as u32;
            let off = log.append(PartitionId(p), &payload(p, i)).expect("append");
            assert_eq!(off.0, i / 3);
        }
    }
    assert!(
        segment_files(dir.path(), 0).len() > 1,
        "the test must roll segments"
    );
    let log = FileLog::open(dir.path(), opts(3)).expect("reopen");
    for p in 0..3u32 {
        let expected: Vec<Vec<u8>> = (0..n)
            .filter(|i| i % 3 == u64::from(p))
            .map(|i| payload(p, i))
            .collect();
        assert_eq!(read_all(&log, PartitionId(p)), expected, "partition {p}");
        assert_eq!(
            log.end_offset(PartitionId(p)).expect("end").0,
            expected.len() as u64
        );
    }
    // Reading from any offset gives the same bytes, as often as asked.
    for from in [0u64, 1, 17, 55, 99] {
        let a = log.read(P0, LogOffset(from), 3).expect("read");
        let b = log.read(P0, LogOffset(from), 3).expect("read again");
        assert_eq!(a, b);
        assert_eq!(a.base_offset().0, from);
        assert_eq!(a.get(0).expect("record"), &payload(0, from * 3)[..]);
    }
    let next = log.append(P0, b"after reopen").expect("append");
    assert_eq!(next.0, 100);
}

#[test]
fn torn_write_at_every_cut_point_of_the_last_record_keeps_earlier_records() {
    let src = tempfile::tempdir().expect("tempdir");
    let records: Vec<Vec<u8>> = (0..20u64).map(|i| payload(0, i + 3)).collect();
    let before_last;
    // The active segment's index file as it was before the last append: a crash while the last
    // record is being written comes before the sync that would add its mark.
    let index_before_last;
    // Several segments, with the last record alone at the start of the active one.
    let o = FileLogOptions {
        segment_bytes: 512,
        ..opts(1)
    };
    {
        let log = FileLog::open(src.path(), o.clone()).expect("open");
        for r in &records[..19] {
            log.append(P0, r).expect("append");
        }
        let segs = segment_files(src.path(), 0);
        let active = segs.last().expect("segment");
        let len_before = fs::metadata(active).expect("stat").len();
        let index_before = fs::read(active.with_extension("idx")).expect("read index");
        log.append(P0, &records[19]).expect("append last");
        // The last record either extended the active segment or started a new one (whose
        // index the roll created empty).
        let (len, index) = if segment_files(src.path(), 0).len() == segs.len() {
            (len_before, index_before)
        } else {
            (16, Vec::new())
        };
        before_last = len;
        index_before_last = index;
    }
    assert!(
        segment_files(src.path(), 0).len() > 2,
        "the test must span several segments"
    );
    let seg = segment_files(src.path(), 0)
        .last()
        .expect("segment")
        .clone();
    let full = fs::metadata(&seg).expect("stat").len();
    assert!(
        full > before_last + 16,
        "the last record must be in the active segment"
    );
    for cut in before_last..full {
        let work = tempfile::tempdir().expect("tempdir");
        copy_dir(src.path(), work.path());
        let seg_copy = work
            .path()
            .join(seg.strip_prefix(src.path()).expect("relative"));
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&seg_copy)
            .expect("open copy");
        f.set_len(cut).expect("truncate");
        drop(f);
        fs::write(seg_copy.with_extension("idx"), &index_before_last).expect("write index");
        let log =
            FileLog::open(work.path(), o.clone()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(log.end_offset(P0).expect("end").0, 19, "cut {cut}");
        assert_eq!(read_all(&log, P0), records[..19].to_vec(), "cut {cut}");
        assert_eq!(log.append(P0, b"next").expect("append").0, 19, "cut {cut}");
        drop(log);
        let log = FileLog::open(work.path(), o.clone()).expect("reopen");
        let mut expected = records[..19].to_vec();
        expected.push(b"next".to_vec());
        assert_eq!(read_all(&log, P0), expected, "cut {cut} after reopen");
    }
}

/// Writes 12 records of 40 bytes into one segment and returns the byte position of each frame.
/// With `SyncPolicy::Os` the log is left without a sync, as by a crash: no sync mark covers any
/// record.
fn write_twelve(dir: &Path, index_interval_bytes: u32, sync: SyncPolicy) -> (PathBuf, Vec<u64>) {
    let o = FileLogOptions {
        index_interval_bytes,
        segment_bytes: 1 << 20,
        sync,
        ..opts(1)
    };
    let log = FileLog::open(dir, o).expect("open");
    for i in 0..12u8 {
        log.append(P0, &[i; 40]).expect("append");
    }
    if sync == SyncPolicy::Os {
        // Skip the final sync of drop.
        std::mem::forget(log);
    } else {
        drop(log);
    }
    let seg = segment_files(dir, 0)[0].clone();
    let positions = (0..12u64).map(|i| 16 + i * 56).collect();
    (seg, positions)
}

/// Options matching `write_twelve`'s log.
fn twelve_opts(index_interval_bytes: u32, sync: SyncPolicy) -> FileLogOptions {
    FileLogOptions {
        index_interval_bytes,
        segment_bytes: 1 << 20,
        sync,
        ..opts(1)
    }
}

/// Copies `src` into a new directory with `f` applied to the bytes of the file at `file` (a path
/// under `src`).
fn copy_with(src: &Path, file: &Path, f: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(src, work.path());
    let target = work.path().join(file.strip_prefix(src).expect("relative"));
    let mut bytes = fs::read(&target).expect("read");
    f(&mut bytes);
    fs::write(&target, &bytes).expect("write");
    work
}

#[test]
fn a_flipped_byte_in_a_synced_middle_record_is_reported_on_read_with_its_offset() {
    // A sync per append: a sync mark covers every record, so open does not scan them. The index
    // interval is larger than the data: only the marks are entries.
    let src = tempfile::tempdir().expect("tempdir");
    let o = twelve_opts(1 << 20, SyncPolicy::EveryAppend);
    let (seg, pos) = write_twelve(src.path(), 1 << 20, SyncPolicy::EveryAppend);
    for byte in 0..56u64 {
        let work = copy_with(src.path(), &seg, |b| b[(pos[5] + byte) as usize] ^= 0x40);
        let log = FileLog::open(work.path(), o.clone())
            .unwrap_or_else(|e| panic!("flip at byte {byte} of record 5 failed open: {e}"));
        assert_eq!(
            log.end_offset(P0).expect("end"),
            LogOffset(12),
            "byte {byte}"
        );
        for from in [0u64, 3, 5] {
            match log.read(P0, LogOffset(from), 100) {
                Err(Error::LogCorrupt {
                    partition, offset, ..
                }) => {
                    assert_eq!(
                        (partition, offset),
                        (P0, LogOffset(5)),
                        "byte {byte}, read from {from}"
                    );
                }
                other => panic!("flip at byte {byte}, read from {from} gave {other:?}"),
            }
        }
        let before = log.read(P0, LogOffset(0), 5).expect("records before it");
        assert_eq!(before.len(), 5, "byte {byte}");
        let after = log.read(P0, LogOffset(6), 100).expect("records after it");
        assert_eq!(after.len(), 6, "byte {byte}");
    }
}

#[test]
fn a_bad_record_in_the_unsynced_tail_is_truncated_with_the_records_after_it() {
    // No sync: no mark covers any record, so open scans them all, and the first bad frame
    // starts a torn tail.
    let src = tempfile::tempdir().expect("tempdir");
    let o = twelve_opts(1 << 20, SyncPolicy::Os);
    let (seg, pos) = write_twelve(src.path(), 1 << 20, SyncPolicy::Os);
    let first_five: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
    for byte in 0..56u64 {
        let work = copy_with(src.path(), &seg, |b| b[(pos[5] + byte) as usize] ^= 0x40);
        let log = FileLog::open(work.path(), o.clone())
            .unwrap_or_else(|e| panic!("flip at byte {byte} of record 5 failed open: {e}"));
        assert_eq!(
            log.end_offset(P0).expect("end"),
            LogOffset(5),
            "byte {byte}"
        );
        assert_eq!(read_all(&log, P0), first_five, "byte {byte}");
        let seg_copy = work.path().join(seg.strip_prefix(src.path()).expect("rel"));
        assert_eq!(
            fs::metadata(&seg_copy).expect("stat").len(),
            pos[5],
            "byte {byte}"
        );
        assert_eq!(
            log.append(P0, b"next").expect("append"),
            LogOffset(5),
            "byte {byte}"
        );
    }
}

#[test]
fn a_segment_shorter_than_its_synced_data_fails_open_with_the_first_lost_offset() {
    // The index names data up to the end of record 11 as fsynced; cut inside record 8, or at
    // its start, the segment lost synced records: corruption, not a torn tail.
    let src = tempfile::tempdir().expect("tempdir");
    let (seg, pos) = write_twelve(src.path(), 1 << 20, SyncPolicy::EveryAppend);
    for cut in [pos[8], pos[8] + 10] {
        let work = copy_with(src.path(), &seg, |b| b.truncate(cut as usize));
        match FileLog::open(work.path(), twelve_opts(1 << 20, SyncPolicy::EveryAppend)) {
            Err(Error::LogCorrupt {
                partition, offset, ..
            }) => assert_eq!((partition, offset), (P0, LogOffset(8)), "cut {cut}"),
            other => panic!("cut {cut} gave {other:?}"),
        }
    }
}

#[test]
fn a_corrupt_index_entry_falls_back_to_scanning_the_segment() {
    // Sync marks after records 2, 5, 8 and 11: index entries for offsets 3, 6, 9 and 12.
    let src = tempfile::tempdir().expect("tempdir");
    let o = twelve_opts(1 << 20, SyncPolicy::Os);
    {
        let log = FileLog::open(src.path(), o.clone()).expect("open");
        for i in 0..12u8 {
            log.append(P0, &[i; 40]).expect("append");
            if i % 3 == 2 {
                log.sync().expect("sync");
            }
        }
    }
    let seg = segment_files(src.path(), 0)[0].clone();
    let idx = seg.with_extension("idx");
    let entries = fs::read(&idx).expect("read index");
    assert_eq!(entries.len(), 4 * INDEX_ENTRY, "one entry per sync");
    assert_eq!(
        &entries[INDEX_ENTRY..INDEX_ENTRY + 4],
        &6u32.to_le_bytes(),
        "entry 1 is for offset 6"
    );
    let pos = |i: u64| 16 + i * 56;
    // Entry 1 (offset 6) moved onto the frame of offset 7, or into the middle of its frame,
    // with a checksum that matches (as a bug writing the index would leave it): both still
    // between their neighbours, so the index loads them, and reads check them against the
    // frames.
    for wrong in [pos(7), pos(6) + 1] {
        let work = copy_with(src.path(), &idx, |b| {
            b[INDEX_ENTRY..2 * INDEX_ENTRY].copy_from_slice(&index_entry(6, wrong as u32))
        });
        let log = FileLog::open(work.path(), o.clone()).expect("open");
        for from in 0..12u64 {
            let batch = log
                .read(P0, LogOffset(from), 100)
                .unwrap_or_else(|e| panic!("entry at {wrong}, read from {from}: {e}"));
            let got: Vec<Vec<u8>> = batch.iter().map(|(_, b)| b.to_vec()).collect();
            let want: Vec<Vec<u8>> = (from..12).map(|i| vec![i as u8; 40]).collect();
            assert_eq!(got, want, "entry at {wrong}, read from {from}");
        }
    }
}

#[test]
fn lowering_max_record_bytes_never_truncates_existing_records() {
    fn with_max(max_record_bytes: u32) -> FileLogOptions {
        FileLogOptions {
            max_record_bytes,
            segment_bytes: 1 << 20,
            sync: SyncPolicy::Os,
            ..opts(1)
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let big = vec![7u8; 500];
    // Created with a low limit, then opened with a higher one: records under the higher limit,
    // one synced and one in the unsynced tail (no final sync, as after a crash).
    drop(FileLog::open(dir.path(), with_max(100)).expect("create"));
    let log = FileLog::open(dir.path(), with_max(1000)).expect("open with a higher limit");
    log.append(P0, &big).expect("append");
    log.sync().expect("sync");
    log.append(P0, &big).expect("append into the tail");
    std::mem::forget(log);
    // Reopened with the low limit: recovery and reads still accept them.
    let log = FileLog::open(dir.path(), with_max(100)).expect("reopen with a lower limit");
    assert_eq!(log.end_offset(P0).expect("end"), LogOffset(2));
    assert_eq!(read_all(&log, P0), vec![big.clone(), big.clone()]);
    // Appends follow the limit asked for.
    assert!(matches!(
        log.append(P0, &big),
        Err(Error::RecordTooLarge {
            len: 500,
            max: 100,
            ..
        })
    ));
    assert_eq!(log.append(P0, &[1u8; 100]).expect("append"), LogOffset(2));
    drop(log);
    let log = FileLog::open(dir.path(), with_max(50)).expect("reopen with a lower limit still");
    assert_eq!(log.end_offset(P0).expect("end"), LogOffset(3));
    assert_eq!(
        read_all(&log, P0),
        vec![big.clone(), big.clone(), vec![1u8; 100]]
    );
}

#[test]
fn a_zeroed_segment_header_from_a_torn_creation_is_recreated() {
    let src = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(src.path(), opts(1)).expect("open");
        for i in 0..5u64 {
            log.append(P0, &payload(0, i)).expect("append");
        }
    }
    let records: Vec<Vec<u8>> = (0..5u64).map(|i| payload(0, i)).collect();
    // A roll cut by a power failure: the next segment's file exists, perhaps with a length,
    // but none of its bytes reached the disk, and it has no index yet.
    for len in [16usize, 100, 5000] {
        let work = tempfile::tempdir().expect("tempdir");
        copy_dir(src.path(), work.path());
        let next = work.path().join("p-00000").join(format!("{:020}.log", 5));
        fs::write(&next, vec![0u8; len]).expect("write zeroed segment");
        let log =
            FileLog::open(work.path(), opts(1)).unwrap_or_else(|e| panic!("{len} zero bytes: {e}"));
        assert_eq!(
            log.end_offset(P0).expect("end"),
            LogOffset(5),
            "{len} zero bytes"
        );
        assert_eq!(read_all(&log, P0), records, "{len} zero bytes");
        assert_eq!(&fs::read(&next).expect("read")[..8], b"SNAPSEG1");
        assert_eq!(log.append(P0, b"next").expect("append"), LogOffset(5));
        drop(log);
        let log = FileLog::open(work.path(), opts(1)).expect("reopen");
        let mut expected = records.clone();
        expected.push(b"next".to_vec());
        assert_eq!(
            read_all(&log, P0),
            expected,
            "{len} zero bytes, after reopen"
        );
    }
    // A zeroed segment whose index names synced data lost that data: corruption.
    let seg = segment_files(src.path(), 0)[0].clone();
    let work = copy_with(src.path(), &seg, |b| b.iter_mut().for_each(|x| *x = 0));
    assert!(matches!(
        FileLog::open(work.path(), opts(1)),
        Err(Error::LogCorrupt { .. })
    ));
}

#[test]
fn a_flipped_byte_in_an_indexed_record_is_reported_on_read_with_its_offset() {
    // A small index interval besides the sync marks: open does not scan synced records, so the
    // read finds it.
    let src = tempfile::tempdir().expect("tempdir");
    let (seg, pos) = write_twelve(src.path(), 100, SyncPolicy::EveryAppend);
    let mut bytes = fs::read(&seg).expect("read");
    bytes[(pos[5] + 20) as usize] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    let o = FileLogOptions {
        index_interval_bytes: 100,
        segment_bytes: 1 << 20,
        ..opts(1)
    };
    let log = FileLog::open(src.path(), o).expect("open reads only the tail");
    match log.read(P0, LogOffset(0), 100) {
        Err(Error::LogCorrupt { offset, .. }) => assert_eq!(offset, LogOffset(5)),
        other => panic!("read over the flipped record gave {other:?}"),
    }
    let first = log
        .read(P0, LogOffset(0), 5)
        .expect("records before it read fine");
    assert_eq!(first.len(), 5);
    let after = log
        .read(P0, LogOffset(6), 100)
        .expect("records after it read fine");
    assert_eq!(after.len(), 6);
}

#[test]
fn a_corrupt_record_in_a_sealed_segment_is_reported_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), opts(1)).expect("open");
        for i in 0..100u64 {
            log.append(P0, &payload(0, i)).expect("append");
        }
    }
    let first = segment_files(dir.path(), 0)[0].clone();
    let mut bytes = fs::read(&first).expect("read");
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    fs::write(&first, &bytes).expect("write");
    let log = FileLog::open(dir.path(), opts(1)).expect("sealed segments are not scanned on open");
    let mut at = LogOffset(0);
    let err = loop {
        match log.read(P0, at, 1) {
            Ok(b) if b.is_empty() => panic!("the corrupt record was never reported"),
            Ok(b) => at = b.next_offset(),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, Error::LogCorrupt { offset, .. } if offset == at),
        "{err}"
    );
}

#[test]
fn records_above_the_size_limit_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = FileLogOptions {
        max_record_bytes: 100,
        ..opts(1)
    };
    let log = FileLog::open(dir.path(), o).expect("open");
    let ok = vec![1u8; 100];
    let big = vec![1u8; 101];
    assert!(matches!(
        log.append_batch(P0, &[&ok, &big]),
        Err(Error::RecordTooLarge {
            len: 101,
            max: 100,
            ..
        })
    ));
    assert_eq!(log.end_offset(P0).expect("end").0, 0, "all or nothing");
    log.append(P0, &ok).expect("a record at the limit is fine");
}

#[test]
fn retention_drops_whole_segments_below_the_offset_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), opts(1)).expect("open");
    for i in 0..200u64 {
        log.append(P0, &payload(0, i)).expect("append");
    }
    let segs_before = segment_files(dir.path(), 0).len();
    let start = log.truncate_before(P0, LogOffset(120)).expect("truncate");
    assert!(start.0 <= 120 && start.0 > 0, "start {start}");
    assert!(segment_files(dir.path(), 0).len() < segs_before);
    let batch = log.read(P0, LogOffset(120), 1).expect("offset 120 is kept");
    assert_eq!(batch.get(0).expect("record"), &payload(0, 120)[..]);
    assert!(matches!(
        log.read(P0, LogOffset(start.0 - 1), 1),
        Err(Error::OffsetOutOfRange { .. })
    ));
    drop(log);
    let log = FileLog::open(dir.path(), opts(1)).expect("reopen");
    assert_eq!(log.start_offset(P0).expect("start"), start);
    assert_eq!(log.end_offset(P0).expect("end").0, 200);
}

#[test]
fn reopening_with_another_partition_count_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(FileLog::open(dir.path(), opts(2)).expect("open"));
    assert!(matches!(
        FileLog::open(dir.path(), opts(3)),
        Err(Error::Config(_))
    ));
    let log = FileLog::open(dir.path(), opts(2)).expect("same count");
    assert!(matches!(
        log.append(PartitionId(2), b"x"),
        Err(Error::UnknownPartition { partitions: 2, .. })
    ));
}

#[test]
fn a_missing_index_is_rebuilt_and_reads_still_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), opts(1)).expect("open");
        for i in 0..200u64 {
            log.append(P0, &payload(0, i)).expect("append");
        }
    }
    for e in fs::read_dir(dir.path().join("p-00000")).expect("list") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "idx") {
            fs::remove_file(p).expect("remove index");
        }
    }
    let log = FileLog::open(dir.path(), opts(1)).expect("reopen");
    let expected: Vec<Vec<u8>> = (0..200u64).map(|i| payload(0, i)).collect();
    assert_eq!(read_all(&log, P0), expected);
}

#[test]
fn interval_sync_policy_round_trips_and_syncs_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = FileLogOptions {
        sync: SyncPolicy::Interval {
            every: std::time::Duration::from_secs(3600),
            max_records: 1_000_000,
        },
        ..opts(1)
    };
    {
        let log = FileLog::open(dir.path(), o.clone()).expect("open");
        let recs: Vec<Vec<u8>> = (0..50u64).map(|i| payload(0, i)).collect();
        let slices: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let range = log.append_batch(P0, &slices).expect("append");
        assert_eq!((range.start.0, range.end.0), (0, 50));
    }
    let log = FileLog::open(dir.path(), o).expect("reopen");
    assert_eq!(log.end_offset(P0).expect("end").0, 50);
}

#[test]
fn a_garbage_active_index_is_rebuilt_by_scanning_and_the_data_stays_readable() {
    // A sync per append: the index holds a mark per record. Garbage over the whole index
    // (every entry fails its checksum) used to make open fail as if synced data were lost.
    let src = tempfile::tempdir().expect("tempdir");
    let (seg, _) = write_twelve(src.path(), 1 << 20, SyncPolicy::EveryAppend);
    let idx = seg.with_extension("idx");
    let mut state = 0x1234_5678_9abc_def0u64;
    let work = copy_with(src.path(), &idx, |b| {
        for byte in b.iter_mut() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *byte = (state >> 56) as u8;
        }
    });
    let log = FileLog::open(work.path(), twelve_opts(1 << 20, SyncPolicy::EveryAppend))
        .expect("a garbage index is rebuilt, not an error");
    assert_eq!(log.end_offset(P0).expect("end"), LogOffset(12));
    let want: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 40]).collect();
    assert_eq!(read_all(&log, P0), want);
}

#[test]
fn a_valid_index_entry_past_the_end_of_the_data_is_still_lost_synced_data() {
    // The index's checksum holds, but the entry names synced data beyond the segment's end:
    // fsynced data is missing, which is corruption, never silently truncated.
    let src = tempfile::tempdir().expect("tempdir");
    let (seg, pos) = write_twelve(src.path(), 1 << 20, SyncPolicy::EveryAppend);
    let idx = seg.with_extension("idx");
    let end = (pos[11] + 56) as u32;
    let work = copy_with(src.path(), &idx, |b| {
        b.extend_from_slice(&index_entry(13, end + 56));
    });
    match FileLog::open(work.path(), twelve_opts(1 << 20, SyncPolicy::EveryAppend)) {
        Err(Error::LogCorrupt { partition, .. }) => assert_eq!(partition, P0),
        other => panic!("expected LogCorrupt, got {other:?}"),
    }
}
