//! `baton serve`'s configuration: flags, then `BATON_*` environment variables, then an
//! optional TOML file, then defaults, in that precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::expr::Limits;
use serde::Deserialize;

/// Declares every setting once: its doc, its flag and `BATON_*` variable, and its default
/// when it has one. From the one list come [`ServeArgs`] (flags and variables through clap,
/// the TOML file through serde: the same struct) and [`ServeConfig`] (every setting
/// resolved), and the merge between them, so a setting cannot be missing from one of them.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])?
        $name:ident: $ty:ty $(= $default:expr)?;
    )*) => {
        /// `baton serve`'s flags; each also reads a `BATON_*` variable, and the TOML file of
        /// `--config` has the same settings under the same (snake_case) names. Unset ones fall
        /// back to the file, then to the defaults.
        #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct ServeArgs {
            /// A TOML file with any of the settings below (snake_case keys).
            #[arg(long, env = "BATON_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg($($arg)*)]
                $(#[serde($($serde)*)])?
                pub $name: Option<$ty>,
            )*
        }

        /// The settings `baton serve` runs with, every one resolved.
        #[derive(Debug, Clone, PartialEq)]
        pub struct ServeConfig {
            $(
                $(#[doc = $doc])*
                pub $name: settings!(@type $ty $(, $default)?),
            )*
        }

        impl ServeArgs {
            /// Each setting from these flags or variables, else from `file`, else its default.
            fn over(&self, file: ServeArgs) -> ServeConfig {
                ServeConfig {
                    $($name: settings!(@value self.$name.clone().or(file.$name) $(, $default)?),)*
                }
            }
        }
    };
    (@type $ty:ty) => { Option<$ty> };
    (@type $ty:ty, $default:expr) => { $ty };
    (@value $value:expr) => { $value };
    (@value $value:expr, $default:expr) => { $value.unwrap_or_else(|| $default) };
}

