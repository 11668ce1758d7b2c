//! The bounded expression evaluator `baton serve` runs workflows with: jq runs in worker
//! processes (`baton eval-worker`), never in the server.
//!
//! jaq offers no hook to stop an evaluation or to bound what it allocates, and one runaway
//! expression can spin a core for ever, allocate without end or recurse past the stack, which
//! aborts the whole process. A thread pool could only abandon such an evaluation, and a patched
//! jaq could count steps but not bound its allocations or its stack. A separate process can be
//! bounded by the kernel: each worker limits its own address space (`RLIMIT_AS`), lowers its
//! priority so the server keeps the CPU, keeps a CPU-time budget per evaluation (a watchdog
//! thread, with `RLIMIT_CPU` behind it), and evaluates on a thread with a known stack. Whatever
//! an expression does, only its worker dies; the server reads how it died (the watchdog's exit
//! code, `SIGXCPU`, the allocation failure or stack overflow it reported), answers an
//! `expression_limit` error naming the bound, and starts another worker when one is next needed.
//!
//! The server side ([`Sandbox`]) is a pool of at most [`SandboxConfig::workers`] processes, one
//! evaluation each at a time, spoken to over pipes with async I/O, so no runtime thread ever
//! waits for jq. An expression that went past a bound is suspect for a while
//! ([`SUSPECT_FOR`]): its evaluations then share at most half the workers (at least one), so
//! that a workflow whose expression is a bomb, started again and again, leaves the other half
//! to every other expression instead of making them queue behind its CPU-time budget. A worker that uses no CPU for a long while during an evaluation (stopped, or
//! starved of CPU) is killed as stalled, and so is one whose evaluation is abandoned (a
//! cancelled or timed out run): its process is killed when the future is dropped.
//!
//! The wire: each message is a little-endian `u32` length and that many bytes of JSON; the
//! server sends a request (the expressions' sources and the context), the worker answers
//! (`ready` once at start, then per request `started` before each expression after the first,
//! then the values or the failure).

pub mod worker;

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use baton_core::api::BoxFuture;
use baton_core::expr::{Bound, Limits};
use baton_core::{EvalError, Evaluator, Expression};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::Semaphore;

/// The stack of a worker's evaluating thread: the bound on recursion.
pub const STACK_BYTES: u64 = 16 * 1024 * 1024;

/// Evaluations a worker serves before it is replaced, so what its allocator kept goes back.
const EVALUATIONS_PER_WORKER: u64 = 10_000;

/// The longest a new worker may take to start, on a machine however loaded.
const STARTUP: Duration = Duration::from_secs(30);

/// How much of a dead worker's stderr is read to tell how it died.
const STDERR_TAIL: usize = 64 * 1024;

/// Exit code of a worker whose watchdog found an evaluation over its CPU time.
pub(crate) const EXIT_CPU_TIME: i32 = 86;

/// `SIGXCPU`: the kernel's `RLIMIT_CPU`, behind the watchdog.
const SIGXCPU: i32 = 24;

/// How long an expression that went past a bound stays suspect, counted from its last time.
pub const SUSPECT_FOR: Duration = Duration::from_secs(600);

/// The most expressions kept suspect at once; past it the oldest are forgotten first.
const MAX_SUSPECTS: usize = 4096;

/// How the sandbox runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The `baton` binary, run as `baton eval-worker`.
    pub program: PathBuf,
    /// Most worker processes, so evaluations at once; more wait, first come first served.
    pub workers: usize,
    /// The bounds of each evaluation.
    pub limits: Limits,
}

impl SandboxConfig {
    /// How long a worker may go without using any CPU during an evaluation before it is
    /// killed as stalled. A worker still using CPU is left to its CPU-time budget however
    /// long that takes on a busy machine, since it runs at low priority.
    pub fn stall_time(&self) -> Duration {
        self.limits.cpu_time.saturating_mul(5).saturating_add(Duration::from_secs(5))
    }

