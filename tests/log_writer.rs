//! `LogWriter`: appends by message, replies once the record is durable.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use snapflow::log::{Append, AppendBatch, SyncNow};
use snapflow::{
    Error, FileLog, FileLogOptions, LogOffset, LogWriter, MemoryLog, PartitionId, ReplayableLog,
    SyncPolicy, TypedLog,
};

#[actix_rt::test]
async fn log_writer_replies_after_the_interval_sync_and_records_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FileLogOptions {
        partitions: 2,
        // A long interval inside the log: only the writer's own timer syncs.
        sync: SyncPolicy::Interval {
            every: Duration::from_millis(20),
            max_records: u64::MAX,
        },
        ..FileLogOptions::default()
    };
    let log: Arc<dyn ReplayableLog> = Arc::new(FileLog::open(dir.path(), opts).expect("open"));
    let writer = LogWriter::new(Arc::clone(&log)).start();
    let mut offsets = Vec::new();
    for i in 0..10u64 {
        let msg = Append::encode(PartitionId((i % 2) as u32), &(i, format!("event {i}")))
            .expect("encode");
        offsets.push(writer.send(msg).await.expect("mailbox").expect("append"));
    }
    assert_eq!(
        offsets[..4],
        [LogOffset(0), LogOffset(0), LogOffset(1), LogOffset(1)]
    );
    let range = writer
        .send(AppendBatch {
            partition: PartitionId(0),
            records: vec![b"a".to_vec(), b"b".to_vec()],
        })
        .await
        .expect("mailbox")
        .expect("batch");
    assert_eq!((range.start, range.end), (LogOffset(5), LogOffset(7)));
    writer.send(SyncNow).await.expect("mailbox").expect("sync");
    let typed: TypedLog<(u64, String)> = TypedLog::new(Arc::clone(&log));
    let back = typed.read(PartitionId(1), LogOffset(0), 100).expect("read");
    assert_eq!(back.len(), 5);
    assert_eq!(back[2], (LogOffset(2), (5, "event 5".to_string())));
}

#[actix_rt::test]
async fn log_writer_passes_append_errors_back_to_the_sender() {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::with_max_record_bytes(1, 8));
    let writer = LogWriter::new(log).start();
    let r = writer
        .send(Append {
            partition: PartitionId(0),
            payload: vec![0; 9],
        })
        .await
        .expect("mailbox");
    assert!(matches!(
        r,
        Err(Error::RecordTooLarge { len: 9, max: 8, .. })
    ));
    let r = writer
        .send(Append {
            partition: PartitionId(3),
            payload: vec![],
        })
        .await
        .expect("mailbox");
    assert!(matches!(r, Err(Error::UnknownPartition { .. })));
    let ok = writer
        .send(Append {
            partition: PartitionId(0),
            payload: vec![1],
        })
        .await
        .expect("mailbox");
    assert_eq!(ok.expect("append"), LogOffset(0));
}
