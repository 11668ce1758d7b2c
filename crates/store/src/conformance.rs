//! The conformance suite (`test-util` feature): one set of tests every [`Store`] must pass.
//!
//! Each case is an async function over a [`Harness`], which opens the store under test and can
//! damage its stored data. [`conformance_tests!`](crate::conformance_tests) turns the cases into
//! one `#[tokio::test]` each, [`durable_conformance_tests!`](crate::durable_conformance_tests)
//! adds the cases that need data to outlive a store handle, and [`run_all`] runs every case
//! concurrently inside one test (what the PostgreSQL suite does, so that one throwaway cluster
//! serves the whole binary).
//!
//! ```text
//! baton_store::conformance_tests!(baton_store::testing::RedbHarness::new());
//! baton_store::durable_conformance_tests!(baton_store::testing::RedbHarness::new());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::future::Future;

use baton_core::{
    CreatedExecution, Event, EventKind, Execution, ExecutionFilter, ExecutionId, ExecutionState, ExecutionUpdate,
    IdempotencyKey, NewDefinition, Order, PageRequest, PageToken, PutDefinition, Record, ServiceId, StepId, Store,
    StoreError, TaskState, TaskStatus, Timestamp, WorkflowName,
};
use serde_json::json;

/// Opens the store under test, and damages what it stored.
pub trait Harness: Send + Sync + 'static {
    /// The store under test.
    type Store: Store + Clone;
    /// Whether data outlives the store handles (false for the in-memory store).
    const DURABLE: bool;
    /// Opens the store over this harness's data: the same data every time.
    fn open(&self) -> impl Future<Output = Self::Store> + Send;
    /// Damages the stored data. Every handle of the store is dropped first.
    fn damage(&self, damage: Damage) -> impl Future<Output = ()> + Send;
}

/// A hand-made corruption of a stored journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The event is removed, leaving a gap.
    RemoveEvent {
        /// Whose journal.
        execution: ExecutionId,
        /// Which event.
        sequence: u64,
    },
    /// The event is overwritten with something that is not that event.
    GarbleEvent {
        /// Whose journal.
        execution: ExecutionId,
        /// Which event.
        sequence: u64,
    },
}

/// Runs `$callback!((args) case, case, ...)` over every case for all stores.
#[doc(hidden)]
#[macro_export]
macro_rules! __each_conformance_case {
    ($callback:ident ($($args:tt)*)) => {
        $crate::$callback!(($($args)*)
            definitions_are_versioned,
            concurrent_puts_get_distinct_versions,
            idempotent_create_under_racing_tasks,
            executions_follow_the_state_machine,
            journal_rejects_gaps_and_repeats,
            concurrent_appenders,
            pagination_is_stable_while_inserting,
            listings_filter,
            idempotency_keys_find_their_execution,
            corrupt_journal_is_reported_for_that_execution_only,
            parked_executions_leave_recovery_and_come_back_due,
            expired_executions_go_with_their_journal_and_key,
            starts_of_the_latest_version_give_way_to_newer_ones
        );
    };
}

/// Runs `$callback!((args) case, ...)` over every case for durable stores only.
#[doc(hidden)]
#[macro_export]
macro_rules! __each_durable_case {
    ($callback:ident ($($args:tt)*)) => {
        $crate::$callback!(($($args)*) reopen_keeps_everything);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    (($harness:expr) $($case:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            $crate::conformance::$case(&$harness).await;
        }
    )*};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_spawn {
    (($make:ident, $tasks:ident) $($case:ident),*) => {$(
        let harness = $make(stringify!($case)).await;
        $tasks.push((
            stringify!($case),
            tokio::spawn(async move { $crate::conformance::$case(&harness).await }),
        ));
    )*};
}

/// One `#[tokio::test]` per conformance case, each over a harness built by `$harness`. The
/// calling crate needs tokio with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::__each_conformance_case!(__conformance_test_fns($harness));
    };
}

/// One `#[tokio::test]` per case that needs data to outlive a store handle.
#[macro_export]
macro_rules! durable_conformance_tests {
    ($harness:expr) => {
        $crate::__each_durable_case!(__conformance_test_fns($harness));
    };
}

/// Runs every case (the durable ones too when `H::DURABLE`) concurrently, each over the
/// harness `make` builds for it, and returns each case's name with its failure, if any.
pub async fn run_all<H, F, Fut>(make: F) -> Vec<(&'static str, Result<(), String>)>
where
    H: Harness,
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = H>,
{
    let mut tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)> = Vec::new();
    crate::__each_conformance_case!(__conformance_spawn(make, tasks));
    if H::DURABLE {
        crate::__each_durable_case!(__conformance_spawn(make, tasks));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for (name, task) in tasks {
        let result = task.await.map_err(|e| match e.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned()),
            Err(e) => e.to_string(),
        });
        results.push((name, result));
    }
    results
}

/// A time in the suite's epoch: `seconds` after 2027-01-15.
fn at(seconds: i64) -> Timestamp {
    Timestamp::from_timestamp(1_800_000_000 + seconds, 0).expect("in range")
}

fn name(text: &str) -> WorkflowName {
    WorkflowName::new(text).expect("valid name")
}

fn definition(workflow: &str, hash: &str, seconds: i64) -> NewDefinition {
    NewDefinition {
        name: name(workflow),
        content_hash: hash.to_owned(),
        body: json!({"name": workflow, "steps": [{"id": "a", "service": "svc", "input": {"n": 1.5, "hash": hash}}]}),
        created_at: at(seconds),
    }
}