    /// The largest answer read from a worker: the values (bounded by the output limit, counted
    /// as jq wrote them) written again, with room for the frame.
    fn max_answer_bytes(&self) -> usize {
        self.limits.output_bytes.saturating_mul(2).saturating_add(64 * 1024)
    }
}

/// What the server asks a worker: the values of `expressions` against `context`, with the
/// variables they were compiled with (`names`) bound to `values`.
#[derive(Debug, Serialize)]
struct Request<'a> {
    expressions: Vec<&'a str>,
    context: &'a Value,
    names: &'a [String],
    values: &'a [Value],
}

/// A [`Request`] as the worker reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct ReadRequest<'a> {
    #[serde(borrow)]
    pub(crate) expressions: Vec<std::borrow::Cow<'a, str>>,
    pub(crate) context: Value,
    #[serde(default)]
    pub(crate) names: Vec<String>,
    #[serde(default)]
    pub(crate) values: Vec<Value>,
}

/// What a worker answers.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    /// Started, with its limits set.
    Ready,
    /// Now evaluating the expression at this index (sent for every one but the first).
    Started(usize),
    /// The value of every expression, in order.
    Values(Vec<Value>),
    /// The expression at `index` failed.
    Failed {
        /// Which one.
        index: usize,
        /// Why.
        reason: String,
        /// The bound it went past, when that is why: `output` or `depth`.
        bound: Option<WireBound>,
    },
}

/// The bounds a worker finds itself; the others it finds by dying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireBound {
    Output(usize),
    Depth(usize),
}

/// Counts of what the sandbox did, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// Worker processes alive.
    pub workers: usize,
    /// Worker processes started since the server started.
    pub workers_started: u64,
    /// Evaluations in progress (a worker is evaluating them).
    pub in_flight: usize,
    /// Evaluations answered, values or errors.
    pub evaluations: u64,
    /// Evaluations that went past a bound, by bound: `cpu_time`, `stalled`, `memory`,
    /// `stack`, `output`, `depth`, `crashed`.
    pub limits: Vec<(&'static str, u64)>,
    /// Expressions suspect now, their evaluations held to the suspects' share of the workers.
    pub suspects: usize,
}

const BOUND_NAMES: [&str; 7] = ["cpu_time", "stalled", "memory", "stack", "output", "depth", "crashed"];

fn bound_index(bound: &Bound) -> usize {
    match bound {
        Bound::CpuTime(_) => 0,
        Bound::Stalled(_) => 1,
        Bound::Memory(_) => 2,
        Bound::Stack(_) => 3,
        Bound::Output(_) => 4,
        Bound::Depth(_) => 5,
        _ => 6,
    }
}

/// The bounded evaluator: a cheap-to-clone handle on a pool of worker processes.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Pool>,
}

struct Pool {
    config: SandboxConfig,
    permits: Semaphore,
    /// The suspects' share of the workers, taken before a worker's permit.
    suspect_permits: Semaphore,
    /// Suspect expressions (a hash of a request's sources) and when they last went past a bound.
    suspects: Mutex<HashMap<u64, tokio::time::Instant>>,
    hasher: RandomState,
    idle: Mutex<Vec<Worker>>,
    live: AtomicUsize,
    started: AtomicU64,
    in_flight: AtomicUsize,
    evaluations: AtomicU64,
    limits: [AtomicU64; BOUND_NAMES.len()],
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.inner.config).field("stats", &self.stats()).finish()
    }
}

