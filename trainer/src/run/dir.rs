//! A run directory: what `mosic train` writes and what evaluation, export and `mosic runs`
//! read back.
//!
//! ```text
//! runs/<config name>/<YYYYMMDD-HHMMSS>/
//!   config.toml                    every value the run used
//!   metrics.jsonl                  one StepStats per logged step
//!   loss.png, validation.png       curves (redrawn at each checkpoint)
//!   pos_embed_source.safetensors   the weights file's position embedding, while it is frozen
//!   checkpoints/step-XXXXXXXX/     student, teacher, optimizer (.safetensors), state.json
//!   eval/<protocol>.json           what `mosic eval --run` measured
//! ```
//! Every file is written atomically (a temporary name, then a rename).

use crate::config::TrainConfig;
use anyhow::{bail, Context, Result};
use mosic::tensors::{self, HostTensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Figures of one step: a line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepStats {
    pub step: u64,
    // JSON has no NaN: serde_json writes it as null, which reads back as NaN here.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub lr: f64,
    pub lr_backbone: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Share of the selected points' entries (B x T x selected) that are visible in the crop.
    pub visible: f64,
    /// Share of those entries that count in the loss (visible, and kept by the masking rule).
    #[serde(default)]
    pub in_loss: f64,
    /// Share of the crop-grid positions that hold a stored point (1 unless the grid is coarse).
    #[serde(default = "one")]
    pub filled: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub usage_entropy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Validation mIoU by protocol, on the steps where it ran (NaN where a score was not a
    /// number).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scores_nan_if_null"
    )]
    pub validation: Option<BTreeMap<String, f64>>,
}

fn one() -> f64 {
    1.0
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn scores_nan_if_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, f64>>, D::Error> {
    let m = Option::<BTreeMap<String, Option<f64>>>::deserialize(d)?;
    Ok(m.map(|m| m.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect()))
}

pub fn config_path(run: &Path) -> PathBuf {
    run.join("config.toml")
}

/// The configuration a run was made with.
pub fn read_config(run: &Path) -> Result<TrainConfig> {
    let p = config_path(run);
    let text = match mosic::fsutil::read_text_bounded(&p, SMALL_FILE_MAX_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: not a run directory (no config.toml)", run.display())
        }
        Err(e) => bail!("{}: {e}", p.display()),
    };
    toml::from_str(&text).with_context(|| format!("{} is malformed", p.display()))
}

pub fn is_run(dir: &Path) -> bool {
    config_path(dir).is_file()
}

// --- Checkpoints --------------------------------------------------------------------------

/// Checkpoints of a run, oldest first (only complete ones: those with a `state.json`).
pub fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").is_file()
        })
        .collect();
    v.sort();
    v
}

pub fn newest_checkpoint(run: &Path) -> Option<PathBuf> {
    checkpoints(run).pop()
}

/// Writes `run/checkpoints/step-XXXXXXXX` with one safetensors file per named tensor set and
/// `state.json`, atomically (a temporary folder renamed into place).
pub fn write_checkpoint(
    run: &Path,
    step: u64,
    files: &[(&str, &BTreeMap<String, HostTensor>)],
    state: &impl Serialize,
) -> Result<PathBuf> {
    let dir = run.join("checkpoints");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("step-{step:08}");
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<PathBuf> {
        std::fs::create_dir_all(&tmp)?;
        for (file, set) in files {
            let path = tmp.join(format!("{file}.safetensors"));
            tensors::write_safetensors(
                &path,
                set.iter().map(|(k, t)| (k.as_str(), t)),
                &HashMap::new(),
            )?;
        }
        let json = serde_json::to_string_pretty(state)?;
        mosic::fsutil::write_atomic(&tmp.join("state.json"), json.as_bytes())?;
        let dst = dir.join(&name);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::rename(&tmp, &dst)
            .with_context(|| format!("cannot move checkpoint into {}", dst.display()))?;
        mosic::fsutil::sync_dir(&dst);
        Ok(dst)
    })();
    if written.is_err() {
        // A half-written checkpoint is no use to anyone; a disk-full run keeps the space.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written.with_context(|| format!("writing the checkpoint of step {step} in {}", dir.display()))
}

