//! The PostgreSQL store's durability claim, checked with a real `kill -9` of the client: an
//! append acknowledged by `Store::append` survives the process that made it being killed with
//! SIGKILL at any moment while the server keeps running, and once the next store has taken the
//! journal over, every journal reads back contiguous (sequences 1..=n, no gaps, no repeats).
//!
//! The test re-runs its own binary as the child that writes: [`kill_child`] does nothing unless
//! [`CHILD_URL_VAR`] names a database, so it passes harmlessly in an ordinary run. Without
//! PostgreSQL the test fails, saying so; it never skips. The kill rounds, the journal checks and
//! the child's writers are shared with the redb test in [`kill9`]; the takeover and the raw
//! journal tables are checked here.

#![cfg(unix)]

mod kill9;

use std::collections::HashMap;

use baton_store::postgres::{Config, PostgresStore, Takeover};
use baton_store::testing::{PgCluster, sql_client};

/// The variable that turns [`kill_child`] into the writer, naming its database.
const CHILD_URL_VAR: &str = "BATON_PG_KILL_CHILD_URL";
/// The child's fold threshold: small, so that a round folds frames into chunks many times and
/// kills land while folds are under way too.
const FOLD_EVENTS: usize = 300;
/// Events the child can have in flight at once: each writer task waits for its append, of at
/// most three events, before it makes the next.
const MAX_IN_FLIGHT: usize = kill9::EXECUTIONS * 3;
/// The most events a killed child can leave in frames while its folds keep up: the window
/// being folded and the one filling behind it, each at most the appends in flight past
/// [`FOLD_EVENTS`], and the frames committed but not yet in a window.
const MAX_LEFT_IN_FRAMES: usize = 2 * (FOLD_EVENTS + MAX_IN_FLIGHT) + MAX_IN_FLIGHT;

#[test]
fn acknowledged_appends_survive_kill_9() {
    let runtime = kill9::runtime();
    // Only the client is killed: the server runs throughout, as it would in production.
    let cluster = PgCluster::start();
    let url = runtime.block_on(cluster.create_database());
    let mut frames_taken_over = 0;
    kill9::run_kill_rounds(CHILD_URL_VAR, url.as_ref(), |round, acked| {
        let recovery = runtime.block_on(check_after_kill(&url, round, acked));
        frames_taken_over += recovery.takeover.frames;
        format!(
            "took over {} frames of {} events, recovered journals of {}..={} events in {} chunks",
            recovery.takeover.frames,
            recovery.takeover.events,
            recovery.lengths.iter().min().unwrap(),
            recovery.lengths.iter().max().unwrap(),
            recovery.chunks,
        )
    });
    // A kill almost always leaves frames unfolded; none in every round means the takeover's
    // recovery was never exercised.
    assert!(frames_taken_over > 0, "no round left frames for the takeover to fold");
}

/// What reopening the store after a kill found.
#[derive(Debug)]
struct Recovery {
    /// What the checking store's takeover folded of the killed child's frames.
    takeover: Takeover,
    /// The journals' lengths on reopening.
    lengths: Vec<u64>,
    /// Chunk rows holding the journals: every fold adds some.
    chunks: usize,
}

/// Reopens the store at `url`, taking the journal over from the child killed in `round`, and
/// checks that the takeover folded every frame the child left, that the chunks hold every
/// journal once, and the journals themselves with [`kill9::check_journals`]. The store is closed
/// on return.
async fn check_after_kill(url: &str, round: usize, acked: &HashMap<String, u64>) -> Recovery {
    let store = PostgresStore::connect(&Config::new(url)).await.unwrap();
    let takeover = store.takeover().clone();
    // Each round's child and checking store take the journal over once each.
    assert_eq!(takeover.epoch, 2 * round as i64, "{takeover:?}");
    assert!(takeover.unreadable.is_empty(), "{takeover:?}");
    // Only a writer that lost its connection leaves an empty frame, and the child never did.
    assert!(takeover.frames <= takeover.events, "{takeover:?}");
    assert!(takeover.events <= MAX_LEFT_IN_FRAMES, "the child's folds fell behind: {takeover:?}");
    let client = sql_client(url).await;
    // Before this store appends, every frame there is the child's, and the takeover folded it.
    let frames: i64 = client.query_one("SELECT count(*) FROM baton_journal_frames", &[]).await.unwrap().get(0);
    assert_eq!(frames, 0, "frames left after the takeover {takeover:?}");
    let (chunks, in_chunks) = check_chunks(&client).await;
    drop(client);

    let lengths = kill9::check_journals(&store, acked).await;
    drop(store);
    assert_eq!(in_chunks, lengths.iter().sum::<u64>(), "events in chunks, against the journals' lengths");
    Recovery { takeover, lengths, chunks }
}

/// Checks that the chunks hold each journal's events once, contiguous from 1: reads keep each
/// sequence number once, so they would hide a frame folded twice, which overlapping chunks
/// show. Returns the number of chunks and of the events they hold.
async fn check_chunks(client: &tokio_postgres::Client) -> (usize, u64) {
    let rows = client
        .query(
            "SELECT execution, first_sequence, last_sequence FROM baton_journal_chunks ORDER BY execution, last_sequence",
            &[],
        )
        .await
        .unwrap();
    let mut previous: Option<(Vec<u8>, i64)> = None;
    let mut in_chunks = 0;
    for row in &rows {
        let (execution, first, last): (Vec<u8>, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let expected = match &previous {
            Some((before, end)) if *before == execution => end + 1,
            _ => 1,
        };
        assert_eq!(first, expected, "chunk {first}..={last} of execution {execution:02x?}");
        assert!(last >= first, "chunk {first}..={last} of execution {execution:02x?}");
        in_chunks += (last - first + 1) as u64;
        previous = Some((execution, last));
    }
    (rows.len(), in_chunks)
}

/// The writer that [`acknowledged_appends_survive_kill_9`] kills. Without [`CHILD_URL_VAR`] it
/// returns at once, so ordinary runs pass it; with it, it appends until killed and never returns.
#[test]
fn kill_child() {
    let Ok(url) = std::env::var(CHILD_URL_VAR) else { return };
    kill9::runtime().block_on(async {
        let mut config = Config::new(url);
        config.fold_events = FOLD_EVENTS;
        // Takes the journal over from the previous round's checking store.
        let store = PostgresStore::connect(&config).await.unwrap();
        kill9::append_until_killed(store).await;
    });
}
