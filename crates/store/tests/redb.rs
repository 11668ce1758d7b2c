//! The conformance suite against the redb store, each case in its own temporary directory.

#![allow(clippy::print_stderr, reason = "the test logs its commit figures")]

use std::path::Path;

use baton_core::Store;
use baton_store::RedbStore;

baton_store::conformance_tests!(baton_store::testing::RedbHarness::new());
baton_store::durable_conformance_tests!(baton_store::testing::RedbHarness::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    let executions = baton_store::conformance::create_executions(&store, 64).await;
    let before = store.commit_stats();
    baton_store::conformance::append_concurrently(&store, &executions, 10).await;
    let after = store.commit_stats();
    let (transactions, writes) = (after.transactions - before.transactions, after.writes - before.writes);
    // While one batch commits, the next one gathers: 64 writers share far fewer commits.
    eprintln!("{transactions} transactions for {writes} appends");
    assert_eq!(writes, 640);
    assert!(transactions * 4 <= writes, "{transactions} transactions for {writes} appends");
}

#[tokio::test]
async fn a_file_in_use_is_refused_and_released_on_drop() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    assert_eq!(store.path(), dir.path().join("baton.redb"));
    let err = RedbStore::open(dir.path()).await.unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("store unavailable: cannot open {}", store.path().display())),
        "{err}"
    );
    let clone = store.clone();
    drop(store);
    // A clone keeps the file open.
    assert!(RedbStore::open(dir.path()).await.is_err());
    assert!(clone.list_definitions().await.unwrap().is_empty());
    drop(clone);
    RedbStore::open(dir.path()).await.unwrap();
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_created_is_unavailable() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = RedbStore::open(&file.path().join("sub")).await.unwrap_err();
    assert!(matches!(err, baton_core::StoreError::Unavailable(_)), "{err}");
    assert!(!Path::new(&file.path().join("sub")).exists());
}