fn execution(workflow: &str, created_at: Timestamp) -> Execution {
    let step = StepId::new("charge").expect("valid step");
    Execution {
        id: ExecutionId::generate(),
        workflow: name(workflow),
        version: 1,
        state: ExecutionState::Created,
        input: json!({"order": 42, "items": ["a", "b"], "note": "ünïcödé"}),
        output: None,
        error: None,
        tasks: BTreeMap::from([(step, TaskStatus::default())]),
        created_at,
        updated_at: created_at,
        trace: None,
        parent: None,
        problem: None,
        parked: None,
        retention: None,
        expires_at: None,
    }
}

fn event(execution: ExecutionId, sequence: u64) -> Event {
    let kind = match sequence % 3 {
        0 => EventKind::Started { input: json!({"n": sequence}) },
        1 => EventKind::TaskScheduled {
            step: StepId::new("charge").expect("valid step"),
            attempt: 1,
            service: ServiceId::new("pay").expect("valid id"),
        },
        _ => EventKind::TaskSucceeded {
            step: StepId::new("charge").expect("valid step"),
            attempt: 1,
            output: json!({"receipt": sequence}),
            context: None,
        },
    };
    Event {
        execution,
        sequence,
        // Nanoseconds, to catch a store that rounds times.
        at: Timestamp::from_timestamp(1_800_000_000, 123_456_789).expect("in range"),
        kind,
    }
}

fn events(execution: ExecutionId, sequences: impl IntoIterator<Item = u64>) -> Vec<Event> {
    sequences.into_iter().map(|s| event(execution, s)).collect()
}

async fn create<S: Store>(store: &S, execution: Execution) -> Execution {
    let created = store.create_execution(execution, None).await.expect("creates");
    assert!(created.created);
    created.execution
}

/// Every page of a listing, in order, with the store's tokens.
async fn all_pages<S: Store>(store: &S, filter: &ExecutionFilter, mut page: PageRequest) -> Vec<Execution> {
    let mut seen = Vec::new();
    loop {
        let got = store.list_executions(filter, &page).await.expect("lists");
        assert!(got.executions.len() <= page.effective_limit());
        seen.extend(got.executions);
        match got.next {
            Some(token) => page.token = Some(token),
            None => return seen,
        }
    }
}

fn position(execution: &Execution) -> (Timestamp, uuid_order::Key) {
    (execution.created_at, uuid_order::key(execution.id))
}

mod uuid_order {
    use baton_core::ExecutionId;

    /// The order the port promises for ids: as UUIDs.
    pub(super) type Key = [u8; 16];

    pub(super) fn key(id: ExecutionId) -> Key {
        *id.as_uuid().as_bytes()
    }
}

/// Put the same content twice: one version. Change it: the next version. Versions are read
/// back exactly, and the listing shows the latest of each name.
pub async fn definitions_are_versioned<H: Harness>(h: &H) {
    let store = h.open().await;
    let put = |d: NewDefinition| store.put_definition(d);
    assert_eq!(put(definition("checkout", "h1", 0)).await.unwrap(), PutDefinition { version: 1, created: true });
    assert_eq!(put(definition("checkout", "h1", 1)).await.unwrap(), PutDefinition { version: 1, created: false });
    assert_eq!(put(definition("checkout", "h2", 2)).await.unwrap(), PutDefinition { version: 2, created: true });
    // Back to older content is still a change from the latest.
    assert_eq!(put(definition("checkout", "h1", 3)).await.unwrap(), PutDefinition { version: 3, created: true });
    assert_eq!(put(definition("billing", "h1", 4)).await.unwrap(), PutDefinition { version: 1, created: true });

    let latest = store.get_definition(&name("checkout"), None).await.unwrap();
    let expected = definition("checkout", "h1", 3);
    assert_eq!(
        (latest.version, &latest.content_hash, &latest.body, latest.created_at),
        (3, &expected.content_hash, &expected.body, expected.created_at)
    );
    let second = store.get_definition(&name("checkout"), Some(2)).await.unwrap();
    assert_eq!((second.version, second.content_hash.as_str(), second.created_at), (2, "h2", at(2)));
    assert_eq!(second.body, definition("checkout", "h2", 2).body);

    assert_eq!(
        store.get_definition(&name("checkout"), Some(4)).await.unwrap_err(),
        StoreError::NotFound(Record::Definition { name: name("checkout"), version: Some(4) })
    );
    assert_eq!(
        store.get_definition(&name("nothing"), None).await.unwrap_err(),
        StoreError::NotFound(Record::Definition { name: name("nothing"), version: None })
    );
    let listed: Vec<(String, u32)> =
        store.list_definitions().await.unwrap().into_iter().map(|d| (d.name.to_string(), d.version)).collect();
    assert_eq!(listed, [("billing".to_owned(), 1), ("checkout".to_owned(), 3)]);
}

