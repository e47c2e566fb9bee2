//! The library's layout, checked from its source: no import cycle between its top-level
//! modules, the head importing no path, no file over 600 lines, no two files of one name.
//!
//! A top-level module `a` depends on `b` when a file of `a` names `crate::b` (or an item that
//! `lib.rs` re-exports from `b`) outside a comment. The negative controls feed the same
//! checks a made-up cycle and a made-up long file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines a library file may have: past that it holds more than one job.
const MAX_FILE_LINES: usize = 600;

/// File names that many folders have by Rust's convention.
const CONVENTIONAL_NAMES: [&str; 2] = ["mod.rs", "tests.rs"];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to (`loss/targets.rs` -> `loss`), `None` for `lib.rs`.
fn top_module(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(source_dir()).expect("a file under src/");
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_string();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(name) => Some(name.to_string()),
        None => Some(first),
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every name that follows `crate::` in `code`, and the names of a `crate::{a, b::c}` group.
fn crate_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names
}

/// `lib.rs`'s re-exports: item name -> the top-level module it comes from.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut items = BTreeMap::new();
    let code = code_of(lib);
    for statement in code.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let (module, list) = path.split_once("::").expect("pub use module::items");
        let list = list.trim_matches(|c: char| c == '{' || c == '}' || c.is_whitespace());
        for item in list.split(',') {
            let item = item.trim();
            if !item.is_empty() {
                items.insert(item.to_string(), module.trim().to_string());
            }
        }
    }
    items
}

/// The top-level modules each top-level module uses.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let source = source_dir();
    let lib = fs::read_to_string(source.join("lib.rs")).expect("lib.rs");
    let reexported = reexports(&lib);
    let modules: BTreeSet<String> = rust_files(&source)
        .iter()
        .filter_map(|f| top_module(f))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&source) {
        let Some(module) = top_module(&file) else {
            continue;
        };
        let code = code_of(&fs::read_to_string(&file).expect("a readable source file"));
        let used = graph.entry(module.clone()).or_default();
        for name in crate_names(&code) {
            let target = if modules.contains(&name) {
                Some(name)
            } else {
                reexported.get(&name).cloned()
            };
            if let Some(target) = target.filter(|target| *target != module) {
                used.insert(target);
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The files over [`MAX_FILE_LINES`] among `(name, text)` pairs.
fn long_files<'a>(files: impl IntoIterator<Item = (String, &'a str)>) -> Vec<String> {
    files
        .into_iter()
        .filter(|(_, text)| text.lines().count() > MAX_FILE_LINES)
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn the_top_level_modules_import_no_cycle() {
    let graph = dependencies();
    assert!(
        graph.contains_key("paths") && graph.contains_key("fused"),
        "{graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "module graph: {graph:?}");
    // The head is the Module; the paths import it, never the reverse.
    for path in ["paths", "fused"] {
        assert!(
            !graph["head"].contains(path),
            "head.rs imports {path}: {graph:?}"
        );
        assert!(
            graph[path].contains("head"),
            "{path} does not use the head: {graph:?}"
        );
    }
    // The options, targets and outputs are pure data: they compute nothing.
    for compute in ["head", "math", "paths", "fused"] {
        assert!(
            !graph["loss"].contains(compute),
            "loss imports {compute}: {graph:?}"
        );
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let edges = [
        ("head", "paths"),
        ("paths", "loss"),
        ("loss", "head"),
        ("math", "loss"),
    ];
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    let cycle = find_cycle(&graph).expect("head -> paths -> loss -> head");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    graph.get_mut("loss").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn the_import_scan_reads_groups_and_reexports_and_skips_comments() {
    let code = code_of("use crate::loss::{Targets, x};\nuse crate::{Error, head}; // crate::paths");
    assert_eq!(crate_names(&code), ["loss", "Error", "head"]);
    let items = reexports("pub use error::{Error, Result};\npub use head::LinearSoftmax;");
    assert_eq!(items["Result"], "error");
    assert_eq!(items["LinearSoftmax"], "head");
}

#[test]
fn no_library_file_is_over_600_lines() {
    let files: Vec<(String, String)> = rust_files(&source_dir())
        .into_iter()
        .map(|file| {
            let text = fs::read_to_string(&file).expect("a readable source file");
            (file.display().to_string(), text)
        })
        .collect();
    let long = long_files(
        files
            .iter()
            .map(|(name, text)| (name.clone(), text.as_str())),
    );
    assert!(long.is_empty(), "over {MAX_FILE_LINES} lines: {long:?}");
    // The check itself: a file one line too long is caught.
    let too_long = "line\n".repeat(MAX_FILE_LINES + 1);
    assert_eq!(
        long_files([("long.rs".to_string(), too_long.as_str())]),
        ["long.rs"]
    );
}

#[test]
fn no_two_library_files_share_a_name() {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in rust_files(&source_dir()) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if !CONVENTIONAL_NAMES.contains(&name.as_str()) {
            seen.entry(name)
                .or_default()
                .push(file.display().to_string());
        }
    }
    let shared: Vec<_> = seen.values().filter(|files| files.len() > 1).collect();
    assert!(shared.is_empty(), "files sharing a name: {shared:?}");
}