impl Sandbox {
    /// A pool that starts its workers as evaluations need them.
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            inner: Arc::new(Pool {
                permits: Semaphore::new(config.workers.max(1)),
                suspect_permits: Semaphore::new((config.workers / 2).max(1)),
                suspects: Mutex::default(),
                hasher: RandomState::new(),
                config,
                idle: Mutex::default(),
                live: AtomicUsize::new(0),
                started: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                evaluations: AtomicU64::new(0),
                limits: Default::default(),
            }),
        }
    }

    /// The running program, to run again as `baton eval-worker`: through `/proc/self/exe`
    /// where there is one, which still names this binary after it is replaced on disk.
    pub fn this_program() -> std::io::Result<PathBuf> {
        let proc = PathBuf::from("/proc/self/exe");
        if proc.exists() { Ok(proc) } else { std::env::current_exe() }
    }

    /// The configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// What the sandbox has done so far.
    pub fn stats(&self) -> SandboxStats {
        let pool = &self.inner;
        SandboxStats {
            workers: pool.live.load(Ordering::Relaxed),
            workers_started: pool.started.load(Ordering::Relaxed),
            in_flight: pool.in_flight.load(Ordering::Relaxed),
            evaluations: pool.evaluations.load(Ordering::Relaxed),
            limits: BOUND_NAMES.iter().zip(&pool.limits).map(|(name, n)| (*name, n.load(Ordering::Relaxed))).collect(),
            suspects: pool.suspects.lock().len(),
        }
    }

    async fn spawn(&self) -> Result<Worker, String> {
        let config = &self.inner.config;
        let mut child = tokio::process::Command::new(&config.program)
            .arg("eval-worker")
            .arg("--memory-bytes")
            .arg(config.limits.memory_bytes.to_string())
            .arg("--cpu-time-ms")
            .arg(config.limits.cpu_time.as_millis().to_string())
            .arg("--output-bytes")
            .arg(config.limits.output_bytes.to_string())
            // Nothing of the server's environment (its store URL, its settings) reaches jq.
            .env_clear()
            // mimalloc reserves 1 GiB of address space at a time by default, past the limit.
            .env("MIMALLOC_ARENA_RESERVE", "16MiB")
            .current_dir("/")
            // Its own process group: a terminal's Ctrl-C is the server's to handle.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        let live = LiveWorker::new(Arc::clone(&self.inner));
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("its pipes were not set up".to_owned());
        };
        let mut worker = Worker { child, stdin, stdout: BufReader::new(stdout), stderr, served: 0, _live: live };
        match tokio::time::timeout(STARTUP, read_answer(&mut worker.stdout, 1024)).await {
            Ok(Ok(Answer::Ready)) => Ok(worker),
            Ok(Ok(other)) => Err(format!("it answered {other:?} before it was ready")),
            Ok(Err(_)) => Err(worker.death().await),
            Err(_) => Err(format!("it was not ready within {}", baton_core::duration::format(STARTUP))),
        }
    }

    async fn evaluate_on_worker(
        &self,
        expressions: &[&Expression],
        context: &Value,
        values: &[Value],
    ) -> Result<Vec<Value>, EvalError> {
        let source = |index: usize| expressions.get(index).map_or("", |e| e.source());
        let Some(first) = expressions.first() else { return Ok(Vec::new()) };
        let key = self.inner.hasher.hash_one(expressions.iter().map(|e| e.source()).collect::<Vec<_>>());
        let _suspect_permit = match self.is_suspect(key) {
            true => {
                Some(self.inner.suspect_permits.acquire().await.expect("the sandbox's semaphores are never closed"))
            }
            false => None,
        };
        let _permit = self.inner.permits.acquire().await.expect("the sandbox's semaphores are never closed");
        let mut worker = match self.idle_worker() {
            Some(worker) => worker,
            None => self.spawn().await.map_err(|reason| {
                tracing::error!(%reason, "the expression evaluator did not start");
                EvalError::failed(
                    first.source(),
                    format!("could not be evaluated: the evaluator did not start: {reason}"),
                )
            })?,
        };
        let _in_flight = Evaluating::enter(&self.inner);
        // One template's expressions share their variables.
        let names = first.variables();
        let request = Request { expressions: expressions.iter().map(|e| e.source()).collect(), context, names, values };
        let body = serde_json::to_vec(&request).map_err(|e| EvalError::failed(first.source(), e.to_string()))?;
        let config = &self.inner.config;
        let mut at = 0;
        let exchange = async {
            write_frame(&mut worker.stdin, &body).await?;
            loop {
                match read_answer(&mut worker.stdout, config.max_answer_bytes()).await? {
                    Answer::Started(index) => at = index,
                    answer => return Ok::<_, std::io::Error>(answer),
                }
            }
        };
        let answer = until_stalled(worker.child.id(), config.stall_time(), exchange).await;
        self.inner.evaluations.fetch_add(1, Ordering::Relaxed);
        let result = match answer {
            Ok(Ok(Answer::Values(values))) => {
                self.give_back(worker);
                return Ok(values);
            }
            Ok(Ok(Answer::Failed { index, reason, bound })) => {
                let error = match bound {
                    Some(WireBound::Output(bytes)) => EvalError::limit(source(index), Bound::Output(bytes)),
                    Some(WireBound::Depth(levels)) => EvalError::limit(source(index), Bound::Depth(levels)),
                    None => EvalError::failed(source(index), reason),
                };
                self.give_back(worker);
                Err(error)
            }
            Ok(Ok(other)) => Err(EvalError::failed(source(at), format!("the evaluator answered {other:?}"))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(EvalError::limit(source(at), Bound::Output(config.limits.output_bytes)))
            }
            Ok(Err(_)) => Err(EvalError::limit(source(at), worker.bound(&config.limits).await)),
            Err(_) => Err(EvalError::limit(source(at), Bound::Stalled(config.stall_time()))),
        };
        if let Err(EvalError { bound: Some(bound), .. }) = &result {
            self.inner.limits[bound_index(bound)].fetch_add(1, Ordering::Relaxed);
            self.suspect(key, first.source());
        }
        result
    }

    /// Whether the expressions hashed to `key` went past a bound within [`SUSPECT_FOR`].
    fn is_suspect(&self, key: u64) -> bool {
        let mut suspects = self.inner.suspects.lock();
        match suspects.get(&key) {
            Some(since) if since.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Makes the expressions hashed to `key` suspect from now on.
    fn suspect(&self, key: u64, source: &str) {
        let mut suspects = self.inner.suspects.lock();
        if suspects.len() >= MAX_SUSPECTS && !suspects.contains_key(&key) {
            suspects.retain(|_, since| since.elapsed() < SUSPECT_FOR);
            if suspects.len() >= MAX_SUSPECTS
                && let Some(oldest) = suspects.iter().min_by_key(|(_, since)| **since).map(|(key, _)| *key)
            {
                suspects.remove(&oldest);
            }
        }
        if suspects.insert(key, tokio::time::Instant::now()).is_none() {
            tracing::warn!(
                expression = %cut(source, 200),
                "an expression went past a bound: its evaluations share the suspects' part of the evaluators for {}",
                baton_core::duration::format(SUSPECT_FOR)
            );
        }
    }
}

impl Sandbox {
    /// An idle worker that is still alive: one that died while idle (killed from outside)
    /// must not be blamed on the next expression.
    fn idle_worker(&self) -> Option<Worker> {
        loop {
            let mut worker = self.inner.idle.lock().pop()?;
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
    }

    /// Keeps a worker that answered for the next evaluation, unless it has served its share.
    fn give_back(&self, mut worker: Worker) {
        worker.served += 1;
        if worker.served < EVALUATIONS_PER_WORKER {
            self.inner.idle.lock().push(worker);
        }
    }
}

impl Evaluator for Sandbox {
    fn evaluate<'a>(
        &'a self,
        expressions: &'a [&'a Expression],
        context: &'a Value,
        variables: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Value>, EvalError>> {
        Box::pin(self.evaluate_on_worker(expressions, context, variables))
    }
}

/// Runs `exchange` with a worker, `Err` once the worker has used no CPU for a whole `period`.
async fn until_stalled<T>(
    pid: Option<u32>,
    period: Duration,
    exchange: impl std::future::Future<Output = T>,
) -> Result<T, Stalled> {
    let mut exchange = std::pin::pin!(exchange);
    let mut used = pid.and_then(cpu_ticks);
    loop {
        if let Ok(answer) = tokio::time::timeout(period, &mut exchange).await {
            return Ok(answer);
        }
        let now = pid.and_then(cpu_ticks);
        if now.is_none() || now <= used {
            return Err(Stalled);
        }
        used = now;
    }
}

/// A worker that used no CPU for a whole period.
#[derive(Debug)]
struct Stalled;

/// The CPU time process `pid` has used, in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name's `)`: state, ppid, ..., utime (the 12th), stime (the 13th).
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// A worker process. Dropping it kills the process: an evaluation abandoned half-way leaves
/// nothing running.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: ChildStderr,
    served: u64,
    _live: LiveWorker,
}

