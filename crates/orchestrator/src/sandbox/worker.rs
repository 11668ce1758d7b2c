//! `baton eval-worker`: the process side of the [sandbox](super). It bounds itself before it
//! reads anything, then evaluates requests from stdin one at a time until stdin closes.
//!
//! - Memory: `RLIMIT_AS` at the process's own size once it has evaluated a first expression
//!   (its code, stacks and allocator arenas) plus the limit, so the limit is what evaluations
//!   may add; an allocation past it fails, and the process aborts saying so on stderr.
//! - Stack: evaluation runs on a thread with a [`STACK_BYTES`] stack;
//!   recursing past it aborts the process, which says so on stderr.
//! - CPU time: a watchdog thread ends the process with exit code 86 once an evaluation has
//!   used its CPU time; `RLIMIT_CPU`, raised before each evaluation to a second or two past
//!   that, is the kernel's backstop (`SIGXCPU`). The same bounds end an orphaned worker whose
//!   server died mid-evaluation.
//! - Priority: nice 10, so a spinning expression takes CPU only the server leaves.
//! - No core dumps, no environment, `/` as working directory (the server sets the last two).

#![allow(
    clippy::print_stderr,
    reason = "stderr is how a worker tells the server why it died; the server reads it then"
)]

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_core::Expression;
use baton_core::expr::{Bound, Evaluation};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use super::{Answer, EXIT_CPU_TIME, ReadRequest, STACK_BYTES, WireBound};

/// Compiled expressions kept, by source; past this the cache starts over.
const CACHED_EXPRESSIONS: usize = 512;

/// `baton eval-worker`'s arguments: the bounds the server asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The process's address space, in bytes.
    #[arg(long)]
    pub memory_bytes: u64,
    /// CPU time of one evaluation, in milliseconds.
    #[arg(long)]
    pub cpu_time_ms: u64,
    /// The values of one evaluation, together, in bytes of JSON.
    #[arg(long)]
    pub output_bytes: usize,
}

/// Runs the worker until stdin closes.
pub fn run(args: &WorkerArgs) -> ExitCode {
    // The panic message is the answer's; the default hook would fill stderr, which the server
    // reads only when the worker dies.
    std::panic::set_hook(Box::new(|_| {}));
    if let Err(error) = limit_self() {
        eprintln!("baton eval-worker: cannot set its limits: {error}");
        return ExitCode::from(2);
    }
    let cpu_time = Duration::from_millis(args.cpu_time_ms);
    let output_bytes = args.output_bytes;
    let watch = Watch::default();
    std::thread::scope(|scope| {
        let evaluating = std::thread::Builder::new()
            .name("evaluate".to_owned())
            .stack_size(STACK_BYTES as usize)
            .spawn_scoped(scope, || {
                let served = limit_memory(args.memory_bytes).and_then(|()| serve(&watch, cpu_time, output_bytes));
                watch.finish();
                served
            });
        let evaluating = match evaluating {
            Ok(thread) => thread,
            Err(error) => {
                eprintln!("baton eval-worker: cannot start its evaluating thread: {error}");
                return ExitCode::from(2);
            }
        };
        watchdog(&watch, cpu_time);
        match evaluating.join() {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                eprintln!("baton eval-worker: {error}");
                ExitCode::FAILURE
            }
            Err(_) => ExitCode::FAILURE,
        }
    })
}

/// No core dumps and a low priority.
fn limit_self() -> io::Result<()> {
    setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })?;
    // Best effort: a worker at the server's priority is still bounded.
    let _ = rustix::process::setpriority_process(None, 10);
    Ok(())
}

/// Evaluates a first expression, so the process has its full size without any request (jq's
/// definitions, this thread's allocator arena), then caps its address space at that size plus
/// `memory_bytes` (or lower, when its hard limit is lower). Called on the evaluating thread.
fn limit_memory(memory_bytes: u64) -> io::Result<()> {
    let warm_up = Expression::compile("expression", "[range(64)] | map(tostring) | add")
        .map_err(|e| io::Error::other(e.to_string()))?;
    warm_up.eval(&serde_json::Value::Null).map_err(|e| io::Error::other(e.to_string()))?;
    let own = own_size().unwrap_or(0);
    let hard = getrlimit(Resource::As).maximum;
    let memory = own.saturating_add(memory_bytes);
    let memory = hard.map_or(memory, |hard| hard.min(memory));
    setrlimit(Resource::As, Rlimit { current: Some(memory), maximum: Some(memory) })?;
    Ok(())
}

