//! The conformance suite against PostgreSQL: one throwaway cluster for this binary (or the
//! server `BATON_TEST_PG_URL` names), one database per case, every case at once in one test.
//! Then what is PostgreSQL's own: the schema, the journal writer taking over from another
//! server, folds, appends that wait for each other, connections cut mid-write, and the upgrade
//! from the first schema. Without PostgreSQL this fails, saying so; it never skips.
#![allow(clippy::print_stderr, reason = "the suite logs each case and its figures")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_core::fakes::FixedOwnership;
use baton_core::store::timestamp_nanos;
use baton_core::{Event, Execution, ExecutionId, ExecutionState, ExecutionUpdate, Store, StoreError, StoreResult};
use baton_store::conformance::create_executions;
use baton_store::postgres::{Config, MIGRATIONS, PostgresStore};
use baton_store::testing::{PgCluster, PgHarness, PgOptions, load_event, load_execution, own_partitions, sql_client};

#[test]
fn postgres_store_conforms() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = Arc::new(PgCluster::start());
    let results = runtime.block_on(baton_store::conformance::run_all(|_| PgHarness::new(Arc::clone(&cluster))));
    let mut failures = Vec::new();
    for (case, result) in &results {
        match result {
            Ok(()) => eprintln!("ok      {case}"),
            Err(e) => {
                eprintln!("FAILED  {case}: {e}");
                failures.push(*case);
            }
        }
    }
    assert!(results.len() >= 10, "only {} cases ran", results.len());
    // The same contract for one server of a cluster, writing under partition epochs.
    let partitioned =
        runtime.block_on(baton_store::conformance::run_all(|_| PgHarness::partitioned(Arc::clone(&cluster))));
    for (case, result) in &partitioned {
        match result {
            Ok(()) => eprintln!("ok      partitioned {case}"),
            Err(e) => {
                eprintln!("FAILED  partitioned {case}: {e}");
                failures.push(*case);
            }
        }
    }
    assert_eq!(partitioned.len(), results.len());
    assert!(failures.is_empty(), "failed cases: {failures:?}");

    runtime.block_on(schema_and_connection_checks(&cluster));
    runtime.block_on(concurrent_appends_share_transactions(&cluster));
    runtime.block_on(a_second_server_takes_the_journal_over(&cluster));
    runtime.block_on(a_taken_over_server_cannot_change_execution_records(&cluster));
    runtime.block_on(cluster_servers_write_only_under_their_partition_epochs(&cluster));
    runtime.block_on(a_claim_racing_appends_lets_none_commit_after_it(&cluster));
    runtime.block_on(a_cluster_append_to_a_removed_execution_is_refused(&cluster));
    runtime.block_on(a_node_finds_its_due_executions_behind_other_nodes(&cluster));
    runtime.block_on(folds_keep_journals_whole_for_readers(&cluster));
    runtime.block_on(appends_to_one_execution_queued_together_all_land(&cluster));
    runtime.block_on(appends_survive_connections_cut_mid_write(&cluster));
    runtime.block_on(a_version_1_database_is_upgraded(&cluster));
}

#[test]
fn a_throwaway_cluster_loads_pg_stat_statements_and_runs_on_the_cpus_given() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options = PgOptions { stat_statements: true, cpus: Some("0".to_owned()) };
    let cluster = PgCluster::start_with(&std::env::temp_dir(), &options);
    runtime.block_on(async {
        let client = sql_client(&cluster.create_database().await).await;
        client.batch_execute("CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset()").await.unwrap();
        client.query("SELECT relname FROM pg_class WHERE relname = $1", &[&"pg_class"]).await.unwrap();
        let seen: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_statements WHERE query LIKE 'SELECT relname FROM pg_class%'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 1);
        // The backend serving this connection was forked with the postmaster's affinity.
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let cpus = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:")).unwrap();
        assert_eq!(cpus.trim(), "0");
    });
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

fn events(id: ExecutionId, sequences: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    sequences.map(|sequence| load_event(id, sequence)).collect()
}

