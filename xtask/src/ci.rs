//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{cargo, display, fuzz, layering, run as run_cmd, standalone, table};

/// Runs fmt, the typo check, the unused-dependency check, clippy, the dependency policy
/// (`cargo deny`), tests (then shows the conformance kit's report), doc tests, docs and the
/// layering check, then prints how long each took.
pub(crate) fn run(root: &Path) -> Result<()> {
    let mut ci = Ci { timings: Vec::new() };

    ci.step("fmt", cargo_step(root, &["fmt", "--all", "--", "--check"]))?;
    ci.step("typos", typos(root))?;
    // cargo-machete reads the sources, so it needs no build; the built-in
    // `unused_crate_dependencies` lint would flag every dev-dependency in each test target.
    ci.step("unused-deps", tool_step(root, MACHETE, &[]))?;

    let mut clippy = vec!["clippy", "--workspace", "--all-targets", "--all-features"];
    // `--locked` catches a Cargo.lock that is out of date with the manifests; without a lock
    // file it would only fail, so leave it out then.
    if root.join("Cargo.lock").is_file() {
        clippy.push("--locked");
    }
    clippy.extend(["--", "-D", "warnings"]);
    ci.step("clippy", cargo_step(root, &clippy))?;
    // After clippy has fetched every crate, so it runs offline (the advisory database is out
    // of reach, and advisories are not what it checks). Policy in deny.toml.
    ci.step("deny", tool_step(root, DENY, &["--offline", "check", "licenses", "bans", "sources"]))?;

    // The conformance kit's runner (crates/orchestrator/tests/ctk.rs) writes its report; a
    // report left from an earlier run must not stand in for this one.
    let ctk_report = target_dir(root).join("tmp").join("ctk-report.txt");
    let _ = std::fs::remove_file(&ctk_report);
    let tests = if nextest_available(root) {
        cargo_step(root, &["nextest", "run", "--workspace", "--all-features", "--no-fail-fast"])
    } else {
        cargo_step(root, &["test", "--workspace", "--all-features"])
    };
    ci.step("test", tests)?;
    ci.step(
        "ctk",
        Step::Check(Box::new(|| {
            let report = std::fs::read_to_string(&ctk_report)
                .map_err(|e| anyhow!("no conformance report at {} ({e})", ctk_report.display()))?;
            print!("{report}");
            Ok(())
        })),
    )?;
    // nextest does not run doc tests; plain `cargo test` does, but running them again alone
    // keeps the two paths the same.
    ci.step("doctest", cargo_step(root, &["test", "--workspace", "--all-features", "--doc"]))?;

    let mut doc = cargo(root);
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"]).env("RUSTDOCFLAGS", "-D warnings");
    ci.step("doc", Step::Command(doc))?;

    ci.step("layering", Step::Check(Box::new(|| layering::run(root))))?;
    ci.step("standalone", Step::Check(Box::new(|| standalone::run(root))))?;
    // A few seconds per target on a quick build: the seeds and the first mutations, each push.
    ci.step("fuzz", Step::Check(Box::new(|| fuzz::run(root, None, fuzz::CI_SECONDS, fuzz::Build::Quick))))?;

    ci.summary();
    println!("ci passed");
    Ok(())
}

/// A tool a step needs that cargo does not bring: how to find it and how to install it.
struct Tool {
    /// The cargo subcommand (`cargo <name>`), or the program when `cargo_subcommand` is false.
    name: &'static str,
    cargo_subcommand: bool,
    /// Tells someone without it how to get it (`.ci/run` installs it the same way).
    install: &'static str,
}

const MACHETE: Tool = Tool { name: "machete", cargo_subcommand: true, install: "cargo install --locked cargo-machete" };
const DENY: Tool = Tool { name: "deny", cargo_subcommand: true, install: "cargo install --locked cargo-deny" };
const CODESPELL: Tool = Tool {
    name: "codespell",
    cargo_subcommand: false,
    install: "apt-get install codespell (Debian) or pip install codespell",
};

impl Tool {
    fn command(&self, root: &Path) -> Command {
        if self.cargo_subcommand {
            let mut cmd = cargo(root);
            // `cargo run` gives xtask its own CARGO_PKG_NAME; cargo-machete takes that to
            // mean it was not started as `cargo machete` and reads "machete" as a path.
            cmd.arg(self.name).env_remove("CARGO_PKG_NAME");
            cmd
        } else {
            let mut cmd = Command::new(self.name);
            cmd.current_dir(root);
            cmd
        }
    }

    /// The tool's command, or an error saying how to install it: a gate is never skipped.
    fn require(&self, root: &Path) -> Result<Command> {
        let found = self
            .command(root)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let shown = if self.cargo_subcommand { format!("cargo {}", self.name) } else { self.name.to_owned() };
            bail!("`{shown}` is not installed; install it with: {}", self.install);
        }
        Ok(self.command(root))
    }
}

/// Runs `tool` with `args`, failing the step with how to install it when it is missing.
fn tool_step<'a>(root: &'a Path, tool: Tool, args: &'a [&'a str]) -> Step<'a> {
    Step::Check(Box::new(move || {
        let mut cmd = tool.require(root)?;
        cmd.args(args);
        println!("    {}", display(&cmd));
        run_cmd(&mut cmd)
    }))
}

/// codespell over the files git tracks (its word list and skips are in `.codespellrc`).
fn typos(root: &Path) -> Step<'_> {
    Step::Check(Box::new(move || {
        let mut cmd = CODESPELL.require(root)?;
        let output = Command::new("git")
            .args(["ls-files", "-z"])
            .current_dir(root)
            .output()
            .context("could not start `git ls-files`")?;
        if !output.status.success() {
            bail!("`git ls-files` exited with {}", output.status);
        }
        let files = String::from_utf8(output.stdout).context("a tracked path is not UTF-8")?;
        let files: Vec<&str> = files.split('\0').filter(|f| !f.is_empty()).collect();
        println!("    codespell <the {} files git tracks>", files.len());
        run_cmd(cmd.args(files))
    }))
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

/// Where cargo builds: `CARGO_TARGET_DIR`, else `target` under the workspace.
fn target_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), std::path::PathBuf::from)
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
