//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the cargo-fuzz targets in `fuzz/`, each for
//! a set time, starting from its committed seeds (`fuzz/seeds/<target>`: hand-written inputs and
//! the minimized corpus of longer runs) and the corpus earlier runs grew here
//! (`fuzz/corpus/<target>`, not committed). A crash, a leak or a timeout fails the run and
//! leaves the input in `fuzz/artifacts/<target>/`.
//!
//! cargo-fuzz needs nightly compiler flags: it runs on the nightly toolchain when rustup has
//! one, else on the current toolchain with `RUSTC_BOOTSTRAP=1` (cargo-fuzz supports both).
//! `cargo xtask fuzz` builds optimized with AddressSanitizer; `cargo xtask ci`, which fuzzes
//! each target for seconds only, builds unoptimized without a sanitizer, which takes a
//! fraction of the time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Seconds per target when not told.
pub(crate) const DEFAULT_SECONDS: u64 = 60;

/// Seconds per target in `cargo xtask ci`.
pub(crate) const CI_SECONDS: u64 = 10;

/// Inputs longer than this are not tried: parsers of large inputs are bounded by size limits
/// tested elsewhere, and short inputs run many times faster. The expression target stays small
/// so that what it finds is a crash, not an expression that merely runs long.
const MAX_LEN: &[(&str, usize)] = &[("definition", 4096), ("expression", 256), ("proto", 1024), ("wsc", 4096)];

/// How the targets are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Build {
    /// Optimized, with AddressSanitizer: what finds the most per second, for real runs.
    Thorough,
    /// Unoptimized, no sanitizer: builds in a fraction of the time, for CI's few seconds.
    Quick,
}

impl Build {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Thorough => &[],
            Self::Quick => &["--dev", "--sanitizer", "none"],
        }
    }
}

/// Runs `only` (or every target) for `seconds` each.
pub(crate) fn run(root: &Path, only: Option<&str>, seconds: u64, build_as: Build) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<String> = match only {
        Some(name) if all.iter().any(|t| t == name) => vec![name.to_owned()],
        Some(name) => bail!("no fuzz target {name:?}; the targets are {}", all.join(", ")),
        None => all,
    };
    let toolchain = Toolchain::detect();
    println!("fuzzing {} for {seconds} s each ({}, {build_as:?} build)", chosen.join(", "), toolchain.describe());

    let mut build = toolchain.cargo_fuzz(root)?;
    build.arg("build").args(build_as.flags()).arg("--fuzz-dir").arg(&fuzz_dir);
    crate::run(&mut build)?;

    for target in &chosen {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("could not create {}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let mut cmd = toolchain.cargo_fuzz(root)?;
        cmd.arg("run").args(build_as.flags()).arg("--fuzz-dir").arg(&fuzz_dir);
        cmd.arg(target).arg(&corpus).arg(&seeds).arg("--");
        cmd.args(libfuzzer_args(target, seconds));
        println!("==> fuzz {target}: {}", crate::display(&cmd));
        let started = Instant::now();
        crate::run(&mut cmd).with_context(|| {
            format!(
                "fuzz target {target} failed; the input is in {}",
                fuzz_dir.join("artifacts").join(target).display()
            )
        })?;
        println!("fuzz {target}: no failure in {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// libFuzzer's flags for `target`: the time, the input size, and bounds that turn a runaway
/// input into a reported failure rather than a stalled run.
fn libfuzzer_args(target: &str, seconds: u64) -> Vec<String> {
    let max_len = MAX_LEN.iter().find(|(t, _)| *t == target).map_or(4096, |(_, len)| *len);
    vec![
        format!("-max_total_time={seconds}"),
        format!("-max_len={max_len}"),
        // One input taking more than 10 s or 2 GiB is a finding.
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        "-print_final_stats=1".to_owned(),
    ]
}

/// The fuzz targets: the files in `fuzz/fuzz_targets`, by name, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// Which compiler builds the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    /// rustup's nightly toolchain.
    Nightly,
    /// The toolchain xtask runs on, with nightly flags allowed by `RUSTC_BOOTSTRAP=1`.
    Bootstrapped,
}

impl Toolchain {
    fn detect() -> Self {
        let nightly = Command::new("rustup")
            .args(["run", "nightly", "rustc", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if nightly { Self::Nightly } else { Self::Bootstrapped }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Nightly => "nightly toolchain",
            Self::Bootstrapped => "no nightly toolchain: the current one with RUSTC_BOOTSTRAP=1",
        }
    }

    /// `cargo fuzz` on this toolchain, from the project root; fails when cargo-fuzz is missing.
    fn cargo_fuzz(self, root: &Path) -> Result<Command> {
        let installed = Command::new("cargo")
            .args(["fuzz", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            bail!("cargo-fuzz is not installed: `cargo install cargo-fuzz --locked` (.ci/run does this in CI)");
        }
        let mut cmd = match self {
            Self::Nightly => {
                let mut cmd = Command::new("rustup");
                cmd.args(["run", "nightly", "cargo"]);
                cmd
            }
            Self::Bootstrapped => {
                let mut cmd = Command::new("cargo");
                cmd.env("RUSTC_BOOTSTRAP", "1");
                cmd
            }
        };
        // `cargo` from PATH is rustup's proxy, which picks the toolchain; the variables that
        // the cargo running xtask set would point the fuzz build at that one instead.
        cmd.env_remove("CARGO").env_remove("RUSTC").current_dir(root).arg("fuzz");
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_are_the_files_in_fuzz_targets_and_each_has_seeds() {
        let fuzz_dir = crate::project_root().join("fuzz");
        let names = targets(&fuzz_dir).unwrap();
        assert_eq!(names, ["definition", "expression", "proto", "wsc"]);
        for name in &names {
            let seeds = std::fs::read_dir(fuzz_dir.join("seeds").join(name)).unwrap().count();
            assert!(seeds > 0, "{name} has no committed seeds");
            assert!(MAX_LEN.iter().any(|(t, _)| t == name), "{name} has no max_len");
        }
    }

    #[test]
    fn libfuzzer_runs_for_the_time_given_within_bounds() {
        let args = libfuzzer_args("expression", 7);
        assert_eq!(args[..2], ["-max_total_time=7".to_owned(), "-max_len=256".to_owned()]);
        assert!(args.contains(&"-rss_limit_mb=2048".to_owned()) && args.contains(&"-timeout=10".to_owned()));
        assert_eq!(libfuzzer_args("new-target", 1)[1], "-max_len=4096");
    }
}
