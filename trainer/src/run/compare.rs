//! Runs side by side (`mosic runs DIR...`): the configuration values that differ between
//! them, how far each got, its final loss, latest validation, recorded evaluations, speed and
//! wall time; as a table, as CSV, and as overlaid curves.

use crate::run::dir::{self as rundir, StepStats};
use crate::run::plot::{Chart, Series};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What a run directory says about its run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// A short name: the run's folder under its config's folder.
    pub name: String,
    /// Every config value as `section.key` = its TOML text.
    pub config: BTreeMap<String, String>,
    pub history: Vec<StepStats>,
    /// `protocol: score` = mean mIoU, from `eval/*.json`.
    pub evals: BTreeMap<String, f64>,
    pub batch_size: usize,
}

impl RunSummary {
    pub fn steps(&self) -> u64 {
        self.history.last().map_or(0, |s| s.step)
    }
    pub fn final_loss(&self) -> Option<f64> {
        self.history.last().map(|s| s.loss)
    }
    /// The newest validation, by protocol.
    pub fn latest_validation(&self) -> BTreeMap<String, f64> {
        self.history.iter().rev().find_map(|s| s.validation.clone()).unwrap_or_default()
    }
    /// Training seconds: each logged step's time per step over the steps since the one before.
    pub fn wall_seconds(&self) -> Option<f64> {
        let mut prev = 0;
        let mut total = 0.0;
        for s in &self.history {
            // A history whose steps go back (two runs' logs mixed) counts no time backwards.
            total += s.seconds? * s.step.saturating_sub(prev) as f64;
            prev = prev.max(s.step);
        }
        (prev > 0).then_some(total)
    }
    pub fn clips_per_second(&self) -> Option<f64> {
        let w = self.wall_seconds()?;
        (w > 0.0).then(|| (self.steps() as usize * self.batch_size) as f64 / w)
    }
}

/// Reads a run directory.
pub fn summarize(dir: &Path) -> Result<RunSummary> {
    let cfg = rundir::read_config(dir)?;
    let mut config = BTreeMap::new();
    flatten("", &toml::Value::try_from(&cfg)?, &mut config);
    let mut evals = BTreeMap::new();
    for (file, v) in rundir::read_evals(dir) {
        for s in v["scores"].as_array().into_iter().flatten() {
            if let (Some(name), Some(mean)) = (s["name"].as_str(), s["mean"].as_f64()) {
                evals.insert(format!("{file}: {name}"), mean);
            }
        }
    }
    let parent = dir.parent().and_then(|p| p.file_name()).map(|p| printable(&p.to_string_lossy()));
    let own = dir.file_name().map(|p| printable(&p.to_string_lossy())).unwrap_or_default();
    Ok(RunSummary {
        dir: dir.to_path_buf(),
        name: parent.map_or(own.clone(), |p| format!("{p}/{own}")),
        config,
        history: rundir::read_metrics(dir, u64::MAX)?,
        evals,
        batch_size: cfg.data.batch_size,
    })
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        // Config floats are f32: show the value as written (0.1, not 0.10000000149011612).
        toml::Value::Float(f) if (*f as f32) as f64 == *f => {
            out.insert(prefix.to_string(), (*f as f32).to_string());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The runs among `args`, and a note for each argument that is not a run directory (a glob
/// over a folder of runs also matches reports and figures).
pub fn collect(args: &[PathBuf]) -> (Vec<RunSummary>, Vec<String>) {
    let (mut runs, mut notes) = (Vec::new(), Vec::new());
    for a in args {
        if !rundir::is_run(a) {
            notes.push(format!("skipped {}: not a run directory (no config.toml)", a.display()));
            continue;
        }
        match summarize(a) {
            Ok(r) => runs.push(r),
            Err(e) => notes.push(format!("skipped {}: {e:#}", a.display())),
        }
    }
    (runs, notes)
}

/// The table: a column per config value that differs between the runs, then the figures.
pub fn table(runs: &[RunSummary]) -> (Vec<String>, Vec<Vec<String>>) {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.config.keys()).collect();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let first = runs[0].config.get(*k);
            runs.iter().any(|r| r.config.get(*k) != first)
        })
        .collect();
    let vals: BTreeSet<String> =
        runs.iter().flat_map(|r| r.latest_validation().into_keys()).collect();
    let evals: BTreeSet<String> = runs.iter().flat_map(|r| r.evals.keys().cloned()).collect();
    let mut header = vec!["run".to_string()];
    header.extend(differing.iter().map(|k| k.to_string()));
    header.extend(["steps", "final loss"].map(String::from));
    header.extend(vals.iter().map(|v| format!("val {v} %")));
    header.extend(evals.iter().map(|e| format!("{e} %")));
    header.extend(["clips/s", "wall"].map(String::from));
    let rows = runs
        .iter()
        .map(|r| {
            let mut row = vec![r.name.clone()];
            row.extend(differing.iter().map(|k| r.config.get(*k).cloned().unwrap_or_default()));
            row.push(r.steps().to_string());
            row.push(r.final_loss().map_or("-".into(), |l| format!("{l:.4}")));
            let latest = r.latest_validation();
            row.extend(
                vals.iter()
                    .map(|v| latest.get(v).map_or("-".into(), |x| format!("{:.1}", 100.0 * x))),
            );
            row.extend(
                evals
                    .iter()
                    .map(|e| r.evals.get(e).map_or("-".into(), |x| format!("{:.2}", 100.0 * x))),
            );
            row.push(r.clips_per_second().map_or("-".into(), |c| format!("{c:.2}")));
            row.push(r.wall_seconds().map_or("-".into(), |w| format!("{w:.0} s")));
            row
        })
        .collect();
    (header, rows)
}