/// An execution stored as of the latest version is refused, storing nothing, once a newer
/// version was put; a reused idempotency key answers its execution, of whichever version.
pub async fn starts_of_the_latest_version_give_way_to_newer_ones<H: Harness>(h: &H) {
    let store = h.open().await;
    store.put_definition(definition("latest", "h1", 0)).await.unwrap();
    let key = IdempotencyKey::new("latest-1").unwrap();
    let first = execution("latest", at(1));
    let created = store.create_latest_execution(first.clone(), Some(key.clone())).await.unwrap();
    assert!(created.is_some_and(|c| c.created && c.execution.id == first.id));
    store.put_definition(definition("latest", "h2", 2)).await.unwrap();
    let stale = execution("latest", at(3));
    assert!(store.create_latest_execution(stale.clone(), None).await.unwrap().is_none());
    assert_eq!(store.get_execution(stale.id).await.unwrap_err(), StoreError::NotFound(Record::Execution(stale.id)));
    let again = store.create_latest_execution(stale.clone(), Some(key)).await.unwrap();
    assert!(again.is_some_and(|c| !c.created && c.execution.id == first.id), "the key's execution");
    let current = Execution { version: 2, ..stale };
    let created = store.create_latest_execution(current.clone(), None).await.unwrap();
    assert!(created.is_some_and(|c| c.created));
    assert_eq!(store.get_execution(current.id).await.unwrap().version, 2);
}

/// Racing puts of different content get distinct consecutive versions; racing puts of the
/// same content make one version.
pub async fn concurrent_puts_get_distinct_versions<H: Harness>(h: &H) {
    let store = h.open().await;
    let racers = 16;
    let mut tasks = Vec::new();
    for i in 0..racers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.put_definition(definition("race", &format!("h{i}"), i)).await }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        let put = task.await.unwrap().unwrap();
        assert!(put.created);
        versions.push(put.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<u32>>());

    let mut tasks = Vec::new();
    for i in 0..racers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.put_definition(definition("race", "same", 100 + i)).await }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|p| p.created).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|p| p.version == 17), "{outcomes:?}");
    assert_eq!(store.get_definition(&name("race"), None).await.unwrap().content_hash, "same");
}

/// 100 tasks creating with one idempotency key make one execution, and all of them get it.
pub async fn idempotent_create_under_racing_tasks<H: Harness>(h: &H) {
    let store = h.open().await;
    let key = IdempotencyKey::new("order-42").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move { store.create_execution(execution("shop", at(0)), Some(key)).await }));
    }
    let mut created: Vec<CreatedExecution> = Vec::new();
    for task in tasks {
        created.push(task.await.unwrap().unwrap());
    }
    assert_eq!(created.iter().filter(|c| c.created).count(), 1);
    let winner = created.iter().find(|c| c.created).unwrap().execution.clone();
    assert!(created.iter().all(|c| c.execution == winner));
    assert_eq!(store.get_execution(winner.id).await.unwrap(), winner);
    assert_eq!(store.find_by_idempotency_key(&key).await.unwrap(), Some(winner.clone()));
    assert_eq!(
        all_pages(&store, &ExecutionFilter::default(), PageRequest::default()).await,
        std::slice::from_ref(&winner)
    );

    // Another key is another execution.
    let other = store.create_execution(execution("shop", at(1)), Some(IdempotencyKey::new("order-43").unwrap()));
    let other = other.await.unwrap();
    assert!(other.created);
    assert_ne!(other.execution.id, winner.id);

    // A taken id is refused, with or without a fresh key, and the fresh key stays unused.
    let mut clash = execution("shop", at(2));
    clash.id = winner.id;
    assert_eq!(store.create_execution(clash.clone(), None).await.unwrap_err(), StoreError::AlreadyExists(winner.id));
    let fresh = IdempotencyKey::new("order-44").unwrap();
    assert_eq!(
        store.create_execution(clash, Some(fresh.clone())).await.unwrap_err(),
        StoreError::AlreadyExists(winner.id)
    );
    assert!(store.create_execution(execution("shop", at(3)), Some(fresh)).await.unwrap().created);
}

/// Executions read back exactly; updates move them through the state machine only, and a
/// refused update changes nothing.
pub async fn executions_follow_the_state_machine<H: Harness>(h: &H) {
    let store = h.open().await;
    let original = execution("shop", at(0));
    let created = store.create_execution(original.clone(), None).await.unwrap();
    assert_eq!(created, CreatedExecution { execution: original.clone(), created: true });
    assert_eq!(store.get_execution(original.id).await.unwrap(), original);

    let mut running = ExecutionUpdate::from(&original);
    running.state = ExecutionState::Running;
    running.updated_at = Timestamp::from_timestamp(1_800_000_001, 987_654_321).unwrap();
    let task = running.tasks.values_mut().next().unwrap();
    task.state = TaskState::Running;
    task.attempts = 1;
    task.service = Some(ServiceId::new("pay").unwrap());
    task.started_at = Some(running.updated_at);
    let after = store.update_execution(running.clone()).await.unwrap();
    assert_eq!(
        (after.state, after.updated_at, &after.tasks),
        (ExecutionState::Running, running.updated_at, &running.tasks)
    );
    assert_eq!((after.input.clone(), after.created_at), (original.input.clone(), original.created_at));
    assert_eq!(store.get_execution(original.id).await.unwrap(), after);

    let mut completed = ExecutionUpdate::from(&after);
    completed.state = ExecutionState::Completed;
    completed.output = Some(json!({"receipt": "r-1"}));
    completed.updated_at = at(2);
    let done = store.update_execution(completed.clone()).await.unwrap();
    assert_eq!(done.output, completed.output);

    // Keeping the state is always allowed; leaving an end state never is.
    completed.error = Some("late note".to_owned());
    assert_eq!(store.update_execution(completed.clone()).await.unwrap().error.as_deref(), Some("late note"));
    let mut stale = running;
    stale.updated_at = at(3);
    assert_eq!(
        store.update_execution(stale).await.unwrap_err(),
        StoreError::StateConflict {
            execution: original.id,
            from: ExecutionState::Completed,
            to: ExecutionState::Running
        }
    );
    let stored = store.get_execution(original.id).await.unwrap();
    assert_eq!(
        (stored.state, &stored.output, stored.updated_at),
        (ExecutionState::Completed, &completed.output, at(2))
    );

    let ghost = ExecutionId::generate();
    let mut update = ExecutionUpdate::from(&stored);
    update.id = ghost;
    assert_eq!(store.update_execution(update).await.unwrap_err(), StoreError::NotFound(Record::Execution(ghost)));
    assert_eq!(store.get_execution(ghost).await.unwrap_err(), StoreError::NotFound(Record::Execution(ghost)));

    let far = execution("shop", Timestamp::from_timestamp(10_000_000_000, 0).unwrap());
    assert!(matches!(store.create_execution(far, None).await, Err(StoreError::Invalid { .. })));
}

