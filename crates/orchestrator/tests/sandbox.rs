//! The expression sandbox with real `baton eval-worker` processes: each kind of bomb is
//! stopped at its bound with the right error, only its worker dies, the next evaluation is
//! answered by a new one, and evaluations never hold the async runtime's thread.

use std::path::PathBuf;
use std::time::Duration;

use baton::sandbox::{STACK_BYTES, Sandbox, SandboxConfig};
use baton_core::expr::{Bound, Limits};
use baton_core::{EvalError, Evaluator, Expression};
use serde_json::{Value, json};

fn sandbox(workers: usize, cpu_time: Duration) -> Sandbox {
    Sandbox::new(SandboxConfig {
        program: PathBuf::from(env!("CARGO_BIN_EXE_baton")),
        workers,
        limits: Limits { cpu_time, memory_bytes: 32 << 20, output_bytes: 64 << 10 },
    })
}

async fn evaluate(sandbox: &Sandbox, sources: &[&str]) -> Result<Vec<Value>, EvalError> {
    let expressions: Vec<Expression> = sources.iter().map(|s| Expression::compile("input", s).unwrap()).collect();
    let refs: Vec<&Expression> = expressions.iter().collect();
    sandbox.evaluate(&refs, &json!({"input": {"n": 20}}), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bomb_stops_at_its_bound_and_the_next_evaluation_is_answered() {
    let sandbox = sandbox(1, Duration::from_secs(1));
    let cases: [(&str, Bound); 6] = [
        ("[range(1e12)] | length", Bound::Memory(32 << 20)),
        ("reduce range(33) as $i (\"x\"; . + .)", Bound::Memory(32 << 20)),
        ("def f: f+1; f", Bound::Stack(STACK_BYTES)),
        ("last(range(1e11))", Bound::CpuTime(Duration::from_secs(1))),
        ("[range(100000)]", Bound::Output(64 << 10)),
        ("reduce range(200) as $i (0; [.])", Bound::Depth(128)),
    ];
    for (bomb, bound) in cases {
        let error = evaluate(&sandbox, &[bomb]).await.unwrap_err();
        assert_eq!((error.expression.as_str(), error.bound.as_ref()), (bomb, Some(&bound)), "{error}");
        assert!(error.to_string().starts_with(&format!("expression_limit: expression `{bomb}` ")), "{error}");
        // The sandbox carries on: the same worker, or a new one when the bomb killed its own.
        assert_eq!(
            evaluate(&sandbox, &[".input.n + 1", "\"n=\\(.input.n)\""]).await.unwrap(),
            [json!(21), json!("n=20")]
        );
    }
    let stats = sandbox.stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.workers, 1);
    // Memory twice, stack and CPU time once each killed the worker; output and depth did not.
    assert_eq!(stats.workers_started, 5, "{stats:?}");
    let counted: Vec<(&str, u64)> = stats.limits.into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counted, [("cpu_time", 1), ("memory", 2), ("stack", 1), ("output", 1), ("depth", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_errors_name_the_expression_of_a_batch_that_failed() {
    let sandbox = sandbox(1, Duration::from_secs(1));
    let error = evaluate(&sandbox, &[".input.n + 1", ".input.n + \"x\"", "1"]).await.unwrap_err();
    assert_eq!((error.expression.as_str(), &error.bound), (".input.n + \"x\"", &None));
    assert!(error.reason.starts_with("failed: cannot"), "{error}");
    // A bomb that kills its worker is named too, though the worker cannot say so any more.
    let error = evaluate(&sandbox, &[".input.n", "def f: f+1; f", "1"]).await.unwrap_err();
    assert_eq!((error.expression.as_str(), error.bound), ("def f: f+1; f", Some(Bound::Stack(STACK_BYTES))));
    // jq cannot read the server's environment or end its process.
    for denied in ["env", "$ENV", "halt", "halt_error(1)", "input"] {
        assert!(Expression::compile("input", denied).is_err(), "{denied}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn spinning_evaluations_leave_the_runtime_thread_free_and_dropping_one_kills_its_worker() {
    let sandbox = sandbox(2, Duration::from_secs(30));
    let spin = |sandbox: Sandbox| async move { evaluate(&sandbox, &["last(range(1e11))"]).await };
    let first = tokio::spawn(spin(sandbox.clone()));
    let second = tokio::spawn(spin(sandbox.clone()));
    // On this one thread, this loop runs only because the two evaluations do not hold it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sandbox.stats().in_flight < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sandbox.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A third evaluation waits for a worker; abandoning the two spinning ones frees both.
    let third = tokio::spawn({
        let sandbox = sandbox.clone();
        async move { evaluate(&sandbox, &[".input.n * 2"]).await }
    });
    first.abort();
    second.abort();
    assert_eq!(third.await.unwrap().unwrap(), [json!(40)]);
    let stats = sandbox.stats();
    assert_eq!((stats.in_flight, stats.workers), (0, 1), "the spinning workers were killed: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_that_went_past_a_bound_leaves_half_the_workers_to_the_others() {
    let sandbox = sandbox(2, Duration::from_secs(1));
    let bomb = "last(range(1e11))";
    let first = evaluate(&sandbox, &[bomb]).await.unwrap_err();
    assert_eq!(first.bound, Some(Bound::CpuTime(Duration::from_secs(1))), "{first:?}");
    assert_eq!(sandbox.stats().suspects, 1);

    // The same bomb twice more: as a suspect it gets one of the two workers at a time, so an
    // innocent expression is answered at once, while the first of them still spins and the
    // second still waits for it (without the suspects' share, both would spin on both
    // workers and the innocent one would wait for the first to be stopped).
    let bombs: Vec<_> = (0..2)
        .map(|_| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move { evaluate(&sandbox, &[bomb]).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sandbox.stats().in_flight < 1 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sandbox.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(evaluate(&sandbox, &[".input.n * 2"]).await.unwrap(), [json!(40)]);
    assert!(bombs.iter().all(|bomb| !bomb.is_finished()), "the innocent expression waited for a bomb");
    for bomb in bombs {
        let error = bomb.await.unwrap().unwrap_err();
        assert_eq!(error.bound, Some(Bound::CpuTime(Duration::from_secs(1))), "{error:?}");
    }
}
