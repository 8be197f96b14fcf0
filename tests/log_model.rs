//! Random appends, reads, reopens and retention against a `Vec` model, for `FileLog` and
//! `MemoryLog`. proptest prints the failing operation sequence (and its seed file) on failure.

use proptest::prelude::*;

use snapflow::{
    Error, FileLog, FileLogOptions, LogOffset, MemoryLog, PartitionId, ReplayableLog, SyncPolicy,
};

#[derive(Debug, Clone)]
enum Op {
    Append(u32, Vec<Vec<u8>>),
    Read(u32, u64, usize),
    Reopen,
    Sync,
    Truncate(u32, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u32, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12))
            .prop_map(|(p, rs)| Op::Append(p, rs)),
        4 => (0..2u32, any::<u64>(), 1..20usize).prop_map(|(p, o, n)| Op::Read(p, o, n)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Sync),
        1 => (0..2u32, any::<u64>()).prop_map(|(p, o)| Op::Truncate(p, o)),
    ]
}

/// The model: per partition, the retained start offset and every record ever appended.
#[derive(Default)]
struct Model {
    start: [u64; 2],
    records: [Vec<Vec<u8>>; 2],
}

fn options() -> FileLogOptions {
    FileLogOptions {
        partitions: 2,
        segment_bytes: 700,
        index_interval_bytes: 90,
        sync: SyncPolicy::Os,
        ..FileLogOptions::default()
    }
}

fn check_op(log: &dyn ReplayableLog, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Append(p, rs) => {
            let slices: Vec<&[u8]> = rs.iter().map(|r| r.as_slice()).collect();
            let range = log.append_batch(PartitionId(*p), &slices).expect("append");
            let m = &mut model.records[*p as usize];
            prop_assert_eq!(range.start.0, m.len() as u64);
            m.extend(rs.iter().cloned());
            prop_assert_eq!(range.end.0, m.len() as u64);
        }
        Op::Read(p, o, n) => {
            let i = *p as usize;
            let end = model.records[i].len() as u64;
            let start = model.start[i];
            // Aim most reads inside the retained range.
            let from = start + o % (end - start + 2);
            match log.read(PartitionId(*p), LogOffset(from), *n) {
                Ok(batch) => {
                    prop_assert!(from <= end);
                    let want: Vec<&[u8]> = model.records[i][from as usize..]
                        .iter()
                        .take(*n)
                        .map(|r| r.as_slice())
                        .collect();
                    let got: Vec<&[u8]> = batch.iter().map(|(_, b)| b).collect();
                    prop_assert_eq!(got, want);
                }
                Err(Error::OffsetOutOfRange { .. }) => prop_assert!(from > end),
                Err(e) => return Err(TestCaseError::fail(format!("read failed: {e}"))),
            }
        }
        Op::Sync => log.sync().expect("sync"),
        Op::Truncate(p, o) => {
            let i = *p as usize;
            let end = model.records[i].len() as u64;
            let to = o % (end + 1);
            let new_start = log
                .truncate_before(PartitionId(*p), LogOffset(to))
                .expect("truncate");
            prop_assert!(
                new_start.0 <= to.max(model.start[i]),
                "retention never drops records at or above the offset"
            );
            prop_assert!(new_start.0 >= model.start[i]);
            model.start[i] = new_start.0;
        }
        Op::Reopen => {}
    }
    for p in 0..2u32 {
        prop_assert_eq!(
            log.end_offset(PartitionId(p)).expect("end").0,
            model.records[p as usize].len() as u64
        );
        prop_assert_eq!(
            log.start_offset(PartitionId(p)).expect("start").0,
            model.start[p as usize]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn file_log_matches_a_vec_model_across_appends_reads_and_reopens(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = FileLog::open(dir.path(), options()).expect("open");
        let mut model = Model::default();
        for op in &ops {
            if let Op::Reopen = op {
                drop(log);
                log = FileLog::open(dir.path(), options()).expect("reopen");
            }
            check_op(&log, &mut model, op)?;
        }
    }

    #[test]
    fn memory_log_matches_the_same_vec_model(ops in prop::collection::vec(op(), 1..40)) {
        let log = MemoryLog::new(2);
        let mut model = Model::default();
        for op in &ops {
            check_op(&log, &mut model, op)?;
        }
    }
}
