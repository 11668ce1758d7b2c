//! The redb store on a disk that fills up and empties again: a write with no room fails with
//! `StoreError::NoSpace` and leaves nothing behind, what was stored before reads back, and once
//! the disk has room the same writes go in, journal appends and redb writes alike (redb takes
//! no writes after a failed one until its file is opened again, which the store does).
//!
//! The disk is a 16 MiB tmpfs in a user and mount namespace of the test's own (`unshare`), so
//! no root is needed where unprivileged user namespaces are allowed: the test runs itself again
//! inside one, over the tmpfs.

use std::path::Path;
use std::process::Command;

use baton_core::{Event, EventKind, Execution, ExecutionId, ExecutionState, StepId, Store, StoreError};
use baton_store::RedbStore;
use baton_store::testing::{fill_disk, load_execution};

/// Set in the run inside the namespace: the tmpfs to use.
const DISK: &str = "BATON_TEST_SMALL_DISK";

#[test]
fn a_full_disk_refuses_writes_keeps_what_was_stored_and_takes_them_once_it_has_room() {
    if let Some(disk) = std::env::var_os(DISK) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(on_a_small_disk(Path::new(&disk)));
        return;
    }
    let mount = tempfile::TempDir::new().unwrap();
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=16m tmpfs "$0" && exec "$1" --exact "$2" --nocapture"#)
        .arg(mount.path())
        .arg(std::env::current_exe().unwrap())
        .arg("a_full_disk_refuses_writes_keeps_what_was_stored_and_takes_them_once_it_has_room")
        .env(DISK, mount.path())
        .output()
        .expect("unshare (util-linux) runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the test on a 16 MiB tmpfs failed, or a user namespace could not be made for it \
         (unprivileged user namespaces must be allowed: sysctl kernel.unprivileged_userns_clone=1):\n{text}"
    );
    assert!(text.contains("1 passed"), "{text}");
}

async fn on_a_small_disk(disk: &Path) {
    let store = RedbStore::open(&disk.join("data")).await.unwrap();
    let id = store.create_execution(execution(1), None).await.unwrap().execution.id;
    store.append(events(id, 1..=10, 100)).await.unwrap();

    let filler = fill_disk(disk);
    // A journal append with no room: refused, and nothing of it stays.
    let error = store.append(events(id, 11..=20, 64 * 1024)).await.unwrap_err();
    assert!(matches!(&error, StoreError::NoSpace(why) if why.contains(disk.to_str().unwrap())), "{error}");
    assert_eq!(store.read_journal(id, 1).await.unwrap(), events(id, 1..=10, 100));
    // redb writes, until one finds no room in the file either.
    let mut refused = None;
    for n in 2..200 {
        if let Err(error) = store.create_execution(execution(n), None).await {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("the redb file runs out of room");
    assert!(matches!(refused, StoreError::NoSpace(_)), "{refused}");
    assert!(store.commit_stats().no_space >= 2, "{:?}", store.commit_stats());
    // Reads go on meanwhile.
    assert_eq!(store.get_execution(id).await.unwrap().id, id);
    assert_eq!(store.read_journal(id, 10).await.unwrap().len(), 1);

    // Room again: the same writes go in.
    std::fs::remove_file(filler).unwrap();
    store.append(events(id, 11..=20, 64 * 1024)).await.unwrap();
    let created = store.create_execution(execution(1_000), None).await.unwrap().execution;
    let mut finished = created.clone();
    finished.state = ExecutionState::Completed;
    store.update_execution((&finished).into()).await.unwrap();
    assert_eq!(store.read_journal(id, 1).await.unwrap().len(), 20);
    drop(store);
    // And all of it is there after a reopen.
    let store = RedbStore::open(&disk.join("data")).await.unwrap();
    assert_eq!(store.read_journal(id, 1).await.unwrap().len(), 20);
    assert_eq!(store.get_execution(created.id).await.unwrap().state, ExecutionState::Completed);
}

fn execution(n: u64) -> Execution {
    Execution { input: serde_json::json!({"n": n, "pad": "p".repeat(100_000)}), ..load_execution() }
}

fn events(execution: ExecutionId, sequences: std::ops::RangeInclusive<u64>, size: usize) -> Vec<Event> {
    let at = baton_core::Timestamp::from_timestamp(1_800_000_000, 0).unwrap();
    sequences
        .map(|sequence| Event {
            execution,
            sequence,
            at,
            kind: EventKind::TaskSucceeded {
                step: StepId::new("s").unwrap(),
                attempt: 1,
                output: serde_json::json!("o".repeat(size)),
                context: None,
            },
        })
        .collect()
}
