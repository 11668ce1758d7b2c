//! Test support (`test-util` feature): a throwaway PostgreSQL cluster, a conformance
//! [`Harness`] for each store, the journal load that benches and profiling share
//! ([`load_execution`], [`load_event`]), a disk filled to the last byte ([`fill_disk`]), and a
//! TCP proxy that cuts a client off from the database as a dead network would
//! ([`BlackholeProxy`]), and the poll the cluster tests wait with ([`eventually`],
//! [`until`]).
//!
//! [`PgCluster::start`] runs `initdb` and `pg_ctl` itself into a temporary directory, listening
//! only on a Unix socket there, and stops and removes it when dropped; as root it runs them as
//! the `postgres` user; [`PgCluster::start_with`] can load `pg_stat_statements` and pin it to
//! some CPUs ([`PgOptions`]). With `BATON_TEST_PG_URL` set it uses that server instead; binaries
//! outside `PATH` and `/usr/lib/postgresql/*/bin` can be named with `BATON_PG_BIN`. Without
//! any it panics: PostgreSQL tests never skip silently.

mod blackhole;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use baton_core::{Event, EventKind, Execution, ExecutionId, ExecutionState, StepId, Timestamp, WorkflowName};
use tempfile::TempDir;
use tokio_postgres::config::Host;

pub use blackhole::BlackholeProxy;

use crate::conformance::{Damage, Harness};
use crate::postgres::{self, PostgresStore};
use crate::{MemoryStore, RedbStore};

/// Fills the disk of `dir` to its last byte with one file, for tests of a full disk; the
/// file's path (removing it gives the room back).
pub fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("the filler file can be made");
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    // What is left is smaller than a block: take it too.
    while file.write_all(&[0]).is_ok() {}
    path
}

/// A running execution for journal load: appends need one to exist.
pub fn load_execution() -> Execution {
    let at = Timestamp::from_timestamp(1_800_000_000, 0).expect("in range");
    Execution {
        id: ExecutionId::generate(),
        workflow: WorkflowName::new("bench").expect("valid name"),
        version: 1,
        state: ExecutionState::Running,
        input: serde_json::json!({"order": 42}),
        output: None,
        error: None,
        tasks: Default::default(),
        created_at: at,
        updated_at: at,
        trace: None,
        parent: None,
        problem: None,
        parked: None,
        retention: None,
        expires_at: None,
    }
}

/// A typical journal event: a step's success with a small output.
pub fn load_event(execution: ExecutionId, sequence: u64) -> Event {
    Event {
        execution,
        sequence,
        at: Timestamp::from_timestamp(1_800_000_000, 0).expect("in range"),
        kind: EventKind::TaskSucceeded {
            step: StepId::new("charge").expect("valid step"),
            attempt: 1,
            output: serde_json::json!({"receipt": "r-0001", "amount": 1999, "currency": "EUR"}),
            context: None,
        },
    }
}

/// The variable naming an existing server to test against instead of a throwaway cluster.
pub const PG_URL_VAR: &str = "BATON_TEST_PG_URL";

/// The variable naming the directory of `initdb` and `pg_ctl`, when they are not found by
/// themselves.
pub const PG_BIN_VAR: &str = "BATON_PG_BIN";

/// Where PostgreSQL server binaries are looked for, besides `PATH`: Debian and Ubuntu keep
/// them off `PATH`, one directory per major version.
const PG_LIB_DIR: &str = "/usr/lib/postgresql";

/// A PostgreSQL server for tests: a throwaway cluster this process started, or the server
/// `BATON_TEST_PG_URL` names. Start one per test binary and create a database per test.
#[derive(Debug)]
pub struct PgCluster {
    server: Server,
    databases: AtomicU32,
}

/// How a throwaway cluster runs besides the defaults, for benchmarks that read its statistics
/// or keep it off the cores of what they measure.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Loads `pg_stat_statements` (`shared_preload_libraries`); a database then reads it after
    /// `CREATE EXTENSION pg_stat_statements`.
    pub stat_statements: bool,
    /// Runs the server on these CPUs only (`taskset -c`, e.g. `"1"`); its backends inherit them.
    pub cpus: Option<String>,
}

#[derive(Debug)]
enum Server {
    Owned(OwnedCluster),
    External { config: tokio_postgres::Config, created: std::sync::Mutex<Vec<String>> },
}

#[derive(Debug)]
struct OwnedCluster {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    as_postgres: bool,
    dir: TempDir,
}