settings! {
    /// The gRPC address [default: 127.0.0.1:50051].
    #[arg(long, env = "BATON_LISTEN")]
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50051));
    /// The Prometheus metrics address, serving /metrics [default: 127.0.0.1:9464].
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    metrics_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9464));
    /// The web console's address [default: 127.0.0.1:9465].
    #[arg(long, env = "BATON_CONSOLE_LISTEN")]
    console_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9465));
    /// The directory of the embedded redb store [default: ./baton-data].
    #[arg(long, env = "BATON_DATA_DIR")]
    data_dir: PathBuf = PathBuf::from("baton-data");
    /// A PostgreSQL URL (postgres://...) to keep state in instead of the data dir.
    #[arg(long, env = "BATON_STORE")]
    store: String;
    /// Run as one node of a cluster sharing the --store database (needs --node-id).
    #[arg(long, env = "BATON_CLUSTER", num_args = 0..=1, default_missing_value = "true")]
    cluster: bool = false;
    /// This node's name in its cluster, unique and kept across restarts.
    #[arg(long, env = "BATON_NODE_ID")]
    node_id: String;
    /// Where the other nodes reach this one [default: the gRPC address].
    #[arg(long, env = "BATON_ADVERTISE")]
    advertise: String;
    /// How long a node's lease lasts unrenewed: a dead node's executions move after it, e.g. 10s [default: 10s].
    #[arg(long, env = "BATON_LEASE_TTL", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration_text")]
    lease_ttl: Duration = DEFAULT_LEASE_TTL;
    /// Partitions of a new cluster database, fixed once it is created [default: 64].
    #[arg(long, env = "BATON_PARTITIONS")]
    partitions: u32 = baton_cluster::DEFAULT_PARTITIONS;
    /// The server's TLS certificate chain (PEM).
    #[arg(long, env = "BATON_TLS_CERT")]
    tls_cert: PathBuf;
    /// The server's TLS private key (PEM).
    #[arg(long, env = "BATON_TLS_KEY")]
    tls_key: PathBuf;
    /// CA certificates (PEM) that client certificates must chain to (mutual TLS).
    #[arg(long, env = "BATON_TLS_CLIENT_CA")]
    tls_client_ca: PathBuf;
    /// A file of bearer tokens, one per line, any of which a request may present.
    #[arg(long, env = "BATON_AUTH_TOKEN_FILE")]
    auth_token_file: PathBuf;
    /// A directory of secrets services name in their credentials and TLS settings, one file
    /// per secret (read on every use, so a rotation takes effect at once).
    #[arg(long, env = "BATON_SECRETS_DIR")]
    secrets_dir: PathBuf;
    /// CA certificates (PEM) trusted for https services besides the system's roots.
    #[arg(long, env = "BATON_SERVICES_CA")]
    services_ca: PathBuf;
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 [default: off].
    #[arg(long, env = "BATON_OTLP_ENDPOINT")]
    otlp_endpoint: String;
    /// Serve a non-loopback address without TLS or without tokens.
    #[arg(long, env = "BATON_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    insecure: bool = false;
    /// Accept service endpoints on link-local and cloud metadata addresses.
    #[arg(long, env = "BATON_ALLOW_LINK_LOCAL", num_args = 0..=1, default_missing_value = "true")]
    allow_link_local: bool = false;
    /// Start the example services in-process and apply the example workflows.
    #[arg(long, env = "BATON_DEMO", num_args = 0..=1, default_missing_value = "true")]
    demo: bool = false;
    /// How long in-flight calls may take to finish on shutdown, e.g. 30s [default: 30s].
    #[arg(long, env = "BATON_SHUTDOWN_GRACE", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration_text")]
    shutdown_grace: Duration = DEFAULT_SHUTDOWN_GRACE;
    /// Requests per second one connection may make [default: 2000].
    #[arg(long, env = "BATON_RATE_LIMIT")]
    rate_limit: u32 = DEFAULT_RATE_LIMIT;
    /// Concurrent streams per connection [default: 256].
    #[arg(long, env = "BATON_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: u32 = DEFAULT_MAX_CONCURRENT_STREAMS;
    /// Log format: text or json [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT")]
    log_format: LogFormat = LogFormat::default();
    /// Log level: error, warn, info, debug or trace [default: info].
    #[arg(long, env = "BATON_LOG_LEVEL")]
    log_level: String = "info".to_owned();
    /// Threads that run the server's tasks [default: one per core].
    #[arg(long, env = "BATON_WORKER_THREADS")]
    worker_threads: usize = one_per_core();
    /// Processes that evaluate jq expressions, so evaluations at once [default: one per core].
    #[arg(long, env = "BATON_EXPRESSION_WORKERS")]
    expression_workers: usize = one_per_core();
    /// CPU time of one expression evaluation, e.g. 500ms [default: 1s].
    #[arg(long, env = "BATON_EXPRESSION_CPU_TIME", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration_text")]
    expression_cpu_time: Duration = baton_core::expr::DEFAULT_CPU_TIME;
    /// Memory one expression evaluation may use, in MiB [default: 256].
    #[arg(long, env = "BATON_EXPRESSION_MEMORY_MIB")]
    expression_memory_mib: u64 = baton_core::expr::DEFAULT_MEMORY_BYTES / MIB;
    /// JSON one expression evaluation may produce, in KiB [default: 1024].
    #[arg(long, env = "BATON_EXPRESSION_OUTPUT_KIB")]
    expression_output_kib: usize = baton_core::expr::DEFAULT_OUTPUT_BYTES / 1024;
    /// Time limit of one attempt of a step that sets no timeout, e.g. 30s; 0s for none [default: 5m].
    #[arg(long, env = "BATON_ATTEMPT_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration_text")]
    attempt_timeout: Duration = DEFAULT_ATTEMPT_TIMEOUT;
    /// Most events one execution's journal holds [default: 100000].
    #[arg(long, env = "BATON_MAX_JOURNAL_EVENTS")]
    max_journal_events: u64 = baton_workflow::DEFAULT_MAX_JOURNAL_EVENTS;
    /// Most MiB of events one execution's journal holds [default: 1024].
    #[arg(long, env = "BATON_MAX_JOURNAL_MIB")]
    max_journal_mib: u64 = baton_workflow::DEFAULT_MAX_JOURNAL_BYTES / MIB;
    /// MiB the data directory's disk keeps free: below it, new executions are refused [default: 64].
    #[arg(long, env = "BATON_MIN_FREE_DISK_MIB")]
    min_free_disk_mib: u64 = crate::orchestrator::DEFAULT_MIN_FREE_DISK / MIB;
    /// MiB of the embedded store's page cache, which its memory use grows to [default: 64].
    #[arg(long, env = "BATON_STORE_CACHE_MIB")]
    store_cache_mib: u64 = (baton_store::DEFAULT_CACHE_BYTES as u64) / MIB;
    /// How long an ended execution is kept, from its end, unless its workflow sets `retention`,
    /// e.g. 30d; removed after with its journal and idempotency key [default: 7d].
    #[arg(long, env = "BATON_RETENTION", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration_text")]
    retention: Duration = baton_workflow::DEFAULT_RETENTION;
}

