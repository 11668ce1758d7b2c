//! `cargo xtask bench [FILTER]`: runs the criterion benches and prints each figure beside its
//! baseline and target.
//!
//! Conventions the benches follow: a criterion group per bench, with benchmark ids
//! `baton/<case>` and `baseline/<case>`, so the two can be paired (a baseline that is another
//! project, such as `dagrs/<case>`, goes by its name, listed in [`NAMED_BASELINES`]); figures
//! criterion cannot time (rates, sizes) go to `bench-figures.jsonl` in cargo's target directory
//! (`cargo metadata`'s, so `CARGO_TARGET_DIR` counts; passed to the benches as
//! `BATON_BENCH_FIGURES`), one JSON object a line: `{"bench", "name", "value", "unit", "baseline"?, "target"?}`.
//!
//! Criterion 0.8 stores each benchmark under `<criterion dir>/<group>/<function>[/<value>]/new/`,
//! where `/` inside a function id becomes `_` (`baton/4_constraints` -> `baton_4_constraints`).
//! The directory names are lossy, so the ids are read from `benchmark.json` beside `estimates.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::table;

/// Targets for criterion cases, keyed `group/case`. A target is clauses joined by `and`:
/// `<= 20 us` (a maximum median), `>= 100x` (a minimum speed-up over the baseline).
// Criterion cycles through many queries per sample, so its figure is a mean over queries; the
// issue's time target is on the median per query, which the bench reports as a figure with
// its own target. Here only the speed-up is held to a target.
const TARGETS: &[(&str, &str)] = &[
    ("registry_find/4_constraints", ">= 100x"),
    ("planner_wsc08/set01", "<= 20 ms"),
    ("planner_wsc08/set02", "<= 20 ms"),
    ("planner_wsc08/set03", "<= 20 ms"),
    ("planner_wsc08/set04", "<= 20 ms"),
    ("planner_wsc08/set05", "<= 20 ms"),
    ("planner_wsc08/set06", "<= 20 ms"),
    ("planner_wsc08/set07", "<= 20 ms"),
    ("planner_wsc08/set08", "<= 20 ms"),
];

/// Benchmark id prefixes that name another project measured as the baseline, paired with
/// `baton/<case>` like `baseline/<case>` and shown with their name.
const NAMED_BASELINES: &[&str] = &["dagrs"];

/// Runs `cargo bench -p baton-benches [--bench FILTER]` and prints the figures it produced.
pub(crate) fn run(root: &Path, filter: Option<&str>) -> Result<()> {
    // The benches write here (see `baton_benches::report_figure`), in cargo's real target
    // directory; start empty so figures from an earlier run never show.
    let target = target_directory(root)?;
    let figures_path = figures_path(&target);
    match std::fs::remove_file(&figures_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("could not remove {}", figures_path.display()));
        }
        _ => {}
    }
    // Criterion keeps results of benches not run this time; only show what this run wrote.
    // The slack covers file systems with coarse timestamps.
    let since = SystemTime::now() - Duration::from_secs(2);

    let criterion_dir = criterion_dir(&target);
    let mut cmd = crate::cargo(root);
    cmd.args(["bench", "-p", "baton-benches"]);
    cmd.env(FIGURES_ENV, &figures_path);
    // Criterion writes under the bench's working directory (benches/) unless told where.
    cmd.env("CRITERION_HOME", &criterion_dir);
    if let Some(name) = filter {
        cmd.args(["--bench", name]);
    }
    crate::run(&mut cmd)?;

    let estimates = collect(&criterion_dir, since)?;
    println!();
    if estimates.is_empty() {
        println!("no criterion results from this run in {}", criterion_dir.display());
    } else {
        print!("{}", render_estimates(&estimates, TARGETS));
    }

    match std::fs::read_to_string(&figures_path) {
        Ok(text) => {
            let mut figures = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                match parse_figure(line) {
                    Ok(figure) => figures.push(figure),
                    Err(e) => eprintln!("{}:{}: skipped: {e}", figures_path.display(), n + 1),
                }
            }
            println!();
            print!("{}", render_figures(&figures));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("could not read {}", figures_path.display())),
    }
    Ok(())
}

/// The variable naming the file the benches append figures to (`baton_benches::FIGURES_ENV`).
const FIGURES_ENV: &str = "BATON_BENCH_FIGURES";

