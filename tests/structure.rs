//! The tree keeps its shape: the library compiles none of the operator
//! binary's crates, no source file outgrows 600 lines, and no two modules
//! import each other (directly or round a loop).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MAX_LINES: usize = 600;

#[test]
fn the_library_alone_pulls_no_cli_crate() {
    let output = Command::new(env!("CARGO"))
        .current_dir(ROOT)
        .args([
            "tree",
            "-p",
            "mongoq",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.contains("mongodb v3"), "unexpected tree:\n{tree}");
    for crate_name in [
        "clap ",
        "clap_complete ",
        "clap_mangen ",
        "env_logger ",
        "ctrlc ",
    ] {
        assert!(
            !tree.lines().any(|line| line.starts_with(crate_name)),
            "the library without default features pulls {crate_name}:\n{tree}"
        );
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut files);
    files.sort();
    files
}

#[test]
fn no_source_file_is_over_600_lines() {
    let long: Vec<String> = all_sources()
        .into_iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(&path).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}

#[test]
fn the_tree_has_module_folders() {
    for folder in [
        "src/queue",
        "src/worker",
        "src/handlers",
        "src/bin/mongoq/commands",
        "src/bin/mongoq/http",
        "src/bin/mongoq/dashboard",
        "src/bin/mongoq/bench",
    ] {
        assert!(
            Path::new(ROOT).join(folder).join("mod.rs").is_file(),
            "{folder}/mod.rs is missing"
        );
    }
}

/// A module's path as a list of names (`["worker", "claim"]`) from its
/// file under `base` (the library's `src` or the binary's folder).
fn module_of(base: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(base).expect("under base");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The modules a file imports: `crate::a::b` and `super::x` paths, cut to
/// the longest prefix that is a module file.
fn imports(base: &Path, file: &Path, modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    // Code only: a doc link such as [`super::keeper`] is not an import.
    let text: String = std::fs::read_to_string(file)
        .expect("readable")
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let me = module_of(base, file);
    let mut found = BTreeSet::new();
    for (index, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        let rest = &text[index..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut names: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let mut resolved = if names[0] == "crate" {
            names.remove(0);
            Vec::new()
        } else {
            // `super` of a mod.rs file is its parent's parent.
            let mut parent = me.clone();
            while names.first().is_some_and(|n| n == "super") {
                names.remove(0);
                parent.pop();
            }
            parent
        };
        let mut best = None;
        for name in names {
            resolved.push(name);
            if modules.contains(&resolved) {
                best = Some(resolved.clone());
            }
        }
        if let Some(target) = best {
            found.insert(target);
        }
    }
    found.remove(&me);
    found
}

/// Import edges between modules, leaving out a module's edges to its own
/// ancestors and descendants (a folder's `mod.rs` declares and re-exports
/// its children; a child reaching its parent's items is the folder's own
/// business). What is left are edges between rooms, which must not loop.
fn cycles_in(base: &Path, files: &[PathBuf]) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(base, f)).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in files {
        let from = module_of(base, file);
        let to: BTreeSet<Vec<String>> = imports(base, file, &modules)
            .into_iter()
            .filter(|to| !to.starts_with(&from) && !from.starts_with(to))
            .collect();
        graph.entry(from).or_default().extend(to);
    }
    let mut cycles = Vec::new();
    for start in graph.keys() {
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = path.iter().map(|m| m.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), start.join("::")));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    cycles
}

#[test]
fn no_two_modules_import_each_other() {
    let root = Path::new(ROOT);
    let files = all_sources();
    let bin = root.join("src/bin/mongoq");
    let (binary, library): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|f| f.starts_with(&bin));
    let mut cycles = cycles_in(&root.join("src"), &library);
    cycles.extend(cycles_in(&bin, &binary));
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}