/// Counts a worker alive while it is held.
struct LiveWorker(Arc<Pool>);

impl LiveWorker {
    fn new(pool: Arc<Pool>) -> Self {
        pool.live.fetch_add(1, Ordering::Relaxed);
        Self(pool)
    }
}

impl Drop for LiveWorker {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an evaluation in flight while it is held.
struct Evaluating<'a>(&'a Pool);

impl<'a> Evaluating<'a> {
    fn enter(pool: &'a Pool) -> Self {
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(pool)
    }
}

impl Drop for Evaluating<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    /// How a worker that stopped answering died, as the bound that killed it.
    async fn bound(mut self, limits: &Limits) -> Bound {
        let (status, stderr) = self.exit().await;
        classify(status, &stderr, limits)
    }

    /// Why a worker died before it was ready.
    async fn death(mut self) -> String {
        let (status, stderr) = self.exit().await;
        let stderr = stderr.trim();
        match status {
            Some(status) if stderr.is_empty() => format!("it exited with {status}"),
            Some(status) => format!("it exited with {status}: {stderr}"),
            None => "it stopped answering".to_owned(),
        }
    }

    /// Its exit status (it is killed if it has not exited within a second) and the end of
    /// what it wrote to stderr.
    async fn exit(&mut self) -> (Option<ExitStatus>, String) {
        let status = match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.start_kill();
                None
            }
        };
        let mut stderr = Vec::new();
        let mut tail = (&mut self.stderr).take(STDERR_TAIL as u64);
        let _ = tokio::time::timeout(Duration::from_secs(1), tail.read_to_end(&mut stderr)).await;
        (status, String::from_utf8_lossy(&stderr).into_owned())
    }
}