impl PgCluster {
    /// Starts a throwaway cluster under the system's temporary directory, or connects to
    /// `BATON_TEST_PG_URL`. Panics, saying PostgreSQL is required, when neither is possible.
    pub fn start() -> Self {
        Self::start_in(&std::env::temp_dir())
    }

    /// Like [`start`](Self::start), with the cluster's directory under `parent` (e.g. on the
    /// disk whose fsync rate a benchmark measures).
    pub fn start_in(parent: &Path) -> Self {
        Self::start_with(parent, &PgOptions::default())
    }

    /// Like [`start_in`](Self::start_in), the throwaway cluster run as `options` say; with
    /// `BATON_TEST_PG_URL` set, options other than the defaults panic (that server runs as it
    /// was started).
    pub fn start_with(parent: &Path, options: &PgOptions) -> Self {
        let url = std::env::var(PG_URL_VAR).ok().filter(|u| !u.is_empty());
        let bin = std::env::var_os(PG_BIN_VAR).filter(|b| !b.is_empty()).map(PathBuf::from);
        let server = match locate(url, bin, find_pg_bin) {
            Ok(Location::External(config)) => {
                assert!(
                    !options.stat_statements && options.cpus.is_none(),
                    "{PG_URL_VAR} names a server already running: {options:?} need a throwaway cluster"
                );
                Server::External { config: *config, created: Default::default() }
            }
            Ok(Location::Binaries(bin)) => Server::Owned(OwnedCluster::start(bin, parent, options)),
            Err(message) => panic!("{message}"),
        };
        Self { server, databases: AtomicU32::new(0) }
    }

    /// A connection string for the maintenance database `postgres`.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    fn url_for(&self, database: &str) -> String {
        match &self.server {
            Server::Owned(owned) => format!(
                "host={} port={} user=postgres dbname={database}",
                quote(&owned.socket_dir.to_string_lossy()),
                owned.port
            ),
            Server::External { config, .. } => render(config, database),
        }
    }

    /// Creates a fresh, empty database and returns its connection string.
    pub async fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("baton_test_{}_{n}", std::process::id());
        let admin = self.admin_url();
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server ({admin}): {e}"));
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e:?}"));
        drop(client);
        let _ = connection.await;
        if let Server::External { created, .. } = &self.server {
            created.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(name.clone());
        }
        self.url_for(&name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        match &self.server {
            Server::Owned(owned) => owned.stop(),
            Server::External { created, .. } => {
                let created = std::mem::take(&mut *created.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                drop_databases(&self.admin_url(), created);
            }
        }
    }
}

/// Drops the databases tests created on an external server, on a thread of its own since
/// `Drop` may run inside a runtime. Best effort: a database still in use stays.
#[allow(clippy::print_stderr, reason = "a test harness cleaning up in drop has no caller to tell")]
fn drop_databases(admin: &str, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let admin = admin.to_owned();
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            let Ok((client, connection)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await else { return };
            tokio::spawn(connection);
            for name in names {
                if let Err(e) = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await {
                    eprintln!("could not drop test database {name}: {e}");
                }
            }
        });
    });
    let _ = worker.join();
}

impl OwnedCluster {
    fn start(bin: PathBuf, parent: &Path, pg_options: &PgOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("baton-pg-")
            .tempdir_in(parent)
            .unwrap_or_else(|e| panic!("cannot create a directory for PostgreSQL under {}: {e}", parent.display()));
        let as_postgres = running_as_root();
        if as_postgres {
            // PostgreSQL refuses to run as root: hand the directory to the postgres user.
            run(Command::new("chown").args(["postgres:postgres"]).arg(dir.path()), "chown");
        }
        let data = dir.path().join("data");
        let socket_dir = dir.path().to_path_buf();
        let port = free_port();
        let cluster = Self { bin, data, socket_dir, port, as_postgres, dir };
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&cluster.data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]);
        // The cluster is thrown away: skip syncing the template files (commits still fsync).
        initdb.arg("--no-sync");
        run(&mut initdb, "initdb");
        let log = cluster.dir.path().join("postgres.log");
        let mut options = format!(
            "-c listen_addresses='' -k {} -p {port} -c max_connections=200 -c shared_buffers=32MB \
             -c fsync=on -c synchronous_commit=on",
            cluster.socket_dir.display()
        );
        if pg_options.stat_statements {
            options.push_str(" -c shared_preload_libraries=pg_stat_statements");
        }
        let mut pg_ctl = match &pg_options.cpus {
            // The postmaster that pg_ctl starts, and every backend it forks, keep the affinity.
            Some(cpus) => {
                let inner = cluster.command("pg_ctl");
                let mut pinned = Command::new("taskset");
                pinned.args(["-c", cpus]).arg(inner.get_program()).args(inner.get_args());
                pinned
            }
            None => cluster.command("pg_ctl"),
        };
        pg_ctl.arg("-D").arg(&cluster.data).arg("-l").arg(&log).args(["-w", "-t", "60", "-o", &options, "start"]);
        let output = pg_ctl.output().unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !output.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pg_ctl start failed: {}\nserver log:\n{log}", describe_output(&output));
        }
        cluster
    }

    /// A PostgreSQL binary, run as the postgres user when this process is root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    #[allow(clippy::print_stderr, reason = "a test harness stopping in drop has no caller to tell")]
    fn stop(&self) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]);
        match pg_ctl.output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("pg_ctl stop failed: {}", describe_output(&output)),
            Err(e) => eprintln!("cannot run pg_ctl stop: {e}"),
        }
    }
}