/// Cargo's target directory as `cargo metadata` reports it: `CARGO_TARGET_DIR`, the
/// `build.target-dir` setting, or `<root>/target`.
fn target_directory(root: &Path) -> Result<PathBuf> {
    target_directory_of(&crate::metadata(root)?)
}

fn target_directory_of(metadata: &Value) -> Result<PathBuf> {
    let target = metadata["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(target))
}

/// The figures file in `target`.
fn figures_path(target: &Path) -> PathBuf {
    target.join("bench-figures.jsonl")
}

/// Where criterion writes, found the way criterion 0.8 finds it: `$CRITERION_HOME`, else
/// `criterion/` in cargo's target directory.
fn criterion_dir(target: &Path) -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(home) => PathBuf::from(home),
        None => target.join("criterion"),
    }
}

/// One criterion benchmark's result.
#[derive(Debug, Clone, PartialEq)]
struct Estimate {
    group: String,
    /// The id within the group: `function[/value]`, e.g. `baton/4_constraints`.
    id: String,
    median_ns: f64,
}

/// Reads every `new/estimates.json` under `dir` written at or after `since`.
fn collect(dir: &Path, since: SystemTime) -> Result<Vec<Estimate>> {
    let mut found = Vec::new();
    find_new_dirs(dir, &mut found)?;
    let mut estimates = Vec::new();
    for new in found {
        let estimates_path = new.join("estimates.json");
        let modified = std::fs::metadata(&estimates_path).and_then(|m| m.modified());
        if modified.map_or(true, |m| m < since) {
            continue;
        }
        let benchmark = read_json(&new.join("benchmark.json"))?;
        let median = read_json(&estimates_path)?["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("{} has no median point estimate", estimates_path.display()))?;
        let group = benchmark["group_id"].as_str().context("benchmark.json without group_id")?.to_owned();
        let id = [&benchmark["function_id"], &benchmark["value_str"]]
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join("/");
        estimates.push(Estimate { group, id, median_ns: median });
    }
    Ok(estimates)
}

/// Every directory named `new` holding a `benchmark.json`, at any depth below `dir`.
fn find_new_dirs(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") && path.join("benchmark.json").is_file() {
            found.push(path);
        } else {
            find_new_dirs(&path, found)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A baseline's median, with its name when it is another project (`dagrs`).
type Baseline<'a> = (f64, Option<&'a str>);

/// The criterion table: one row per case, Baton's median beside the baseline's.
fn render_estimates(estimates: &[Estimate], targets: &[(&str, &str)]) -> String {
    // Per case: Baton's median, and the baseline's.
    let mut cases: BTreeMap<String, (Option<f64>, Option<Baseline<'_>>)> = BTreeMap::new();
    for e in estimates {
        // Ids outside the convention count as Baton's own figure, under their whole id.
        let (side, case) = match e.id.split_once('/') {
            Some((side, case)) if side == "baton" || side == "baseline" || NAMED_BASELINES.contains(&side) => {
                (side, case)
            }
            _ => ("baton", e.id.as_str()),
        };
        let key = if case.is_empty() { e.group.clone() } else { format!("{}/{case}", e.group) };
        let entry = cases.entry(key).or_default();
        match side {
            "baton" => entry.0 = Some(e.median_ns),
            "baseline" => entry.1 = Some((e.median_ns, None)),
            name => entry.1 = Some((e.median_ns, Some(name))),
        }
    }
    let rows: Vec<Vec<String>> = cases
        .into_iter()
        .map(|(case, (baton, named_baseline))| {
            let baseline = named_baseline.map(|(ns, _)| ns);
            let speedup = baton.zip(baseline).filter(|(b, _)| *b > 0.0).map(|(b, base)| base / b);
            let target = targets.iter().find(|(c, _)| *c == case).map(|(_, t)| *t);
            let met = match (target, baton) {
                (Some(t), Some(ns)) => verdict(t, ns, "ns", speedup),
                _ => None,
            };
            vec![
                case,
                baton.map_or_else(|| "-".to_owned(), format_ns),
                match named_baseline {
                    None => "-".to_owned(),
                    Some((ns, None)) => format_ns(ns),
                    Some((ns, Some(name))) => format!("{name} {}", format_ns(ns)),
                },
                speedup.map_or_else(|| "-".to_owned(), |s| format!("{}x", sig3(s))),
                target.unwrap_or("").to_owned(),
                result(target.is_some(), met),
            ]
        })
        .collect();
    table::render(&["case", "baton (median)", "baseline (median)", "speed-up", "target", "result"], &rows, "lrrrll")
}

/// A figure a bench reported in `bench-figures.jsonl`.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    bench: String,
    name: String,
    value: f64,
    unit: String,
    baseline: Option<f64>,
    target: Option<String>,
}

fn parse_figure(line: &str) -> Result<Figure, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let text = |key: &str| v[key].as_str().map(str::to_owned).ok_or_else(|| format!("no string \"{key}\""));
    Ok(Figure {
        bench: text("bench")?,
        name: text("name")?,
        value: v["value"].as_f64().ok_or("no number \"value\"")?,
        unit: text("unit")?,
        baseline: v["baseline"].as_f64(),
        target: v["target"].as_str().map(str::to_owned),
    })
}

