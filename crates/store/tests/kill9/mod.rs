//! What the stores' `kill -9` durability tests share: the kill rounds, which re-run the test
//! binary as a writing child and kill it with SIGKILL, the checks every journal must pass once
//! the store is reopened, and the child's writers. Each test file says what differs: how the
//! child opens its store, how the parent reopens it, and the checks only its store has.
//!
//! A directory module, so that cargo does not build it as a test binary of its own.

#![allow(clippy::print_stderr, reason = "the test logs its seed and rounds, to reproduce a failure")]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_core::{ExecutionId, Store, StoreError};
use baton_store::testing::{load_event, load_execution};

/// The child test's name, as the test harness filters it.
const CHILD_TEST: &str = "kill_child";
/// Executions the child writes to, one writer task each.
pub(crate) const EXECUTIONS: usize = 64;
/// Kill-and-reopen rounds.
const ROUNDS: usize = 3;
/// Acknowledged appends a round must see before the kill, so it cannot pass vacuously.
const MIN_ACKS: usize = 101;
/// How long a round may wait for its acknowledgements before it counts as hung.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

/// The runtime both the parent's checks and the child's writers run on.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs [`ROUNDS`] rounds of [`kill_round`], each child told by `child_var` to write to
/// `target`, and calls `check` after each kill with the round and the highest sequence
/// acknowledged per execution so far. `check` reopens the store, checks it (with
/// [`check_journals`] and whatever else its store needs) and closes it again, and answers with
/// what it recovered, for the round's log line. Every round must see [`MIN_ACKS`] acks.
pub(crate) fn run_kill_rounds(
    child_var: &str,
    target: &OsStr,
    mut check: impl FnMut(usize, &HashMap<String, u64>) -> String,
) {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill delays seeded with {seed}");
    let mut rng = XorShift(seed);
    // The highest sequence acknowledged per execution, over all rounds: journals only grow.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut acks_per_round = Vec::new();
    for round in 1..=ROUNDS {
        let delay = Duration::from_millis(300 + rng.next() % 900);
        let acks = kill_round(child_var, target, delay, &mut acked);
        let recovered = check(round, &acked);
        eprintln!("round {round}: killed {delay:?} after the first ack, {acks} appends acknowledged, {recovered}");
        acks_per_round.push(acks);
    }
    for (round, acks) in acks_per_round.iter().enumerate() {
        assert!(*acks >= MIN_ACKS, "round {} acknowledged only {acks} appends", round + 1);
    }
}

/// Runs one child writing to `target`, kills it with SIGKILL once `delay` has passed since its
/// first acknowledgement (and at least [`MIN_ACKS`] came), and records every acknowledgement
/// it printed before dying in `acked`. Returns how many it printed; panics when the child
/// reported a failed append.
fn kill_round(child_var: &str, target: &OsStr, delay: Duration, acked: &mut HashMap<String, u64>) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(child_var, target)
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
            let report = if let Some(failure) = line.strip_prefix("failed ") {
                Err(failure.to_owned())
            } else if let Some(ack) = line.strip_prefix("acked ") {
                let (id, sequence) = ack.split_once(' ').unwrap_or_else(|| panic!("malformed ack {line:?}"));
                let sequence: u64 = sequence.parse().unwrap_or_else(|e| panic!("malformed ack {line:?}: {e}"));
                Ok((id.to_owned(), sequence))
            } else {
                // Anything else is the test harness talking.
                continue;
            };
            if acks.send(report).is_err() {
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
            Ok(Err(failure)) => {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("the child's append failed after {count} acknowledged appends: {failure}");
            }
            Ok(Ok(ack)) => {
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
    // `Child::kill` sends SIGKILL on Unix: no destructor, flush or shutdown hook runs, and the
    // child's writes and folds may be anywhere between sent and committed.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}");
    // Lines the child wrote before it died were acknowledged too.
    reader.join().unwrap();
    for report in received.try_iter() {
        let ack = report.unwrap_or_else(|failure| panic!("the child's append failed before the kill: {failure}"));
        record(ack);
        count += 1;
    }
    count
}

/// Checks the reopened `store` after a kill: it still has all [`EXECUTIONS`], and every journal
/// is contiguous from 1, holds what was appended, is at least as long as its highest
/// acknowledged sequence in `acked` and continues right after its end. Returns the lengths the
/// journals had on reopening.
pub(crate) async fn check_journals<S: Store + Clone>(store: &S, acked: &HashMap<String, u64>) -> Vec<u64> {
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
    checks.join_all().await
}

async fn check_journal<S: Store>(store: &S, id: ExecutionId, acked: u64) -> u64 {
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

/// The child's work once it has opened `store`: creates [`EXECUTIONS`] executions in the first
/// round, then appends to every one of them until killed. Returns only by panicking.
pub(crate) async fn append_until_killed<S: Store + Clone>(store: S) {
    let mut ids = store.unfinished_executions().await.unwrap();
    if ids.is_empty() {
        for _ in 0..EXECUTIONS {
            let execution = load_execution();
            ids.push(execution.id);
            store.create_execution(execution, None).await.unwrap();
        }
    }
    // Writers start one by one as their journals are read, so later ones make their first
    // append while earlier ones already cause folds.
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
}

/// Appends one to three events at a time to `id`'s journal from `next` on, printing
/// `acked <id> <last sequence>` once each append returned, or `failed <why>` and panicking
/// when one fails.
async fn append_forever<S: Store>(store: S, id: ExecutionId, mut next: u64) {
    let mut rng = XorShift(id.as_uuid().as_u64_pair().1 | 1);
    loop {
        // Mostly single events; now and then two or three in one append.
        let count = match rng.next() % 8 {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let events = (next..next + count).map(|sequence| load_event(id, sequence)).collect();
        if let Err(e) = store.append(events).await {
            let failure = format!("appending {next}.. to {id}: {e}");
            // The parent hears of it first: the kill may come before the panic ends this process.
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "failed {failure}").unwrap();
            stdout.flush().unwrap();
            panic!("{failure}");
        }
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