/// The server that connects last writes the journals: it folds what the one before left, and
/// the one before takes no more appends, while reads and other calls go on.
async fn a_second_server_takes_the_journal_over(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let first = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let ids = create_executions(&first, 3).await;
    for id in &ids {
        first.append(events(*id, 1..=2)).await.unwrap();
    }
    let second = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let takeover = second.takeover();
    assert_eq!(takeover.epoch, first.takeover().epoch + 1);
    assert_eq!((takeover.frames, takeover.events), (3, 6), "{takeover:?}");
    assert!(takeover.unreadable.is_empty(), "{takeover:?}");
    for _ in 0..2 {
        let err = first.append(vec![load_event(ids[0], 3)]).await.unwrap_err();
        assert!(matches!(&err, StoreError::Fenced(m) if m.contains("taken over")), "{err}");
    }
    for id in &ids {
        assert_eq!(second.read_journal(*id, 1).await.unwrap(), events(*id, 1..=2));
        assert_eq!(first.read_journal(*id, 2).await.unwrap(), events(*id, 2..=2));
    }
    second.append(vec![load_event(ids[0], 3)]).await.unwrap();
    let err = second.append(vec![load_event(ids[1], 2)]).await.unwrap_err();
    assert_eq!(err, StoreError::SequenceConflict { execution: ids[1], expected: 3, got: 2 });
    let client = sql_client(&url).await;
    assert_eq!(count(&client, "baton_journal_chunks").await, 3, "the takeover folded one chunk per execution");
}

