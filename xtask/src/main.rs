//! Project automation for Baton, run as `cargo xtask <command>`.
//!
//! What it is for: the checks CI runs (`ci`), the crate layering rule (`layering`) and the
//! bench report (`bench`), written in Rust so they behave the same on every machine.
//! What it is not for: anything a plain `cargo` command already does well on its own.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "xtask reports to the terminal")]

mod bench;
mod ci;
mod layering;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci               fmt, typos, unused dependencies, clippy, cargo deny, tests, doc tests, docs and
                   the layering check, stopping at the first failure
  layering         check the dependency edges between workspace crates against the layering table
  bench [FILTER]   run the criterion benches (only the bench target FILTER if given) and print
                   each figure beside its baseline and target
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
        ["bench"] => bench::run(&root, None),
        ["bench", filter] => bench::run(&root, Some(filter)),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown arguments `{}`", args.join(" "))
        }
    }
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