/// Text from other people's files as it may reach a terminal: control characters (escape
/// sequences among them) shown as `\u{..}`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() })
        .collect()
}

/// The table as aligned text.
pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|c| printable(c)).collect();
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| printable(c)).collect()).collect();
    let (header, rows) = (&header[..], &rows[..]);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// The table as CSV (RFC 4180 quoting), for pandas. A cell a spreadsheet would read as a
/// formula (starting with `=`, `+`, `-`, `@`) is quoted behind a `'`, unless it is a number.
pub fn csv(header: &[String], rows: &[Vec<String>]) -> String {
    let field = |s: &String| {
        let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
        let s = if formula { format!("'{s}") } else { printable(s) };
        if formula || s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
        out.push_str(&r.iter().map(field).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Loss curves of every run on one chart, and one chart per validation protocol.
pub fn plot(runs: &[RunSummary], path: &Path) -> Result<()> {
    let mut loss = Chart::new("training loss", "step", "loss");
    let mut val: BTreeMap<String, Chart> = BTreeMap::new();
    for r in runs {
        let l = r.history.iter().map(|s| (s.step as f64, s.loss)).collect();
        loss.series.push(Series::line(&r.name, l));
        let mut by: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for s in &r.history {
            for (k, v) in s.validation.iter().flatten() {
                by.entry(k).or_default().push((s.step as f64, 100.0 * v));
            }
        }
        for (k, pts) in by {
            val.entry(k.to_string())
                .or_insert_with(|| Chart::new(format!("validation: {k}"), "step", "mIoU %"))
                .series
                .push(Series::line(&r.name, pts));
        }
    }
    let charts: Vec<Chart> = std::iter::once(loss).chain(val.into_values()).collect();
    crate::run::plot::save(path, &charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, set: &[&str], losses: &[f64]) {
        std::fs::create_dir_all(dir).unwrap();
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let cfg = crate::TrainConfig::load(None, &set).unwrap();
        std::fs::write(dir.join("config.toml"), cfg.to_toml()).unwrap();
        let history: Vec<StepStats> = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| StepStats {
                step: 10 * (i as u64 + 1),
                loss: l,
                lr: 1e-3,
                lr_backbone: 1e-4,
                grad_norm: 1.0,
                visible: 0.9,
                in_loss: 0.9,
                filled: 1.0,
                usage_entropy: 1.0,
                seconds: Some(0.5),
                validation: (i == 1).then(|| [("C hungarian".to_string(), 0.25 + l / 10.0)].into()),
            })
            .collect();
        drop(rundir::MetricsLog::open(dir, &history).unwrap());
    }

    #[test]
    fn differing_values_figures_csv_and_plot() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("cfg/a"), tmp.path().join("cfg/b"));
        run(&a, &["objective.mask_ratio=0.1"], &[2.0, 1.5]);
        run(&b, &["objective.mask_ratio=0.3"], &[2.1, 1.2, 1.1]);
        rundir::write_eval(
            &b,
            "cluster",
            &serde_json::json!({ "scores": [{ "name": "K=21 hungarian", "mean": 0.4 }] }),
        )
        .unwrap();
        std::fs::write(tmp.path().join("cfg/report.md"), "").unwrap();
        let (runs, notes) = collect(&[a, b, tmp.path().join("cfg/report.md")]);
        assert_eq!(runs.len(), 2);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("report.md") && notes[0].contains("not a run directory"));
        let (header, rows) = table(&runs);
        assert_eq!(
            header,
            [
                "run",
                "objective.mask_ratio",
                "steps",
                "final loss",
                "val C hungarian %",
                "cluster: K=21 hungarian %",
                "clips/s",
                "wall"
            ]
        );
        assert_eq!(rows[0], ["cfg/a", "0.1", "20", "1.5000", "40.0", "-", "32.00", "10 s"]);
        assert_eq!(rows[1][1..5], ["0.3", "30", "1.1000", "37.0"]);
        assert_eq!(rows[1][5], "40.00");
        let text = render(&header, &rows);
        assert!(text.lines().count() == 3 && text.contains("cfg/b"), "{text}");
        let c = csv(&header, &rows);
        assert!(c.starts_with("run,objective.mask_ratio,steps,"), "{c}");
        let png = tmp.path().join("runs.png");
        plot(&runs, &png).unwrap();
        assert!(image::open(&png).is_ok());
    }

    /// Run directories from other people's machines: a history whose steps go back, a
    /// metrics file that is a link to /dev/zero or a FIFO, names with a terminal escape and
    /// cells a spreadsheet would run as formulas. Each is read or refused at once, in bounded
    /// memory, and printed harmless.
    #[test]
    fn foreign_run_directories_are_read_safely() {
        let tmp = tempfile::tempdir().unwrap();
        let back = tmp.path().join("back");
        run(&back, &[], &[1.0, 0.9, 0.8]);
        // Steps 10, 20, 30, then 5: two runs' logs mixed.
        let mut text = std::fs::read_to_string(back.join("metrics.jsonl")).unwrap();
        text.push_str(&text.lines().next().unwrap().replace("\"step\":10", "\"step\":5"));
        text.push('\n');
        std::fs::write(back.join("metrics.jsonl"), text).unwrap();
        let r = summarize(&back).unwrap();
        assert_eq!(r.wall_seconds(), Some(15.0));

        let zero = tmp.path().join("zero");
        run(&zero, &[], &[1.0]);
        std::fs::remove_file(zero.join("metrics.jsonl")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", zero.join("metrics.jsonl")).unwrap();
        let t0 = std::time::Instant::now();
        let e = format!("{:#}", summarize(&zero).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");

        let fifo = tmp.path().join("fifo");
        run(&fifo, &[], &[1.0]);
        std::fs::remove_file(fifo.join("metrics.jsonl")).unwrap();
        let c = std::ffi::CString::new(fifo.join("metrics.jsonl").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path this test owns.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = format!("{:#}", summarize(&fifo).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));

        let evil = tmp.path().join("cfg").join("\u{1b}[2Jx=1+2");
        run(&evil, &["optim.lr=2e-3"], &[1.0]);
        let runs = vec![summarize(&back).unwrap(), summarize(&evil).unwrap()];
        let (header, rows) = table(&runs);
        let text = render(&header, &rows);
        assert!(!text.contains('\u{1b}') && text.contains("\\u{1b}[2Jx=1+2"), "{text}");
        let c = csv(&header, &[vec!["=cmd|' /C calc'!A0".into()], vec!["-1.5".into()]]);
        assert!(c.contains("\"'=cmd|' /C calc'!A0\"") && c.contains("\n-1.5\n"), "{c}");
    }
}
