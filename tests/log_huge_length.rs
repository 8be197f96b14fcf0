//! A corrupt length field is refused before anything of that size is allocated. This test
//! binary counts the largest single allocation to prove it.

#![allow(unsafe_code)] // a counting global allocator needs `unsafe impl GlobalAlloc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use snapflow::{Error, FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog, SyncPolicy};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const P0: PartitionId = PartitionId(0);

fn opts() -> FileLogOptions {
    FileLogOptions {
        partitions: 1,
        max_record_bytes: 1 << 20,
        sync: SyncPolicy::EveryAppend,
        ..FileLogOptions::default()
    }
}

fn segment(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("p-00000").join(format!("{:020}.log", 0))
}

#[test]
fn a_huge_length_field_is_rejected_without_allocating_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), opts()).expect("open");
        for i in 0..10u8 {
            log.append(P0, &[i; 32]).expect("append");
        }
    }
    // Set record 4's length field to ~4 GiB. Every record was synced, so a sync mark covers it:
    // open does not scan it, and reads report it.
    let seg = segment(dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    let pos = 16 + 4 * (16 + 32);
    bytes[pos..pos + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    fs::write(&seg, &bytes).expect("write");
    LARGEST.store(0, Ordering::Relaxed);
    let log = FileLog::open(dir.path(), opts()).expect("synced records are not scanned on open");
    assert_eq!(log.end_offset(P0).expect("end"), LogOffset(10));
    for from in [0u64, 4] {
        let err = log
            .read(P0, LogOffset(from), 100)
            .expect_err("corruption is reported");
        assert!(
            matches!(
                err,
                Error::LogCorrupt {
                    offset: LogOffset(4),
                    ..
                }
            ),
            "read from {from}: {err}"
        );
        assert!(
            err.to_string().contains("exceeds the maximum record size"),
            "{err}"
        );
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < 8 << 20, "largest allocation was {largest} bytes");
    drop(log);

    // In the unsynced tail (after the last sync) it is a torn write: truncated on open, and
    // still nothing huge allocated.
    let dir = tempfile::tempdir().expect("tempdir");
    let os = FileLogOptions {
        sync: SyncPolicy::Os,
        ..opts()
    };
    {
        let log = FileLog::open(dir.path(), os.clone()).expect("open");
        for i in 0..9u8 {
            log.append(P0, &[i; 32]).expect("append");
        }
        log.sync().expect("sync");
    }
    let seg = segment(dir.path());
    let mut tail = fs::read(&seg).expect("read");
    let keep = tail.len();
    assert_eq!(keep, 16 + 9 * (16 + 32));
    tail.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    tail.extend_from_slice(&[0u8; 40]);
    fs::write(&seg, &tail).expect("write");
    LARGEST.store(0, Ordering::Relaxed);
    let log = FileLog::open(dir.path(), os).expect("a torn tail is truncated");
    assert_eq!(log.end_offset(P0).expect("end"), LogOffset(9));
    assert_eq!(fs::metadata(&seg).expect("stat").len(), keep as u64);
    assert!(LARGEST.load(Ordering::Relaxed) < 8 << 20);
}