/// Appends must continue each journal exactly; a bad append writes nothing, for any of the
/// executions it names.
pub async fn journal_rejects_gaps_and_repeats<H: Harness>(h: &H) {
    let store = h.open().await;
    let a = create(&store, execution("shop", at(0))).await.id;
    let b = create(&store, execution("shop", at(1))).await.id;
    assert_eq!(store.read_journal(a, 1).await.unwrap(), []);
    store.append(events(a, 1..=3)).await.unwrap();
    assert_eq!(store.read_journal(a, 1).await.unwrap(), events(a, 1..=3));

    let conflict = |execution, expected, got| StoreError::SequenceConflict { execution, expected, got };
    assert_eq!(store.append(events(a, [5])).await.unwrap_err(), conflict(a, 4, 5));
    assert_eq!(store.append(events(a, [3])).await.unwrap_err(), conflict(a, 4, 3));
    assert_eq!(store.append(events(a, [4, 6])).await.unwrap_err(), conflict(a, 5, 6));
    assert_eq!(store.append(events(a, [4, 4])).await.unwrap_err(), conflict(a, 5, 4));
    // All or nothing across executions: b's good event is not written either.
    let mixed = vec![event(b, 1), event(a, 4), event(b, 3)];
    assert_eq!(store.append(mixed).await.unwrap_err(), conflict(b, 2, 3));
    assert_eq!(store.read_journal(a, 1).await.unwrap(), events(a, 1..=3));
    assert_eq!(store.read_journal(b, 1).await.unwrap(), []);

    store.append(Vec::new()).await.unwrap();
    store.append(vec![event(b, 1), event(a, 4), event(b, 2)]).await.unwrap();
    assert_eq!(store.read_journal(a, 0).await.unwrap(), events(a, 1..=4));
    assert_eq!(store.read_journal(a, 3).await.unwrap(), events(a, 3..=4));
    assert_eq!(store.read_journal(a, 9).await.unwrap(), []);
    assert_eq!(store.read_journal(b, 1).await.unwrap(), events(b, 1..=2));

    let ghost = ExecutionId::generate();
    assert_eq!(store.append(events(ghost, [1])).await.unwrap_err(), StoreError::NotFound(Record::Execution(ghost)));
    assert_eq!(store.read_journal(ghost, 1).await.unwrap_err(), StoreError::NotFound(Record::Execution(ghost)));
}

