//! The shared worker-task table against a throwaway PostgreSQL cluster, one database per
//! case: two nodes' handles on one table, ownership told by a fake whose epochs the test
//! moves as a takeover would.

use std::sync::Arc;
use std::time::Duration;

use baton_cluster::tasks::{Enqueued, NewTask, Outcome, Settings, TaskError, TaskQueues};
use baton_core::ExecutionId;
use baton_core::activity::QueueDepth;
use baton_core::fakes::FixedOwnership;
use baton_store::postgres::{Config as StoreConfig, PostgresStore};
use baton_store::testing::{PgCluster, own_partitions, sql_client};

const PARTITIONS: u32 = 4;

#[test]
fn worker_tasks_on_postgres() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = PgCluster::start();
    runtime.block_on(async {
        a_task_queued_on_one_node_is_leased_and_answered_on_another(&cluster).await;
        leases_expire_into_new_tokens_and_then_into_a_failure(&cluster).await;
        a_withdrawn_task_asks_its_holder_to_stop(&cluster).await;
        a_new_owner_adopts_tasks_and_the_old_one_is_fenced(&cluster).await;
        queues_are_capped_and_closed_rows_removed(&cluster).await;
    });
}

/// A database with the store's schema and `PARTITIONS` partitions under epoch 1.
async fn database(cluster: &PgCluster) -> (String, tokio_postgres::Client) {
    let url = cluster.create_database().await;
    drop(PostgresStore::connect(&StoreConfig::new(url.clone())).await.unwrap());
    let client = sql_client(&url).await;
    own_partitions(&client, PARTITIONS, "a").await;
    (url, client)
}

fn settings(lease_ms: u64) -> Settings {
    Settings {
        lease: Duration::from_millis(lease_ms),
        max_queue_len: 100,
        max_expired_leases: Some(3),
        retention: Duration::from_secs(3600),
    }
}

