//! The worker-queue invoker through its public API: workers polling, leasing, completing,
//! failing and extending tasks, alone and under a real executor, in tokio's paused time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_core::fakes::{FakeClock, RecordingSink};
use baton_core::{ErrorPolicy, Event, EventKind, ExecutionId, RetryPolicy, ServiceId, StepId, Template};
use baton_executor::{
    Call, Config, Delivery, Executor, Failure, Invoker, LeaseError, LeaseToken, Outcome, QueueStats, RunSpec, TaskSpec,
    WorkerConfig, WorkerQueues,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// Queues where service `s` is served by queue `q-s`, except `stranger`, which has none.
fn queues(config: WorkerConfig) -> WorkerQueues {
    config.build(Arc::new(|s: &ServiceId| (s.as_str() != "stranger").then(|| format!("q-{s}"))))
}

fn call(service: &str, step: &str) -> Call {
    Call {
        execution: ExecutionId::generate(),
        step: StepId::new(step).unwrap(),
        attempt: 1,
        service: ServiceId::new(service).unwrap(),
        payload: json!({"step": step}),
        request: None,
        timeout: None,
        trace: None,
    }
}

/// Yields until `cond` holds; other tasks run meanwhile, the paused clock does not move.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Makes `call` in a task of its own; returns once its task is queued or leased.
async fn spawn_call(queues: &WorkerQueues, call: Call) -> JoinHandle<Result<Value, Failure>> {
    let queue = format!("q-{}", call.service);
    let busy = |s: QueueStats| s.queued + s.leased;
    let before = busy(queues.stats(&queue));
    let q = queues.clone();
    let handle = tokio::spawn(async move { q.invoke(call).await });
    until("the call is queued", || busy(queues.stats(&queue)) > before).await;
    handle
}

/// Starts a poll in a task of its own; returns once it waits.
async fn spawn_poll(queues: &WorkerQueues, queue: &str, max: usize, wait: Duration) -> JoinHandle<Vec<Delivery>> {
    let before = queues.stats(queue).pollers;
    let (q, name) = (queues.clone(), queue.to_owned());
    let handle = tokio::spawn(async move { q.poll(&name, "worker", max, wait).await });
    until("the poll waits", || queues.stats(queue).pollers > before).await;
    handle
}

fn steps(tasks: &[Delivery]) -> Vec<&str> {
    tasks.iter().map(|t| t.call.step.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn tasks_are_delivered_fifo_with_their_call() {
    let q = queues(WorkerConfig::default());
    let mut calls = Vec::new();
    let mut handles = Vec::new();
    for step in ["a", "b", "c"] {
        let c = call("s", step);
        calls.push(c.clone());
        handles.push(spawn_call(&q, c).await);
    }
    let tasks = q.poll("q-s", "w1", 10, Duration::ZERO).await;
    assert_eq!(steps(&tasks), ["a", "b", "c"]);
    for (task, call) in tasks.iter().zip(&calls) {
        assert_eq!(&task.call, call);
        assert_eq!(task.call.idempotency_key(), format!("{}/{}", call.execution, call.step));
        assert_eq!(task.token.delivery(), 1);
        assert_eq!(task.deadline, Instant::now() + WorkerConfig::default().lease);
    }
    // Answers go to their own calls, whatever the order.
    q.complete(tasks[2].task, tasks[2].token, json!("C")).unwrap();
    q.fail(tasks[1].task, tasks[1].token, Failure::permanent("bad", "no")).unwrap();
    q.complete(tasks[0].task, tasks[0].token, json!("A")).unwrap();
    let results: Vec<_> = futures(handles).await;
    assert_eq!(results, [Ok(json!("A")), Err(Failure::permanent("bad", "no")), Ok(json!("C"))]);
    assert_eq!(q.stats("q-s"), QueueStats::default());
}

async fn futures<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_wakes_when_a_task_arrives_and_ends_empty_at_its_wait() {
    let q = queues(WorkerConfig::default());
    let started = Instant::now();
    assert!(q.poll("q-s", "w", 1, SECOND * 3).await.is_empty());
    assert_eq!(started.elapsed(), SECOND * 3);

    let started = Instant::now();
    let poll = spawn_poll(&q, "q-s", 1, SECOND * 30).await;
    tokio::time::sleep(SECOND * 2).await;
    let _call = spawn_call(&q, call("s", "late")).await;
    let tasks = poll.await.unwrap();
    assert_eq!(steps(&tasks), ["late"]);
    assert_eq!(started.elapsed(), SECOND * 2, "woken by the task, not the wait");
    assert_eq!(tasks[0].deadline, started + SECOND * 2 + WorkerConfig::default().lease);
}

#[tokio::test(start_paused = true)]
async fn waiting_polls_are_served_in_arrival_order() {
    let q = queues(WorkerConfig::default());
    let polls = [
        spawn_poll(&q, "q-s", 5, SECOND * 60).await,
        spawn_poll(&q, "q-s", 5, SECOND * 60).await,
        spawn_poll(&q, "q-s", 5, SECOND * 60).await,
    ];
    assert_eq!(q.stats("q-s").pollers, 3);
    let _calls = [
        spawn_call(&q, call("s", "first")).await,
        spawn_call(&q, call("s", "second")).await,
        spawn_call(&q, call("s", "third")).await,
    ];
    let got = futures(polls.into()).await;
    let got: Vec<Vec<&str>> = got.iter().map(|t| steps(t)).collect();
    assert_eq!(got, [["first"], ["second"], ["third"]]);
    assert_eq!(q.stats("q-s"), QueueStats { queued: 0, leased: 3, pollers: 0, backlog_age: Duration::ZERO });
}

#[tokio::test(start_paused = true)]
async fn a_poll_takes_at_most_max_tasks() {
    let q = queues(WorkerConfig::default());
    let mut calls = Vec::new();
    for i in 0..5 {
        calls.push(spawn_call(&q, call("s", &format!("t{i}"))).await);
    }
    assert_eq!(steps(&q.poll("q-s", "w", 2, SECOND).await), ["t0", "t1"]);
    assert_eq!(q.queue_depth("q-s"), 3);
    assert_eq!(steps(&q.poll("q-s", "w", 10, SECOND).await), ["t2", "t3", "t4"]);
    assert_eq!(q.queue_depth("q-s"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_goes_back_first_with_a_new_token_and_fences_the_old_one() {
    let lease = SECOND * 10;
    let q = queues(WorkerConfig { lease, ..WorkerConfig::default() });
    let a = spawn_call(&q, call("s", "a")).await;
    let _b = spawn_call(&q, call("s", "b")).await;
    let first = q.poll("q-s", "crashed", 1, Duration::ZERO).await.remove(0);
    assert_eq!((first.call.step.as_str(), first.token), ("a", LeaseToken::new(1)));

    tokio::time::sleep(lease).await;
    let id = first.task;
    assert_eq!(q.complete(id, first.token, json!("late")), Err(LeaseError::Expired { task: id, token: first.token }));
    assert_eq!(q.stats("q-s").queued, 2, "a is back, b still waits");
    let again = q.poll("q-s", "healthy", 1, Duration::ZERO).await.remove(0);
    assert_eq!((again.task, again.token), (id, LeaseToken::new(2)), "the same task, at the front, a new token");
    assert_eq!(again.deadline, Instant::now() + lease);

    // The old holder is fenced off; the task is unaffected.
    let stale = LeaseError::Stale { task: id, token: first.token };
    assert_eq!(q.complete(id, first.token, json!("late")), Err(stale.clone()));
    assert_eq!(q.fail(id, first.token, Failure::permanent("x", "y")), Err(stale.clone()));
    assert_eq!(q.extend(id, first.token), Err(stale));
    assert!(!a.is_finished());
    assert_eq!(q.stats("q-s").leased, 1);

    q.complete(id, again.token, json!("fresh")).unwrap();
    assert_eq!(a.await.unwrap(), Ok(json!("fresh")));
    assert_eq!(q.complete(id, again.token, json!("twice")), Err(LeaseError::Finished(id)));
    let b = q.poll("q-s", "healthy", 1, Duration::ZERO).await;
    assert_eq!((steps(&b), b[0].token), (vec!["b"], LeaseToken::new(1)));
}

#[tokio::test(start_paused = true)]
async fn extending_keeps_a_lease_alive() {
    let lease = SECOND * 10;
    let q = queues(WorkerConfig { lease, ..WorkerConfig::default() });
    let handle = spawn_call(&q, call("s", "long")).await;
    let task = q.poll("q-s", "w", 1, Duration::ZERO).await.remove(0);
    for _ in 0..3 {
        tokio::time::sleep(SECOND * 8).await;
        assert_eq!(q.extend(task.task, task.token), Ok(Instant::now() + lease));
    }
    // 24 s in: well past the first deadline, yet the task is still held.
    tokio::time::sleep(SECOND * 8).await;
    assert_eq!(q.stats("q-s"), QueueStats { queued: 0, leased: 1, pollers: 0, backlog_age: Duration::ZERO });
    assert!(q.poll("q-s", "other", 1, Duration::ZERO).await.is_empty());
    q.complete(task.task, task.token, json!("done")).unwrap();
    assert_eq!(handle.await.unwrap(), Ok(json!("done")));

    // Without heartbeats the lease lapses and cannot be revived.
    let _handle = spawn_call(&q, call("s", "short")).await;
    let task = q.poll("q-s", "w", 1, Duration::ZERO).await.remove(0);
    tokio::time::sleep(lease).await;
    assert_eq!(q.extend(task.task, task.token), Err(LeaseError::Expired { task: task.task, token: task.token }));
    assert_eq!(q.queue_depth("q-s"), 1);
}

#[tokio::test(start_paused = true)]
async fn leases_that_keep_expiring_fail_the_call_without_any_poll() {
    let lease = SECOND * 5;
    let q = queues(WorkerConfig { lease, max_expired_leases: Some(2), ..WorkerConfig::default() });
    let started = Instant::now();
    let handle = spawn_call(&q, call("s", "poison")).await;
    let first = q.poll("q-s", "w1", 1, Duration::ZERO).await.remove(0);
    tokio::time::sleep(lease).await;
    let second = q.poll("q-s", "w2", 1, Duration::ZERO).await.remove(0);
    assert_eq!(second.token, LeaseToken::new(2));
    // Nobody touches the queue again: the waiting call notices the expiry itself.
    let failure = tokio::time::timeout(lease * 10, handle)
        .await
        .expect("the call noticed its expired lease")
        .unwrap()
        .unwrap_err();
    assert_eq!(started.elapsed(), lease * 2);
    assert_eq!((failure.retryable, failure.class.as_str()), (true, "lease_expired"));
    assert!(failure.message.contains("2 leases expired") && failure.message.contains("\"w2\""), "{failure}");
    let id = first.task;
    assert_eq!(q.complete(id, second.token, json!(1)), Err(LeaseError::Expired { task: id, token: second.token }));
    assert_eq!(q.stats("q-s"), QueueStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_calls_retryably() {
    let q = queues(WorkerConfig { max_queue_len: 2, ..WorkerConfig::default() });
    let _a = spawn_call(&q, call("s", "a")).await;
    let _b = spawn_call(&q, call("s", "b")).await;
    let failure = q.invoke(call("s", "c")).await.unwrap_err();
    assert_eq!((failure.retryable, failure.class.as_str()), (true, "queue_full"));
    assert!(failure.message.contains("q-s"), "{failure}");
    assert_eq!(q.queue_depth("q-s"), 2);
    // Leased tasks do not count against the limit; other queues have their own.
    let _taken = q.poll("q-s", "w", 1, Duration::ZERO).await;
    let _c = spawn_call(&q, call("s", "c")).await;
    let _other = spawn_call(&q, call("t", "x")).await;
    assert_eq!((q.queue_depth("q-s"), q.queue_depth("q-t")), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_service_fails_permanently() {
    let q = queues(WorkerConfig::default());
    let failure = q.invoke(call("stranger", "a")).await.unwrap_err();
    assert_eq!((failure.retryable, failure.class.as_str()), (false, "unknown_service"));
    assert!(failure.message.contains("stranger"), "{failure}");
    assert!(q.all_stats().is_empty());
}

#[tokio::test(start_paused = true)]
async fn answers_for_tasks_never_handed_out_are_unknown() {
    let q = queues(WorkerConfig::default());
    let _a = spawn_call(&q, call("s", "a")).await;
    let task = q.poll("q-s", "w", 1, Duration::ZERO).await.remove(0);
    let forged = "ffffffffffffffffffffffffffffffff".parse().unwrap();
    assert_eq!(q.complete(forged, task.token, json!(1)), Err(LeaseError::UnknownTask(forged)));
    let err = q.extend(forged, task.token).unwrap_err();
    assert_eq!(err.to_string(), "task ffffffffffffffffffffffffffffffff is unknown");
    assert_eq!(task.task.to_string().parse(), Ok(task.task));
    assert_eq!(q.stats("q-s").leased, 1, "the real task is unaffected");
}

#[tokio::test(start_paused = true)]
async fn stats_report_backlog_pollers_and_leases() {
    let q = queues(WorkerConfig::default());
    let _a = spawn_call(&q, call("s", "a")).await;
    tokio::time::sleep(SECOND * 4).await;
    let _b = spawn_call(&q, call("s", "b")).await;
    let _t = spawn_call(&q, call("t", "c")).await;
    tokio::time::sleep(SECOND).await;
    let _held = q.poll("q-s", "w", 1, Duration::ZERO).await;
    let _waiting = spawn_poll(&q, "q-u", 1, SECOND * 60).await;
    assert_eq!(
        q.all_stats(),
        [
            ("q-s".to_owned(), QueueStats { queued: 1, leased: 1, pollers: 0, backlog_age: SECOND }),
            ("q-t".to_owned(), QueueStats { queued: 1, leased: 0, pollers: 0, backlog_age: SECOND }),
            ("q-u".to_owned(), QueueStats { queued: 0, leased: 0, pollers: 1, backlog_age: Duration::ZERO }),
        ]
    );
}

// Under a real executor.

const SERVICE: &str = "resize";

fn executor(queues: &WorkerQueues) -> (Executor<WorkerQueues>, RecordingSink<Event>) {
    let events = RecordingSink::default();
    let executor = Config { jitter_seed: Some(7), ..Config::default() }.build(
        Arc::new(queues.clone()),
        Arc::new(events.clone()),
        Arc::new(FakeClock::default()),
    );
    (executor, events)
}

/// One task "a" on the worker service, with `retry` and an attempt timeout.
fn one_task(retry: RetryPolicy, timeout: Option<Duration>) -> RunSpec {
    let task = TaskSpec {
        id: StepId::new("a").unwrap(),
        services: vec![ServiceId::new(SERVICE).unwrap()],
        input: Template::compile("input", &json!({"image": "${ .input.image }"})).unwrap(),
        call: None,
        depends_on: Vec::new(),
        retry,
        timeout,
        task_timeout: None,
        on_error: ErrorPolicy::Fail,
    };
    let output = Template::compile("output", &json!("${ .steps.a.output }")).unwrap();
    RunSpec::new(ExecutionId::generate(), vec![task], output, None).unwrap()
}

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, initial_backoff: SECOND, max_backoff: SECOND, ..RetryPolicy::default() }
}

/// What the test worker does with one task.
enum Act {
    Complete(Value),
    Fail(Failure),
}

/// A worker loop: answers tasks of the service's queue by `script`, one at a time; returns
/// what it was given.
fn worker(queues: &WorkerQueues, script: Vec<Act>) -> JoinHandle<Vec<Delivery>> {
    let q = queues.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for act in script {
            let task = loop {
                if let Some(task) = q.poll(&format!("q-{SERVICE}"), "worker-1", 1, SECOND * 60).await.pop() {
                    break task;
                }
            };
            match act {
                Act::Complete(output) => q.complete(task.task, task.token, output).unwrap(),
                Act::Fail(failure) => q.fail(task.task, task.token, failure).unwrap(),
            }
            seen.push(task);
        }
        seen
    })
}

fn task_events(events: &RecordingSink<Event>) -> Vec<String> {
    events
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TaskFailed { attempt, error, retryable, .. } => {
                Some(format!("failed #{attempt} {error} retryable={retryable}"))
            }
            EventKind::TaskSucceeded { attempt, .. } => Some(format!("succeeded #{attempt}")),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_retryable_worker_failure_is_retried_by_the_executor() {
    let q = queues(WorkerConfig::default());
    let (executor, events) = executor(&q);
    let worker = worker(
        &q,
        vec![Act::Fail(Failure::retryable("busy", "try later")), Act::Complete(json!({"thumb": "cat-small.png"}))],
    );
    let run = one_task(retry(3), None);
    let outcome = executor.start(run, json!({"image": "cat.png"}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome, Outcome::Completed(json!({"thumb": "cat-small.png"})));
    let seen = worker.await.unwrap();
    assert_eq!(seen.iter().map(|t| t.call.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(seen[0].call.payload, json!({"image": "cat.png"}));
    assert_eq!(seen[0].call.idempotency_key(), seen[1].call.idempotency_key());
    assert_ne!(seen[0].task, seen[1].task, "each attempt is a task of its own");
    assert_eq!(task_events(&events), ["failed #1 busy: try later retryable=true", "succeeded #2"]);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_worker_failure_fails_the_run_at_once() {
    let q = queues(WorkerConfig::default());
    let (executor, events) = executor(&q);
    let worker = worker(&q, vec![Act::Fail(Failure::permanent("bad_image", "not a PNG"))]);
    let outcome = executor.start(one_task(retry(3), None), json!({"image": "x"}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error().as_deref(), Some("step a failed: bad_image: not a PNG"));
    assert_eq!(worker.await.unwrap().len(), 1);
    assert_eq!(task_events(&events), ["failed #1 bad_image: not a PNG retryable=false"]);
    // A class the policy names is not retried even when the worker says it may be.
    let worker2 = self::worker(&q, vec![Act::Fail(Failure::retryable("quota", "over quota"))]);
    let policy = RetryPolicy { non_retryable: vec!["quota".to_owned()], ..retry(3) };
    let outcome = executor.start(one_task(policy, None), json!({"image": "x"}), BTreeMap::new()).outcome().await;
    assert_eq!(outcome.error().as_deref(), Some("step a failed: quota: over quota"));
    assert_eq!(worker2.await.unwrap().len(), 1);
    assert_eq!(q.stats(&format!("q-{SERVICE}")), QueueStats::default());
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_run_withdraws_its_queued_task() {
    let q = queues(WorkerConfig::default());
    let (executor, _) = executor(&q);
    let queue = format!("q-{SERVICE}");
    let run = executor.start(one_task(retry(1), None), json!({"image": "x"}), BTreeMap::new());
    until("the task is queued", || q.queue_depth(&queue) == 1).await;
    run.cancel("user gave up");
    assert_eq!(run.outcome().await, Outcome::Cancelled("user gave up".to_owned()));
    assert_eq!(q.queue_depth(&queue), 0);
    assert!(q.poll(&queue, "w", 1, Duration::ZERO).await.is_empty(), "no worker ever sees it");
}

#[tokio::test(start_paused = true)]
async fn the_holder_of_a_cancelled_or_timed_out_task_is_told() {
    let q = queues(WorkerConfig::default());
    let (executor, events) = executor(&q);
    let queue = format!("q-{SERVICE}");

    // Cancelled while a worker holds it.
    let run = executor.start(one_task(retry(1), None), json!({"image": "x"}), BTreeMap::new());
    let held = q.poll(&queue, "w", 1, SECOND * 60).await.remove(0);
    run.cancel("stop");
    assert_eq!(run.outcome().await, Outcome::Cancelled("stop".to_owned()));
    let id = held.task;
    assert_eq!(q.extend(id, held.token), Err(LeaseError::Cancelled(id)), "a heartbeat learns of it");
    assert_eq!(q.complete(id, held.token, json!("too late")), Err(LeaseError::Cancelled(id)));

    // The attempt timed out while a worker held it; the retry is a fresh task.
    let run = executor.start(one_task(retry(2), Some(SECOND * 5)), json!({"image": "y"}), BTreeMap::new());
    let slow = q.poll(&queue, "slow", 1, SECOND * 60).await.remove(0);
    let fast = q.poll(&queue, "fast", 1, SECOND * 60).await.remove(0);
    assert_eq!((slow.call.attempt, fast.call.attempt), (1, 2));
    assert_eq!(q.complete(slow.task, slow.token, json!("slow")), Err(LeaseError::Cancelled(slow.task)));
    q.complete(fast.task, fast.token, json!("fast")).unwrap();
    assert_eq!(run.outcome().await, Outcome::Completed(json!("fast")));
    assert!(task_events(&events).contains(&"failed #1 timeout: attempt timed out after 5s retryable=true".to_owned()));
    assert_eq!(q.stats(&queue), QueueStats::default());
}

#[tokio::test(start_paused = true)]
async fn many_runs_share_one_queue_and_its_workers() {
    let q = queues(WorkerConfig::default());
    let (executor, _) = executor(&q);
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (q, answered) = (q.clone(), Arc::clone(&answered));
            tokio::spawn(async move {
                loop {
                    for task in q.poll(&format!("q-{SERVICE}"), &format!("w{w}"), 4, SECOND * 60).await {
                        let output = json!({"by": w, "image": task.call.payload["image"]});
                        q.complete(task.task, task.token, output).unwrap();
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let runs: Vec<_> =
        (0..30).map(|i| executor.start(one_task(retry(1), None), json!({"image": i}), BTreeMap::new())).collect();
    for (i, run) in runs.into_iter().enumerate() {
        match run.outcome().await {
            Outcome::Completed(output) => assert_eq!(output["image"], json!(i), "run {i} got another's answer"),
            other => panic!("run {i}: {other:?}"),
        }
    }
    assert_eq!(answered.load(Ordering::Relaxed), 30, "each task answered once");
    for w in workers {
        w.abort();
    }
}
