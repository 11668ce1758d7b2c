//! Workloads for Baton's criterion benches, and the baselines they are compared with.
//!
//! What it is for: building realistic registries (skewed capability popularity, several
//! protocols and formats, QoS drawn from the WS-DREAM measurements in the repository's `data/wsdream`)
//! and query mixes, deterministically from a seed, so every run measures the same thing.
//! What it is not for: assertions; figures are read by `cargo xtask bench`. [`node`] runs
//! `baton serve` nodes in processes of their own, for the benches that kill or pin them.

/// Every bench runs with the allocator of the `baton` binary, so what it measures in process
/// is what the server does; the `system-allocator` feature leaves the system's, for heap
/// profilers that intercept `malloc` (heaptrack, valgrind).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod dags;
pub mod naive_planner;
pub mod node;

use std::io::Write;
use std::path::{Path, PathBuf};

use baton_core::{ServiceDefinition, ServiceRequirements, ServiceSpec};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The project root, from this crate's manifest directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ sits in the project root").to_path_buf()
}

/// Mean response time (ms) and throughput of each WS-DREAM service that has observations.
#[derive(Debug, Clone)]
pub struct QosPool {
    samples: Vec<(f64, f64)>,
}

impl QosPool {
    /// Reads the per-(user, service) mean matrices and averages each service over its users.
    pub fn load() -> std::io::Result<Self> {
        let dir = project_root().join("data/wsdream/derived-imsld");
        let rt = column_means(&read_gzip(&dir.join("rt_mean_matrix.txt.gz"))?);
        let tp = column_means(&read_gzip(&dir.join("tp_mean_matrix.txt.gz"))?);
        let samples: Vec<(f64, f64)> = rt
            .into_iter()
            .zip(tp)
            .filter_map(|(rt, tp)| Some((rt? * 1000.0, tp?)))
            .filter(|&(rt, tp)| rt > 0.0 && tp > 0.0)
            .collect();
        if samples.is_empty() {
            return Err(std::io::Error::other("no WS-DREAM observations found"));
        }
        Ok(Self { samples })
    }

    /// Number of services with observations.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn draw(&self, rng: &mut SmallRng) -> (f64, f64) {
        self.samples[rng.random_range(0..self.samples.len())]
    }
}

/// The text of a gzip-compressed file.
fn read_gzip(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    Ok(text)
}

/// Mean of the non-zero cells of each column (zero means no observation).
fn column_means(text: &str) -> Vec<Option<f64>> {
    let mut sums: Vec<(f64, u32)> = Vec::new();
    for line in text.lines() {
        for (i, cell) in line.split_ascii_whitespace().enumerate() {
            if sums.len() <= i {
                sums.resize(i + 1, (0.0, 0));
            }
            let value: f64 = cell.parse().unwrap_or(0.0);
            if value > 0.0 {
                sums[i].0 += value;
                sums[i].1 += 1;
            }
        }
    }
    sums.into_iter().map(|(sum, n)| (n > 0).then(|| sum / f64::from(n))).collect()
}

/// A Zipf-like sampler over `n` ranks: rank `i` has weight `1 / (i + 1)^s`.
#[derive(Debug, Clone)]
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    fn draw(&self, rng: &mut SmallRng) -> usize {
        let x = rng.random::<f64>() * self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|&c| c < x).min(self.cumulative.len() - 1)
    }
}

/// Capability names in the synthetic registry.
pub const CAPABILITIES: usize = 400;
const FORMATS: &[&str] = &["json", "protobuf", "xml", "csv", "avro", "msgpack", "png", "pdf"];
const COMPLIANCE: &[&str] = &["pci-dss", "hipaa", "gdpr", "soc2"];
const REGIONS: &[&str] = &["eu-west", "eu-central", "us-east", "us-west", "ap-south"];

/// Generates registries and queries from one seed.
#[derive(Debug)]
pub struct Workload {
    rng: SmallRng,
    capabilities: Zipf,
    qos: QosPool,
}

impl Workload {
    /// A workload seeded with `seed`, drawing QoS from `qos`.
    pub fn new(seed: u64, qos: QosPool) -> Self {
        Self { rng: SmallRng::seed_from_u64(seed), capabilities: Zipf::new(CAPABILITIES, 1.07), qos }
    }

    fn capability(&mut self) -> String {
        format!("cap-{:03}", self.capabilities.draw(&mut self.rng))
    }