fn task(execution: ExecutionId, step: &str, attempt: u32) -> NewTask {
    NewTask {
        queue: "images".to_owned(),
        execution,
        step: step.to_owned(),
        attempt,
        service: "resizer".to_owned(),
        payload: format!(r#"{{"step":"{step}"}}"#),
        call_key: format!("{execution}/{step}"),
    }
}

fn open(enqueued: Enqueued) -> baton_cluster::tasks::TaskRef {
    match enqueued {
        Enqueued::Open(task) => task,
        other @ Enqueued::Answered(..) => panic!("expected an open task: {other:?}"),
    }
}

fn not_live(result: Result<impl std::fmt::Debug, TaskError>, why: &str) {
    match result {
        Err(TaskError::NotLive(message)) => assert!(message.contains(why), "{message}"),
        other => panic!("expected a refused token ({why}): {other:?}"),
    }
}

async fn a_task_queued_on_one_node_is_leased_and_answered_on_another(cluster: &PgCluster) {
    let (url, _client) = database(cluster).await;
    let a = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 1)), settings(30_000)).unwrap();
    let b = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 1)), settings(30_000)).unwrap();
    let execution = ExecutionId::generate();
    let first = open(a.enqueue(task(execution, "resize", 1)).await.unwrap());
    let second = open(a.enqueue(task(execution, "crop", 1)).await.unwrap());
    let depths = b.depths().await.unwrap();
    assert_eq!(depths, [QueueDepth { queue: "images".to_owned(), queued: 2, leased: 0 }], "a's tasks, seen by b");
    // Two polls at once take different tasks.
    let queues = ["images".to_owned()];
    let (one, two) = tokio::join!(b.claim(&queues, "w1", 1), a.claim(&queues, "w2", 1));
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!((one.len(), two.len()), (1, 1));
    assert_ne!(one[0].id, two[0].id);
    let mut ids = [one[0].id, two[0].id];
    ids.sort_unstable();
    let mut expected = [first.id, second.id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(b.claim(&queues, "w3", 5).await.unwrap().is_empty(), "nothing left");
    let depths = a.depths().await.unwrap();
    assert_eq!(
        depths,
        [QueueDepth { queue: "images".to_owned(), queued: 0, leased: 2 }],
        "both leased, by either node"
    );
    let leased = one.into_iter().find(|t| t.id == first.id).or_else(|| two.into_iter().find(|t| t.id == first.id));
    let leased = leased.unwrap();
    assert_eq!((leased.delivery, leased.step.as_str(), leased.execution), (1, "resize", execution));
    assert_eq!(leased.call_key, format!("{execution}/resize"));
    assert_eq!(leased.payload, r#"{"step":"resize"}"#);
    // Not answered yet; then answered through the other node.
    assert!(a.outcomes(&[first.id, second.id]).await.unwrap().is_empty());
    not_live(b.complete(first.id, 2, "1").await, "stale");
    b.complete(first.id, 1, r#"{"done":true}"#).await.unwrap();
    not_live(b.complete(first.id, 1, "2").await, "already answered");
    not_live(b.extend(first.id, 1).await, "already answered");
    not_live(b.complete(7, 1, "2").await, "names no task");
    let answers = a.outcomes(&[first.id, second.id]).await.unwrap();
    assert_eq!(answers, [(first, Outcome::Succeeded(r#"{"done":true}"#.to_owned()))]);
}

async fn leases_expire_into_new_tokens_and_then_into_a_failure(cluster: &PgCluster) {
    let (url, _client) = database(cluster).await;
    let a = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 1)), settings(300)).unwrap();
    let queued = open(a.enqueue(task(ExecutionId::generate(), "resize", 1)).await.unwrap());
    let queues = ["images".to_owned()];
    let mut delivery = 0;
    for expected in 1..=3 {
        let leased = claim_within(&a, &queues, Duration::from_secs(5)).await;
        assert_eq!((leased.id, leased.delivery), (queued.id, expected));
        if expected == 1 {
            // An extension renews the lease; an old token is refused.
            let extension = a.extend(leased.id, leased.delivery).await.unwrap();
            assert!(!extension.cancel_requested);
            assert!(extension.expires_at >= leased.lease_expires_at);
        }
        delivery = leased.delivery;
    }
    not_live(a.complete(queued.id, 1, "1").await, "stale");
    // The third lease expires too: the task is answered with lease_expired, never again leased.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let answers = loop {
        let answers = a.outcomes(&[queued.id]).await.unwrap();
        if !answers.is_empty() {
            break answers;
        }
        assert!(tokio::time::Instant::now() < deadline, "the third lease did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answers[0].1, Outcome::LeaseExpired { leases: 3, worker: "w".to_owned() });
    not_live(a.complete(queued.id, delivery, "1").await, "already answered");
    assert!(a.claim(&queues, "w", 1).await.unwrap().is_empty());
}

/// Polls until a task is leased to worker `w`.
async fn claim_within(queues: &TaskQueues, names: &[String], within: Duration) -> baton_cluster::tasks::Claimed {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(task) = queues.claim(names, "w", 1).await.unwrap().pop() {
            return task;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing leased within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_withdrawn_task_asks_its_holder_to_stop(cluster: &PgCluster) {
    let (url, _client) = database(cluster).await;
    let a = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 1)), settings(30_000)).unwrap();
    let b = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 1)), settings(30_000)).unwrap();
    let execution = ExecutionId::generate();
    let queued = open(a.enqueue(task(execution, "resize", 1)).await.unwrap());
    let leased = b.claim(&["images".to_owned()], "w", 1).await.unwrap().pop().unwrap();
    assert!(a.withdraw(execution, queued).await.unwrap());
    let extension = b.extend(leased.id, leased.delivery).await.unwrap();
    assert!(extension.cancel_requested);
    not_live(b.complete(leased.id, leased.delivery, "1").await, "withdrew");
    // A withdrawn queued task is never leased; the same attempt dispatched again reopens it.
    let other = ExecutionId::generate();
    let waiting = open(a.enqueue(task(other, "resize", 1)).await.unwrap());
    assert!(a.withdraw(other, waiting).await.unwrap());
    assert!(b.claim(&["images".to_owned()], "w", 5).await.unwrap().is_empty());
    let again = open(a.enqueue(task(other, "resize", 1)).await.unwrap());
    assert_eq!(again.id, waiting.id);
    assert_eq!(b.claim(&["images".to_owned()], "w", 5).await.unwrap().len(), 1);
}