/// The figures table. Speed-up is how many times better than the baseline: baseline / value,
/// or value / baseline for rates (units ending in `/s`), where higher is better.
fn render_figures(figures: &[Figure]) -> String {
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let speedup = f
                .baseline
                .filter(|b| *b > 0.0 && f.value > 0.0)
                .map(|b| if f.unit.ends_with("/s") { f.value / b } else { b / f.value });
            let met = f.target.as_deref().and_then(|t| verdict(t, f.value, &f.unit, speedup));
            vec![
                f.bench.clone(),
                f.name.clone(),
                format_value(f.value, &f.unit),
                f.baseline.map_or_else(|| "-".to_owned(), |b| format_value(b, &f.unit)),
                speedup.map_or_else(|| "-".to_owned(), |s| format!("{}x", sig3(s))),
                f.target.clone().unwrap_or_default(),
                result(f.target.is_some(), met),
            ]
        })
        .collect();
    table::render(&["bench", "figure", "value", "baseline", "speed-up", "target", "result"], &rows, "llrrrll")
}

fn result(has_target: bool, met: Option<bool>) -> String {
    match (has_target, met) {
        (false, _) => "",
        (true, Some(true)) => "met",
        (true, Some(false)) => "MISSED",
        (true, None) => "?",
    }
    .to_owned()
}

/// One clause of a target.
#[derive(Debug, Clone, PartialEq)]
enum Clause {
    /// The value is at most this, in the given unit (or the figure's own unit when `None`).
    Max(f64, Option<String>),
    /// The value is at least this.
    Min(f64, Option<String>),
    /// The speed-up over the baseline is at least this.
    MinSpeedup(f64),
}

/// Parses `<= 20 us and >= 100x`; `None` when any clause is not of that shape.
fn parse_target(text: &str) -> Option<Vec<Clause>> {
    text.split(" and ")
        .map(|clause| {
            let clause = clause.trim();
            let (at_most, rest) = if let Some(rest) = clause.strip_prefix("<=").or_else(|| clause.strip_prefix('<')) {
                (true, rest)
            } else {
                (false, clause.strip_prefix(">=").or_else(|| clause.strip_prefix('>'))?)
            };
            let rest = rest.trim();
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(rest.len());
            let number: f64 = rest[..end].replace('_', "").parse().ok()?;
            let unit = rest[end..].trim();
            Some(match (at_most, unit) {
                (false, "x" | "×") => Clause::MinSpeedup(number),
                (true, "x" | "×") => return None,
                (true, "") => Clause::Max(number, None),
                (false, "") => Clause::Min(number, None),
                (true, unit) => Clause::Max(number, Some(unit.to_owned())),
                (false, unit) => Clause::Min(number, Some(unit.to_owned())),
            })
        })
        .collect()
}

/// Whether `value` (in `unit`) meets `target`: `None` when the target cannot be parsed or a
/// clause cannot be decided (units that do not convert, no baseline for a speed-up), unless
/// another clause already fails.
fn verdict(target: &str, value: f64, unit: &str, speedup: Option<f64>) -> Option<bool> {
    let clauses = parse_target(target)?;
    let mut decided = true;
    for clause in &clauses {
        let pass = match clause {
            Clause::MinSpeedup(min) => speedup.map(|s| s >= *min),
            Clause::Max(limit, limit_unit) => convert(*limit, limit_unit.as_deref(), unit).map(|l| value <= l),
            Clause::Min(limit, limit_unit) => convert(*limit, limit_unit.as_deref(), unit).map(|l| value >= l),
        };
        match pass {
            Some(false) => return Some(false),
            Some(true) => {}
            None => decided = false,
        }
    }
    decided.then_some(true)
}

