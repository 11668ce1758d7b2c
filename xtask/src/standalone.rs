//! `cargo xtask standalone`: the repository stands alone. No file of it may refer to the
//! shared folder that sits beside a developer's checkout (a test, bench or doc reading it would
//! pass there and fail on a fresh clone); data the repository needs lives in `data/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What no file may contain, built at run time so that this file does not hold it.
fn needle() -> String {
    ["..", "shared"].join("/")
}

/// Fails naming every `file:line` that refers to the shared folder beside the checkout.
pub(crate) fn run(root: &Path) -> Result<()> {
    let files = repository_files(root)?;
    let found = references(root, &files, &needle())?;
    if !found.is_empty() {
        bail!(
            "{} line(s) refer to {} beside the repository; vendor what they need (see data/README.md):\n{}",
            found.len(),
            needle(),
            found.join("\n")
        );
    }
    println!("{} files, none refers to {}", files.len(), needle());
    Ok(())
}

/// The files of the repository, relative to `root`: what git tracks or would track (untracked
/// but not ignored), else, outside a git checkout, every file but `.git` and `target`.
fn repository_files(root: &Path) -> Result<Vec<PathBuf>> {
    let git = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output();
    if let Ok(output) = git
        && output.status.success()
    {
        let listed = output.stdout.split(|&b| b == 0).filter(|p| !p.is_empty());
        // A deleted but still tracked file is listed too; only what exists counts.
        let files = listed.map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()));
        return Ok(files.filter(|p| root.join(p).is_file()).collect());
    }
    let mut files = Vec::new();
    walk(root, Path::new(""), &mut files)?;
    Ok(files)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let path = root.join(dir);
    for entry in std::fs::read_dir(&path).with_context(|| format!("could not read {}", path.display()))? {
        let entry = entry?;
        let relative = dir.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != ".git" && entry.file_name() != "target" {
                walk(root, &relative, files)?;
            }
        } else {
            files.push(relative);
        }
    }
    Ok(())
}

/// `file:line: text` for each line of a text file that contains `needle`. Files that are not
/// UTF-8 (compressed data, images) are not text and refer to nothing.
fn references(root: &Path, files: &[PathBuf], needle: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for file in files {
        let path = root.join(file);
        let bytes = std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
        let Ok(text) = String::from_utf8(bytes) else { continue };
        for (number, line) in (1..).zip(text.lines()) {
            if line.contains(needle) {
                found.push(format!("{}:{number}: {}", file.display(), line.trim()));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_the_file_and_line_and_skip_binary_files() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("crates/a")).unwrap();
        let text = format!("fn data() {{\n    let dir = \"{}/data\";\n}}\n", needle());
        std::fs::write(dir.join("crates/a/lib.rs"), text).unwrap();
        std::fs::write(dir.join("clean.md"), "data lives in data/\n").unwrap();
        let mut binary = vec![0xff, 0xfe];
        binary.extend(needle().as_bytes());
        std::fs::write(dir.join("blob.gz"), binary).unwrap();
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("target/build.log"), needle()).unwrap();

        let mut files = Vec::new();
        walk(&dir, Path::new(""), &mut files).unwrap();
        files.sort();
        assert_eq!(files, [PathBuf::from("blob.gz"), "clean.md".into(), "crates/a/lib.rs".into()]);
        let found = references(&dir, &files, &needle()).unwrap();
        assert_eq!(found, [format!("crates/a/lib.rs:2: let dir = \"{}/data\";", needle())]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn this_file_does_not_hold_the_needle() {
        assert!(!include_str!("standalone.rs").contains(&needle()));
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-standalone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
