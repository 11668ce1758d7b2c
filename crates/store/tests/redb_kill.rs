//! The redb store's durability claim, checked with a real `kill -9`: an append acknowledged by
//! `Store::append` survives the process being killed with SIGKILL at any moment, and every
//! journal reads back contiguous (sequences 1..=n, no gaps, no repeats) after reopening.
//!
//! The test re-runs its own binary as the child that writes: [`kill_child`] does nothing unless
//! [`CHILD_DIR_VAR`] names a data directory, so it passes harmlessly in an ordinary run.

#![cfg(unix)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_core::{ExecutionId, Store, StoreError};
use baton_store::testing::{load_event, load_execution};
use baton_store::{LogOptions, RedbStore};

/// The variable that turns [`kill_child`] into the writer, naming its data directory.
const CHILD_DIR_VAR: &str = "BATON_KILL_CHILD_DIR";
/// The child test's name, as the test harness filters it.
const CHILD_TEST: &str = "kill_child";
/// Executions the child writes to, one writer task each.
const EXECUTIONS: usize = 64;
/// Kill-and-reopen rounds.
const ROUNDS: usize = 3;
/// Acknowledged appends a round must see before the kill, so it cannot pass vacuously.
const MIN_ACKS: usize = 101;
/// The child's log segments: a fold every few hundred appends, over several transactions.
const SMALL_SEGMENTS: LogOptions =
    LogOptions { fold_events: 512, fold_bytes: 1 << 20, max_unfolded: 2, fold_slice: 40 };
/// How long a round may wait for its acknowledgements before it counts as hung.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill delays seeded with {seed}");
    let mut rng = XorShift(seed);
    // The highest sequence acknowledged per execution, over all rounds: journals only grow.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut acks_per_round = Vec::new();
    for round in 1..=ROUNDS {
        let delay = Duration::from_millis(300 + rng.next() % 900);
        let acks = kill_round(dir.path(), delay, &mut acked);
        let lengths = runtime.block_on(check_after_kill(dir.path(), &acked));
        eprintln!(
            "round {round}: killed {delay:?} after the first ack, {acks} appends acknowledged, recovered journals of {}..={} events",
            lengths.iter().min().unwrap(),
            lengths.iter().max().unwrap()
        );
        acks_per_round.push(acks);
    }
    for (round, acks) in acks_per_round.iter().enumerate() {
        assert!(*acks >= MIN_ACKS, "round {} acknowledged only {acks} appends", round + 1);
    }
}

/// Runs one child writing into `dir`, kills it with SIGKILL once `delay` has passed since its
/// first acknowledgement (and at least [`MIN_ACKS`] came), and records every acknowledgement
/// it printed before dying in `acked`. Returns how many it printed.
fn kill_round(dir: &Path, delay: Duration, acked: &mut HashMap<String, u64>) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_VAR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (acks, received) = mpsc::channel();
    // A thread of its own keeps the pipe drained, so the child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // Anything else is the test harness talking.
            let Some(ack) = line.strip_prefix("acked ") else { continue };
            let (id, sequence) = ack.split_once(' ').unwrap_or_else(|| panic!("malformed ack {line:?}"));
            let sequence: u64 = sequence.parse().unwrap_or_else(|e| panic!("malformed ack {line:?}: {e}"));
            if acks.send((id.to_owned(), sequence)).is_err() {
                break;
            }
        }
    });
    let mut record = |(id, sequence): (String, u64)| {
        let max = acked.entry(id).or_default();
        *max = (*max).max(sequence);
    };
    let started = Instant::now();
    let mut count = 0;
    let mut kill_at = None;
    loop {
        let now = Instant::now();
        if kill_at.is_some_and(|at| now >= at) && count >= MIN_ACKS {
            break;
        }
        if now >= started + ROUND_DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the child acknowledged only {count} appends in {ROUND_DEADLINE:?}");
        }
        match received.recv_timeout(Duration::from_millis(20)) {
            Ok(ack) => {
                kill_at.get_or_insert(now + delay);
                record(ack);
                count += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                panic!("the child stopped by itself ({status}) after {count} acknowledged appends");
            }
        }
    }
    // `Child::kill` sends SIGKILL on Unix: no destructor, flush or shutdown hook runs.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}");
    // Lines the child wrote before it died were acknowledged too.
    reader.join().unwrap();
    for ack in received.try_iter() {
        record(ack);
        count += 1;
    }
    count
}