/// `amount` of `from` expressed in `to`; only time units convert into each other.
fn convert(amount: f64, from: Option<&str>, to: &str) -> Option<f64> {
    match from {
        None => Some(amount),
        Some(from) if from == to => Some(amount),
        Some(from) => Some(amount * nanos_per(from)? / nanos_per(to)?),
    }
}

fn nanos_per(unit: &str) -> Option<f64> {
    match unit {
        "ns" => Some(1.0),
        "us" | "µs" | "μs" => Some(1e3),
        "ms" => Some(1e6),
        "s" => Some(1e9),
        _ => None,
    }
}

/// A duration in nanoseconds with the unit that keeps it readable: `37.8 µs`.
fn format_ns(ns: f64) -> String {
    let (amount, unit) = match ns {
        ns if ns < 1e3 => (ns, "ns"),
        ns if ns < 1e6 => (ns / 1e3, "µs"),
        ns if ns < 1e9 => (ns / 1e6, "ms"),
        ns => (ns / 1e9, "s"),
    };
    format!("{} {unit}", sig3(amount))
}

/// A figure's value in its unit; times are rescaled, large counts get thousands separators.
fn format_value(value: f64, unit: &str) -> String {
    if let Some(per) = nanos_per(unit) {
        return format_ns(value * per);
    }
    let number = if value.abs() >= 10_000.0 { thousands(value.round()) } else { sig3(value) };
    match unit {
        "" => number,
        "1/s" => format!("{number}/s"),
        unit => format!("{number} {unit}"),
    }
}

