//! `baton-example-service`: runs one example service until Ctrl-C (or SIGTERM), then
//! deregisters and prints its counters.
//!
//! ```text
//! baton-example-service <inventory|payments|shipping> [--listen 127.0.0.1:PORT] [--id ID]
//!     [--baton http://127.0.0.1:50051] [--advertise URL] [--latency 50ms] [--fail-rate 0.1]
//!     [--lose-rate 0.1] [--seed N] [--ttl 10s] [--deregister-after 1m|never] [--capacity N]
//!     [--label KEY=VALUE]... [--idempotency-window 24h]
//!     [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
//! ```
//!
//! `--idempotency-window` is how long a key's stored answer is kept after its first request
//! (24 hours unless given); past it the key is new again.
//!
//! With `--tls-cert` and `--tls-key` it serves HTTPS (HTTP/2 or HTTP/1.1 by ALPN) and registers
//! an `https://` URL; with `--tls-client-ca` too, callers must present a client certificate
//! that chains to it.

#![allow(clippy::print_stderr, reason = "a binary reports start-up failures on stderr")]

use std::process::ExitCode;
use std::time::Duration;

use baton_examples::{Kind, ServiceOptions};

const USAGE: &str = "usage: baton-example-service <inventory|payments|shipping> [--listen ADDR] [--id ID] \
[--baton URL] [--advertise URL] [--latency DURATION] [--fail-rate RATE] [--lose-rate RATE] [--seed N] \
[--ttl DURATION] [--deregister-after DURATION|never] [--capacity N] [--label KEY=VALUE]... \
[--idempotency-window DURATION] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]";

fn main() -> ExitCode {
    let (kind, options) = match parse(std::env::args().skip(1)) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("baton-example-service: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton-example-service: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(kind, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-example-service: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout, reason = "the listen line on stdout is what scripts read")]
async fn run(kind: Kind, options: ServiceOptions) -> baton_examples::Result<()> {
    let baton = options.baton.clone();
    let service = baton_examples::spawn(kind, options).await?;
    println!("{} {} listening on {} (POST {})", service.kind(), service.id(), service.addr(), service.url());
    let handle = service.handle();
    if let Some(baton) = baton {
        eprintln!("registering with {baton}");
        tokio::select! {
            () = shutdown_signal() => {}
            () = report_registration(&handle) => {}
        }
    } else {
        shutdown_signal().await;
    }
    service.shutdown().await?;
    let stats = handle.stats();
    eprintln!(
        "stopped: {} requests, {} effects, {} duplicates, {} failures",
        stats.requests, stats.effects, stats.duplicates, stats.failures
    );
    Ok(())
}

/// Tells on stderr whenever the registration is won or lost, or a new error occurs; never ends.
async fn report_registration(handle: &baton_examples::Handle) {
    let mut last = handle.registration();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = handle.registration();
        if now.registered != last.registered || now.registrations != last.registrations {
            let state = if now.registered { "registered" } else { "not registered" };
            eprintln!("{state} ({} registrations, {} heartbeats)", now.registrations, now.heartbeats);
        }
        if now.last_error != last.last_error
            && let Some(error) = &now.last_error
        {
            eprintln!("{error}; retrying");
        }
        last = now;
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The kind and options from the arguments; `None` for `--help`.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<(Kind, ServiceOptions)>, String> {
    let mut kind = None;
    let mut options = ServiceOptions::default();
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if !arg.starts_with("--") {
            if kind.is_some() {
                return Err(format!("unexpected argument {arg:?}"));
            }
            kind = Some(arg.parse::<Kind>()?);
            continue;
        }
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), value.to_owned()),
            None => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg, value)
            }
        };
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--listen" => options.listen = value.parse().map_err(|e| bad(&e))?,
            "--id" => options.id = Some(value),
            "--baton" => options.baton = Some(value),
            "--advertise" => options.advertise = Some(value),
            "--latency" => options.latency = duration(&flag, &value)?,
            "--fail-rate" => options.fail_rate = value.parse().map_err(|e| bad(&e))?,
            "--lose-rate" => options.lose_rate = value.parse().map_err(|e| bad(&e))?,
            "--seed" => options.seed = Some(value.parse().map_err(|e| bad(&e))?),
            "--ttl" => options.ttl = duration(&flag, &value)?,
            "--deregister-after" => {
                options.deregister_after = if value == "never" { None } else { Some(duration(&flag, &value)?) }
            }
            "--capacity" => options.capacity = value.parse().map_err(|e| bad(&e))?,
            "--idempotency-window" => options.idempotency_window = duration(&flag, &value)?,
            "--label" => {
                let (key, label) = value.split_once('=').ok_or_else(|| bad(&"expected KEY=VALUE"))?;
                options.labels.insert(key.to_owned(), label.to_owned());
            }
            "--tls-cert" => cert = Some(read(&flag, &value)?),
            "--tls-key" => key = Some(read(&flag, &value)?),
            "--tls-client-ca" => client_ca = Some(read(&flag, &value)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let kind = kind.ok_or("which service? inventory, payments or shipping")?;
    options.tls = match (cert, key, client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), client_ca) => Some(
            baton_examples::tls::server_config(&cert, &key, client_ca.as_deref())
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
        ),
        (None, None, Some(_)) => return Err("--tls-client-ca needs --tls-cert and --tls-key".to_owned()),
        _ => return Err("--tls-cert and --tls-key go together".to_owned()),
    };
    Ok(Some((kind, options)))
}