/// 64 tasks appending to 64 executions at once all land, in order; 8 tasks racing for the
/// same next event of one execution: exactly one wins.
pub async fn concurrent_appenders<H: Harness>(h: &H) {
    let store = h.open().await;
    let (writers, per_writer) = (64, 20);
    let mut ids = Vec::new();
    for i in 0..writers {
        ids.push(create(&store, execution("load", at(i))).await.id);
    }
    append_concurrently(&store, &ids, per_writer).await;
    for id in &ids {
        assert_eq!(store.read_journal(*id, 1).await.unwrap(), events(*id, 1..=per_writer));
    }

    let contested = ids[0];
    let mut racers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        racers.push(tokio::spawn(async move { store.append(vec![event(contested, per_writer + 1)]).await }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(
                e,
                StoreError::SequenceConflict { execution: contested, expected: per_writer + 2, got: per_writer + 1 }
            ),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.read_journal(contested, per_writer + 1).await.unwrap(), events(contested, [per_writer + 1]));
}

/// Paging by `(created_at, id)` never repeats or skips an execution, even while others are
/// created before and after the cursor; ties in `created_at` are broken by id.
pub async fn pagination_is_stable_while_inserting<H: Harness>(h: &H) {
    let store = h.open().await;
    let mut originals = Vec::new();
    for i in 0..30 {
        // Three executions per second, so pages split ties.
        originals.push(create(&store, execution("shop", at(i / 3))).await);
    }
    let mut expected = originals.clone();
    expected.sort_by_key(position);

    // Oldest first, creating one execution after the end and one before the cursor per page.
    let filter = ExecutionFilter::default();
    let mut page = PageRequest { limit: 7, ..PageRequest::default() };
    let (mut seen, mut later, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let got = store.list_executions(&filter, &page).await.unwrap();
        pages += 1;
        assert!(got.executions.len() <= 7);
        seen.extend(got.executions);
        later.push(create(&store, execution("shop", at(1000 + pages))).await);
        create(&store, execution("shop", at(-1 - pages))).await;
        match got.next {
            Some(token) => page.token = Some(token),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    let ids: Vec<ExecutionId> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "an execution was listed twice");
    assert!(seen.windows(2).all(|w| position(&w[0]) < position(&w[1])), "not in (created_at, id) order");
    let old: Vec<&Execution> = seen.iter().filter(|e| e.created_at >= at(0) && e.created_at < at(1000)).collect();
    assert_eq!(old, expected.iter().collect::<Vec<_>>(), "an original execution was skipped");
    // Created after the cursor passed: listed (all but the one created after the last page).
    for created in &later[..later.len() - 1] {
        assert!(ids.contains(&created.id), "{} created ahead of the cursor was skipped", created.id);
    }
    assert!(seen.iter().all(|e| e.created_at >= at(0)), "an execution created behind the cursor was listed");

    // Newest first: strictly descending, and everything that existed at the start is listed.
    let before: Vec<Execution> = all_pages(&store, &filter, PageRequest { limit: 1000, ..Default::default() }).await;
    let mut page = PageRequest { limit: 4, order: Order::NewestFirst, token: None };
    let mut seen = Vec::new();
    loop {
        let got = store.list_executions(&filter, &page).await.unwrap();
        seen.extend(got.executions);
        create(&store, execution("shop", at(5000 + seen.len() as i64))).await;
        match got.next {
            Some(token) => page.token = Some(token),
            None => break,
        }
    }
    assert!(seen.windows(2).all(|w| position(&w[0]) > position(&w[1])), "not in descending order");
    let mut oldest_first = seen.clone();
    oldest_first.reverse();
    assert_eq!(oldest_first, before);

    // The default page size (100) applies to a limit of 0.
    let mut total = seen.len() + 1;
    while total <= 100 {
        create(&store, execution("shop", at(6000 + total as i64))).await;
        total += 1;
    }
    let first = store.list_executions(&filter, &PageRequest { limit: 0, ..Default::default() }).await.unwrap();
    assert_eq!(first.executions.len(), 100);
    assert!(first.next.is_some());
}

/// Listings filter by workflow, state and creation time, page within a filter, and refuse a
/// token they did not issue; recovery sees exactly the unfinished executions, oldest first.
pub async fn listings_filter<H: Harness>(h: &H) {
    let store = h.open().await;
    let states = [
        ExecutionState::Created,
        ExecutionState::Running,
        ExecutionState::Paused,
        ExecutionState::Completed,
        ExecutionState::Failed,
        ExecutionState::Cancelled,
    ];
    let mut all = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        for workflow in ["alpha", "beta"] {
            let mut created = create(&store, execution(workflow, at(i as i64))).await;
            // Reach the state along legal moves.
            let path: &[ExecutionState] = match state {
                ExecutionState::Created => &[],
                ExecutionState::Paused => &[ExecutionState::Running, ExecutionState::Paused],
                ExecutionState::Completed => &[ExecutionState::Running, ExecutionState::Completed],
                other => &[other],
            };
            for step in path {
                let mut update = ExecutionUpdate::from(&created);
                update.state = *step;
                created = store.update_execution(update).await.unwrap();
            }
            all.push(created);
        }
    }
    all.sort_by_key(position);
    let check = |filter: ExecutionFilter| {
        let store = store.clone();
        let expected: Vec<Execution> = all.iter().filter(|e| filter.matches(e)).cloned().collect();
        async move {
            for limit in [1, 1000] {
                let got = all_pages(&store, &filter, PageRequest { limit, ..Default::default() }).await;
                assert_eq!(got, expected, "{filter:?}, pages of {limit}");
            }
            assert!(!expected.is_empty(), "{filter:?} is a useless case");
        }
    };
    check(ExecutionFilter { workflow: Some(name("alpha")), ..Default::default() }).await;
    check(ExecutionFilter { state: Some(ExecutionState::Running), ..Default::default() }).await;
    check(ExecutionFilter {
        workflow: Some(name("beta")),
        state: Some(ExecutionState::Completed),
        ..Default::default()
    })
    .await;
    check(ExecutionFilter { created_from: Some(at(2)), created_before: Some(at(4)), ..Default::default() }).await;
    check(ExecutionFilter { workflow: Some(name("beta")), created_from: Some(at(3)), ..Default::default() }).await;
    let none = ExecutionFilter { workflow: Some(name("gamma")), ..Default::default() };
    assert_eq!(store.list_executions(&none, &PageRequest::default()).await.unwrap().executions, []);
    let empty_range = ExecutionFilter { created_from: Some(at(4)), created_before: Some(at(4)), ..Default::default() };
    assert_eq!(store.list_executions(&empty_range, &PageRequest::default()).await.unwrap().executions, []);

    let bad = PageRequest { token: Some(PageToken::from_text("page-2".to_owned())), ..Default::default() };
    assert!(matches!(
        store.list_executions(&ExecutionFilter::default(), &bad).await,
        Err(StoreError::Invalid { field, .. }) if field == "page_token"
    ));

    let unfinished: Vec<ExecutionId> = all.iter().filter(|e| !e.state.is_terminal()).map(|e| e.id).collect();
    assert_eq!(unfinished.len(), 6);
    assert_eq!(store.unfinished_executions().await.unwrap(), unfinished);
}

/// An idempotency key finds the execution it created, as it is now; a listing filtered by a
/// key holds that execution alone, when the filter's other fields and the page position pass
/// it, and never has a next page.
pub async fn idempotency_keys_find_their_execution<H: Harness>(h: &H) {
    let store = h.open().await;
    let key = |n: i64| IdempotencyKey::new(&format!("order-{n}")).unwrap();
    let mut keyed = Vec::new();
    for n in 0..20 {
        let workflow = if n % 2 == 0 { "alpha" } else { "beta" };
        // A keyless execution beside each keyed one, created at the same time.
        create(&store, execution(workflow, at(n))).await;
        let created = store.create_execution(execution(workflow, at(n)), Some(key(n))).await.unwrap();
        assert!(created.created);
        keyed.push(created.execution);
    }
    for (n, execution) in (0..).zip(&keyed) {
        assert_eq!(store.find_by_idempotency_key(&key(n)).await.unwrap().as_ref(), Some(execution));
    }
    assert_eq!(store.find_by_idempotency_key(&key(20)).await.unwrap(), None);
    // What a key finds is the execution as it is now, not as it was created.
    let mut update = ExecutionUpdate::from(&keyed[7]);
    update.state = ExecutionState::Running;
    update.updated_at = at(100);
    keyed[7] = store.update_execution(update).await.unwrap();
    assert_eq!(store.find_by_idempotency_key(&key(7)).await.unwrap().as_ref(), Some(&keyed[7]));

    let by_key = |n: i64| ExecutionFilter { idempotency_key: Some(key(n)), ..Default::default() };
    let list = |filter: ExecutionFilter, page: PageRequest| {
        let store = store.clone();
        async move {
            let got = store.list_executions(&filter, &page).await.unwrap();
            assert_eq!(got.next, None, "{filter:?}, {page:?}");
            got.executions
        }
    };
    let seventh = std::slice::from_ref(&keyed[7]);
    for order in [Order::OldestFirst, Order::NewestFirst] {
        for limit in [1, 1000] {
            assert_eq!(list(by_key(7), PageRequest { limit, order, token: None }).await, seventh, "{order:?}");
        }
    }
    // The other fields still apply (key 7 is a running beta, created at 7).
    let first = PageRequest::default();
    let passing = [
        ExecutionFilter { workflow: Some(name("beta")), ..by_key(7) },
        ExecutionFilter { state: Some(ExecutionState::Running), ..by_key(7) },
        ExecutionFilter { created_from: Some(at(7)), created_before: Some(at(8)), ..by_key(7) },
    ];
    for filter in passing {
        assert_eq!(list(filter, first.clone()).await, seventh);
    }
    let failing = [
        ExecutionFilter { workflow: Some(name("alpha")), ..by_key(7) },
        ExecutionFilter { state: Some(ExecutionState::Created), ..by_key(7) },
        ExecutionFilter { created_from: Some(at(8)), ..by_key(7) },
        ExecutionFilter { created_before: Some(at(7)), ..by_key(7) },
        by_key(20),
    ];
    for filter in failing {
        assert_eq!(list(filter, first.clone()).await, []);
    }
    // So does the page position: a page starts after its token.
    let after = |n: usize, order| PageRequest {
        order,
        token: Some(PageToken::at(keyed[n].created_at, keyed[n].id)),
        ..Default::default()
    };
    assert_eq!(list(by_key(7), after(6, Order::OldestFirst)).await, seventh);
    assert_eq!(list(by_key(7), after(8, Order::NewestFirst)).await, seventh);
    for order in [Order::OldestFirst, Order::NewestFirst] {
        assert_eq!(list(by_key(7), after(7, order)).await, [], "{order:?}");
    }
    assert_eq!(list(by_key(7), after(8, Order::OldestFirst)).await, []);
    let bad = PageRequest { token: Some(PageToken::from_text("page-2".to_owned())), ..Default::default() };
    assert!(matches!(
        store.list_executions(&by_key(7), &bad).await,
        Err(StoreError::Invalid { field, .. }) if field == "page_token"
    ));
}

/// A journal with a gap or an unreadable event fails with `Corrupt` naming it; the other
/// executions read as before.
pub async fn corrupt_journal_is_reported_for_that_execution_only<H: Harness>(h: &H) {
    let store = h.open().await;
    let gap = create(&store, execution("shop", at(0))).await;
    let garbled = create(&store, execution("shop", at(1))).await;
    let healthy = create(&store, execution("shop", at(2))).await;
    for id in [gap.id, garbled.id, healthy.id] {
        store.append(events(id, 1..=3)).await.unwrap();
    }
    drop(store);
    h.damage(Damage::RemoveEvent { execution: gap.id, sequence: 2 }).await;
    h.damage(Damage::GarbleEvent { execution: garbled.id, sequence: 1 }).await;
    let store = h.open().await;

    let corrupt = |result: Result<Vec<Event>, StoreError>, id: ExecutionId| match result {
        Err(StoreError::Corrupt { record: Record::Journal(of), reason }) if of == id => reason,
        other => panic!("expected the journal of {id} to be corrupt, got {other:?}"),
    };
    let reason = corrupt(store.read_journal(gap.id, 1).await, gap.id);
    assert!(reason.contains("sequence 2 is missing"), "{reason}");
    let reason = corrupt(store.read_journal(garbled.id, 1).await, garbled.id);
    assert!(reason.contains("event 1"), "{reason}");
    assert_eq!(store.read_journal(healthy.id, 1).await.unwrap(), events(healthy.id, 1..=3));
    store.append(events(healthy.id, [4])).await.unwrap();

    // The records themselves are intact, and recovery still lists all three.
    assert_eq!(store.get_execution(gap.id).await.unwrap(), gap);
    assert_eq!(store.unfinished_executions().await.unwrap(), [gap.id, garbled.id, healthy.id]);
}

/// A parked execution is not among the unfinished ones recovery loads; one parked with a wake
/// time is listed by `parked_due` once the time is reached, earliest first; one parked without
/// (a signal or child wakes it) never is; unparking, or ending, takes it out again.
pub async fn parked_executions_leave_recovery_and_come_back_due<H: Harness>(h: &H) {
    let store = h.open().await;
    let mut running = Vec::new();
    for s in 0..4 {
        let created = create(&store, execution("park", at(10 + s))).await;
        let update = ExecutionUpdate { state: ExecutionState::Running, ..ExecutionUpdate::from(&created) };
        running.push(store.update_execution(update).await.unwrap());
    }
    let park = |execution: &Execution, until: Option<Timestamp>| ExecutionUpdate {
        parked: Some(baton_core::Parked { until }),
        ..ExecutionUpdate::from(execution)
    };
    // 0 wakes at 300, 1 at 200, 2 on a signal; 3 stays loaded.
    let late = store.update_execution(park(&running[0], Some(at(300)))).await.unwrap();
    let early = store.update_execution(park(&running[1], Some(at(200)))).await.unwrap();
    let on_signal = store.update_execution(park(&running[2], None)).await.unwrap();
    assert_eq!(late.parked, Some(baton_core::Parked { until: Some(at(300)) }));
    assert_eq!(store.unfinished_executions().await.unwrap(), [running[3].id]);
    assert_eq!(store.parked_due(at(100), 10).await.unwrap(), Vec::<ExecutionId>::new());
    assert_eq!(store.parked_due(at(250), 10).await.unwrap(), [early.id]);
    assert_eq!(store.parked_due(at(400), 10).await.unwrap(), [early.id, late.id]);
    assert_eq!(store.parked_due(at(400), 1).await.unwrap(), [early.id]);
    // Woken: back among the unfinished, out of the due list.
    let woken =
        store.update_execution(ExecutionUpdate { parked: None, ..ExecutionUpdate::from(&early) }).await.unwrap();
    assert_eq!(store.parked_due(at(400), 10).await.unwrap(), [late.id]);
    assert_eq!(store.unfinished_executions().await.unwrap(), [woken.id, running[3].id]);
    // Re-parked with a new time; then ended while parked: out of both.
    let moved = store.update_execution(park(&late, Some(at(500)))).await.unwrap();
    assert_eq!(store.parked_due(at(400), 10).await.unwrap(), Vec::<ExecutionId>::new());
    let cancelled = ExecutionUpdate { state: ExecutionState::Cancelled, ..ExecutionUpdate::from(&moved) };
    let ended = store.update_execution(cancelled).await.unwrap();
    assert_eq!(ended.parked, None);
    assert_eq!(store.parked_due(at(900), 10).await.unwrap(), Vec::<ExecutionId>::new());
    assert!(!store.unfinished_executions().await.unwrap().contains(&on_signal.id));
    assert!(!store.unfinished_executions().await.unwrap().contains(&ended.id));
}

/// An ended execution expires its retention after its end; removing expired ones takes each
/// with its journal and idempotency key (which then starts a new execution), earliest first,
/// a batch at a time, and leaves every other execution as it was.
pub async fn expired_executions_go_with_their_journal_and_key<H: Harness>(h: &H) {
    let store = h.open().await;
    let minute = std::time::Duration::from_secs(60);
    let start = |key: &str, retention| {
        let store = store.clone();
        let key = IdempotencyKey::new(key).unwrap();
        async move {
            let execution = Execution { retention, ..execution("kept", at(10)) };
            let created = store.create_execution(execution, Some(key)).await.unwrap().execution;
            let running = ExecutionUpdate { state: ExecutionState::Running, ..ExecutionUpdate::from(&created) };
            let running = store.update_execution(running).await.unwrap();
            store.append(events(running.id, 1..=3)).await.unwrap();
            running
        }
    };
    let end = |execution: &Execution, seconds| {
        let update = ExecutionUpdate {
            state: ExecutionState::Completed,
            output: Some(json!({"done": true})),
            updated_at: at(seconds),
            ..ExecutionUpdate::from(execution)
        };
        let store = store.clone();
        async move { store.update_execution(update).await.unwrap() }
    };
    let first = start("first", Some(minute)).await;
    let second = start("second", Some(minute)).await;
    let forever = start("forever", None).await;
    let running = start("running", Some(minute)).await;
    let first = end(&first, 100).await;
    assert_eq!(first.expires_at, Some(at(160)));
    let second = end(&second, 200).await;
    let forever = end(&forever, 100).await;
    assert_eq!(forever.expires_at, None);
    // A rewrite of an ended record keeps its expiry.
    let second = end(&second, 230).await;
    assert_eq!(second.expires_at, Some(at(260)));

    assert_eq!(store.remove_expired(at(159), 10).await.unwrap(), 0);
    assert_eq!(store.remove_expired(at(160), 10).await.unwrap(), 1);
    assert_eq!(store.get_execution(first.id).await.unwrap_err(), StoreError::NotFound(Record::Execution(first.id)));
    assert_eq!(store.read_journal(first.id, 1).await.unwrap_err(), StoreError::NotFound(Record::Execution(first.id)));
    let first_key = IdempotencyKey::new("first").unwrap();
    assert_eq!(store.find_by_idempotency_key(&first_key).await.unwrap(), None);
    let by_key = ExecutionFilter { idempotency_key: Some(first_key.clone()), ..ExecutionFilter::default() };
    assert!(store.list_executions(&by_key, &PageRequest::default()).await.unwrap().executions.is_empty());
    let listed: Vec<ExecutionId> = all_pages(&store, &ExecutionFilter::default(), PageRequest::default())
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, [second.id, forever.id, running.id]);
    let kept = ExecutionFilter { workflow: Some(name("kept")), ..ExecutionFilter::default() };
    assert_eq!(all_pages(&store, &kept, PageRequest::default()).await.len(), 3);
    // The others are untouched.
    for execution in [&second, &forever, &running] {
        assert_eq!(&store.get_execution(execution.id).await.unwrap(), execution);
        assert_eq!(store.read_journal(execution.id, 1).await.unwrap(), events(execution.id, 1..=3));
    }
    let second_key = IdempotencyKey::new("second").unwrap();
    assert_eq!(store.find_by_idempotency_key(&second_key).await.unwrap(), Some(second.clone()));
    // The removed key starts a new execution.
    let again = store.create_execution(execution("kept", at(300)), Some(first_key.clone())).await.unwrap();
    assert!(again.created);
    assert_ne!(again.execution.id, first.id);
    assert_eq!(store.find_by_idempotency_key(&first_key).await.unwrap(), Some(again.execution));

    // A batch at a time; what never expires (no retention, or not ended) stays.
    assert_eq!(store.remove_expired(at(1_000_000), 0).await.unwrap(), 0);
    assert_eq!(store.remove_expired(at(1_000_000), 1).await.unwrap(), 1);
    assert_eq!(store.remove_expired(at(1_000_000), 10).await.unwrap(), 0);
    assert_eq!(store.get_execution(second.id).await.unwrap_err(), StoreError::NotFound(Record::Execution(second.id)));
    assert_eq!(store.find_by_idempotency_key(&second_key).await.unwrap(), None);
    assert_eq!(store.get_execution(forever.id).await.unwrap(), forever);
    assert_eq!(store.get_execution(running.id).await.unwrap(), running);
    assert_eq!(store.read_journal(running.id, 1).await.unwrap(), events(running.id, 1..=3));
    if H::DURABLE {
        drop(store);
        let store = h.open().await;
        assert_eq!(store.get_execution(first.id).await.unwrap_err(), StoreError::NotFound(Record::Execution(first.id)));
        assert_eq!(
            store.read_journal(second.id, 1).await.unwrap_err(),
            StoreError::NotFound(Record::Execution(second.id))
        );
        assert_eq!(store.read_journal(running.id, 1).await.unwrap(), events(running.id, 1..=3));
        assert_eq!(store.remove_expired(at(1_000_000), 10).await.unwrap(), 0);
    }
}