/// The largest page cache the embedded store may be given: 64 GiB.
const MAX_STORE_CACHE_MIB: u64 = 64 * 1024;

/// How long an attempt of a step without a timeout may take by default: long enough for slow
/// work, short enough that a service that takes a call and never answers holds no step for long.
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a cluster node's lease lasts unrenewed by default.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long in-flight calls get to finish on shutdown by default.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Requests per second one connection may make by default.
const DEFAULT_RATE_LIMIT: u32 = 2_000;
/// Concurrent streams per connection by default.
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The TOML file is malformed or has an unknown key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A value breaks a rule.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

impl ServeArgs {
    /// Resolves every setting: flag or variable, else the file, else the default.
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let config = self.over(file);
        config.check()?;
        Ok(config)
    }
}

impl ServeConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| Err(ConfigError::Invalid { setting, reason: reason.to_owned() });
        // libpq's two forms: a URL, or `key=value` pairs (`host=db dbname=baton`).
        if let Some(url) = &self.store
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('='))
        {
            return invalid("store", "must be a postgres:// URL or a key=value connection string");
        }
        if self.cluster {
            if self.store.is_none() {
                return invalid("cluster", "a cluster shares a PostgreSQL database: give it with --store");
            }
            if self.node_id.as_deref().is_none_or(str::is_empty) {
                return invalid("node_id", "a cluster node needs a name, unique in the cluster: --node-id");
            }
            // It names the node in headers to the other nodes and to services.
            if self
                .node_id
                .as_deref()
                .is_some_and(|node| node.len() > 128 || !node.bytes().all(|b| b.is_ascii_graphic()))
            {
                return invalid("node_id", "must be 1 to 128 visible ASCII characters without spaces");
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.lease_ttl) {
                return invalid("lease_ttl", "must be from 1s to 10m");
            }
            if !(1..=baton_cluster::MAX_PARTITIONS).contains(&self.partitions) {
                return invalid("partitions", &format!("must be from 1 to {}", baton_cluster::MAX_PARTITIONS));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert", "tls_cert and tls_key go together");
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid("tls_client_ca", "mutual TLS needs tls_cert and tls_key");
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && baton_core::service::check_url("otlp_endpoint", endpoint, &["http", "https"]).is_err()
        {
            return invalid("otlp_endpoint", "must be an http:// or https:// URL of an OTLP/gRPC collector");
        }
        if self.rate_limit == 0 {
            return invalid("rate_limit", "must be at least 1");
        }
        if self.max_concurrent_streams == 0 {
            return invalid("max_concurrent_streams", "must be at least 1");
        }
        if !(1..=MAX_WORKER_THREADS).contains(&self.worker_threads) {
            return invalid("worker_threads", &format!("must be from 1 to {MAX_WORKER_THREADS}"));
        }
        if !(1..=MAX_EXPRESSION_WORKERS).contains(&self.expression_workers) {
            return invalid("expression_workers", &format!("must be from 1 to {MAX_EXPRESSION_WORKERS}"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.expression_cpu_time) {
            return invalid("expression_cpu_time", "must be from 10ms to 1h");
        }
        if !(MIN_EXPRESSION_MEMORY_MIB..=MAX_EXPRESSION_MEMORY_MIB).contains(&self.expression_memory_mib) {
            let range = format!("must be from {MIN_EXPRESSION_MEMORY_MIB} to {MAX_EXPRESSION_MEMORY_MIB}");
            return invalid("expression_memory_mib", &range);
        }
        if !(1..=MAX_EXPRESSION_OUTPUT_KIB).contains(&self.expression_output_kib) {
            return invalid("expression_output_kib", &format!("must be from 1 to {MAX_EXPRESSION_OUTPUT_KIB}"));
        }
        if self.max_journal_events < MIN_JOURNAL_EVENTS {
            return invalid("max_journal_events", &format!("must be at least {MIN_JOURNAL_EVENTS}"));
        }
        if self.min_free_disk_mib > MAX_JOURNAL_MIB {
            return invalid("min_free_disk_mib", &format!("must be at most {MAX_JOURNAL_MIB}"));
        }
        if !(1..=MAX_JOURNAL_MIB).contains(&self.max_journal_mib) {
            return invalid("max_journal_mib", &format!("must be from 1 to {MAX_JOURNAL_MIB}"));
        }
        if !(1..=MAX_STORE_CACHE_MIB).contains(&self.store_cache_mib) {
            return invalid("store_cache_mib", &format!("must be from 1 to {MAX_STORE_CACHE_MIB}"));
        }
        if !(Duration::from_secs(1)..=baton_workflow::MAX_RETENTION).contains(&self.retention) {
            return invalid("retention", "must be from 1s to 3650d");
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return invalid("log_level", "must be error, warn, info, debug or trace");
        }
        // Off loopback, a server without TLS and tokens is open to anyone who can reach it.
        if !self.listen.ip().is_loopback() && !self.insecure {
            if self.tls_cert.is_none() {
                return invalid("listen", "a non-loopback address needs --tls-cert and --tls-key (or --insecure)");
            }
            if self.auth_token_file.is_none() {
                return invalid("listen", "a non-loopback address needs --auth-token-file (or --insecure)");
            }
        }
        // The console logs people in with the API's tokens; without them it would be open.
        if !self.console_listen.ip().is_loopback() && !self.insecure && self.auth_token_file.is_none() {
            return invalid(
                "console_listen",
                "a non-loopback console address needs --auth-token-file for its login (or --insecure)",
            );
        }
        Ok(())
    }

    /// This server's node id when it runs as a node of a cluster.
    pub fn cluster_node(&self) -> Option<&str> {
        self.node_id.as_deref().filter(|_| self.cluster)
    }

    /// The cluster membership these settings ask for, advertising `grpc` unless told otherwise.
    pub fn cluster(&self, grpc: SocketAddr) -> Option<baton_cluster::Config> {
        let (true, Some(url), Some(node)) = (self.cluster, &self.store, &self.node_id) else { return None };
        let address = self.advertise.clone().unwrap_or_else(|| grpc.to_string());
        let mut config = baton_cluster::Config::new(url.clone(), node.clone(), address);
        // A heartbeat a fifth of the lease misses four before the lease ends; the node stops
        // work a tenth of the lease before its end by its own clock.
        config.lease_ttl = self.lease_ttl;
        config.heartbeat = self.lease_ttl / 5;
        config.safety_margin = self.lease_ttl / 10;
        config.partitions = self.partitions;
        Some(config)
    }

    /// The settings as `key = value` lines, for the log at start (no secrets: paths only).
    pub fn describe(&self) -> Vec<String> {
        let path = |p: &Option<PathBuf>| p.as_ref().map_or("-".to_owned(), |p| p.display().to_string());
        let store = match &self.store {
            Some(url) => redact_password(url),
            None => format!("redb in {}", self.data_dir.display()),
        };
        vec![
            format!("listen = {}", self.listen),
            format!("metrics_listen = {}", self.metrics_listen),
            format!("console_listen = {}", self.console_listen),
            format!("store = {store}"),
            match (&self.cluster, &self.node_id) {
                (true, Some(node)) => format!(
                    "cluster = node {node} advertising {}, lease {}, {} partitions for a new database",
                    self.advertise.as_deref().unwrap_or("the gRPC address"),
                    baton_core::duration::format(self.lease_ttl),
                    self.partitions
                ),
                _ => "cluster = off".to_owned(),
            },
            format!("tls_cert = {}", path(&self.tls_cert)),
            format!("tls_key = {}", path(&self.tls_key)),
            format!("tls_client_ca = {}", path(&self.tls_client_ca)),
            format!("auth_token_file = {}", path(&self.auth_token_file)),
            format!("secrets_dir = {}", path(&self.secrets_dir)),
            format!("services_ca = {}", path(&self.services_ca)),
            format!("otlp_endpoint = {}", self.otlp_endpoint.as_deref().unwrap_or("- (no trace export)")),
            format!("insecure = {}", self.insecure),
            format!("allow_link_local = {}", self.allow_link_local),
            format!("demo = {}", self.demo),
            format!("shutdown_grace = {}", baton_core::duration::format(self.shutdown_grace)),
            format!("attempt_timeout = {}", baton_core::duration::format(self.attempt_timeout)),
            format!("journal cap = {} events, {} MiB per execution", self.max_journal_events, self.max_journal_mib),
            format!("min_free_disk_mib = {}", self.min_free_disk_mib),
            format!("store_cache_mib = {}", self.store_cache_mib),
            format!("retention = {}", baton_core::duration::format(self.retention)),
            format!("rate_limit = {}/s per connection", self.rate_limit),
            format!("max_concurrent_streams = {}", self.max_concurrent_streams),
            format!("log = {:?} at {}", self.log_format, self.log_level),
            format!("worker_threads = {}", self.worker_threads),
            format!("expression_workers = {}", self.expression_workers),
            format!(
                "expression limits = {} of CPU, {} MiB of memory, {} KiB of output per evaluation",
                baton_core::duration::format(self.expression_cpu_time),
                self.expression_memory_mib,
                self.expression_output_kib
            ),
        ]
    }

    /// The time limit of an attempt of a step that sets none; `None` when turned off (0s).
    pub fn default_attempt_timeout(&self) -> Option<Duration> {
        (!self.attempt_timeout.is_zero()).then_some(self.attempt_timeout)
    }

    /// The bounds of one expression evaluation.
    pub fn expression_limits(&self) -> Limits {
        Limits {
            cpu_time: self.expression_cpu_time,
            memory_bytes: self.expression_memory_mib.saturating_mul(MIB),
            output_bytes: self.expression_output_kib.saturating_mul(1024),
        }
    }
}

/// Fewer events than this would not hold a run of a small workflow with a few retries.
const MIN_JOURNAL_EVENTS: u64 = 100;
/// 1 TiB: more is no cap.
const MAX_JOURNAL_MIB: u64 = 1024 * 1024;
/// More threads than this would be a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;
/// More evaluator processes than this would be a typo.
const MAX_EXPRESSION_WORKERS: usize = 256;
/// Less would leave no room for the context an expression reads.
const MIN_EXPRESSION_MEMORY_MIB: u64 = 16;
/// 1 TiB: more is no bound.
const MAX_EXPRESSION_MEMORY_MIB: u64 = 1024 * 1024;
/// 64 MiB: far past the 4 MiB a gRPC message may carry.
const MAX_EXPRESSION_OUTPUT_KIB: usize = 64 * 1024;
const MIB: u64 = 1024 * 1024;

/// The default of `worker_threads`: the cores this process may use.
pub fn one_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// A duration as the workflow format writes them: `250ms`, `30s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    baton_core::duration::parse("duration", text).map_err(|e| e.to_string())
}

/// A duration in the TOML file, written as text the way the flag takes it.
fn duration_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`, and
/// `host=db password=secret` -> `host=db password=***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        let Some(at) = url.find("password=") else { return url.to_owned() };
        let value = &url[at + "password=".len()..];
        // The value ends at whitespace, or at the closing quote of a quoted one.
        let end = match value.strip_prefix('\'') {
            Some(quoted) => {
                let mut escaped = false;
                let close = quoted.char_indices().find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                });
                close.map_or(value.len(), |(i, _)| i + 2)
            }
            None => value.find(char::is_whitespace).unwrap_or(value.len()),
        };
        return format!("{}password=***{}", &url[..at], &value[end..]);
    };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(flags: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied())).unwrap().args
    }

    #[test]
    fn defaults_are_loopback_redb_and_no_tls() {
        let config = args(&[]).resolve().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.console_listen.to_string(), "127.0.0.1:9465");
        assert_eq!(config.data_dir, PathBuf::from("baton-data"));
        assert_eq!(config.store, None);
        assert!(!config.insecure);
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.worker_threads, one_per_core());
        assert_eq!(config.default_attempt_timeout(), Some(Duration::from_secs(300)));
    }

    #[test]
    fn the_journal_cap_has_defaults_comes_from_flags_or_the_file_and_must_be_sane() {
        let config = args(&[]).resolve().unwrap();
        assert_eq!((config.max_journal_events, config.max_journal_mib), (100_000, 1024));
        let config = args(&["--max-journal-events", "5000", "--max-journal-mib", "64"]).resolve().unwrap();
        assert_eq!((config.max_journal_events, config.max_journal_mib), (5_000, 64));
        assert!(config.describe().contains(&"journal cap = 5000 events, 64 MiB per execution".to_owned()));
        let error = args(&["--max-journal-events", "10"]).resolve().unwrap_err().to_string();
        assert_eq!(error, "max_journal_events: must be at least 100");
        let error = args(&["--max-journal-mib", "0"]).resolve().unwrap_err().to_string();
        assert_eq!(error, "max_journal_mib: must be from 1 to 1048576");
    }

    #[test]
    fn the_default_attempt_timeout_is_set_by_flag_or_file_and_0s_turns_it_off() {
        let config = args(&["--attempt-timeout", "30s"]).resolve().unwrap();
        assert_eq!(config.default_attempt_timeout(), Some(Duration::from_secs(30)));
        assert!(config.describe().contains(&"attempt_timeout = 30s".to_owned()));
        assert_eq!(args(&["--attempt-timeout", "0s"]).resolve().unwrap().default_attempt_timeout(), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, "attempt_timeout = \"2m\"\n").unwrap();
        let config = args(&["--config", file.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(config.default_attempt_timeout(), Some(Duration::from_secs(120)));
    }

    #[test]
    fn the_store_cache_and_retention_have_defaults_come_from_flags_or_the_file_and_must_be_sane() {
        let config = args(&[]).resolve().unwrap();
        assert_eq!((config.store_cache_mib, config.retention), (64, Duration::from_secs(7 * 86_400)));
        assert!(config.describe().contains(&"retention = 168h".to_owned()));
        let config = args(&["--store-cache-mib", "16", "--retention", "1m"]).resolve().unwrap();
        assert_eq!((config.store_cache_mib, config.retention), (16, Duration::from_secs(60)));
        assert!(config.describe().contains(&"store_cache_mib = 16".to_owned()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, "store_cache_mib = 256\nretention = \"30d\"\n").unwrap();
        let config = args(&["--config", file.to_str().unwrap()]).resolve().unwrap();
        assert_eq!((config.store_cache_mib, config.retention), (256, Duration::from_secs(30 * 86_400)));
        for bad in ["0", "65537"] {
            let error = args(&["--store-cache-mib", bad]).resolve().unwrap_err().to_string();
            assert_eq!(error, "store_cache_mib: must be from 1 to 65536");
        }
        for bad in ["0s", "3651d"] {
            let error = args(&["--retention", bad]).resolve().unwrap_err().to_string();
            assert_eq!(error, "retention: must be from 1s to 3650d");
        }
    }

    #[test]
    fn worker_threads_come_from_the_flag_or_the_file_and_must_be_sane() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, "worker_threads = 3\n").unwrap();
        let config = args(&["--config", file.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(config.worker_threads, 3);
        assert!(config.describe().contains(&"worker_threads = 3".to_owned()));
        assert_eq!(args(&["--worker-threads", "1"]).resolve().unwrap().worker_threads, 1);
        for bad in ["0", "1025"] {
            let error = args(&["--worker-threads", bad]).resolve().unwrap_err().to_string();
            assert_eq!(error, "worker_threads: must be from 1 to 1024");
        }
    }

    #[test]
    fn expression_bounds_have_defaults_come_from_flags_or_the_file_and_must_be_sane() {
        let config = args(&[]).resolve().unwrap();
        assert_eq!(config.expression_limits(), Limits::default());
        assert_eq!(config.expression_workers, one_per_core());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        let toml = "expression_cpu_time = \"250ms\"\nexpression_memory_mib = 128\nexpression_output_kib = 64\n\
                    expression_workers = 3\n";
        std::fs::write(&file, toml).unwrap();
        let config = args(&["--config", file.to_str().unwrap(), "--expression-cpu-time", "2s"]).resolve().unwrap();
        let limits = Limits { cpu_time: Duration::from_secs(2), memory_bytes: 128 << 20, output_bytes: 64 << 10 };
        assert_eq!((config.expression_limits(), config.expression_workers), (limits, 3));
        let described = config.describe();
        let line = "expression limits = 2s of CPU, 128 MiB of memory, 64 KiB of output per evaluation".to_owned();
        assert!(described.contains(&line), "{described:?}");
        for (flags, error) in [
            (["--expression-workers", "0"], "expression_workers: must be from 1 to 256"),
            (["--expression-cpu-time", "1ms"], "expression_cpu_time: must be from 10ms to 1h"),
            (["--expression-memory-mib", "8"], "expression_memory_mib: must be from 16 to 1048576"),
            (["--expression-output-kib", "0"], "expression_output_kib: must be from 1 to 65536"),
        ] {
            assert_eq!(args(&flags).resolve().unwrap_err().to_string(), error);
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:6000\"\ndata_dir = \"/var/baton\"\nshutdown_grace = \"5s\"\n")
            .unwrap();
        let config = args(&["--config", file.to_str().unwrap(), "--listen", "127.0.0.1:7000"]).resolve().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.data_dir, PathBuf::from("/var/baton"));
        assert_eq!(config.shutdown_grace, Duration::from_secs(5));
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, "listn = \"127.0.0.1:6000\"\n").unwrap();
        let error = args(&["--config", file.to_str().unwrap()]).resolve().unwrap_err().to_string();
        assert!(error.contains("listn"), "{error}");
    }

    #[test]
    fn a_public_address_needs_tls_and_tokens_unless_insecure() {
        let error = args(&["--listen", "0.0.0.0:50051"]).resolve().unwrap_err().to_string();
        assert!(error.contains("--tls-cert"), "{error}");
        let error = args(&["--listen", "0.0.0.0:50051", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(error.contains("--auth-token-file"), "{error}");
        assert!(args(&["--listen", "0.0.0.0:50051", "--insecure"]).resolve().is_ok());
        let error = args(&["--console-listen", "0.0.0.0:9465"]).resolve().unwrap_err().to_string();
        assert_eq!(
            error,
            "console_listen: a non-loopback console address needs --auth-token-file for its login (or --insecure)"
        );
        assert!(args(&["--console-listen", "0.0.0.0:9465", "--auth-token-file", "t"]).resolve().is_ok());
        let error = args(&["--tls-cert", "c.pem"]).resolve().unwrap_err().to_string();
        assert!(error.contains("go together"), "{error}");
    }

    #[test]
    fn store_urls_are_checked_and_passwords_never_printed() {
        let error = args(&["--store", "mysql://x"]).resolve().unwrap_err().to_string();
        assert!(error.starts_with("store:"), "{error}");
        let config = args(&["--store", "postgres://baton:hunter2@db:5432/baton"]).resolve().unwrap();
        let described = config.describe().join("\n");
        assert!(described.contains("postgres://baton:***@db:5432/baton"), "{described}");
        assert!(!described.contains("hunter2"));
        for (conninfo, shown) in [
            ("host=db dbname=baton password=hunter2", "host=db dbname=baton password=***"),
            ("host=db password='my hunter2\\' x' dbname=baton", "host=db password=*** dbname=baton"),
        ] {
            let config = args(&["--store", conninfo]).resolve().unwrap();
            let described = config.describe().join("\n");
            assert!(described.contains(shown), "{described}");
            assert!(!described.contains("hunter2"), "{described}");
        }
    }

    #[test]
    fn every_setting_reads_from_the_file_under_its_flag_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(
            &file,
            "metrics_listen = \"127.0.0.1:9000\"\nstore = \"postgres://db/baton\"\ninsecure = true\n\
             allow_link_local = true\ndemo = true\nrate_limit = 5\nmax_concurrent_streams = 6\nlog_format = \"json\"\n\
             log_level = \"debug\"\n",
        )
        .unwrap();
        let config = args(&["--config", file.to_str().unwrap(), "--rate-limit", "7"]).resolve().unwrap();
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.store.as_deref(), Some("postgres://db/baton"));
        assert!(config.insecure && config.allow_link_local && config.demo);
        assert_eq!((config.rate_limit, config.max_concurrent_streams), (7, 6));
        assert_eq!((config.log_format, config.log_level.as_str()), (LogFormat::Json, "debug"));
        std::fs::write(&file, "shutdown_grace = \"5 parsecs\"\n").unwrap();
        let error = args(&["--config", file.to_str().unwrap()]).resolve().unwrap_err().to_string();
        assert!(error.contains("shutdown_grace") && error.contains("invalid duration"), "{error}");
    }
}