fn read(flag: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {path:?}: {e}"))
}

fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    baton_core::duration::parse(flag, value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Option<(Kind, ServiceOptions)>, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn flags_parse_in_both_forms() {
        let (kind, options) = args(
            "payments --listen 127.0.0.1:8081 --id pay-2 --baton=http://127.0.0.1:50051 --latency 50ms \
             --fail-rate 0.25 --ttl 3s --deregister-after never --capacity 8 --label region=eu \
             --idempotency-window 1h",
        )
        .unwrap()
        .unwrap();
        assert_eq!(kind, Kind::Payments);
        assert_eq!(options.listen.port(), 8081);
        assert_eq!(options.id.as_deref(), Some("pay-2"));
        assert_eq!(options.baton.as_deref(), Some("http://127.0.0.1:50051"));
        assert_eq!((options.latency, options.ttl), (Duration::from_millis(50), Duration::from_secs(3)));
        assert_eq!(options.idempotency_window, Duration::from_secs(3600));
        assert_eq!((options.fail_rate, options.deregister_after, options.capacity), (0.25, None, 8));
        assert_eq!(options.labels["region"], "eu");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(args("--help").unwrap().is_none());
        assert!(args("").unwrap_err().contains("which service"));
        assert!(args("warehouse").unwrap_err().contains("warehouse"));
        assert!(args("inventory shipping").unwrap_err().contains("\"shipping\""));
        assert!(args("inventory --listen").unwrap_err().contains("needs a value"));
        assert!(args("inventory --listen nowhere").unwrap_err().contains("--listen \"nowhere\""));
        assert!(args("inventory --latency 5").unwrap_err().contains("--latency"));
        assert!(args("inventory --colour red").unwrap_err().contains("--colour"));
        assert!(args("inventory --tls-cert /nonexistent.pem").unwrap_err().contains("--tls-cert \"/nonexistent.pem\""));
        let dir = std::env::temp_dir().join(format!("baton-example-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("cert.pem");
        std::fs::write(&pem, "not a certificate").unwrap();
        let pem = pem.display();
        assert!(args(&format!("inventory --tls-cert {pem}")).unwrap_err().contains("go together"));
        let error = args(&format!("inventory --tls-cert {pem} --tls-key {pem}")).unwrap_err();
        assert!(error.contains("no certificate"), "{error}");
        assert!(args(&format!("inventory --tls-client-ca {pem}")).unwrap_err().contains("needs --tls-cert"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
