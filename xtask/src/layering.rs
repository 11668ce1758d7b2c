//! `cargo xtask layering`: dependencies between workspace crates point down only.
//!
//! The table below restates the layering in ARCHITECTURE.md (section Layering). Every workspace package must be in it,
//! so adding a crate means deciding where it sits. The check also wants each member to inherit
//! the workspace lints and to say `publish = false`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where a crate sits. Dependencies may point at lower layers only (the rule per crate is in
/// [`RULES`]); `Tooling` sits outside the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Core,
    Component,
    Orchestrator,
    Tooling,
}

/// Which workspace packages a crate may depend on (normal and build dependencies).
#[derive(Clone, Copy, Debug)]
enum Allowed {
    Nothing,
    Layers(&'static [Layer]),
    Anything,
}

/// The layering table, from ARCHITECTURE.md.
const RULES: &[(&str, Layer, Allowed)] = &[
    ("baton-core", Layer::Core, Allowed::Nothing),
    ("baton-registry", Layer::Component, Allowed::Layers(&[Layer::Core])),
    ("baton-planner", Layer::Component, Allowed::Layers(&[Layer::Core])),
    ("baton-executor", Layer::Component, Allowed::Layers(&[Layer::Core])),
    ("baton-store", Layer::Component, Allowed::Layers(&[Layer::Core])),
    ("baton-cluster", Layer::Component, Allowed::Layers(&[Layer::Core])),
    ("baton-workflow", Layer::Component, Allowed::Layers(&[Layer::Core])),
    // The services call an Orchestrator-shaped trait from core, so they are testable with a fake.
    ("baton-grpc", Layer::Component, Allowed::Layers(&[Layer::Core])),
    // The web console renders pages over the same core ports as the gRPC services.
    ("baton-console", Layer::Component, Allowed::Layers(&[Layer::Core])),
    // The example services register through baton-grpc's client (it uses core and grpc only);
    // a component so that the orchestrator's demo can start them.
    ("baton-examples", Layer::Component, Allowed::Layers(&[Layer::Core, Layer::Component])),
    // The only place concrete types meet.
    ("baton", Layer::Orchestrator, Allowed::Layers(&[Layer::Core, Layer::Component])),
    ("xtask", Layer::Tooling, Allowed::Nothing),
    // It measures everything.
    ("baton-benches", Layer::Tooling, Allowed::Anything),
];

/// The kind of a dependency, as `cargo metadata` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Normal,
    Build,
    Dev,
}

/// A workspace package, reduced to what the check needs.
#[derive(Debug)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) manifest: PathBuf,
    pub(crate) publish_false: bool,
    pub(crate) workspace_lints: bool,
    /// Path dependencies (name, kind); the check ignores those outside the workspace.
    pub(crate) deps: Vec<(String, Kind)>,
}

/// Checks the current workspace and prints each problem.
pub(crate) fn run(root: &Path) -> Result<()> {
    let packages = load(&crate::metadata(root)?)?;
    let problems = check(&packages);
    if problems.is_empty() {
        println!("layering ok: {} packages", packages.len());
        return Ok(());
    }
    for problem in &problems {
        println!("{problem}");
    }
    bail!("{} layering problem(s)", problems.len())
}

/// Reads the workspace packages from `cargo metadata --no-deps` output, and from each
/// manifest whether it inherits the workspace lints (`cargo metadata` does not say).
fn load(metadata: &Value) -> Result<Vec<Package>> {
    let packages = metadata["packages"].as_array().context("cargo metadata has no packages")?;
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().context("package without a name")?.to_owned();
            let manifest = PathBuf::from(p["manifest_path"].as_str().context("package without a manifest path")?);
            let text =
                std::fs::read_to_string(&manifest).with_context(|| format!("could not read {}", manifest.display()))?;
            // `publish = false` shows as an empty registry list; `null` means any registry.
            let publish_false = p["publish"].as_array().is_some_and(Vec::is_empty);
            let deps = p["dependencies"]
                .as_array()
                .context("package without dependencies")?
                .iter()
                .filter(|d| d["source"].is_null())
                .filter_map(|d| {
                    let kind = match d["kind"].as_str() {
                        None => Kind::Normal,
                        Some("build") => Kind::Build,
                        Some("dev") => Kind::Dev,
                        Some(_) => return None,
                    };
                    Some((d["name"].as_str()?.to_owned(), kind))
                })
                .collect();
            Ok(Package { name, manifest, publish_false, workspace_lints: has_workspace_lints(&text), deps })
        })
        .collect()
}

