//! The redb store's durability claim, checked with a real `kill -9`: an append acknowledged by
//! `Store::append` survives the process being killed with SIGKILL at any moment, and every
//! journal reads back contiguous (sequences 1..=n, no gaps, no repeats) after reopening.
//!
//! The test re-runs its own binary as the child that writes: [`kill_child`] does nothing unless
//! [`CHILD_DIR_VAR`] names a data directory, so it passes harmlessly in an ordinary run. The kill
//! rounds, the journal checks and the child's writers are shared with the PostgreSQL test in
//! [`kill9`].

#![cfg(unix)]

mod kill9;

use std::path::Path;

use baton_store::{LogOptions, RedbOptions, RedbStore};

/// The variable that turns [`kill_child`] into the writer, naming its data directory.
const CHILD_DIR_VAR: &str = "BATON_KILL_CHILD_DIR";
/// The child's log segments: a fold every few hundred appends, over several transactions.
const SMALL_SEGMENTS: LogOptions =
    LogOptions { fold_events: 512, fold_bytes: 1 << 20, max_unfolded: 2, fold_slice: 40 };

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let runtime = kill9::runtime();
    kill9::run_kill_rounds(CHILD_DIR_VAR, dir.path().as_os_str(), |_round, acked| {
        let lengths = runtime.block_on(async {
            // The store closes at the end of the block, before the next round's child opens it.
            let store = RedbStore::open(dir.path()).await.unwrap();
            kill9::check_journals(&store, acked).await
        });
        format!("recovered journals of {}..={} events", lengths.iter().min().unwrap(), lengths.iter().max().unwrap())
    });
}

/// The writer that [`acknowledged_appends_survive_kill_9`] kills. Without [`CHILD_DIR_VAR`] it
/// returns at once, so ordinary runs pass it; with it, it appends until killed and never returns.
#[test]
fn kill_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else { return };
    kill9::runtime().block_on(async {
        // Small log segments, so that kills land while segments are cut and folded too.
        let store =
            RedbStore::open_with(Path::new(&dir), RedbOptions { log: SMALL_SEGMENTS, ..RedbOptions::default() })
                .await
                .unwrap();
        kill9::append_until_killed(store).await;
    });
}