/// The bound a worker died of, from its exit status and what it wrote to stderr.
fn classify(status: Option<ExitStatus>, stderr: &str, limits: &Limits) -> Bound {
    use std::os::unix::process::ExitStatusExt as _;
    if stderr.contains("has overflowed its stack") {
        return Bound::Stack(STACK_BYTES);
    }
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return Bound::Memory(limits.memory_bytes);
    }
    match status {
        Some(status) if status.code() == Some(EXIT_CPU_TIME) || status.signal() == Some(SIGXCPU) => {
            Bound::CpuTime(limits.cpu_time)
        }
        Some(status) => {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim);
            Bound::Crashed(match last {
                Some(line) => format!("{status}: {}", cut(line, 200)),
                None => status.to_string(),
            })
        }
        None => Bound::Crashed("it stopped answering and was killed".to_owned()),
    }
}

fn cut(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(at, _)| &text[..at])
}

/// Writes one frame.
pub(crate) async fn write_frame(to: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a frame over 4 GiB"))?;
    to.write_all(&length.to_le_bytes()).await?;
    to.write_all(body).await?;
    to.flush().await
}

/// Reads one answer of at most `max` bytes; `InvalidData` when it is longer or unreadable.
async fn read_answer(from: &mut (impl AsyncRead + Unpin), max: usize) -> std::io::Result<Answer> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("an answer of {length} bytes")));
    }
    let mut body = vec![0u8; length];
    from.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