    /// The `n`-th service: 1 to 3 capabilities, a protocol (60% HTTP, 30% gRPC, 10% worker),
    /// 1 to 3 formats, WS-DREAM QoS, a security profile and a region label.
    pub fn service(&mut self, n: usize) -> ServiceSpec {
        let count = self.rng.random_range(1..=3);
        let caps: Vec<String> = (0..count).map(|_| self.capability()).collect();
        let rng = &mut self.rng;
        let endpoint = match rng.random_range(0..10) {
            0..6 => {
                serde_json::json!({"protocol": "http", "url": format!("http://10.0.{}.{}:8080/run", n / 250 % 250, n % 250)})
            }
            6..9 => {
                serde_json::json!({"protocol": "grpc", "url": format!("http://10.1.{}.{}:9000", n / 250 % 250, n % 250)})
            }
            _ => serde_json::json!({"protocol": "worker", "queue": format!("queue-{}", n % 50)}),
        };
        let formats: Vec<&str> =
            (0..rng.random_range(1..=3)).map(|_| FORMATS[rng.random_range(0..FORMATS.len())]).collect();
        let (rt_ms, tp) = self.qos.draw(rng);
        let p50 = rt_ms * rng.random_range(0.5..0.9);
        let auth = ["none", "api_key", "bearer", "mtls", "oauth2"][rng.random_range(0..5)];
        let encryption = ["none", "tls", "tls", "mtls"][rng.random_range(0..4)];
        let compliance: Vec<&str> = COMPLIANCE.iter().copied().filter(|_| rng.random_range(0..10) == 0).collect();
        let doc = serde_json::json!({
            "id": format!("svc-{n:07}"),
            "version": "1.0.0",
            "endpoint": endpoint,
            "capabilities": caps,
            "formats": formats,
            "qos": {
                "latency_p50_ms": p50,
                "latency_p99_ms": rt_ms,
                // WS-DREAM throughput is in kbps; at ~10 KiB a call this is calls per second.
                "throughput_rps": tp * 10.0,
                "cost": (rng.random::<f64>() * 4.0).exp() / 1000.0,
                "availability": 1.0 - 10f64.powf(-rng.random_range(1.0..5.0)),
            },
            "security": {"auth_schemes": [auth], "encryption": encryption, "compliance": compliance},
            "capacity": rng.random_range(1..=256),
            "health_check": {"kind": "ttl", "ttl": "30s"},
            "labels": {"region": REGIONS[rng.random_range(0..REGIONS.len())]},
        });
        let definition: ServiceDefinition = serde_json::from_value(doc).expect("generated definition has the schema");
        ServiceSpec::new(definition).expect("generated definition is valid")
    }

    /// A query with `constraints` conditions (1 to 4): a capability, then a protocol, a p99
    /// latency bound, and a data format.
    pub fn query(&mut self, constraints: usize) -> ServiceRequirements {
        let mut req = ServiceRequirements::capability(&self.capability());
        let rng = &mut self.rng;
        if constraints >= 2 {
            req.protocols = vec![[baton_core::Protocol::Http, baton_core::Protocol::Grpc][rng.random_range(0..2)]];
        }
        if constraints >= 3 {
            req.max_latency_p99_ms = Some([500.0, 1000.0, 2000.0][rng.random_range(0..3)]);
        }
        if constraints >= 4 {
            req.formats = vec![FORMATS[rng.random_range(0..3)].to_owned()];
        }
        req
    }
}

/// The variable through which `cargo xtask bench` names the figures file (the same name is in
/// `xtask/src/bench.rs`).
pub const FIGURES_ENV: &str = "BATON_BENCH_FIGURES";

/// Where [`report_figure`] appends: `$BATON_BENCH_FIGURES` (`cargo xtask bench` sets it from
/// `cargo metadata`'s target directory), else `bench-figures.jsonl` in the target directory
/// this bench runs from, so that `CARGO_TARGET_DIR` and `--target-dir` are followed.
pub fn figures_path() -> PathBuf {
    figures_path_from(std::env::var_os(FIGURES_ENV), std::env::current_exe().ok().as_deref())
}

/// [`figures_path`] for a given variable and executable: the target directory is the
/// executable's nearest ancestor holding `.rustc_info.json` or `CACHEDIR.TAG`, which cargo
/// writes at its root (benches run from `<target>/release/deps/`, or
/// `<target>/<triple>/release/deps/`), else `<project root>/target`.
fn figures_path_from(explicit: Option<std::ffi::OsString>, exe: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let target = exe
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .find(|dir| ["CACHEDIR.TAG", ".rustc_info.json"].iter().any(|m| dir.join(m).is_file()))
        })
        .map_or_else(|| project_root().join("target"), Path::to_path_buf);
    target.join("bench-figures.jsonl")
}

/// Appends one figure for `cargo xtask bench` to [`figures_path`], one JSON object a line.
#[allow(clippy::print_stderr, reason = "a bench cannot fail over a figure it could not record")]
pub fn report_figure(bench: &str, name: &str, value: f64, unit: &str, baseline: Option<f64>, target: Option<&str>) {
    let path = figures_path();
    let line = serde_json::json!({
        "bench": bench, "name": name, "value": value, "unit": unit, "baseline": baseline, "target": target,
    });
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("could not record figure in {}: {e}", path.display());
    }
}

