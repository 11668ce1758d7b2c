//! Project automation for Baton, run as `cargo xtask <command>`.
//!
//! What it is for: the checks CI runs (`ci`), the crate layering rule (`layering`) and the
//! bench report (`bench`), written in Rust so they behave the same on every machine.
//! What it is not for: anything a plain `cargo` command already does well on its own.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "xtask reports to the terminal")]

mod bench;
mod chaos;
mod ci;
mod fuzz;
mod layering;
mod soak;
mod standalone;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci               fmt, typos, unused dependencies, clippy, cargo deny, tests (the chaos test
                   and the soak short), doc tests, docs, the layering and standalone checks and
                   a short fuzz run, stopping at the first failure
  layering         check the dependency edges between workspace crates against the layering table
  standalone       check that no file of the repository refers to a folder beside the checkout
  bench [FILTER]   run the criterion benches (only the bench target FILTER if given) and print
                   each figure beside its baseline and target
  fuzz [TARGET] [--seconds N]
                   run the cargo-fuzz targets in fuzz/ (or only TARGET) for N seconds each
                   (default 60); needs cargo-fuzz
  chaos [--executions N] [--kills K] [--fail-rate R] [--lose-rate R] [--seed S] [--clients C] [--release]
                   executions of the pipeline workflow through a real server killed with kill -9
                   K times while the example services fail and lose calls (default 1000, 20,
                   0.05, 0.05); checks nothing acknowledged is lost and no effect repeats
  soak [--executions N] [--release]
                   N executions (default 200,000) by 64 callers on one connection, each watch
                   dropped at its terminal event; fails on any error, prints executions/s and
                   the server's RSS at the start and end
  help             print this message";

fn main() -> ExitCode {
    match dispatch(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed by hand: anyhow's `Debug` adds xtask's own backtrace when
            // RUST_BACKTRACE is set, which only buries the failing step.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: Vec<String>) -> Result<()> {
    let root = project_root();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            Ok(())
        }
        ["ci"] => ci::run(&root),
        ["layering"] => layering::run(&root),
        ["standalone"] => standalone::run(&root),
        ["bench"] => bench::run(&root, None),
        ["bench", filter] => bench::run(&root, Some(filter)),
        ["fuzz", rest @ ..] => {
            let (target, seconds) = fuzz_args(rest)?;
            fuzz::run(&root, target, seconds, fuzz::Build::Thorough)
        }
        ["chaos", rest @ ..] => chaos::run(&root, &chaos::Options::parse(rest)?),
        ["soak", rest @ ..] => soak::run(&root, &soak::Options::parse(rest)?),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown arguments `{}`", args.join(" "))
        }
    }
}

/// `[TARGET] [--seconds N]` of `cargo xtask fuzz`.
fn fuzz_args<'a>(args: &[&'a str]) -> Result<(Option<&'a str>, u64)> {
    let (mut target, mut seconds) = (None, fuzz::DEFAULT_SECONDS);
    let mut args = args.iter();
    while let Some(&arg) = args.next() {
        match arg {
            "--seconds" => {
                let value = args.next().context("--seconds needs a value")?;
                seconds = value.parse().ok().filter(|&s| s > 0).with_context(|| format!("--seconds {value:?}"))?;
            }
            _ if !arg.starts_with('-') && target.is_none() => target = Some(arg),
            _ => bail!("unexpected argument {arg:?}; usage: cargo xtask fuzz [TARGET] [--seconds N]"),
        }
    }
    Ok((target, seconds))
}

/// The workspace root: xtask sits directly below it.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ sits in the project root").to_path_buf()
}

/// A `cargo` command run from the project root, using the cargo that started xtask.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs a command with inherited stdio and fails when it exits unsuccessfully.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` exited with {status}", display(cmd));
    }
    Ok(())
}

/// The command as a shell-like line, for headers and error messages.
fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={:?}", k.to_string_lossy(), v?.to_string_lossy())));
    let program = Path::new(cmd.get_program()).file_name().unwrap_or(cmd.get_program()).to_string_lossy().into_owned();
    let args = cmd.get_args().map(|a| a.to_string_lossy().into_owned());
    envs.chain(std::iter::once(program)).chain(args).collect::<Vec<_>>().join(" ")
}

/// `cargo metadata --format-version 1 --no-deps`, parsed.
fn metadata(root: &Path) -> Result<serde_json::Value> {
    let mut cmd = cargo(root);
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let output = cmd.output().with_context(|| format!("could not start `{}`", display(&cmd)))?;
    if !output.status.success() {
        bail!("`{}` exited with {}: {}", display(&cmd), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")
}