/// A server that was taken over writes no execution record: were its update to land after
/// the new writer recovered the execution, an execution failed there would never be resumed.
async fn a_taken_over_server_cannot_change_execution_records(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let first = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let ids = create_executions(&first, 2).await;
    let running = |store: &PostgresStore, id| {
        let store = store.clone();
        async move {
            let mut execution = store.get_execution(id).await.unwrap();
            execution.state = ExecutionState::Running;
            store.update_execution(ExecutionUpdate::from(&execution)).await
        }
    };
    running(&first, ids[0]).await.unwrap();
    let second = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let before = second.get_execution(ids[0]).await.unwrap();
    let mut failed = before.clone();
    failed.state = ExecutionState::Failed;
    failed.error = Some("journal write failed".to_owned());
    let err = first.update_execution(ExecutionUpdate::from(&failed)).await.unwrap_err();
    assert!(matches!(&err, StoreError::Fenced(m) if m.contains("epoch 1")), "{err}");
    assert_eq!(second.get_execution(ids[0]).await.unwrap(), before, "the fenced update wrote nothing");
    let err = running(&first, ids[1]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    // The new writer writes as before.
    assert_eq!(running(&second, ids[1]).await.unwrap().state, ExecutionState::Running);
    let completed = second.update_execution(ExecutionUpdate::from(&failed)).await.unwrap();
    assert_eq!(completed.state, ExecutionState::Failed);
}

/// An id of an execution in `partition` of `partitions`.
fn id_in(partition: u32, partitions: u32) -> ExecutionId {
    loop {
        let id = ExecutionId::generate();
        if id.partition(partitions) == partition {
            return id;
        }
    }
}

/// In a cluster every write for an execution commits only under its partition's epoch: once
/// another server claimed the partition (a raised epoch), the first one's appends, updates and
/// creations there are fenced, while its other partitions go on; the new owner reads what the
/// first one committed without any fold, and appends after it.
async fn cluster_servers_write_only_under_their_partition_epochs(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let config = Config::new(url.clone());
    // A server outside the cluster is fenced out by the first server of the cluster.
    let single = PostgresStore::connect(&config).await.unwrap();
    let a_owns = Arc::new(FixedOwnership::all(4, 1));
    let a = PostgresStore::connect_partitioned(&config, a_owns.clone()).await.unwrap();
    let client = sql_client(&url).await;
    own_partitions(&client, 4, "a").await;
    let mut execution = load_execution();
    execution.id = id_in(0, 4);
    let err = single.create_execution(execution.clone(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    let (taken, kept) = (id_in(2, 4), id_in(3, 4));
    for id in [taken, kept] {
        a.create_execution(Execution { id, ..load_execution() }, None).await.unwrap();
        a.append(events(id, 1..=2)).await.unwrap();
    }
    // b claims partition 2.
    client.execute("UPDATE baton_partitions SET owner = 'b', epoch = 2 WHERE id = 2", &[]).await.unwrap();
    let b_owns = Arc::new(FixedOwnership::all(4, 1));
    for partition in [0, 1, 3] {
        b_owns.remove(partition);
    }
    b_owns.set(2, 2);
    let b = PostgresStore::connect_partitioned(&config, b_owns).await.unwrap();
    let err = a.append(vec![load_event(taken, 3)]).await.unwrap_err();
    assert!(matches!(&err, StoreError::Fenced(m) if m.contains("partition 2") && m.contains("epoch 1")), "{err}");
    let before = b.get_execution(taken).await.unwrap();
    let mut failed = before.clone();
    failed.state = ExecutionState::Failed;
    let err = a.update_execution(ExecutionUpdate::from(&failed)).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    assert_eq!(b.get_execution(taken).await.unwrap(), before, "the fenced update wrote nothing");
    let err = a.create_execution(Execution { id: id_in(2, 4), ..load_execution() }, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    // a's other partitions go on, in one append with a fenced one too.
    a.append(vec![load_event(kept, 3)]).await.unwrap();
    let (fenced, ok) = tokio::join!(a.append(vec![load_event(taken, 3)]), a.append(vec![load_event(kept, 4)]));
    assert!(matches!(fenced, Err(StoreError::Fenced(_))), "{fenced:?}");
    ok.unwrap();
    // b reads what a committed, and continues it.
    assert_eq!(b.read_journal(taken, 1).await.unwrap(), events(taken, 1..=2));
    assert_eq!(b.read_journal(kept, 1).await.unwrap(), events(kept, 1..=4));
    b.append(vec![load_event(taken, 3)]).await.unwrap();
    let err = b.append(vec![load_event(taken, 3)]).await.unwrap_err();
    assert_eq!(err, StoreError::SequenceConflict { execution: taken, expected: 4, got: 3 });
    assert_eq!(a.read_journal(taken, 2).await.unwrap(), events(taken, 2..=3));
    assert_eq!(b.update_execution(ExecutionUpdate::from(&failed)).await.unwrap().state, ExecutionState::Failed);
    // Each server recovers only its own partitions.
    assert_eq!(a.unfinished_executions().await.unwrap(), [kept]);
    assert!(b.unfinished_executions().await.unwrap().is_empty(), "taken has failed");
    // A partition this server does not own is refused before any SQL.
    a_owns.remove(3);
    let err = a.append(vec![load_event(kept, 5)]).await.unwrap_err();
    assert!(matches!(&err, StoreError::Fenced(m) if m.contains("does not own partition 3")), "{err}");
    a_owns.set(3, 1);
    a.append(vec![load_event(kept, 5)]).await.unwrap();
}

/// A claim raising a partition's epoch while a server appends there without pause: an append
/// that reaches the partition while the claim holds it waits, and is fenced once the claim
/// commits; what the claim's transaction reads is the whole journal for good, and every append
/// the server was told had landed is in it. Another partition's appends, in the same batches,
/// go on.
async fn a_claim_racing_appends_lets_none_commit_after_it(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let config = Config::new(url.clone());
    let a = PostgresStore::connect_partitioned(&config, Arc::new(FixedOwnership::all(4, 1))).await.unwrap();
    let client = sql_client(&url).await;
    own_partitions(&client, 4, "a").await;
    let taken: Vec<ExecutionId> = (0..4).map(|_| id_in(2, 4)).collect();
    let kept = id_in(3, 4);
    for id in taken.iter().chain([&kept]) {
        a.create_execution(Execution { id: *id, ..load_execution() }, None).await.unwrap();
    }
    let appended = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Each writer appends until refused (or told to stop), and returns its last landed
    // sequence number with the refusal.
    let writer = |id: ExecutionId| {
        let (a, appended, stop) = (a.clone(), Arc::clone(&appended), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut landed = 0;
            while !stop.load(Ordering::Relaxed) {
                match a.append(vec![load_event(id, landed + 1)]).await {
                    Ok(()) => landed += 1,
                    Err(e) => return (landed, Some(e)),
                }
                appended.fetch_add(1, Ordering::Relaxed);
            }
            (landed, None)
        })
    };
    let taken_writers: Vec<_> = taken.iter().map(|id| writer(*id)).collect();
    let kept_writer = writer(kept);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while appended.load(Ordering::Relaxed) < 50 {
        assert!(tokio::time::Instant::now() < deadline, "the writers did not get going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut claimer = sql_client(&url).await;
    let claim = claimer.transaction().await.unwrap();
    claim.execute("UPDATE baton_partitions SET owner = 'b', epoch = 2 WHERE id = 2", &[]).await.unwrap();
    // The writer's next statement waits on the claim's row lock.
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no append waited for the claim");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let heads_sql = "SELECT MAX(last_sequence) FROM baton_journal_chunks WHERE execution = $1";
    let mut seen = Vec::new();
    for id in &taken {
        let head: Option<i64> = claim.query_one(heads_sql, &[&id.as_uuid().as_bytes().to_vec()]).await.unwrap().get(0);
        seen.push(head.unwrap_or(0));
    }
    claim.commit().await.unwrap();
    for ((id, writer), seen) in taken.iter().zip(taken_writers).zip(seen) {
        let (landed, error) = writer.await.unwrap();
        assert!(matches!(&error, Some(StoreError::Fenced(m)) if m.contains("partition 2")), "{error:?}");
        assert_eq!(u64::try_from(seen).unwrap(), landed, "the claim saw every landed append of {id}, no more");
        let journal = a.read_journal(*id, 1).await.unwrap();
        assert_eq!(journal, events(*id, 1..=landed), "nothing committed after the claim");
    }
    let before = appended.load(Ordering::Relaxed);
    while appended.load(Ordering::Relaxed) < before + 20 {
        assert!(tokio::time::Instant::now() < deadline, "the other partition's appends stopped");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (landed, error) = kept_writer.await.unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(a.read_journal(kept, 1).await.unwrap(), events(kept, 1..=landed));
}

/// Chunks have no foreign key to their execution (migration 9): in a cluster an append to an
/// execution removed since its head was learnt is refused as not found and writes nothing,
/// while the appends committed beside it land.
async fn a_cluster_append_to_a_removed_execution_is_refused(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let a = PostgresStore::connect_partitioned(&Config::new(url.clone()), Arc::new(FixedOwnership::all(4, 1)))
        .await
        .unwrap();
    let client = sql_client(&url).await;
    own_partitions(&client, 4, "a").await;
    let (removed, kept) = (id_in(1, 4), id_in(1, 4));
    for id in [removed, kept] {
        a.create_execution(Execution { id, ..load_execution() }, None).await.unwrap();
        a.append(events(id, 1..=2)).await.unwrap();
    }
    // Removed as retention removes: its chunks and its row, in one statement.
    let removed_bytes = removed.as_uuid().as_bytes().to_vec();
    client
        .execute(
            "WITH chunks AS (DELETE FROM baton_journal_chunks WHERE execution = $1)
             DELETE FROM baton_executions WHERE id = $1",
            &[&removed_bytes],
        )
        .await
        .unwrap();
    let (refused, landed) = tokio::join!(a.append(events(removed, 3..=3)), a.append(events(kept, 3..=3)));
    assert_eq!(refused, Err(StoreError::NotFound(baton_core::Record::Execution(removed))));
    landed.unwrap();
    let orphans: i64 = client
        .query_one("SELECT count(*) FROM baton_journal_chunks WHERE execution = $1", &[&removed_bytes])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "no chunk outlives its execution");
    assert_eq!(a.read_journal(kept, 1).await.unwrap(), events(kept, 1..=3));
    // Asked again, it is looked up afresh: still not found.
    let err = a.append(events(removed, 3..=3)).await.unwrap_err();
    assert_eq!(err, StoreError::NotFound(baton_core::Record::Execution(removed)));
}

/// `parked_due` and recovery filter a node's partitions in SQL, before the limit: another
/// node's many earlier due executions do not fill the page. Rows written before the database
/// served a cluster get their partition when a cluster store connects.
async fn a_node_finds_its_due_executions_behind_other_nodes(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let config = Config::new(url.clone());
    // Written outside the cluster: no partition yet.
    let single = PostgresStore::connect(&config).await.unwrap();
    let old = single.create_execution(Execution { id: id_in(1, 4), ..load_execution() }, None).await.unwrap();
    drop(single);
    let client = sql_client(&url).await;
    own_partitions(&client, 4, "x").await;
    let a_owns = Arc::new(FixedOwnership::all(4, 1));
    a_owns.remove(2);
    a_owns.remove(3);
    let b_owns = Arc::new(FixedOwnership::all(4, 1));
    b_owns.remove(0);
    b_owns.remove(1);
    let a = PostgresStore::connect_partitioned(&config, a_owns).await.unwrap();
    let b = PostgresStore::connect_partitioned(&config, b_owns).await.unwrap();
    let filled: Option<i32> = client
        .query_one(
            "SELECT partition_id FROM baton_executions WHERE id = $1",
            &[&old.execution.id.as_uuid().as_bytes().to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(filled, Some(1), "the older row got its partition");
    let at = |seconds: i64| baton_core::Timestamp::from_timestamp(1_700_000_000 + seconds, 0).unwrap();
    let park = async |store: &PostgresStore, id: ExecutionId, wake: i64| {
        let created = store.create_execution(Execution { id, ..load_execution() }, None).await.unwrap().execution;
        let parked = ExecutionUpdate {
            parked: Some(baton_core::Parked { until: Some(at(wake)) }),
            ..ExecutionUpdate::from(&created)
        };
        store.update_execution(parked).await.unwrap();
    };
    // b's twenty are due before a's one.
    for n in 0..20 {
        park(&b, id_in(2 + n % 2, 4), i64::from(n)).await;
    }
    let mine = id_in(0, 4);
    park(&a, mine, 100).await;
    assert_eq!(a.parked_due(at(200), 10).await.unwrap(), [mine], "b's due executions fill no page of a's");
    assert_eq!(b.parked_due(at(200), 10).await.unwrap().len(), 10);
    assert_eq!(a.unfinished_executions().await.unwrap(), [old.execution.id]);
    assert!(b.unfinished_executions().await.unwrap().is_empty());
}

/// With folds every few events, journals read whole while appends and folds go on, and after
/// another server took over.
async fn folds_keep_journals_whole_for_readers(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let mut config = Config::new(url.clone());
    config.fold_events = 17;
    let store = PostgresStore::connect(&config).await.unwrap();
    let ids = create_executions(&store, 16).await;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for id in ids.iter().copied().take(4) {
        let (store, done) = (store.clone(), Arc::clone(&done));
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let journal = store.read_journal(id, 1).await.unwrap();
                let length = u64::try_from(journal.len()).unwrap();
                assert_eq!(journal, events(id, 1..=length), "read {reads}");
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for id in ids.iter().copied() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for sequence in 1..=40 {
                store.append(vec![load_event(id, sequence)]).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    for id in &ids {
        assert_eq!(store.read_journal(*id, 1).await.unwrap(), events(*id, 1..=40));
        assert_eq!(store.read_journal(*id, 25).await.unwrap(), events(*id, 25..=40));
    }
    let client = sql_client(&url).await;
    assert!(count(&client, "baton_journal_chunks").await > 16, "the events were folded in several windows");
    let again = PostgresStore::connect(&config).await.unwrap();
    for id in &ids {
        assert_eq!(again.read_journal(*id, 1).await.unwrap(), events(*id, 1..=40));
    }
    assert_eq!(count(&client, "baton_journal_frames").await, 0);
}

/// Appends to one execution sent one after another without waiting all land, in order, though
/// two connections write frames: each waits for the frame before it.
async fn appends_to_one_execution_queued_together_all_land(cluster: &PgCluster) {
    let store = PostgresStore::connect(&Config::new(cluster.create_database().await)).await.unwrap();
    let id = create_executions(&store, 1).await[0];
    type Append = Pin<Box<dyn Future<Output = StoreResult<()>> + Send>>;
    let mut appends: Vec<Option<Append>> = (1..=300)
        .map(|sequence| {
            let store = store.clone();
            Some(Box::pin(async move { store.append(vec![load_event(id, sequence)]).await }) as Append)
        })
        .collect();
    // Polled in order, so they queue in order.
    std::future::poll_fn(|cx| {
        for slot in &mut appends {
            if let Some(append) = slot
                && let std::task::Poll::Ready(result) = append.as_mut().poll(cx)
            {
                result.unwrap();
                *slot = None;
            }
        }
        if appends.iter().all(Option::is_none) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    assert_eq!(store.read_journal(id, 1).await.unwrap(), events(id, 1..=300));
}

/// Every connection to the database is cut, again and again, while appends run. An append
/// either lands and is acknowledged, or fails and is not there: retried, it lands once.
async fn appends_survive_connections_cut_mid_write(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let store = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let ids = create_executions(&store, 16).await;
    let mut writers = Vec::new();
    for id in ids.iter().copied() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut failures = 0;
            for sequence in 1..=150 {
                loop {
                    match store.append(vec![load_event(id, sequence)]).await {
                        Ok(()) => break,
                        Err(StoreError::Unavailable(_)) if failures < 1000 => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("append {sequence} of {id}: {e}"),
                    }
                }
            }
            failures
        }));
    }
    let admin = sql_client(&url).await;
    let mut cut = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        cut += rows.len();
    }
    let mut failures = 0;
    for writer in writers {
        failures += writer.await.unwrap();
    }
    eprintln!("cut {cut} connections; {failures} appends failed and were retried");
    assert!(cut > 0);
    for id in &ids {
        assert_eq!(store.read_journal(*id, 1).await.unwrap(), events(*id, 1..=150));
    }
    drop(store);
    let again = PostgresStore::connect(&Config::new(url)).await.unwrap();
    for id in &ids {
        assert_eq!(again.read_journal(*id, 1).await.unwrap(), events(*id, 1..=150));
    }
}

/// A database with the first schema (a row per event) keeps its journals, which continue.
async fn a_version_1_database_is_upgraded(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    let client = sql_client(&url).await;
    client
        .batch_execute(
            "CREATE TABLE baton_schema_migrations (version INT4 PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    client.batch_execute(MIGRATIONS[0].sql).await.unwrap();
    client.execute("INSERT INTO baton_schema_migrations VALUES (1, $1, 0)", &[&MIGRATIONS[0].name]).await.unwrap();
    let execution = load_execution();
    let id = execution.id.as_uuid().as_bytes().to_vec();
    let created_at = timestamp_nanos("created_at", execution.created_at).unwrap();
    client
        .execute(
            "INSERT INTO baton_executions (id, workflow, state, created_at, revision, idempotency_key, record)
             VALUES ($1, $2, $3, $4, 0, NULL, $5)",
            &[
                &id,
                &execution.workflow.as_str(),
                &execution.state.to_string(),
                &created_at,
                &serde_json::to_string(&execution).unwrap(),
            ],
        )
        .await
        .unwrap();
    for event in events(execution.id, 1..=3) {
        let sequence = i64::try_from(event.sequence).unwrap();
        client
            .execute(
                "INSERT INTO baton_journal (execution, sequence, event) VALUES ($1, $2, $3)",
                &[&id, &sequence, &serde_json::to_string(&event).unwrap()],
            )
            .await
            .unwrap();
    }

    let store = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    assert_eq!(store.read_journal(execution.id, 1).await.unwrap(), events(execution.id, 1..=3));
    store.append(vec![load_event(execution.id, 4)]).await.unwrap();
    assert_eq!(store.read_journal(execution.id, 2).await.unwrap(), events(execution.id, 2..=4));
    let gone = client.query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'baton_journal'", &[]).await.unwrap();
    assert!(gone.is_none(), "the old journal table is dropped");
}

async fn concurrent_appends_share_transactions(cluster: &PgCluster) {
    let store = PostgresStore::connect(&Config::new(cluster.create_database().await)).await.unwrap();
    let executions = baton_store::conformance::create_executions(&store, 64).await;
    baton_store::conformance::append_concurrently(&store, &executions, 10).await;
    let stats = store.commit_stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.writes, 640);
    assert!(stats.transactions * 4 <= stats.writes, "{stats:?}");
}

async fn schema_and_connection_checks(cluster: &PgCluster) {
    let url = cluster.create_database().await;
    // Migrations are recorded once, and connecting again applies nothing twice.
    let store = PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    PostgresStore::connect(&Config::new(url.clone())).await.unwrap();
    let client = sql_client(&url).await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM baton_schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());

    // A schema newer than this build is refused.
    client.execute("INSERT INTO baton_schema_migrations VALUES (999, 'future', 0)", &[]).await.unwrap();
    let err = PostgresStore::connect(&Config::new(url.clone())).await.unwrap_err();
    assert!(err.to_string().contains("schema version 999"), "{err}");

    // A broken connection string is invalid, an unreachable server unavailable.
    let err = PostgresStore::connect(&Config::new("not a connection string")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Invalid { field, .. } if field == "url"), "{err}");
    let err =
        PostgresStore::connect(&Config::new("postgres://nobody@127.0.0.1:1/none?connect_timeout=2")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(store.list_definitions().await.unwrap().is_empty());
}