/// Everything written is there after the store is dropped and opened again, and the journal
/// continues where it stopped.
pub async fn reopen_keeps_everything<H: Harness>(h: &H) {
    let store = h.open().await;
    store.put_definition(definition("shop", "h1", 0)).await.unwrap();
    store.put_definition(definition("shop", "h2", 1)).await.unwrap();
    let key = IdempotencyKey::new("k-1").unwrap();
    let created = store.create_execution(execution("shop", at(5)), Some(key.clone())).await.unwrap().execution;
    let mut update = ExecutionUpdate::from(&created);
    update.state = ExecutionState::Running;
    let running = store.update_execution(update).await.unwrap();
    let finished = create(&store, execution("shop", at(6))).await;
    let mut update = ExecutionUpdate::from(&finished);
    update.state = ExecutionState::Cancelled;
    update.error = Some("stopped by test".to_owned());
    let finished = store.update_execution(update).await.unwrap();
    store.append(events(running.id, 1..=5)).await.unwrap();
    let definitions = store.list_definitions().await.unwrap();
    let listing = all_pages(&store, &ExecutionFilter::default(), PageRequest::default()).await;
    drop(store);

    let store = h.open().await;
    assert_eq!(store.list_definitions().await.unwrap(), definitions);
    assert_eq!(store.get_definition(&name("shop"), Some(1)).await.unwrap().content_hash, "h1");
    assert_eq!(store.get_execution(running.id).await.unwrap(), running);
    assert_eq!(store.get_execution(finished.id).await.unwrap(), finished);
    assert_eq!(all_pages(&store, &ExecutionFilter::default(), PageRequest::default()).await, listing);
    assert_eq!(store.unfinished_executions().await.unwrap(), [running.id]);
    assert_eq!(store.read_journal(running.id, 1).await.unwrap(), events(running.id, 1..=5));
    assert_eq!(store.find_by_idempotency_key(&key).await.unwrap(), Some(running.clone()));
    let again = store.create_execution(execution("shop", at(7)), Some(key)).await.unwrap();
    assert_eq!(again, CreatedExecution { execution: running.clone(), created: false });
    assert_eq!(
        store.append(events(running.id, [5])).await.unwrap_err(),
        StoreError::SequenceConflict { execution: running.id, expected: 6, got: 5 }
    );
    store.append(events(running.id, [6])).await.unwrap();
    assert_eq!(
        store.put_definition(definition("shop", "h2", 9)).await.unwrap(),
        PutDefinition { version: 2, created: false }
    );
}

/// Creates `count` executions, for checks of group commit.
pub async fn create_executions<S: Store>(store: &S, count: usize) -> Vec<ExecutionId> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        ids.push(create(store, execution("load", at(i64::try_from(i).unwrap_or(0)))).await.id);
    }
    ids
}

/// Appends `per_writer` events to each of `executions` from a task of its own, one event at a
/// time, and returns once all are durable. For checks of group commit.
pub async fn append_concurrently<S: Store + Clone>(store: &S, executions: &[ExecutionId], per_writer: u64) {
    let mut tasks = Vec::new();
    for id in executions.iter().copied() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for sequence in 1..=per_writer {
                store.append(vec![event(id, sequence)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}
