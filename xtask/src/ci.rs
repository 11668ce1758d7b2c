//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use crate::{cargo, display, layering, run as run_cmd, table};

/// Runs fmt, clippy, tests, doc tests, docs and the layering check, then prints how long each took.
pub(crate) fn run(root: &Path) -> Result<()> {
    let mut ci = Ci { timings: Vec::new() };

    ci.step("fmt", cargo_step(root, &["fmt", "--all", "--", "--check"]))?;

    let mut clippy = vec!["clippy", "--workspace", "--all-targets", "--all-features"];
    // `--locked` catches a Cargo.lock that is out of date with the manifests; without a lock
    // file it would only fail, so leave it out then.
    if root.join("Cargo.lock").is_file() {
        clippy.push("--locked");
    }
    clippy.extend(["--", "-D", "warnings"]);
    ci.step("clippy", cargo_step(root, &clippy))?;

    let tests = if nextest_available(root) {
        cargo_step(root, &["nextest", "run", "--workspace", "--all-features", "--no-fail-fast"])
    } else {
        cargo_step(root, &["test", "--workspace", "--all-features"])
    };
    ci.step("test", tests)?;
    // nextest does not run doc tests; plain `cargo test` does, but running them again alone
    // keeps the two paths the same.
    ci.step("doctest", cargo_step(root, &["test", "--workspace", "--all-features", "--doc"]))?;

    let mut doc = cargo(root);
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"]).env("RUSTDOCFLAGS", "-D warnings");
    ci.step("doc", Step::Command(doc))?;

    ci.step("layering", Step::Check(Box::new(|| layering::run(root))))?;

    ci.summary();
    println!("ci passed");
    Ok(())
}

enum Step<'a> {
    Command(Command),
    Check(Box<dyn FnOnce() -> Result<()> + 'a>),
}

fn cargo_step<'a>(root: &Path, args: &[&str]) -> Step<'a> {
    let mut cmd = cargo(root);
    cmd.args(args);
    Step::Command(cmd)
}

fn nextest_available(root: &Path) -> bool {
    cargo(root)
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Ci {
    timings: Vec<(&'static str, Duration, bool)>,
}

impl Ci {
    fn step(&mut self, name: &'static str, step: Step<'_>) -> Result<()> {
        let started = Instant::now();
        let result = match step {
            Step::Command(mut cmd) => {
                println!("==> {name}: {}", display(&cmd));
                run_cmd(&mut cmd)
            }
            Step::Check(check) => {
                println!("==> {name}");
                check()
            }
        };
        self.timings.push((name, started.elapsed(), result.is_ok()));
        result.map_err(|e| {
            self.summary();
            anyhow!("ci failed at step \"{name}\": {e:#}")
        })
    }

    fn summary(&self) {
        let rows: Vec<Vec<String>> = self
            .timings
            .iter()
            .map(|(name, took, ok)| {
                vec![
                    (*name).to_owned(),
                    format!("{:.1}s", took.as_secs_f64()),
                    if *ok { "ok" } else { "FAILED" }.to_owned(),
                ]
            })
            .collect();
        println!("\n{}", table::render(&["step", "time", "result"], &rows, "lrl"));
    }
}
