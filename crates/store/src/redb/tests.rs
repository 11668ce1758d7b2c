use baton_core::{EventKind, ExecutionState, StepId, Timestamp};

use super::*;

/// Segments of a few events, so that tests cross many folds and wait for them.
const SMALL: LogOptions = LogOptions { fold_events: 64, fold_bytes: 1 << 20, max_unfolded: 1, fold_slice: 5 };

fn at() -> Timestamp {
    Timestamp::from_timestamp(1_800_000_000, 0).unwrap()
}

fn execution() -> Execution {
    Execution {
        id: ExecutionId::generate(),
        workflow: WorkflowName::new("fold").unwrap(),
        version: 1,
        state: ExecutionState::Running,
        input: serde_json::json!({}),
        output: None,
        error: None,
        tasks: Default::default(),
        created_at: at(),
        updated_at: at(),
        trace: None,
        parent: None,
        problem: None,
        parked: None,
        retention: None,
        expires_at: None,
    }
}

fn event(execution: ExecutionId, sequence: u64) -> Event {
    let step = StepId::new("s").unwrap();
    let output = serde_json::json!({"n": sequence});
    Event { execution, sequence, at: at(), kind: EventKind::TaskSucceeded { step, attempt: 1, output, context: None } }
}

fn events(execution: ExecutionId, sequences: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    sequences.map(|sequence| event(execution, sequence)).collect()
}

async fn created(store: &RedbStore) -> ExecutionId {
    store.create_execution(execution(), None).await.unwrap().execution.id
}

/// Appends that cross several folds read back whole and from any point, before and after
/// a reopen, and keep being checked for gaps and repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_read_the_same_across_folds() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = RedbStore::open_with(dir.path(), Options { log: SMALL, ..Options::default() }).await.unwrap();
    let (a, b) = (created(&store).await, created(&store).await);
    let per_append = 97;
    let mut last = 0;
    while usize::try_from(last).unwrap() * 2 < SMALL.fold_events * 7 {
        let mut batch = events(a, last + 1..=last + per_append);
        batch.extend(events(b, last + 1..=last + per_append));
        store.append(batch).await.unwrap();
        last += per_append;
        // Read between appends, so some reads meet events on both sides of a fold.
        if last % (per_append * 8) == 0 {
            assert_eq!(store.read_journal(a, last - 150).await.unwrap(), events(a, last - 150..=last));
        }
    }
    let check = |store: RedbStore| async move {
        assert_eq!(store.read_journal(a, 1).await.unwrap(), events(a, 1..=last));
        assert_eq!(store.read_journal(b, last - 5).await.unwrap(), events(b, last - 5..=last));
        assert_eq!(
            store.append(vec![event(a, last)]).await.unwrap_err(),
            StoreError::SequenceConflict { execution: a, expected: last + 1, got: last }
        );
    };
    check(store).await;
    let store = RedbStore::open_with(dir.path(), Options { log: SMALL, ..Options::default() }).await.unwrap();
    check(store.clone()).await;
    store.append(vec![event(b, last + 1)]).await.unwrap();
    assert_eq!(store.read_journal(b, last).await.unwrap(), events(b, last..=last + 1));
}

/// A version 2 file's events (a row each in `journal` and `journal_log`) are made into
/// chunks on open, and the journal goes on from them.
#[tokio::test]
async fn a_version_2_log_is_folded_on_open() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    let id = created(&store).await;
    drop(store);
    {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut journal = txn.open_table(JOURNAL_V2).unwrap();
            for sequence in 1..=2 {
                journal.insert((id_key(id), sequence), to_json(&event(id, sequence)).as_slice()).unwrap();
            }
            let mut log = txn.open_table(JOURNAL_LOG).unwrap();
            for sequence in 3..=4 {
                log.insert((7, id_key(id), sequence), to_json(&event(id, sequence)).as_slice()).unwrap();
            }
            txn.open_table(META).unwrap().insert("schema_version", 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path()).await.unwrap();
    assert_eq!(store.read_journal(id, 2).await.unwrap(), events(id, 2..=4));
    assert_eq!(
        store.append(vec![event(id, 3)]).await.unwrap_err(),
        StoreError::SequenceConflict { execution: id, expected: 5, got: 3 }
    );
    store.append(vec![event(id, 5)]).await.unwrap();
    assert_eq!(store.read_journal(id, 1).await.unwrap(), events(id, 1..=5));
    drop(store);
    let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), SCHEMA_VERSION);
    assert!(txn.open_table(JOURNAL_LOG).is_err(), "the version 2 log is dropped");
    assert!(txn.open_table(JOURNAL_V2).is_err(), "the version 2 journal is dropped");
}

