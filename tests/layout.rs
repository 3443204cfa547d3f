//! The layout the documents describe, held by the code: inside each crate the modules import
//! one way (the layers its `lib.rs` states, and no circle between files), no source file grows
//! past the size a reader takes in, and nothing reaches outside the repository.

use mosic::testing::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates by source folder.
const CRATES: &[&str] = &[
    "src",
    "video/src",
    "synth/src",
    "pipeline/src",
    "trainer/src",
    "eval/src",
    "demo/src",
    "cli/src",
];

/// Most lines of code (not blank, not comment, outside the test module) in one source file.
const MAX_CODE_LINES: usize = 600;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The module path of a source file (`data::order` for `data/order.rs`, `data` for
/// `data/mod.rs`; the crate root is "").
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let parts: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let parts: Vec<&str> = match parts.last().map(String::as_str) {
        Some("mod") | Some("lib") | Some("main") => {
            parts[..parts.len() - 1].iter().map(String::as_str).collect()
        }
        _ => parts.iter().map(String::as_str).collect(),
    };
    parts.join("::")
}

/// The code of a file without its comments and its test module.
fn code(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|n| n.starts_with("mod tests")) {
            break;
        }
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        out.push(*l);
    }
    out
}

/// The modules of a crate and the modules each one names (`crate::a::b`, `super::x`).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let resolve = |path: &str| -> Option<String> {
        let mut p = path.to_string();
        loop {
            if modules.contains(&p) {
                return Some(p);
            }
            p = p.rsplit_once("::")?.0.to_string();
        }
    };
    let mut g = BTreeMap::new();
    for f in &files {
        let m = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let mut deps = BTreeSet::new();
        for line in code(&text) {
            for (key, base) in [("crate::", String::new()), ("super::", parent(&m))] {
                for (i, _) in line.match_indices(key) {
                    if i > 0
                        && line[..i]
                            .ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                    {
                        continue;
                    }
                    let rest: String = line[i + key.len()..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    let full = if base.is_empty() { rest } else { format!("{base}::{rest}") };
                    if let Some(d) = resolve(full.trim_end_matches(':')) {
                        deps.insert(d);
                    }
                }
            }
        }
        deps.remove(&m);
        deps.remove("");
        g.insert(m, deps);
    }
    g
}

fn parent(m: &str) -> String {
    m.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string())
}

fn is_ancestor(a: &str, b: &str) -> bool {
    b.starts_with(&format!("{a}::"))
}

/// A circle of modules (a folder and its files count as one unit with each other), if any.
fn circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if is_ancestor(d, m) || is_ancestor(m, d) {
                continue;
            }
            match state.get(d.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == d).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m) {
            if let Some(c) = visit(m, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The layers a crate's `lib.rs` states: its `//! - ` lines in order, each naming its
/// top-level modules in backticks.
fn layers(lib: &str) -> Vec<BTreeSet<String>> {
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! - "))
        .map(|l| {
            l.split("[`")
                .skip(1)
                .filter_map(|s| s.split_once("`]").map(|(n, _)| n.to_string()))
                .filter(|n| !n.contains("::"))
                .collect()
        })
        .collect()
}

#[test]
fn modules_import_one_way() {
    let root = repo_root();
    let mut wrong = Vec::new();
    for c in CRATES {
        let src = root.join(c);
        let g = graph(&src);
        if let Some(cycle) = circle(&g) {
            wrong.push(format!("{c}: modules import each other: {}", cycle.join(" -> ")));
        }
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
        let stated = layers(&lib);
        if stated.is_empty() {
            continue;
        }
        let top = |m: &str| m.split("::").next().unwrap().to_string();
        let layer = |m: &str| stated.iter().position(|l| l.contains(&top(m)));
        for (m, deps) in &g {
            let Some(lm) = layer(m) else { continue };
            for d in deps {
                if let Some(ld) = layer(d) {
                    if ld > lm {
                        wrong.push(format!("{c}: {m} (layer {lm}) uses {d} (layer {ld})"));
                    }
                }
            }
        }
        let named: BTreeSet<String> = stated.iter().flatten().cloned().collect();
        for m in g.keys().map(|m| top(m)).filter(|m| !m.is_empty()) {
            if !named.contains(&m) && m != "testing" {
                wrong.push(format!("{c}: module {m} is in no layer of lib.rs"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn source_files_stay_readable() {
    let root = repo_root();
    let mut long = Vec::new();
    for c in CRATES {
        for f in rust_files(&root.join(c)) {
            let n = code(&std::fs::read_to_string(&f).unwrap()).len();
            if n > MAX_CODE_LINES {
                long.push(format!(
                    "{}: {n} lines of code",
                    f.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_CODE_LINES} lines of code:\n{}", long.join("\n"));
}

#[test]
fn nothing_reads_outside_the_repository() {
    let root = repo_root();
    let out = std::process::Command::new("git")
        .args(["-C", root.to_str().unwrap(), "grep", "-l", "-I", "\\.\\./shared"])
        .output();
    let Ok(out) = out else { return }; // not a git checkout: nothing to search
    let hits = String::from_utf8_lossy(&out.stdout);
    let hits: Vec<&str> = hits.lines().filter(|l| *l != "tests/layout.rs").collect();
    assert!(hits.is_empty(), "files that reach outside the repository: {hits:?}");
}

#[test]
fn the_checks_see_a_circle_and_a_layer_breach() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
        ("c".to_string(), BTreeSet::from(["c::d".to_string()])),
        ("c::d".to_string(), BTreeSet::from(["c".to_string()])),
    ]
    .into();
    assert_eq!(circle(&g), Some(vec!["a".into(), "b".into(), "a".into()]));
    let l = layers("//! - [`x`]: one\n//! - [`y`], [`z`] ([`y::w`]): two\n");
    assert_eq!(l, [BTreeSet::from(["x".to_string()]), BTreeSet::from(["y".into(), "z".into()])]);
}
