//! Every path and command the documents name is checked against the repository and the
//! binary: a renamed file, a removed flag or a Makefile target that no longer exists fails
//! here, not in a reader's shell.

mod common;

use common::*;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// The documents a user reads.
fn documents() -> Vec<String> {
    let root = repo_root();
    let mut docs = vec!["README.md".to_string(), "BENCHMARKS.md".to_string()];
    for dir in ["docs", "schemas"] {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".md"))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        docs.extend(names);
    }
    docs
}

/// Top-level folders and files whose paths the documents may name.
const TOP: &[&str] = &[
    "src/",
    "pipeline/",
    "trainer/",
    "eval/",
    "cli/",
    "demo/",
    "video/",
    "synth/",
    "tools/",
    "schemas/",
    "tests/",
    "configs/",
    "docs/",
    ".ci/",
];
const TOP_FILES: &[&str] =
    &["README.md", "BENCHMARKS.md", "Makefile", "Cargo.toml", "Cargo.lock", "rustfmt.toml"];

/// Spans between backticks, and the lines of fenced code blocks (continuation lines joined).
fn spans(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut inline, mut code) = (Vec::new(), Vec::new());
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let l = line.trim();
            if let Some(head) = l.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
            } else {
                pending.push_str(l);
                code.push(std::mem::take(&mut pending));
            }
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(span), Some(_)) = (parts.next(), parts.next()) {
            inline.push(span.to_string());
        }
    }
    (inline, code)
}

/// The repository paths a piece of text names: words that start with a top-level folder or
/// are a top-level file; `{a,b}` alternatives expanded, globs and placeholders skipped.
fn paths_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || "()[]\"'`;=".contains(c)) {
        let w = word.trim_end_matches(['.', ',', ':', '!', '?']);
        let w = w.split_once(':').map_or(w, |(p, _)| p); // file:line
        let named = TOP.iter().any(|t| w.starts_with(t)) || TOP_FILES.contains(&w);
        if !named || w.contains(['*', '<', '>', '$']) || w.contains("...") {
            continue;
        }
        match (w.find('{'), w.find('}')) {
            (Some(a), Some(b)) if a < b => {
                for alt in w[a + 1..b].split(',') {
                    out.push(format!("{}{alt}{}", &w[..a], &w[b + 1..]));
                }
            }
            _ => out.push(w.to_string()),
        }
    }
    out
}

#[test]
fn every_path_in_the_documents_exists() {
    let root = repo_root();
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(root.join(&doc)).unwrap();
        let (inline, code) = spans(&text);
        for p in inline.iter().chain(&code).flat_map(|s| paths_in(s)) {
            checked += 1;
            if !root.join(&p).exists() {
                missing.push(format!("{doc}: {p}"));
            }
        }
    }
    assert!(checked > 50, "only {checked} paths found: is the scan broken?");
    assert!(missing.is_empty(), "paths that do not exist:\n  {}", missing.join("\n  "));
}

/// `mosic <path> --help`, cached.
struct Help(HashMap<Vec<String>, Option<String>>);

impl Help {
    fn get(&mut self, path: &[String]) -> Option<String> {
        self.0
            .entry(path.to_vec())
            .or_insert_with(|| {
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                let o = run(&args);
                o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
            })
            .clone()
    }

    /// The subcommands `mosic <path>` lists.
    fn subcommands(&mut self, path: &[String]) -> BTreeSet<String> {
        let help = self.get(path).unwrap_or_default();
        let mut names = BTreeSet::new();
        let mut in_commands = false;
        for line in help.lines() {
            if line.starts_with("Commands:") {
                in_commands = true;
            } else if in_commands && line.starts_with("  ") {
                if let Some(name) = line.split_whitespace().next() {
                    names.insert(name.to_string());
                }
            } else if !line.trim().is_empty() {
                in_commands = false;
            }
        }
        names
    }
}

/// A `mosic ...` command line checked against the binary: its subcommands exist and every
/// `--flag` is one of the last subcommand's.
fn check_command(words: &[&str], help: &mut Help) -> Result<(), String> {
    let mut path: Vec<String> = Vec::new();
    let mut rest = words.iter();
    for w in rest.by_ref() {
        if w.starts_with('-') {
            break;
        }
        if help.subcommands(&path).contains(*w) {
            path.push(w.to_string());
        } else {
            break;
        }
    }
    if path.is_empty() {
        return Err(format!("no subcommand in `mosic {}`", words.join(" ")));
    }
    let text = help.get(&path).ok_or_else(|| format!("`mosic {} --help` fails", path.join(" ")))?;
    for w in words.iter().filter(|w| w.starts_with("--")) {
        let flag = w.split('=').next().unwrap();
        let known = text.match_indices(flag).any(|(i, _)| {
            let after = text[i + flag.len()..].chars().next().unwrap_or(' ');
            !(after.is_alphanumeric() || after == '-' || after == '_')
        });
        if !known {
            return Err(format!("`mosic {}` has no {flag}", path.join(" ")));
        }
    }
    Ok(())
}

fn makefile_targets() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with(['\t', '#', ' ']) && l.contains(':') && !l.contains(":="))
        .filter_map(|l| l.split(':').next())
        .flat_map(|t| t.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn every_command_in_the_documents_runs_as_written() {
    let mut help = Help(HashMap::new());
    let targets = makefile_targets();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(repo_root().join(&doc)).unwrap();
        let (inline, code) = spans(&text);
        for line in inline.iter().chain(&code) {
            if line.trim_start().starts_with('#') {
                continue; // a comment line of a code block
            }
            let line = line.split(" #").next().unwrap(); // trailing comments
            let words: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || "(),".contains(c))
                .filter(|w| !w.is_empty())
                .collect();
            for (i, w) in words.iter().enumerate() {
                let is_mosic = *w == "mosic" || w.ends_with("/mosic") || *w == "$(MOSIC)";
                let prev_ok = i == 0
                    || !words[i - 1].starts_with("--")
                    || words[i - 1] == "--"
                    || words[i - 1].contains('=');
                if is_mosic && prev_ok && i + 1 < words.len() {
                    let end = words[i + 1..]
                        .iter()
                        .position(|x| ["|", "&&", ";", ">", "2>&1", "||"].contains(x))
                        .map_or(words.len(), |p| i + 1 + p);
                    checked += 1;
                    if let Err(e) = check_command(&words[i + 1..end], &mut help) {
                        wrong.push(format!("{doc}: {e}"));
                    }
                }
                if *w == "make" && i + 1 < words.len() {
                    let t = words[i + 1];
                    if t.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !t.is_empty() {
                        checked += 1;
                        if !targets.contains(t) {
                            wrong.push(format!("{doc}: `make {t}`: no such Makefile target"));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} commands found: is the scan broken?");
    assert!(wrong.is_empty(), "commands that do not run as written:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_scan_catches_a_stale_path_and_a_stale_flag() {
    let mut help = Help(HashMap::new());
    assert!(check_command(&["train", "--config", "x"], &mut help).is_ok());
    assert!(check_command(&["train", "--no-such-flag"], &mut help).is_err());
    assert!(check_command(&["eval", "cluster", "--k", "21"], &mut help).is_ok());
    assert!(check_command(&["no-such-command"], &mut help).is_err());
    let p = paths_in("see `trainer/src/{train,model}.rs` and tools/x/*.py");
    assert_eq!(p, ["trainer/src/train.rs", "trainer/src/model.rs"]);
    assert!(!Path::new(&repo_root()).join("trainer/src/train.rs").exists());
}
