//! The manifest: one JSON file per output directory listing its shards with row counts and
//! checksums, plus the producer's configuration, so a directory can be verified, shared
//! and resumed.

use crate::clip::ShardSpec;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::schema;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

pub const MANIFEST_NAME: &str = "manifest.json";
pub const FORMAT: &str = "mosic-shards";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the manifest's directory.
    pub file: String,
    pub rows: u64,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

impl ToolInfo {
    pub fn this() -> Self {
        Self { name: "mosic".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub schema_version: String,
    pub tool: ToolInfo,
    pub spec: ShardSpec,
    /// The producer's settings, as it reports them (clip plan, input, tracker options).
    pub config: serde_json::Value,
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    pub fn new(spec: ShardSpec, config: serde_json::Value) -> Self {
        Self {
            format: FORMAT.into(),
            schema_version: schema::SCHEMA_VERSION.into(),
            tool: ToolInfo::this(),
            spec,
            config,
            shards: Vec::new(),
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_NAME)
    }

    pub fn exists(dir: &Path) -> bool {
        Self::path(dir).is_file()
    }

    /// Loads and validates a directory's manifest: format, schema major version, and that
    /// every listed shard stays inside the directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(&path, format!("malformed manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::invalid(
                &path,
                format!("format is '{}', expected '{FORMAT}'", m.format),
            ));
        }
        match schema::parse_version(&m.schema_version) {
            Some((major, _)) if major == schema::SCHEMA_MAJOR => {}
            _ => {
                return Err(Error::Version {
                    path,
                    found: m.schema_version,
                    supported: schema::SCHEMA_MAJOR,
                });
            }
        }
        for s in &m.shards {
            check_relative(&s.file).map_err(|msg| Error::invalid(&path, msg))?;
        }
        Ok(m)
    }

    /// Writes the manifest atomically, so a crash leaves the previous one intact.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let mut text =
            serde_json::to_string_pretty(self).map_err(|e| Error::invalid(&path, e.to_string()))?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())
    }

    pub fn shard_path(dir: &Path, entry: &ShardEntry) -> PathBuf {
        dir.join(&entry.file)
    }

    pub fn total_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }
}

/// Joins the shard directories `inputs` (e.g. the folders of scale-out workers) into one
/// manifest in `out`. Shards inside `out` are referenced where they are; others are copied
/// in. All inputs must share one spec.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<Manifest> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let out_abs = out.canonicalize().map_err(|e| Error::io(out, e))?;
    let mut merged: Option<Manifest> = None;
    let mut configs = Vec::new();
    for dir in inputs {
        let m = Manifest::load(dir)?;
        let dir_abs = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let target =
            merged.get_or_insert_with(|| Manifest::new(m.spec.clone(), serde_json::Value::Null));
        if m.spec != target.spec {
            return Err(Error::invalid(
                Manifest::path(dir),
                "its spec (clip length, grid, size or tracker) differs from the other inputs'",
            ));
        }
        configs.push(serde_json::json!({ "dir": dir.display().to_string(), "config": m.config }));
        let prefix =
            dir_abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for e in m.shards {
            let src = dir_abs.join(&e.file);
            let file = match dir_abs.strip_prefix(&out_abs) {
                Ok(rel) => rel.join(&e.file).to_string_lossy().into_owned(),
                Err(_) => {
                    let name = format!("{prefix}-{}", e.file.replace('/', "-"));
                    let dst = out_abs.join(&name);
                    let tmp = crate::fsutil::temp_path(&dst);
                    std::fs::copy(&src, &tmp).map_err(|err| Error::io(&src, err))?;
                    std::fs::rename(&tmp, &dst).map_err(|err| Error::io(&dst, err))?;
                    name
                }
            };
            if target.shards.iter().any(|s| s.file == file) {
                return Err(Error::invalid(&src, format!("two inputs list the shard '{file}'")));
            }
            target.shards.push(ShardEntry { file, ..e });
        }
    }
    let mut m = merged
        .ok_or_else(|| Error::invalid(out, "nothing to merge: no input directories given"))?;
    m.config = serde_json::json!({ "merged_from": configs });
    m.save(out)?;
    Ok(m)
}

/// A listed shard must be a relative path that stays inside the manifest's directory.
fn check_relative(file: &str) -> std::result::Result<(), String> {
    let p = Path::new(file);
    let ok = !file.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("shard path '{file}' leaves the manifest's directory; only relative paths inside it are allowed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        assert!(check_relative("shard-00000.parquet").is_ok());
        assert!(check_relative("w0/shard-00000.parquet").is_ok());
        for bad in ["../x.parquet", "/etc/passwd", "a/../../b", "", "./../x"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }
}