/// Writes `frames` of events into a new log segment in `dir`, as a run killed before
/// folding it leaves them, and a torn frame after them when `torn`.
fn leave_segment(dir: &Path, number: u64, frames: &[Vec<Event>], torn: bool) {
    let mut segment = Segment::create(dir, number).unwrap();
    for frame in frames {
        segment.begin_frame();
        for event in frame {
            segment.push(id_key(event.execution), event.sequence, &to_json(event));
        }
        segment.write_frame().unwrap();
    }
    if torn {
        use std::io::Write;
        let mut file = std::fs::File::options().append(true).open(segment.path()).unwrap();
        file.write_all(b"BJF1\x40\x00\x00\x00half a frame").unwrap();
    }
}

/// The segments a killed run left are folded on open, oldest first and frame by frame; a
/// torn last frame is dropped and reported; the files are gone afterwards and the journal
/// goes on from the last whole frame.
#[tokio::test]
async fn segments_left_by_a_killed_run_are_folded_on_open() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    assert_eq!(store.recovery(), &Recovery::default());
    let (a, b) = (created(&store).await, created(&store).await);
    store.append(events(a, 1..=2)).await.unwrap();
    drop(store);
    leave_segment(dir.path(), 40, &[events(a, 3..=4), events(b, 1..=1)], false);
    leave_segment(dir.path(), 41, &[events(a, 5..=5)], true);
    let store = RedbStore::open(dir.path()).await.unwrap();
    let recovery = store.recovery().clone();
    assert_eq!((recovery.segments, recovery.events), (2, 4));
    assert_eq!(recovery.dropped_frames.len(), 1, "{recovery:?}");
    assert!(recovery.dropped_frames[0].contains("journal-00000000000000000041.wal"), "{recovery:?}");
    assert!(recovery.dropped_frames[0].ends_with("is cut short in its body"), "{recovery:?}");
    assert_eq!(store.read_journal(a, 1).await.unwrap(), events(a, 1..=5));
    assert_eq!(store.read_journal(b, 1).await.unwrap(), events(b, 1..=1));
    store.append(events(a, 6..=7)).await.unwrap();
    // The run numbers its segments after the ones it found.
    let numbers: Vec<u64> = wal::segments(dir.path()).unwrap().into_iter().map(|(number, _)| number).collect();
    assert_eq!(numbers, vec![42]);
    drop(store);
    assert!(wal::segments(dir.path()).unwrap().is_empty(), "a closed store folded its last segment");
    let store = RedbStore::open(dir.path()).await.unwrap();
    assert_eq!(store.recovery(), &Recovery::default());
    assert_eq!(store.read_journal(a, 4).await.unwrap(), events(a, 4..=7));
}

/// Events larger than a block of the in-memory log, and a segment cut by bytes rather than
/// events, read back whole from memory, after the fold and after a reopen.
#[tokio::test]
async fn large_events_read_back_from_memory_and_from_chunks() {
    let dir = tempfile::TempDir::new().unwrap();
    let options = LogOptions { fold_bytes: 4 << 20, ..SMALL };
    let store = RedbStore::open_with(dir.path(), Options { log: options, ..Options::default() }).await.unwrap();
    let id = created(&store).await;
    let large = |sequence: u64| {
        let mut event = event(id, sequence);
        let step = StepId::new("s").unwrap();
        let output = serde_json::json!({"blob": "x".repeat((1 << 20) + 7 * sequence as usize)});
        event.kind = EventKind::TaskSucceeded { step, attempt: 1, output, context: None };
        event
    };
    store.append(vec![large(1), event(id, 2)]).await.unwrap();
    assert_eq!(store.read_journal(id, 1).await.unwrap(), vec![large(1), event(id, 2)]);
    // Four more megabytes cut the segment and fold it.
    store.append(vec![large(3), large(4), large(5), large(6)]).await.unwrap();
    let mut expected = vec![large(1), event(id, 2)];
    expected.extend((3..=6).map(large));
    assert_eq!(store.read_journal(id, 1).await.unwrap(), expected);
    drop(store);
    let store = RedbStore::open_with(dir.path(), Options { log: options, ..Options::default() }).await.unwrap();
    assert_eq!(store.read_journal(id, 2).await.unwrap(), expected[1..].to_vec());
}