/// Three significant digits for numbers below 1000, whole numbers above.
fn sig3(x: f64) -> String {
    let decimals = match x.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        _ => 2,
    };
    format!("{x:.decimals$}")
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(group: &str, id: &str, median_ns: f64) -> Estimate {
        Estimate { group: group.to_owned(), id: id.to_owned(), median_ns }
    }

    #[test]
    fn pairs_baton_with_baseline() {
        let estimates = [
            estimate("registry_find", "baseline/4_constraints", 2_500_000.0),
            estimate("registry_find", "baton/4_constraints", 12_500.0),
            estimate("registry_find", "baton/1_constraint", 800.0),
            estimate("registry_find", "baseline/1_constraint", 40_000.0),
            estimate("registry_register", "baton/insert_1000_into_100k", 3_210_000.0),
            estimate("executor_overhead", "dagrs/chain_1000", 10_000_000.0),
            estimate("executor_overhead", "baton/chain_1000", 2_000_000.0),
            estimate("solo", "", 5.0),
        ];
        let targets =
            [("registry_find/4_constraints", "<= 20 us and >= 100x"), ("registry_find/1_constraint", "<= 500 ns")];
        let expected = "\
case                                     baton (median)  baseline (median)  speed-up  target                result
---------------------------------------  --------------  -----------------  --------  --------------------  ------
executor_overhead/chain_1000                    2.00 ms      dagrs 10.0 ms     5.00x
registry_find/1_constraint                       800 ns            40.0 µs     50.0x  <= 500 ns             MISSED
registry_find/4_constraints                     12.5 µs            2.50 ms      200x  <= 20 us and >= 100x  met
registry_register/insert_1000_into_100k         3.21 ms                  -         -
solo                                            5.00 ns                  -         -
";
        assert_eq!(render_estimates(&estimates, &targets), expected);
    }

    #[test]
    fn figures_table() {
        let lines = [
            r#"{"baseline":null,"bench":"registry_register","name":"resident bytes per service","target":"<= 2048","unit":"B","value":325.14}"#,
            r#"{"bench":"registry_register","name":"inserts per second","target":">= 200000","unit":"1/s","value":156811.07}"#,
            r#"{"baseline":2400.0,"bench":"registry_find","name":"median per query (us)","target":"<= 20 us and >= 100x","unit":"us","value":12.0}"#,
            r#"{"baseline":10.0,"bench":"registry_concurrent","name":"finds per second","target":">= 3x","unit":"1/s","value":50.0}"#,
        ];
        let figures: Vec<Figure> = lines.iter().map(|l| parse_figure(l).unwrap()).collect();
        let expected = "\
bench                figure                          value  baseline  speed-up  target                result
-------------------  --------------------------  ---------  --------  --------  --------------------  ------
registry_register    resident bytes per service      325 B         -         -  <= 2048               met
registry_register    inserts per second          156,811/s         -         -  >= 200000             MISSED
registry_find        median per query (us)         12.0 µs   2.40 ms      200x  <= 20 us and >= 100x  met
registry_concurrent  finds per second               50.0/s    10.0/s     5.00x  >= 3x                 met
";
        assert_eq!(render_figures(&figures), expected);
    }

    #[test]
    fn bad_figure_lines_are_reported() {
        assert_eq!(parse_figure(r#"{"bench":"b","name":"n","unit":"B"}"#), Err("no number \"value\"".to_owned()));
        assert!(parse_figure("not json").unwrap_err().starts_with("invalid JSON"));
    }

    #[test]
    fn targets() {
        let check = |target: &str, value: f64, unit: &str, speedup: Option<f64>, expected: Option<bool>| {
            assert_eq!(verdict(target, value, unit, speedup), expected, "{target} for {value} {unit}, {speedup:?}");
        };
        check("<= 20 us", 19_000.0, "ns", None, Some(true));
        check("<= 20 us", 21_000.0, "ns", None, Some(false));
        check("<= 20µs and >= 100x", 1.0, "ns", Some(99.0), Some(false));
        check("<= 20 us and >= 100x", 1.0, "ns", None, None);
        check("<= 1 ms and >= 100x", 2.0, "ms", None, Some(false));
        check(">= 200_000", 200_000.0, "1/s", None, Some(true));
        check("<= 2048 B", 4096.0, "B", None, Some(false));
        check("<= 2 KiB", 1.0, "B", None, None);
        check("fast", 1.0, "ns", None, None);
        check("<= 10x", 1.0, "ns", Some(1.0), None);
        assert_eq!(
            parse_target("<= 20 us and >= 100x"),
            Some(vec![Clause::Max(20.0, Some("us".to_owned())), Clause::MinSpeedup(100.0)])
        );
    }

    #[test]
    fn formats() {
        let cases =
            [(0.5, "0.50 ns"), (999.0, "999 ns"), (1_000.0, "1.00 µs"), (37_830.8, "37.8 µs"), (2.5e9, "2.50 s")];
        for (ns, expected) in cases {
            assert_eq!(format_ns(ns), expected);
        }
        assert_eq!(format_value(1_234_567.4, "ops"), "1,234,567 ops");
        assert_eq!(format_value(-12_345.0, ""), "-12,345");
        assert_eq!(format_value(1.5, "ms"), "1.50 ms");
    }

    #[test]
    fn figures_and_criterion_results_live_in_cargos_target_directory() {
        // What `cargo metadata` says when CARGO_TARGET_DIR points away from the repository.
        let elsewhere = std::env::temp_dir().join(format!("xtask-target-{}", std::process::id()));
        let root = crate::project_root();
        let output = crate::cargo(&root)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .env("CARGO_TARGET_DIR", &elsewhere)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
        let target = target_directory_of(&metadata).unwrap();
        assert_eq!(target, elsewhere);
        assert_eq!(figures_path(&target), elsewhere.join("bench-figures.jsonl"));
        assert!(!figures_path(&target).starts_with(&root));
        assert!(target_directory_of(&serde_json::json!({})).is_err());
    }

    #[test]
    fn collects_only_fresh_results() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |sub: &str, function: &str| {
            let new = dir.join(sub).join("new");
            std::fs::create_dir_all(&new).unwrap();
            let benchmark = serde_json::json!({"group_id": "g", "function_id": function, "value_str": null});
            std::fs::write(new.join("benchmark.json"), benchmark.to_string()).unwrap();
            std::fs::write(new.join("estimates.json"), r#"{"median":{"point_estimate":42.0}}"#).unwrap();
        };
        write("g/baton_a", "baton/a");
        write("g/report", "ignored");
        std::fs::remove_file(dir.join("g/report/new/benchmark.json")).unwrap();
        let found = collect(&dir, SystemTime::now() - Duration::from_secs(60)).unwrap();
        assert_eq!(found, [estimate("g", "baton/a", 42.0)]);
        assert_eq!(collect(&dir, SystemTime::now() + Duration::from_secs(60)).unwrap(), []);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
