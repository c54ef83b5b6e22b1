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

/// Every folder of sources under `dir`.
fn folders(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.push(path.clone());
            folders(&path, out);
        }
    }
}

#[test]
fn every_folder_is_a_module_that_says_what_it_is_for() {
    let mut all = Vec::new();
    folders(&Path::new(ROOT).join("src"), &mut all);
    assert!(all.len() >= 10, "the tree has its rooms: {all:?}");
    for folder in all {
        // A module is `F/mod.rs`, or `F.rs` beside the folder; the binary's
        // root folder is its crate root (`main.rs`).
        let beside = folder.with_extension("rs");
        let root = ["mod.rs", "main.rs"]
            .iter()
            .map(|name| folder.join(name))
            .chain(std::iter::once(beside))
            .find(|path| path.is_file());
        let Some(root) = root else {
            // A folder of binaries (src/bin) holds crates, not modules.
            assert!(
                folder.ends_with("src/bin"),
                "{} has no mod.rs",
                folder.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(&root).expect("readable");
        assert!(
            text.trim_start().starts_with("//!"),
            "{} opens without a module doc saying what the room is for",
            root.display()
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
    // Code only: a doc link such as [`super::keeper`] is not an import,
    // and neither is what a file's unit tests (at its end) use.
    let text: String = std::fs::read_to_string(file)
        .expect("readable")
        .lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
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
    loops(&graph)
}

/// The edges between rooms: each module counts as the room it belongs to,
/// `room(module)`, and edges inside a room are left out.
fn room_edges(
    base: &Path,
    files: &[PathBuf],
    room: impl Fn(&[String]) -> Option<Vec<String>>,
) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(base, f)).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in files {
        let Some(from) = room(&module_of(base, file)) else {
            continue;
        };
        for to in imports(base, file, &modules) {
            if let Some(to) = room(&to) {
                if to != from {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    graph
}

/// Every loop in `graph`, each as `a -> b -> a` (a depth-first search from
/// each node for a path back to it).
fn loops(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let mut cycles = Vec::new();
    for start in graph.keys() {
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

/// A top-level room of the library: its first name (`queue`, `flow`,
/// `worker`, `job`, …), from the tree, not from a list.
fn top_room(module: &[String]) -> Option<Vec<String>> {
    module.first().map(|first| vec![first.clone()])
}

/// A stage of the worker: `worker::claim`, `worker::settle`, … (a folder
/// or a file directly in `src/worker`); the worker's own `mod.rs`, which
/// wires the stages together, is none.
fn worker_stage(module: &[String]) -> Option<Vec<String>> {
    (module.len() >= 2 && module[0] == "worker").then(|| module[..2].to_vec())
}

fn library_sources() -> Vec<PathBuf> {
    let bin = Path::new(ROOT).join("src/bin");
    all_sources()
        .into_iter()
        .filter(|f| !f.starts_with(&bin))
        .collect()
}

#[test]
fn no_two_rooms_import_each_other() {
    let src = Path::new(ROOT).join("src");
    let library = library_sources();
    let cycles = loops(&room_edges(&src, &library, top_room));
    assert!(cycles.is_empty(), "loops between rooms: {cycles:#?}");
}

#[test]
fn the_worker_stages_import_one_way() {
    let src = Path::new(ROOT).join("src");
    let library = library_sources();
    let cycles = loops(&room_edges(&src, &library, worker_stage));
    assert!(
        cycles.is_empty(),
        "loops between the worker's stages: {cycles:#?}"
    );
}

#[test]
fn a_back_edge_between_rooms_is_found() {
    // A fixture tree of its own: a → b is fine, b → a makes a loop.
    let dir = std::env::temp_dir().join(format!("mongoq-structure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (file, text) in [
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a/mod.rs", "//! a\nuse crate::b::thing;\nmod inner;\n"),
        ("a/inner.rs", "use super::super::b::other;\n"),
        ("b/mod.rs", "//! b\npub fn thing() {}\n"),
    ] {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let mut files = Vec::new();
    sources(&dir, &mut files);
    assert!(loops(&room_edges(&dir, &files, top_room)).is_empty());
    std::fs::write(dir.join("b/mod.rs"), "//! b\nuse crate::a::inner;\n").unwrap();
    let found = loops(&room_edges(&dir, &files, top_room));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        found
            .iter()
            .any(|c| c == "a -> b -> a" || c == "b -> a -> b"),
        "{found:?}"
    );
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