/// What the tests run against.
#[derive(Debug)]
enum Location {
    External(Box<tokio_postgres::Config>),
    Binaries(PathBuf),
}

/// The server named by `url`, else the binaries in `bin`, else those `search` finds; the
/// error says what is missing and how to provide it.
fn locate(
    url: Option<String>,
    bin: Option<PathBuf>,
    search: impl FnOnce() -> Option<PathBuf>,
) -> Result<Location, String> {
    if let Some(url) = url {
        return url
            .parse::<tokio_postgres::Config>()
            .map(|config| Location::External(Box::new(config)))
            .map_err(|e| format!("{PG_URL_VAR} is not a connection string: {e}"));
    }
    if let Some(bin) = bin {
        return pg_bin_among([bin.clone()]).map(Location::Binaries).ok_or_else(|| {
            format!(
                "PostgreSQL is required for these tests: {PG_BIN_VAR} names {}, which lacks initdb or pg_ctl",
                bin.display()
            )
        });
    }
    search().map(Location::Binaries).ok_or_else(|| {
        format!(
            "PostgreSQL is required for these tests: install the server binaries (initdb, pg_ctl; \
             Debian: apt-get install postgresql), set {PG_BIN_VAR} to their directory, or set {PG_URL_VAR} \
             to a server's connection string"
        )
    })
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH`, else the newest version under
/// `/usr/lib/postgresql`.
pub fn find_pg_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_LIB_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .collect();
    versions.sort();
    pg_bin_among(on_path.chain(versions.into_iter().rev().map(|(_, dir)| dir)))
}

/// The first of `dirs` holding both `initdb` and `pg_ctl`.
fn pg_bin_among(dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    dirs.into_iter().find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

fn running_as_root() -> bool {
    // The effective uid is the second field of the `Uid:` line; `id -u` where /proc is absent.
    let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        Some(line.split_whitespace().nth(2)? == "0")
    });
    from_proc.unwrap_or_else(|| {
        Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

fn free_port() -> u16 {
    // The server listens on its own socket directory only, so the port just names the socket;
    // a port free on loopback keeps it clear of any server that does listen on TCP.
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(54329, |a| a.port())
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(output.status.success(), "{what} failed: {}", describe_output(&output));
}

fn describe_output(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A value for a key-value connection string, quoted.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `config` as a key-value connection string naming `database`.
fn render(config: &tokio_postgres::Config, database: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", quote(&String::from_utf8_lossy(password))));
    }
    if let Some(options) = config.get_options() {
        parts.push(format!("options={}", quote(options)));
    }
    parts.push(format!("dbname={}", quote(database)));
    parts.join(" ")
}

/// The conformance harness of [`MemoryStore`]: every open hands out the same data.
#[derive(Debug, Default)]
pub struct MemoryHarness {
    store: MemoryStore,
}

impl Harness for MemoryHarness {
    type Store = MemoryStore;
    const DURABLE: bool = false;

    async fn open(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn damage(&self, damage: Damage) {
        match damage {
            Damage::RemoveEvent { execution, sequence } => {
                assert!(self.store.remove_event(execution, sequence), "event {sequence} of {execution} is stored");
            }
            // Memory holds decoded events, so "unreadable" becomes an event that is not what
            // its place says.
            Damage::GarbleEvent { execution, sequence } => {
                let stranger = Event {
                    execution: ExecutionId::generate(),
                    sequence: sequence + 100,
                    at: baton_core::Timestamp::UNIX_EPOCH,
                    kind: EventKind::Paused,
                };
                assert!(self.store.overwrite_event(execution, sequence, stranger), "event {sequence} is stored");
            }
        }
    }
}

/// The conformance harness of [`RedbStore`]: a temporary data directory.
#[derive(Debug)]
pub struct RedbHarness {
    dir: TempDir,
}

impl RedbHarness {
    /// A harness over a fresh temporary directory.
    pub fn new() -> Self {
        Self { dir: TempDir::with_prefix("baton-redb-").expect("a temporary directory") }
    }
}

impl Default for RedbHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for RedbHarness {
    type Store = RedbStore;
    const DURABLE: bool = true;

    async fn open(&self) -> RedbStore {
        RedbStore::open(self.dir.path()).await.expect("the redb store opens")
    }

    async fn damage(&self, damage: Damage) {
        let dir = self.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || match damage {
            Damage::RemoveEvent { execution, sequence } => {
                crate::redb::damage_journal(&dir, execution, sequence, false)
            }
            Damage::GarbleEvent { execution, sequence } => crate::redb::damage_journal(&dir, execution, sequence, true),
        })
        .await
        .expect("damaging the file");
    }
}

/// The partitions of a [`PgHarness::partitioned`] database.
pub const HARNESS_PARTITIONS: u32 = 8;

/// The conformance harness of [`PostgresStore`]: a fresh database on a shared cluster.
#[derive(Debug)]
pub struct PgHarness {
    url: String,
    /// As one server of a cluster owning every partition, when set.
    partitioned: bool,
    // Keeps the cluster up while the harness lives.
    _cluster: Arc<PgCluster>,
}

/// Polls `check` every 50 ms until it answers, for at most `within`; panics naming `what`
/// past it. Tests wait for what other processes do with it, never with a bare sleep.
pub async fn eventually<T>(what: &str, within: std::time::Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a check that only holds or not.
pub async fn until(what: &str, within: std::time::Duration, mut check: impl AsyncFnMut() -> bool) {
    eventually(what, within, async || check().await.then_some(())).await;
}

/// A plain connection to the database `url` names, for tests that read or change its tables
/// themselves. It closes when the client is dropped.
pub async fn sql_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects to the test database");
    tokio::spawn(connection);
    client
}

/// Gives partitions `0..partitions` of the database `client` is connected to to `owner`,
/// under epoch 1, as a cluster's claims would.
pub async fn own_partitions(client: &tokio_postgres::Client, partitions: u32, owner: &str) {
    let last = i32::try_from(partitions).expect("a partition count") - 1;
    client
        .execute(
            "INSERT INTO baton_partitions (id, owner, epoch) SELECT g, $1, 1 FROM generate_series(0, $2) AS g",
            &[&owner, &last],
        )
        .await
        .expect("the partitions are owned");
}

impl PgHarness {
    /// A harness over a new database of `cluster`.
    pub async fn new(cluster: Arc<PgCluster>) -> Self {
        let url = cluster.create_database().await;
        Self { url, partitioned: false, _cluster: cluster }
    }

    /// A harness over a new database of `cluster` whose store is one server of a cluster,
    /// owning all of [`HARNESS_PARTITIONS`] partitions under epoch 1.
    pub async fn partitioned(cluster: Arc<PgCluster>) -> Self {
        let url = cluster.create_database().await;
        Self { url, partitioned: true, _cluster: cluster }
    }

    /// The database's connection string.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Harness for PgHarness {
    type Store = PostgresStore;
    const DURABLE: bool = true;

    async fn open(&self) -> PostgresStore {
        let config = postgres::Config::new(self.url.clone());
        if !self.partitioned {
            return PostgresStore::connect(&config).await.expect("the postgres store connects");
        }
        let ownership = Arc::new(baton_core::fakes::FixedOwnership::all(HARNESS_PARTITIONS, 1));
        let store = PostgresStore::connect_partitioned(&config, ownership).await.expect("the postgres store connects");
        sql_client(&self.url)
            .await
            .execute(
                "INSERT INTO baton_partitions (id, owner, epoch)
                 SELECT g, 'conformance', 1 FROM generate_series(0, $1 - 1) AS g ON CONFLICT DO NOTHING",
                &[&i32::try_from(HARNESS_PARTITIONS).expect("few")],
            )
            .await
            .expect("the partitions are made");
        store
    }

    async fn damage(&self, damage: Damage) {
        // Taking the journal over folds every frame into chunks, where the events are edited.
        drop(self.open().await);
        let client = sql_client(&self.url).await;
        let (Damage::RemoveEvent { execution, sequence } | Damage::GarbleEvent { execution, sequence }) = damage;
        let id = execution.as_uuid().as_bytes().to_vec();
        let at = i64::try_from(sequence).expect("small sequence");
        let row = client
            .query_one(
                "SELECT last_sequence, events FROM baton_journal_chunks
                 WHERE execution = $1 AND first_sequence <= $2 AND last_sequence >= $2",
                &[&id, &at],
            )
            .await
            .unwrap_or_else(|e| panic!("event {sequence} of {execution} is stored: {e}"));
        let (last, events): (i64, &str) = (row.get(0), row.get(1));
        let mut lines: Vec<String> = events.split('\n').map(str::to_owned).collect();
        let index = lines
            .iter()
            .position(|line| serde_json::from_str::<Event>(line).is_ok_and(|event| event.sequence == sequence))
            .unwrap_or_else(|| panic!("event {sequence} of {execution} is in its chunk"));
        match damage {
            Damage::RemoveEvent { .. } => drop(lines.remove(index)),
            Damage::GarbleEvent { .. } => lines[index] = "{not json".to_owned(),
        }
        let joined = lines.join("\n");
        let changed = if lines.is_empty() {
            let sql = "DELETE FROM baton_journal_chunks WHERE execution = $1 AND last_sequence = $2";
            client.execute(sql, &[&id, &last]).await
        } else {
            let sql = "UPDATE baton_journal_chunks SET events = $3 WHERE execution = $1 AND last_sequence = $2";
            client.execute(sql, &[&id, &last, &joined]).await
        }
        .expect("damages the journal");
        assert_eq!(changed, 1, "the chunk holding event {sequence} of {execution} is rewritten");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_found_only_where_both_exist() {
        let empty = TempDir::new().unwrap();
        assert_eq!(pg_bin_among([empty.path().to_path_buf(), PathBuf::from("/nonexistent")]), None);
        let half = TempDir::new().unwrap();
        std::fs::write(half.path().join("initdb"), "").unwrap();
        assert_eq!(pg_bin_among([half.path().to_path_buf()]), None);
        std::fs::write(half.path().join("pg_ctl"), "").unwrap();
        assert_eq!(pg_bin_among([empty.path().to_path_buf(), half.path().to_path_buf()]), Some(half.path().into()));
    }

    #[test]
    fn a_missing_postgresql_is_an_error_saying_it_is_required() {
        let err = locate(None, None, || None).unwrap_err();
        assert!(err.starts_with("PostgreSQL is required for these tests: install the server binaries"), "{err}");
        let err = locate(None, Some(PathBuf::from("/nonexistent/bin")), || unreachable!()).unwrap_err();
        assert_eq!(
            err,
            "PostgreSQL is required for these tests: BATON_PG_BIN names /nonexistent/bin, which lacks initdb or pg_ctl"
        );
        let found = locate(None, None, || Some(PathBuf::from("/opt/pg/bin"))).unwrap();
        assert!(matches!(found, Location::Binaries(dir) if dir == Path::new("/opt/pg/bin")));
        let external = locate(Some("host=/run/pg user=me".to_owned()), None, || unreachable!()).unwrap();
        assert!(matches!(external, Location::External(config) if config.get_user() == Some("me")));
        assert!(locate(Some("not a url".to_owned()), None, || None).unwrap_err().contains("BATON_TEST_PG_URL"));
    }

    #[test]
    fn connection_strings_render_quoted() {
        let config: tokio_postgres::Config =
            "postgres://me:p'w@db.example:6543/other?options=-c%20x%3D1".parse().unwrap();
        assert_eq!(
            render(&config, "baton_test_1"),
            r"host='db.example' port=6543 user='me' password='p\'w' options='-c x=1' dbname='baton_test_1'"
        );
        let parsed: tokio_postgres::Config = render(&config, "t").parse().unwrap();
        assert_eq!((parsed.get_password(), parsed.get_dbname()), (Some(b"p'w".as_slice()), Some("t")));
    }
}
