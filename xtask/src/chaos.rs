//! `cargo xtask chaos`: the chaos run of `crates/orchestrator/tests/e2e_chaos.rs` at full
//! size. Executions of the `pipeline` workflow through a real `baton serve` (redb), killed with
//! `kill -9` at random moments, while the example services fail and lose a share of calls; at
//! the end every acknowledged execution exists and is terminal and every step's effect happened
//! once per idempotency key. The test suite runs the same test short (its defaults).

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The full run's shape; each is a `BATON_CHAOS_*` variable of the test.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    executions: u64,
    kills: u64,
    fail_rate: f64,
    lose_rate: f64,
    seed: Option<u64>,
    clients: Option<u64>,
    release: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            executions: 1000,
            kills: 20,
            fail_rate: 0.05,
            lose_rate: 0.05,
            seed: None,
            clients: None,
            release: false,
        }
    }
}

pub(crate) const USAGE: &str = "chaos [--executions N] [--kills K] [--fail-rate R] [--lose-rate R] [--seed S] \
[--clients C] [--release]";

impl Options {
    /// Parses `--flag value` pairs (and `--release`).
    pub(crate) fn parse(args: &[&str]) -> Result<Self> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(&flag) = args.next() {
            if flag == "--release" {
                options.release = true;
                continue;
            }
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            let bad = || format!("{flag} {value:?} is not a valid value");
            match flag {
                "--executions" => options.executions = value.parse().with_context(bad)?,
                "--kills" => options.kills = value.parse().with_context(bad)?,
                "--fail-rate" => options.fail_rate = rate(value).with_context(bad)?,
                "--lose-rate" => options.lose_rate = rate(value).with_context(bad)?,
                "--seed" => options.seed = Some(value.parse().with_context(bad)?),
                "--clients" => options.clients = Some(value.parse().with_context(bad)?),
                _ => bail!("unknown flag {flag}; usage: cargo xtask {USAGE}"),
            }
        }
        if options.executions == 0 {
            bail!("--executions must be at least 1");
        }
        Ok(options)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("BATON_CHAOS_EXECUTIONS", self.executions.to_string()),
            ("BATON_CHAOS_KILLS", self.kills.to_string()),
            ("BATON_CHAOS_FAIL_RATE", self.fail_rate.to_string()),
            ("BATON_CHAOS_LOSE_RATE", self.lose_rate.to_string()),
        ];
        env.extend(self.seed.map(|s| ("BATON_CHAOS_SEED", s.to_string())));
        env.extend(self.clients.map(|c| ("BATON_CHAOS_CLIENTS", c.to_string())));
        env
    }
}

fn rate(text: &str) -> Result<f64> {
    let rate: f64 = text.parse()?;
    if !(0.0..1.0).contains(&rate) {
        bail!("a rate is in [0, 1)");
    }
    Ok(rate)
}

/// Runs the chaos test with `options`; its figures come out on stderr (`chaos:` lines).
pub(crate) fn run(root: &Path, options: &Options) -> Result<()> {
    let mut cmd = crate::cargo(root);
    cmd.args(["test", "-p", "baton", "--test", "e2e_chaos"]);
    if options.release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--nocapture"]);
    // A random seed unless one is given, so that runs differ; the test prints the one it used.
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    });
    let options = Options { seed: Some(seed), ..options.clone() };
    cmd.envs(options.env());
    crate::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_tests_variables() {
        let options = Options::parse(&["--executions", "50", "--kills", "2", "--lose-rate", "0.2", "--seed", "7"]);
        let env = options.unwrap().env();
        let get = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("BATON_CHAOS_EXECUTIONS"), Some("50"));
        assert_eq!(get("BATON_CHAOS_KILLS"), Some("2"));
        assert_eq!(get("BATON_CHAOS_FAIL_RATE"), Some("0.05"));
        assert_eq!(get("BATON_CHAOS_LOSE_RATE"), Some("0.2"));
        assert_eq!(get("BATON_CHAOS_SEED"), Some("7"));
        assert_eq!(get("BATON_CHAOS_CLIENTS"), None);
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        assert!(Options::parse(&["--release"]).unwrap().release);
    }

    #[test]
    fn bad_flags_are_named() {
        let error = |args: &[&str]| format!("{:#}", Options::parse(args).unwrap_err());
        assert!(error(&["--kills"]).contains("--kills needs a value"));
        assert!(error(&["--kills", "many"]).contains("--kills \"many\""));
        assert!(error(&["--fail-rate", "1.5"]).contains("--fail-rate \"1.5\""));
        assert!(error(&["--executions", "0"]).contains("at least 1"));
        assert!(error(&["--colour", "red"]).contains("unknown flag --colour"));
    }
}