/// A command that runs this executable again, under the profiler the variable `wrapper_var`
/// names when it is set (e.g. `heaptrack` or `valgrind --tool=massif`), so that a bench's
/// server can be profiled in its own process.
pub fn this_executable_wrapped(wrapper_var: &str) -> std::process::Command {
    let exe = std::env::current_exe().expect("this executable");
    let wrapper = std::env::var(wrapper_var).unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(profiler) => {
            let mut command = std::process::Command::new(profiler);
            command.args(words).arg(exe);
            command
        }
        None => std::process::Command::new(exe),
    }
}

/// Resident memory of this process in bytes, from `/proc/self/statm` (Linux).
pub fn resident_bytes() -> Option<u64> {
    resident_bytes_in(Path::new("/proc/self/statm"))
}

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/statm` (Linux).
pub fn resident_bytes_of(pid: u32) -> Option<u64> {
    resident_bytes_in(&Path::new("/proc").join(pid.to_string()).join("statm"))
}

fn resident_bytes_in(statm: &Path) -> Option<u64> {
    let statm = std::fs::read_to_string(statm).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The `q` quantile (0 to 1) of sorted `values`, nearest rank.
pub fn quantile(sorted: &[std::time::Duration], q: f64) -> std::time::Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs operations `0..total` from `clients` closed-loop clients (each starts its next
/// operation when its last one ends), each client with the operation `client()` gives it.
/// Answers with the wall time and every operation's latency, unsorted.
pub async fn closed_loop<C, Op, Fut>(
    clients: usize,
    total: usize,
    client: C,
) -> (std::time::Duration, Vec<std::time::Duration>)
where
    C: Fn() -> Op,
    Op: FnMut(usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (mut op, next) = (client(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return latencies;
                    }
                    let begun = Instant::now();
                    op(n).await;
                    latencies.push(begun.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await.expect("a client runs to the end"));
    }
    (started.elapsed(), latencies)
}

/// A PostgreSQL store on the database at `url` as one node of a cluster, alone in it and so
/// owning every partition: each journal write is checked against its partition's epoch, as in
/// `baton serve --cluster`. The membership must outlive the store.
pub async fn partitioned_postgres(url: &str) -> (baton_store::postgres::PostgresStore, baton_cluster::Member) {
    let config = baton_store::postgres::Config::new(url);
    baton_store::postgres::migrate_schema(&config).await.expect("the schema migrates");
    let cluster = baton_cluster::Config::new(url, "bench", "127.0.0.1:1");
    let partitions = cluster.partitions as usize;
    let mut member = baton_cluster::Member::join(cluster).await.expect("the node joins");
    while member.ownership().len() < partitions {
        member.changed().await.expect("the membership goes on");
    }
    let ownership: std::sync::Arc<dyn baton_core::Ownership> = std::sync::Arc::new(member.clone());
    let store = baton_store::postgres::PostgresStore::connect_partitioned(&config, ownership)
        .await
        .expect("the partitioned store connects");
    (store, member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_go_to_the_named_file_else_to_the_target_directory_the_bench_runs_from() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("elsewhere/target");
        let deps = target.join("release/deps");
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::write(target.join(".rustc_info.json"), "{}").unwrap();
        let exe = deps.join("planner_wsc08-0123456789abcdef");

        let named = root.path().join("figures.jsonl");
        assert_eq!(figures_path_from(Some(named.clone().into()), Some(&exe)), named);
        assert_eq!(figures_path_from(None, Some(&exe)), target.join("bench-figures.jsonl"));
        assert_eq!(figures_path_from(Some("".into()), Some(&exe)), target.join("bench-figures.jsonl"));
        // With a target triple the tag is one level further up.
        let cross = target.join("x86_64-unknown-linux-gnu/release/deps/executor-0123");
        assert_eq!(figures_path_from(None, Some(&cross)), target.join("bench-figures.jsonl"));
        // Outside any target directory: the project's.
        let stray = root.path().join("bin/bench");
        assert_eq!(figures_path_from(None, Some(&stray)), project_root().join("target/bench-figures.jsonl"));
        assert_eq!(figures_path_from(None, None), project_root().join("target/bench-figures.jsonl"));
    }

    #[test]
    fn this_test_finds_the_target_directory_it_runs_from() {
        // Test binaries live where bench binaries do: `<target>/<profile>/deps/`.
        let path = figures_path_from(None, Some(&std::env::current_exe().unwrap()));
        let target = path.parent().unwrap();
        assert!(target.join(".rustc_info.json").is_file(), "{}", path.display());
        assert!(std::env::current_exe().unwrap().starts_with(target));
    }
}
