//! `cargo xtask soak`: the soak of `crates/orchestrator/tests/e2e_connection.rs` at full size.
//! 64 callers on one tonic connection with default settings start executions through a real
//! `baton serve` (redb), watch each and drop the watch at its terminal event; the run fails on
//! any error and prints executions per second and the server's RSS at the start and the end.
//! The test suite runs the same test short (3,000 executions).

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The full run's shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    executions: u64,
    release: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { executions: 200_000, release: false }
    }
}

pub(crate) const USAGE: &str = "soak [--executions N] [--release]";

impl Options {
    /// Parses `--executions N` and `--release`.
    pub(crate) fn parse(args: &[&str]) -> Result<Self> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(&flag) = args.next() {
            match flag {
                "--release" => options.release = true,
                "--executions" => {
                    let value = args.next().with_context(|| format!("{flag} needs a value"))?;
                    options.executions = value
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .with_context(|| format!("{flag} {value:?}: a count of at least 1"))?;
                }
                _ => bail!("unknown flag {flag}; usage: cargo xtask {USAGE}"),
            }
        }
        Ok(options)
    }
}

/// Runs the soak test with `options`; its figures come out on stderr (`soak:` lines).
pub(crate) fn run(root: &Path, options: &Options) -> Result<()> {
    let mut cmd = crate::cargo(root);
    cmd.args(["test", "-p", "baton", "--test", "e2e_connection"]);
    if options.release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--exact", "soak", "--nocapture"]);
    cmd.env("BATON_SOAK_EXECUTIONS", options.executions.to_string());
    crate::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_run() {
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        let options = Options::parse(&["--executions", "5000", "--release"]).unwrap();
        assert_eq!(options, Options { executions: 5_000, release: true });
        let error = |args: &[&str]| format!("{:#}", Options::parse(args).unwrap_err());
        assert!(error(&["--executions"]).contains("--executions needs a value"));
        assert!(error(&["--executions", "0"]).contains("at least 1"));
        assert!(error(&["--executions", "many"]).contains("\"many\""));
        assert!(error(&["--seconds", "5"]).contains("unknown flag --seconds"));
    }
}