/// Checkpoints are written under this prefix, then renamed.
const TMP_PREFIX: &str = ".tmp-";

/// Removes the temporaries of writers that no longer run (a run killed while it wrote):
/// checkpoint folders `checkpoints/.tmp-step-XXXXXXXX-PID` and atomic writes `.NAME.tmp-PID`
/// of the run's files. Returns what was removed.
pub fn remove_stale_checkpoint_temps(run: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .chain(std::fs::read_dir(run).into_iter().flatten())
        .flatten();
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = match name.strip_prefix(TMP_PREFIX) {
            Some(r) => r.rsplit('-').next(),
            None if name.starts_with('.') => name.rsplit_once(".tmp-").map(|(_, p)| p),
            None => None,
        };
        let Some(pid) = pid else {
            continue;
        };
        let written = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        let alive = pid.parse::<u32>().is_ok_and(|p| mosic::fsutil::writer_alive(p, written));
        if alive {
            continue;
        }
        let gone = if e.path().is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        if gone.is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

pub fn read_checkpoint_state<T: DeserializeOwned>(ckpt: &Path) -> Result<T> {
    let p = ckpt.join("state.json");
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("{}: no state.json", ckpt.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is malformed", p.display()))
}

/// One tensor set of a checkpoint (`student`, `teacher`, `optimizer`).
pub fn read_checkpoint_tensors(ckpt: &Path, file: &str) -> Result<BTreeMap<String, HostTensor>> {
    Ok(tensors::read_safetensors(&ckpt.join(format!("{file}.safetensors")))?.tensors)
}

/// Keeps the newest `keep` checkpoints besides the newest one.
pub fn prune_checkpoints(run: &Path, keep: usize) {
    let all = checkpoints(run);
    if all.len() > keep + 1 {
        for old in &all[..all.len() - keep - 1] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

// --- The source position embedding ------------------------------------------------------

/// Where a run keeps the position embedding its backbone resamples from (while it is frozen).
pub fn source_pos_embed_path(run: &Path) -> PathBuf {
    run.join("pos_embed_source.safetensors")
}

pub fn write_source_pos_embed(run: &Path, t: &HostTensor) -> Result<()> {
    Ok(tensors::write_safetensors(
        &source_pos_embed_path(run),
        [("pos_embed", t)],
        &HashMap::new(),
    )?)
}

/// The run's source position embedding, if it has one.
pub fn read_source_pos_embed(run: &Path) -> Result<Option<HostTensor>> {
    let p = source_pos_embed_path(run);
    if !p.is_file() {
        return Ok(None);
    }
    let mut t = tensors::read_safetensors(&p)?.tensors;
    Ok(Some(
        t.remove("pos_embed").with_context(|| format!("{}: no 'pos_embed' tensor", p.display()))?,
    ))
}

// --- Metrics ------------------------------------------------------------------------------

pub fn metrics_path(run: &Path) -> PathBuf {
    run.join("metrics.jsonl")
}

/// The logged steps up to `upto` (all with `u64::MAX`). A last line without its newline (a
/// write cut by a kill) is left out; any other line that does not read is an error naming
/// the file and the line, so that a resume never rewrites a history it could not read.
pub fn read_metrics(run: &Path, upto: u64) -> Result<Vec<StepStats>> {
    let path = metrics_path(run);
    let text = match mosic::fsutil::read_text_bounded(&path, METRICS_MAX_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("{}: {e}", path.display()),
    };
    let cut = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<StepStats>(l) {
            Ok(s) if s.step <= upto => out.push(s),
            Ok(_) => {}
            Err(_) if cut && i + 1 == lines.len() => {}
            Err(e) => bail!(
                "{} line {}: {e}; the history is kept as it is (fix or move the file to go on)",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// The largest metrics file read (a line a step: far above any run's).
const METRICS_MAX_BYTES: u64 = 1 << 30;

/// The largest config or evaluation result read.
const SMALL_FILE_MAX_BYTES: u64 = 16 << 20;

/// The metrics file, rewritten to `history` (steps after a resumed checkpoint are dropped:
/// they run again) and then appended to.
pub struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    pub fn open(run: &Path, history: &[StepStats]) -> Result<Self> {
        let path = metrics_path(run);
        let mut text = String::new();
        for s in history {
            text.push_str(&serde_json::to_string(s)?);
            text.push('\n');
        }
        mosic::fsutil::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(Self { file })
    }

    pub fn append(&mut self, s: &StepStats) -> Result<()> {
        use std::io::Write;
        writeln!(self.file, "{}", serde_json::to_string(s)?)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        use std::io::Write;
        Ok(self.file.flush()?)
    }
}

// --- Evaluation results -------------------------------------------------------------------

/// Records what an evaluation of the run measured as `eval/<name>.json`.
pub fn write_eval(run: &Path, name: &str, result: &serde_json::Value) -> Result<PathBuf> {
    let dir = run.join("eval");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    mosic::fsutil::write_atomic(&path, serde_json::to_string_pretty(result)?.as_bytes())?;
    Ok(path)
}

/// Every recorded evaluation of the run, by name.
pub fn read_evals(run: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(run.join("eval")).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let v = mosic::fsutil::read_text_bounded(&p, SMALL_FILE_MAX_BYTES)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if let (Some(stem), Some(v)) = (p.file_stem(), v) {
                out.insert(stem.to_string_lossy().into_owned(), v);
            }
        }
    }
    out
}

// --- Naming -------------------------------------------------------------------------------

/// The runs of a config live in `runs/<config file stem>/`.
pub fn runs_of(runs: &Path, config: Option<&Path>) -> PathBuf {
    let name = config
        .and_then(|c| c.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "default".into());
    runs.join(name)
}

/// The newest run directory (by its date-time name) under `dir`.
pub fn newest_run(dir: &Path) -> Option<PathBuf> {
    let mut runs: Vec<PathBuf> =
        std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| is_run(p)).collect();
    runs.sort();
    runs.pop()
}

/// Claims a new run directory named after the current UTC date and time (a suffix when two
/// runs start in the same second); never an existing one.
pub fn new_run(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    for k in 1..10_000 {
        let name = if k == 1 { stamp.clone() } else { format!("{stamp}-{k}") };
        let p = dir.join(name);
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
    }
    bail!("{}: no free run name for {stamp}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_runs_never_reuse_a_name_and_the_newest_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let a = new_run(dir.path()).unwrap();
        let b = new_run(dir.path()).unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name.len(), 15, "{name}");
        assert!(name[..8].chars().all(|c| c.is_ascii_digit()) && &name[8..9] == "-", "{name}");
        // Only directories with a config count as runs.
        assert_eq!(newest_run(dir.path()), None);
        std::fs::write(a.join("config.toml"), "").unwrap();
        std::fs::write(b.join("config.toml"), "").unwrap();
        assert_eq!(newest_run(dir.path()), Some(b));
        assert_eq!(
            runs_of(Path::new("runs"), Some(Path::new("configs/x.toml"))),
            Path::new("runs/x")
        );
    }

    #[test]
    fn checkpoints_and_metrics_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let t: BTreeMap<String, HostTensor> =
            [("a".to_string(), HostTensor::new(vec![2], vec![1.0, 2.0]))].into();
        for step in [3u64, 6, 9] {
            write_checkpoint(run, step, &[("student", &t)], &serde_json::json!({ "step": step }))
                .unwrap();
        }
        // A checkpoint folder without state.json (killed mid-write) does not count.
        std::fs::create_dir_all(run.join("checkpoints/step-00000012")).unwrap();
        assert_eq!(checkpoints(run).len(), 3);
        prune_checkpoints(run, 1);
        let left = checkpoints(run);
        assert_eq!(left.len(), 2);
        let newest = newest_checkpoint(run).unwrap();
        assert!(newest.ends_with("step-00000009"));
        assert_eq!(read_checkpoint_tensors(&newest, "student").unwrap(), t);
        let s: serde_json::Value = read_checkpoint_state(&newest).unwrap();
        assert_eq!(s["step"], 9);

        let stats = |step| StepStats {
            step,
            loss: 1.0 / step as f64,
            lr: 0.1,
            lr_backbone: 0.01,
            grad_norm: 1.0,
            visible: 0.9,
            in_loss: 0.8,
            filled: 1.0,
            usage_entropy: 0.5,
            seconds: None,
            validation: None,
        };
        let mut log = MetricsLog::open(run, &[stats(1)]).unwrap();
        log.append(&stats(2)).unwrap();
        log.append(&stats(3)).unwrap();
        log.flush().unwrap();
        assert_eq!(read_metrics(run, u64::MAX).unwrap().len(), 3);
        assert_eq!(read_metrics(run, 2).unwrap().len(), 2);
        // Resuming at step 2 drops step 3 from the file.
        drop(MetricsLog::open(run, &read_metrics(run, 2).unwrap()).unwrap());
        assert_eq!(read_metrics(run, u64::MAX).unwrap().len(), 2);

        write_eval(run, "cluster", &serde_json::json!({ "miou": 0.5 })).unwrap();
        assert_eq!(read_evals(run)["cluster"]["miou"], 0.5);
    }

    /// A metrics line that does not read is an error naming the file and the line (so that a
    /// resume never rewrites a history it could not read), except a last line cut by a kill;
    /// a validation score that is not a number reads back as NaN instead of dropping its line.
    #[test]
    fn metrics_are_read_strictly_and_keep_nan() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        let stats = |step: u64, v: f64| StepStats {
            step,
            loss: f64::NAN,
            lr: 1e-3,
            lr_backbone: 1e-4,
            grad_norm: 1.0,
            visible: 0.9,
            in_loss: 0.9,
            filled: 1.0,
            usage_entropy: 1.0,
            seconds: Some(0.5),
            validation: Some([("C hungarian".to_string(), v)].into()),
        };
        drop(MetricsLog::open(run, &[stats(1, 0.5), stats(2, f64::NAN)]).unwrap());
        let back = read_metrics(run, u64::MAX).unwrap();
        assert_eq!(back.len(), 2);
        assert!(
            back[1].validation.as_ref().unwrap()["C hungarian"].is_nan() && back[0].loss.is_nan()
        );
        let path = metrics_path(run);
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{good}{{\"step\": 3, \"lo")).unwrap();
        assert_eq!(read_metrics(run, u64::MAX).unwrap().len(), 2, "a cut last line is left out");
        let lines: Vec<&str> = good.lines().collect();
        std::fs::write(&path, format!("{}\n{{oops\n{}\n", lines[0], lines[1])).unwrap();
        let e = format!("{:#}", read_metrics(run, u64::MAX).unwrap_err());
        assert!(e.contains("metrics.jsonl line 2") && e.contains("history is kept"), "{e}");
    }

    /// A checkpoint that cannot be written leaves no temporary folder behind, and the
    /// temporary folder of a writer that was killed is removed when the run is opened again.
    #[test]
    fn checkpoint_temporaries_never_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        // A tensor whose values do not fill its shape: the write fails after the temporary
        // folder is made.
        let bad: BTreeMap<String, HostTensor> =
            [("w".to_string(), HostTensor { shape: vec![4], data: vec![1.0] })].into();
        let e = write_checkpoint(run, 1, &[("student", &bad)], &serde_json::json!({}));
        assert!(e.is_err());
        let left: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let dead = run.join("checkpoints/.tmp-step-00000002-4194305");
        let mine = run.join(format!("checkpoints/.tmp-step-00000003-{}", std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&mine).unwrap();
        assert_eq!(remove_stale_checkpoint_temps(run), vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists());
    }
}
