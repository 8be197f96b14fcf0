//! A `FileLog` index file is untrusted input: opening a log reads at most what its segment can
//! need, never a whole (possibly huge) index file. This test binary counts allocations with a
//! global allocator, so it holds only this test.
#![allow(unsafe_code)] // a counting global allocator needs `unsafe impl GlobalAlloc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use snapflow::{FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog, SyncPolicy};

/// The system allocator, recording the largest single allocation.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

#[test]
fn a_huge_index_file_is_never_read_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FileLogOptions {
        partitions: 1,
        sync: SyncPolicy::EveryAppend,
        ..FileLogOptions::default()
    };
    {
        let log = FileLog::open(dir.path(), opts.clone()).expect("open");
        for i in 0..10u8 {
            log.append(PartitionId(0), &[i; 100]).expect("append");
        }
    }
    let idx = dir.path().join("p-00000").join("00000000000000000000.idx");
    assert!(idx.exists(), "the active segment has an index");
    // A 1 GiB index file (sparse: it costs no disk) for a segment of about 1 KiB.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&idx)
        .expect("open index");
    f.set_len(1 << 30).expect("grow the index");
    drop(f);
    LARGEST.store(0, Ordering::Relaxed);
    let log = FileLog::open(dir.path(), opts).expect("a huge index is rebuilt");
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < 16 << 20,
        "opening allocated {largest} bytes at once for a 1 GiB index"
    );
    assert_eq!(log.end_offset(PartitionId(0)).expect("end"), LogOffset(10));
    let batch = log.read(PartitionId(0), LogOffset(0), 100).expect("read");
    assert_eq!(batch.iter().count(), 10);
}