/// Every layering, lints and publish problem, one message each.
pub(crate) fn check(packages: &[Package]) -> Vec<String> {
    let members: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut problems = Vec::new();
    for package in packages {
        if !package.workspace_lints {
            problems.push(format!(
                "{} ({}) lacks `[lints] workspace = true`",
                package.name,
                package.manifest.display()
            ));
        }
        if !package.publish_false {
            problems.push(format!("{} ({}) lacks `publish = false`", package.name, package.manifest.display()));
        }
        let Some(&(_, layer, allowed)) = RULES.iter().find(|(name, ..)| *name == package.name) else {
            problems.push(format!(
                "unknown workspace package {} ({}): add it to the layering table in xtask/src/layering.rs",
                package.name,
                package.manifest.display()
            ));
            continue;
        };
        for (dep, kind) in &package.deps {
            // Depending on oneself (a dev-dependency that turns on test features) is no edge.
            if dep == &package.name || !members.contains(dep.as_str()) {
                continue;
            }
            let Some(&(_, dep_layer, _)) = RULES.iter().find(|(name, ..)| name == dep) else {
                // Reported above as an unknown package.
                continue;
            };
            let permitted = match allowed {
                Allowed::Nothing => false,
                Allowed::Layers(layers) => layers.contains(&dep_layer),
                Allowed::Anything => true,
            };
            // Integration tests may use a sibling of the same layer (grpc tests against the real
            // registry); the orchestrator is alone in its layer, so it stays out of reach.
            let sibling = *kind == Kind::Dev && dep_layer == layer && layer == Layer::Component;
            if permitted || sibling {
                continue;
            }
            let verb = match kind {
                Kind::Normal => "depends on",
                Kind::Build => "build-depends on",
                Kind::Dev => "dev-depends on",
            };
            let position = match dep_layer.cmp(&layer) {
                std::cmp::Ordering::Greater => "which is above it",
                std::cmp::Ordering::Equal => "which is beside it",
                std::cmp::Ordering::Less => "which it must not use",
            };
            problems.push(format!("{} {verb} {dep}, {position} (allowed: {})", package.name, describe(allowed)));
        }
    }
    problems
}

