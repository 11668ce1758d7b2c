//! `baton serve`'s configuration: flags, then `BATON_*` environment variables, then an
//! optional TOML file, then defaults, in that precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `baton serve`'s flags; each also reads a `BATON_*` variable. Unset ones fall back to the
/// TOML file, then to the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// The gRPC address [default: 127.0.0.1:50051].
    #[arg(long, env = "BATON_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The Prometheus metrics address, serving /metrics [default: 127.0.0.1:9464].
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The directory of the embedded redb store [default: ./baton-data].
    #[arg(long, env = "BATON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL (postgres://...) to keep state in instead of the data dir.
    #[arg(long, env = "BATON_STORE")]
    pub store: Option<String>,
    /// The server's TLS certificate chain (PEM).
    #[arg(long, env = "BATON_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long, env = "BATON_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to (mutual TLS).
    #[arg(long, env = "BATON_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// A file of bearer tokens, one per line, any of which a request may present.
    #[arg(long, env = "BATON_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// A directory of secrets services name in their credentials and TLS settings, one file
    /// per secret (read on every use, so a rotation takes effect at once).
    #[arg(long, env = "BATON_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// CA certificates (PEM) trusted for https services besides the system's roots.
    #[arg(long, env = "BATON_SERVICES_CA")]
    pub services_ca: Option<PathBuf>,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 [default: off].
    #[arg(long, env = "BATON_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve a non-loopback address without TLS or without tokens.
    #[arg(long, env = "BATON_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Accept service endpoints on link-local and cloud metadata addresses.
    #[arg(long, env = "BATON_ALLOW_LINK_LOCAL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_link_local: Option<bool>,
    /// Start the example services in-process and apply the example workflows.
    #[arg(long, env = "BATON_DEMO", num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<bool>,
    /// How long in-flight calls may take to finish on shutdown, e.g. 30s [default: 30s].
    #[arg(long, env = "BATON_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Requests per second one connection may make [default: 2000].
    #[arg(long, env = "BATON_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Concurrent streams per connection [default: 256].
    #[arg(long, env = "BATON_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace [default: info].
    #[arg(long, env = "BATON_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Threads that run the server's tasks [default: one per core].
    #[arg(long, env = "BATON_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

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

/// The TOML file: the same settings as the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    auth_token_file: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    services_ca: Option<PathBuf>,
    otlp_endpoint: Option<String>,
    insecure: Option<bool>,
    allow_link_local: Option<bool>,
    demo: Option<bool>,
    shutdown_grace: Option<String>,
    rate_limit: Option<u32>,
    max_concurrent_streams: Option<u32>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    worker_threads: Option<usize>,
}

/// The settings `baton serve` runs with, every one resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The gRPC address.
    pub listen: SocketAddr,
    /// The metrics address.
    pub metrics_listen: SocketAddr,
    /// The redb data directory (unused with `store`).
    pub data_dir: PathBuf,
    /// A PostgreSQL URL, when state lives there.
    pub store: Option<String>,
    /// TLS certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
    /// Client CA for mutual TLS.
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens file.
    pub auth_token_file: Option<PathBuf>,
    /// The directory of service secrets.
    pub secrets_dir: Option<PathBuf>,
    /// Extra CA certificates for https services.
    pub services_ca: Option<PathBuf>,
    /// The OTLP collector traces go to; `None`: none.
    pub otlp_endpoint: Option<String>,
    /// Non-loopback without TLS or tokens allowed.
    pub insecure: bool,
    /// Link-local and metadata endpoints allowed.
    pub allow_link_local: bool,
    /// The demo.
    pub demo: bool,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Requests per second per connection.
    pub rate_limit: u32,
    /// Concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level.
    pub log_level: String,
    /// Threads of the async runtime.
    pub worker_threads: usize,
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
            None => FileConfig::default(),
        };
        let shutdown_grace = match (&self.shutdown_grace, &file.shutdown_grace) {
            (Some(grace), _) => *grace,
            (None, Some(text)) => {
                parse_duration(text).map_err(|reason| ConfigError::Invalid { setting: "shutdown_grace", reason })?
            }
            (None, None) => Duration::from_secs(30),
        };
        let config = ServeConfig {
            listen: self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:50051".parse().expect("an address")),
            metrics_listen: self
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| "127.0.0.1:9464".parse().expect("an address")),
            data_dir: self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("baton-data")),
            store: self.store.clone().or(file.store),
            tls_cert: self.tls_cert.clone().or(file.tls_cert),
            tls_key: self.tls_key.clone().or(file.tls_key),
            tls_client_ca: self.tls_client_ca.clone().or(file.tls_client_ca),
            auth_token_file: self.auth_token_file.clone().or(file.auth_token_file),
            secrets_dir: self.secrets_dir.clone().or(file.secrets_dir),
            services_ca: self.services_ca.clone().or(file.services_ca),
            otlp_endpoint: self.otlp_endpoint.clone().or(file.otlp_endpoint),
            insecure: self.insecure.or(file.insecure).unwrap_or(false),
            allow_link_local: self.allow_link_local.or(file.allow_link_local).unwrap_or(false),
            demo: self.demo.or(file.demo).unwrap_or(false),
            shutdown_grace,
            rate_limit: self.rate_limit.or(file.rate_limit).unwrap_or(2_000),
            max_concurrent_streams: self.max_concurrent_streams.or(file.max_concurrent_streams).unwrap_or(256),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            log_level: self.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".to_owned()),
            worker_threads: self.worker_threads.or(file.worker_threads).unwrap_or_else(one_per_core),
        };
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
        Ok(())
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
            format!("store = {store}"),
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
            format!("rate_limit = {}/s per connection", self.rate_limit),
            format!("max_concurrent_streams = {}", self.max_concurrent_streams),
            format!("log = {:?} at {}", self.log_format, self.log_level),
            format!("worker_threads = {}", self.worker_threads),
        ]
    }
}

/// More threads than this would be a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;

/// The default of `worker_threads`: the cores this process may use.
pub fn one_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// A duration as the workflow format writes them: `250ms`, `30s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    baton_core::duration::parse("duration", text).map_err(|e| e.to_string())
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
        assert_eq!(config.data_dir, PathBuf::from("baton-data"));
        assert_eq!(config.store, None);
        assert!(!config.insecure);
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.worker_threads, one_per_core());
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
}