/// The process's address space, from `/proc/self/status`.
fn own_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.trim_start_matches("VmSize:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The process's CPU time so far.
fn cpu_time_used() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// What the evaluating thread tells the watchdog.
#[derive(Debug, Default)]
struct Watch {
    state: Mutex<WatchState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct WatchState {
    /// The process's CPU time when the evaluation under way began.
    busy_since: Option<Duration>,
    /// The evaluating thread has ended.
    done: bool,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An evaluation begins: the watchdog starts counting, and the kernel's backstop is set a
    /// second or two past the budget.
    fn begin(&self, cpu_time: Duration) {
        let used = cpu_time_used();
        let backstop = (used + cpu_time).as_secs() + 2;
        let hard = getrlimit(Resource::Cpu).maximum;
        let soft = hard.map_or(backstop, |hard| hard.min(backstop));
        // Best effort: the watchdog bounds the evaluation without it.
        let _ = setrlimit(Resource::Cpu, Rlimit { current: Some(soft), maximum: hard });
        self.lock().busy_since = Some(used);
        self.changed.notify_one();
    }

    fn end(&self) {
        self.lock().busy_since = None;
    }

    fn finish(&self) {
        self.lock().done = true;
        self.changed.notify_one();
    }
}

/// Ends the process once an evaluation has used more than `cpu_time` of CPU; returns when
/// the evaluating thread has ended.
fn watchdog(watch: &Watch, cpu_time: Duration) {
    let mut state = watch.lock();
    loop {
        state = watch
            .changed
            .wait_while(state, |s| s.busy_since.is_none() && !s.done)
            .unwrap_or_else(PoisonError::into_inner);
        let Some(since) = state.busy_since else { return };
        drop(state);
        let used = cpu_time_used().saturating_sub(since);
        if used > cpu_time {
            eprintln!("baton eval-worker: an evaluation used more than its CPU time limit");
            std::process::exit(EXIT_CPU_TIME);
        }
        // One thread evaluates, so CPU time grows no faster than the clock: nothing can go
        // over before the rest of its budget has passed.
        std::thread::sleep((cpu_time - used).max(Duration::from_millis(1)));
        state = watch.lock();
    }
}

/// Answers requests until stdin closes.
fn serve(watch: &Watch, cpu_time: Duration, output_bytes: usize) -> io::Result<()> {
    let mut input = io::stdin().lock();
    let mut output = BufWriter::new(io::stdout().lock());
    write_answer(&mut output, &Answer::Ready)?;
    let mut cache = HashMap::new();
    while let Some(body) = read_frame(&mut input)? {
        let request: ReadRequest<'_> =
            serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        watch.begin(cpu_time);
        let answer = evaluate(&request, &mut cache, output_bytes, &mut output);
        watch.end();
        write_answer(&mut output, &answer?)?;
    }
    Ok(())
}

/// The answer to one request; an error only when the server cannot be written to.
fn evaluate(
    request: &ReadRequest<'_>,
    cache: &mut HashMap<String, Expression>,
    output_bytes: usize,
    output: &mut impl Write,
) -> io::Result<Answer> {
    if cache.len() + request.expressions.len() > CACHED_EXPRESSIONS {
        cache.clear();
    }
    let mut evaluation = Evaluation::new(&request.context, &request.values, output_bytes);
    let names: Vec<&str> = request.names.iter().map(String::as_str).collect();
    let mut values = Vec::with_capacity(request.expressions.len());
    for (index, source) in request.expressions.iter().enumerate() {
        if index > 0 {
            // Should this one kill the worker, the server knows which it was.
            write_answer(output, &Answer::Started(index))?;
        }
        let failed = |reason: String, bound: Option<WireBound>| Answer::Failed { index, reason, bound };
        // The same source reads other variables under other names: both make the key.
        let key = format!("{}\u{0}{source}", request.names.join(","));
        if !cache.contains_key(&key) {
            match Expression::compile_with("expression", source, &names) {
                Ok(expression) => cache.insert(key.clone(), expression),
                Err(error) => return Ok(failed(format!("does not compile: {error}"), None)),
            };
        }
        let expression = &cache[&key];
        match std::panic::catch_unwind(AssertUnwindSafe(|| evaluation.eval(expression))) {
            Ok(Ok(value)) => values.push(value),
            Ok(Err(error)) => {
                let bound = match error.bound {
                    Some(Bound::Output(bytes)) => Some(WireBound::Output(bytes)),
                    Some(Bound::Depth(levels)) => Some(WireBound::Depth(levels)),
                    _ => None,
                };
                return Ok(failed(error.reason, bound));
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                return Ok(failed(format!("failed: the evaluator panicked: {message}"), None));
            }
        }
    }
    Ok(Answer::Values(values))
}

/// One frame's body; `None` at the end of the input.
fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; u32::from_le_bytes(length) as usize];
    input.read_exact(&mut body)?;
    Ok(Some(body))
}

fn write_answer(output: &mut impl Write, answer: &Answer) -> io::Result<()> {
    let body = serde_json::to_vec(answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let length =
        u32::try_from(body.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "an answer over 4 GiB"))?;
    output.write_all(&length.to_le_bytes())?;
    output.write_all(&body)?;
    output.flush()
}