/// A store shared by two runtimes: one shuts down while its appends share frames with the
/// other's, whose appends must all still be answered (answers go out from a task on the
/// runtime of a frame's first caller, which may be the one shutting down).
#[test]
fn a_runtime_shutting_down_does_not_swallow_the_answers_of_another() {
    let dir = tempfile::TempDir::new().unwrap();
    let live = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = live.block_on(RedbStore::open(dir.path())).unwrap();
    for round in 0..60_u64 {
        let (mine, theirs) = live.block_on(async { (created(&store).await, created(&store).await) });
        let dying = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let writer = store.clone();
        dying.spawn(async move {
            for sequence in 1.. {
                if writer.append(vec![event(theirs, sequence)]).await.is_err() {
                    return;
                }
            }
        });
        let appended = live.block_on(async {
            let writer = store.clone();
            let mine = tokio::spawn(async move {
                for sequence in 1..=200 {
                    writer.append(vec![event(mine, sequence)]).await?;
                }
                Ok::<_, StoreError>(())
            });
            tokio::time::sleep(std::time::Duration::from_millis(round % 4)).await;
            dying.shutdown_background();
            mine.await.unwrap()
        });
        appended.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(live.block_on(store.read_journal(mine, 1)).unwrap().len(), 200);
    }
}

/// Many small appends move through several segments and folds while reads run beside
/// them; every read sees a whole journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beside_folds_see_whole_journals() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = RedbStore::open_with(dir.path(), Options { log: SMALL, ..Options::default() }).await.unwrap();
    let id = created(&store).await;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut longest = 0;
            while longest < SMALL.fold_events * 7 {
                let journal = store.read_journal(id, 1).await.unwrap();
                assert!(journal.len() >= longest, "a read lost events");
                assert_eq!(journal, events(id, 1..=journal.len() as u64));
                longest = journal.len();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut last = 0;
    while last < (SMALL.fold_events * 7) as u64 {
        store.append(events(id, last + 1..=last + 16)).await.unwrap();
        last += 16;
    }
    reader.await.unwrap();
}

/// However fast appends come, the events held in memory stay within the window the options
/// set ([`LogOptions::window_bytes`], plus the frame that fills the open segment): appends
/// wait for folds rather than let the window grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfolded_window_stays_within_its_options() {
    let dir = tempfile::TempDir::new().unwrap();
    let options = LogOptions { fold_events: usize::MAX, fold_bytes: 64 << 10, max_unfolded: 1, fold_slice: 5 };
    let store = RedbStore::open_with(dir.path(), Options { log: options, ..Options::default() }).await.unwrap();
    let (writers, batches, per_batch): (usize, u64, u64) = (8, 150, 10);
    let batch_bytes = events(ExecutionId::generate(), 1..=per_batch)
        .iter()
        .map(|event| serde_json::to_vec(event).unwrap().len() + 64)
        .sum::<usize>();
    // A frame holds at most one batch from each writer.
    let bound = options.window_bytes() + writers * batch_bytes;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let id = created(&store).await;
        tasks.push(tokio::spawn(async move {
            let mut most = 0;
            for batch in 0..batches {
                let first = batch * per_batch + 1;
                store.append(events(id, first..=first + per_batch - 1)).await.unwrap();
                most = most.max(store.inner.unfolded.bytes());
            }
            most
        }));
    }
    let mut most = 0;
    for task in tasks {
        most = most.max(task.await.unwrap());
    }
    let appended = writers * usize::try_from(batches).unwrap() * batch_bytes;
    assert!(appended > 10 * bound, "the appends ({appended} bytes) are far more than the window ({bound})");
    assert!(most <= bound, "{most} bytes unfolded, more than the window of {bound}");
    assert!(most > options.fold_bytes / 2, "the window filled ({most} bytes): the bound was tried");
}