async fn a_new_owner_adopts_tasks_and_the_old_one_is_fenced(cluster: &PgCluster) {
    let (url, client) = database(cluster).await;
    let old_owns = Arc::new(FixedOwnership::all(PARTITIONS, 1));
    let old = TaskQueues::new(&url, old_owns.clone(), settings(30_000)).unwrap();
    let (answered, waiting) = (ExecutionId::generate(), ExecutionId::generate());
    let done = open(old.enqueue(task(answered, "resize", 1)).await.unwrap());
    let leased_task = open(old.enqueue(task(waiting, "resize", 1)).await.unwrap());
    let queues = ["images".to_owned()];
    let leased = old.claim(&queues, "w", 5).await.unwrap();
    assert_eq!(leased.len(), 2);
    let done_delivery = leased.iter().find(|t| t.id == done.id).unwrap().delivery;
    old.complete(done.id, done_delivery, "42").await.unwrap();
    // Another node claims every partition (a raised epoch); the old one still thinks it owns them.
    client.execute("UPDATE baton_partitions SET owner = 'b', epoch = 2", &[]).await.unwrap();
    let new = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 2)), settings(30_000)).unwrap();
    // The old owner's writes change nothing.
    let fenced = old.withdraw(waiting, leased_task).await;
    assert_eq!(fenced, Ok(false), "a fenced withdrawal writes nothing");
    let err = old.enqueue(task(ExecutionId::generate(), "resize", 1)).await.unwrap_err();
    assert!(matches!(&err, TaskError::Fenced(m) if m.contains("epoch 1")), "{err}");
    old_owns.remove(answered.partition(PARTITIONS));
    let err = old.enqueue(task(answered, "resize", 2)).await.unwrap_err();
    assert!(matches!(&err, TaskError::Fenced(m) if m.contains("does not own")), "{err}");
    // The new owner dispatches both steps again: it gets the answer, and waits on the open task.
    match new.enqueue(task(answered, "resize", 1)).await.unwrap() {
        Enqueued::Answered(task, outcome) => {
            assert_eq!(task.id, done.id);
            assert_eq!(outcome, Outcome::Succeeded("42".to_owned()));
        }
        other => panic!("the answer was not adopted: {other:?}"),
    }
    let adopted = open(new.enqueue(task(waiting, "resize", 1)).await.unwrap());
    assert_eq!(adopted, leased_task, "the open task is adopted, not queued twice");
    let held = leased.iter().find(|t| t.id == leased_task.id).unwrap();
    new.complete(held.id, held.delivery, "7").await.unwrap();
    assert_eq!(new.outcomes(&[adopted.id]).await.unwrap(), [(adopted, Outcome::Succeeded("7".to_owned()))]);
    // A completed row is adopted even under a later attempt (its success was not journaled);
    // a failed one is replaced by the next attempt, and old tokens stay refused.
    assert!(matches!(new.enqueue(task(waiting, "resize", 2)).await.unwrap(), Enqueued::Answered(..)));
    let failing = open(new.enqueue(task(waiting, "crop", 1)).await.unwrap());
    let first_try = new.claim(&queues, "w", 5).await.unwrap().pop().unwrap();
    new.fail(first_try.id, first_try.delivery, "out of memory", true).await.unwrap();
    let retried = open(new.enqueue(task(waiting, "crop", 2)).await.unwrap());
    assert_eq!((retried.id, retried.attempt), (failing.id, 2));
    let again = new.claim(&queues, "w", 5).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].attempt, again[0].delivery), (2, first_try.delivery + 1));
    not_live(new.complete(first_try.id, first_try.delivery, "8").await, "stale");
    // An open row adopted under a later attempt takes it: a late withdrawal of the earlier
    // attempt misses it.
    let open_again = open(new.enqueue(task(waiting, "crop", 3)).await.unwrap());
    assert_eq!((open_again.id, open_again.attempt), (failing.id, 3));
    assert!(!new.withdraw(waiting, retried).await.unwrap(), "the older attempt's withdrawal changes nothing");
    new.extend(again[0].id, again[0].delivery).await.unwrap();
    let count: i64 = client.query_one("SELECT count(*) FROM baton_worker_tasks", &[]).await.unwrap().get(0);
    assert_eq!(count, 3, "one row per step");
}

async fn queues_are_capped_and_closed_rows_removed(cluster: &PgCluster) {
    let (url, client) = database(cluster).await;
    let mut capped = settings(30_000);
    capped.max_queue_len = 2;
    capped.retention = Duration::ZERO;
    let a = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 1)), capped).unwrap();
    let execution = ExecutionId::generate();
    let first = open(a.enqueue(task(execution, "one", 1)).await.unwrap());
    open(a.enqueue(task(execution, "two", 1)).await.unwrap());
    let err = a.enqueue(task(execution, "three", 1)).await.unwrap_err();
    assert_eq!(err, TaskError::QueueFull { queue: "images".to_owned(), depth: 2 });
    let dropped = a.claim(&["images".to_owned()], "w", 1).await.unwrap().pop().unwrap();
    assert_eq!(dropped.id, first.id);
    // A claim for a poll that went away goes back to the head of the queue, its token unused.
    a.release(std::slice::from_ref(&dropped)).await.unwrap();
    let leased = a.claim(&["images".to_owned()], "w", 1).await.unwrap().pop().unwrap();
    assert_eq!((leased.id, leased.delivery), (first.id, 2));
    not_live(a.complete(dropped.id, dropped.delivery, "1").await, "stale");
    open(a.enqueue(task(execution, "three", 1)).await.unwrap());
    a.fail(leased.id, leased.delivery, "disk full", false).await.unwrap();
    assert_eq!(
        a.outcomes(&[first.id]).await.unwrap(),
        [(first, Outcome::Failed { message: "disk full".to_owned(), retryable: false })]
    );
    // The answer of an execution still running stays; once it ended, the row goes: only this
    // node's partitions, under their current epochs.
    let id = execution.as_uuid().as_bytes().to_vec();
    client
        .execute(
            "INSERT INTO baton_executions (id, workflow, state, created_at, revision, record)
             VALUES ($1, 'w', 'running', 0, 0, '{}')",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(a.remove_closed(100).await.unwrap(), 0, "its execution may still need it");
    client.execute("UPDATE baton_executions SET state = 'completed' WHERE id = $1", &[&id]).await.unwrap();
    let other = TaskQueues::new(&url, Arc::new(FixedOwnership::all(PARTITIONS, 9)), settings(30_000)).unwrap();
    assert_eq!(other.remove_closed(100).await.unwrap(), 0);
    assert_eq!(a.remove_closed(100).await.unwrap(), 1);
    let left: i64 = client.query_one("SELECT count(*) FROM baton_worker_tasks", &[]).await.unwrap().get(0);
    assert_eq!(left, 2);
}