fn describe(allowed: Allowed) -> String {
    match allowed {
        Allowed::Nothing => "no workspace crates".to_owned(),
        Allowed::Anything => "any workspace crate".to_owned(),
        Allowed::Layers(layers) => RULES
            .iter()
            .filter(|(_, layer, _)| layers.contains(layer))
            .map(|(name, ..)| *name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Whether a manifest says `[lints] workspace = true` (or the dotted or inline forms).
/// A line scan rather than a TOML parser keeps xtask's dependencies small.
fn has_workspace_lints(manifest: &str) -> bool {
    let mut table = String::new();
    for line in manifest.lines() {
        let line: String = line.split('#').next().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(header) = line.strip_prefix('[') {
            table = header.trim_end_matches(']').to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
        let inline = key == "lints" && value.starts_with('{') && value.contains("workspace=true");
        if (key == "lints.workspace" && value == "true") || inline {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, deps: &[(&str, Kind)]) -> Package {
        Package {
            name: name.to_owned(),
            manifest: PathBuf::from(format!("{name}/Cargo.toml")),
            publish_false: true,
            workspace_lints: true,
            deps: deps.iter().map(|(d, k)| ((*d).to_owned(), *k)).collect(),
        }
    }

    fn check_with(packages: &[Package], expected: &[&str]) {
        assert_eq!(check(packages), expected);
    }

    #[test]
    fn allowed_edges_pass() {
        check_with(
            &[
                package("baton-core", &[("baton-core", Kind::Dev)]),
                package("baton-registry", &[("baton-core", Kind::Normal), ("baton-core", Kind::Dev)]),
                package("baton-grpc", &[("baton-core", Kind::Normal), ("baton-registry", Kind::Dev)]),
                package("baton", &[("baton-grpc", Kind::Normal), ("baton-registry", Kind::Normal)]),
                package("baton-benches", &[("baton", Kind::Normal), ("baton-core", Kind::Normal)]),
                package("xtask", &[("serde_json", Kind::Normal)]),
            ],
            &[],
        );
    }

    #[test]
    fn upward_and_sideways_edges_fail() {
        check_with(
            &[
                package("baton-core", &[("baton-registry", Kind::Normal)]),
                package("baton-registry", &[("baton-core", Kind::Normal), ("baton-grpc", Kind::Build)]),
                package("baton-grpc", &[("baton", Kind::Dev)]),
                package("baton", &[("baton-benches", Kind::Normal)]),
                package("baton-benches", &[]),
                package("xtask", &[("baton-core", Kind::Normal)]),
            ],
            &[
                "baton-core depends on baton-registry, which is above it (allowed: no workspace crates)",
                "baton-registry build-depends on baton-grpc, which is beside it (allowed: baton-core)",
                "baton-grpc dev-depends on baton, which is above it (allowed: baton-core)",
                "baton depends on baton-benches, which is above it (allowed: baton-core, baton-registry, \
                 baton-planner, baton-executor, baton-store, baton-cluster, baton-workflow, baton-grpc, baton-console, \
                 baton-examples)",
                "xtask depends on baton-core, which it must not use (allowed: no workspace crates)",
            ],
        );
    }

    #[test]
    fn unknown_packages_and_manifest_rules_fail() {
        let mut sloppy = package("baton-registry", &[("baton-core", Kind::Normal)]);
        sloppy.publish_false = false;
        sloppy.workspace_lints = false;
        check_with(
            &[package("baton-core", &[]), sloppy, package("baton-gizmo", &[("baton-core", Kind::Normal)])],
            &[
                "baton-registry (baton-registry/Cargo.toml) lacks `[lints] workspace = true`",
                "baton-registry (baton-registry/Cargo.toml) lacks `publish = false`",
                "unknown workspace package baton-gizmo (baton-gizmo/Cargo.toml): add it to the layering table \
                 in xtask/src/layering.rs",
            ],
        );
    }

    #[test]
    fn edges_to_non_members_are_ignored() {
        // A path dependency outside the workspace, or a planned crate not yet a member.
        check_with(&[package("baton-core", &[("vendored", Kind::Normal), ("baton-store", Kind::Normal)])], &[]);
    }

    #[test]
    fn workspace_lints_forms() {
        let cases = [
            ("[package]\nname = \"a\"\n\n[lints]\nworkspace = true\n", true),
            ("[lints] # inherit\n  workspace=true  # yes\n", true),
            ("lints.workspace = true\n[package]\n", true),
            ("lints = { workspace = true }\n", true),
            ("[lints]\nworkspace = false\n", false),
            ("[package]\nworkspace = true\n[lints.rust]\nunsafe_code = \"forbid\"\n", false),
            ("[package]\nname = \"a\"\n", false),
        ];
        for (manifest, expected) in cases {
            assert_eq!(has_workspace_lints(manifest), expected, "{manifest}");
        }
    }

    #[test]
    fn loads_cargo_metadata() {
        let manifest = std::env::current_dir().unwrap().join("Cargo.toml");
        let metadata = serde_json::json!({"packages": [{
            "name": "xtask",
            "manifest_path": manifest,
            "publish": [],
            "dependencies": [
                {"name": "baton-core", "source": null, "kind": null},
                {"name": "baton-core", "source": null, "kind": "dev"},
                {"name": "baton-registry", "source": null, "kind": "build"},
                {"name": "anyhow", "source": "registry+https://github.com/rust-lang/crates.io-index", "kind": null},
            ],
        }]});
        let packages = load(&metadata).unwrap();
        assert_eq!(packages.len(), 1);
        let xtask = &packages[0];
        assert!(xtask.publish_false && xtask.workspace_lints, "{xtask:?}");
        let expected = [("baton-core", Kind::Normal), ("baton-core", Kind::Dev), ("baton-registry", Kind::Build)];
        assert_eq!(xtask.deps, expected.map(|(n, k)| (n.to_owned(), k)));
    }
}