/// Reopens the store in `dir` and checks every journal: contiguous from 1, holding what was
/// appended, at least as long as its highest acknowledged sequence, and continuing right after
/// its end. Returns the lengths the journals had on reopening; the store is closed on return.
async fn check_after_kill(dir: &Path, acked: &HashMap<String, u64>) -> Vec<u64> {
    let store = RedbStore::open(dir).await.unwrap();
    let ids = store.unfinished_executions().await.unwrap();
    assert_eq!(ids.len(), EXECUTIONS, "{ids:?}");
    let known: Vec<String> = ids.iter().map(ExecutionId::to_string).collect();
    for id in acked.keys() {
        assert!(known.contains(id), "acknowledged appends to execution {id}, which is gone");
    }
    let mut checks = tokio::task::JoinSet::new();
    for id in ids {
        let store = store.clone();
        let acked = acked.get(&id.to_string()).copied().unwrap_or(0);
        checks.spawn(async move { check_journal(&store, id, acked).await });
    }
    let lengths = checks.join_all().await;
    drop(store);
    lengths
}

async fn check_journal(store: &RedbStore, id: ExecutionId, acked: u64) -> u64 {
    let journal = store.read_journal(id, 1).await.unwrap_or_else(|e| panic!("journal of {id}: {e}"));
    for (index, event) in journal.iter().enumerate() {
        let sequence = index as u64 + 1;
        assert_eq!(event, &load_event(id, sequence), "journal of {id} at position {sequence}");
    }
    let n = journal.len() as u64;
    assert!(n >= acked, "journal of {id} holds {n} events, but {acked} were acknowledged");
    if n > 0 {
        let err = store.append(vec![load_event(id, n)]).await.unwrap_err();
        assert_eq!(err, StoreError::SequenceConflict { execution: id, expected: n + 1, got: n });
    }
    store.append(vec![load_event(id, n + 1)]).await.unwrap_or_else(|e| panic!("appending {} to {id}: {e}", n + 1));
    let err = store.append(vec![load_event(id, n + 1)]).await.unwrap_err();
    assert_eq!(err, StoreError::SequenceConflict { execution: id, expected: n + 2, got: n + 1 });
    n
}

/// The writer that [`acknowledged_appends_survive_kill_9`] kills. Without [`CHILD_DIR_VAR`] it
/// returns at once, so ordinary runs pass it; with it, it appends until killed and never returns.
#[test]
fn kill_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else { return };
    let dir = PathBuf::from(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // Small log segments, so that kills land while segments are cut and folded too.
        let store = RedbStore::open_with(&dir, SMALL_SEGMENTS).await.unwrap();
        let mut ids = store.unfinished_executions().await.unwrap();
        if ids.is_empty() {
            for _ in 0..EXECUTIONS {
                let execution = load_execution();
                ids.push(execution.id);
                store.create_execution(execution, None).await.unwrap();
            }
        }
        let mut writers = tokio::task::JoinSet::new();
        for id in ids {
            let journal = store.read_journal(id, 1).await.unwrap();
            let next = journal.last().map_or(1, |event| event.sequence + 1);
            writers.spawn(append_forever(store.clone(), id, next));
        }
        // The writers only stop by panicking.
        while let Some(result) = writers.join_next().await {
            result.unwrap();
        }
    });
}

/// Appends one to three events at a time to `id`'s journal from `next` on, printing
/// `acked <id> <last sequence>` once each append returned.
async fn append_forever(store: RedbStore, id: ExecutionId, mut next: u64) {
    let mut rng = XorShift(id.as_uuid().as_u64_pair().1 | 1);
    loop {
        // Mostly single events; now and then two or three in one append.
        let count = match rng.next() % 8 {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let events = (next..next + count).map(|sequence| load_event(id, sequence)).collect();
        store.append(events).await.unwrap_or_else(|e| panic!("appending {next}.. to {id}: {e}"));
        next += count;
        // One locked write per line keeps lines whole, and the flush puts the line in the pipe
        // before the next append: whatever the parent reads after the kill was acknowledged.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "acked {id} {}", next - 1).unwrap();
        stdout.flush().unwrap();
    }
}

/// A xorshift64 generator: enough to vary kill moments and batch sizes without a dependency.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
