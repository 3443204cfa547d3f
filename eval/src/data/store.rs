//! Rows of features under a memory budget: kept in memory up to the store's share of the
//! budget, then written to disk in chunks (raw little-endian f32 files in a private scratch
//! folder, removed when the store is dropped, on SIGINT/SIGTERM through [`remove_spills`],
//! and after a SIGKILL by the next evaluation's [`sweep_stale`]) and read back a chunk at a
//! time, checked against the checksum taken when it was written. Evaluation sets whose
//! features exceed the memory (VOC trainaug at 504 px: 21 GB; the paper's Hummingbird bank:
//! 15.7 GB at dimension 384) stream through this.

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How much memory the evaluation may hold and where it spills. The protocols give each of
/// their stores a share of `bytes`.
#[derive(Clone, Debug)]
pub struct Budget {
    pub bytes: u64,
    /// Where chunks are written (None: the system's temporary folder).
    pub scratch: Option<PathBuf>,
}

impl Budget {
    /// The default of `mosic eval`: 8 GiB, what a workstation spares beside the model.
    pub const DEFAULT_GB: f64 = 8.0;

    pub fn gb(gb: f64) -> Self {
        Self { bytes: (gb * (1u64 << 30) as f64) as u64, scratch: None }
    }

    /// `share` of the budget, in bytes (at least one row's worth is always allowed).
    pub fn share(&self, share: f64) -> u64 {
        (self.bytes as f64 * share) as u64
    }

    /// Where spills go: `--scratch`, else the system's temporary folder.
    pub fn folder(&self) -> PathBuf {
        self.scratch.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Checked before the first image is embedded: the scratch folder is a folder this process
    /// can write (a file is made and removed), with room for the `rows` rows of `dim` floats
    /// that do not fit the budget. Returns notes (a scratch folder in memory, where spilling
    /// does not bound memory).
    pub fn check(&self, what: &str, rows: u64, dim: usize) -> Result<Vec<String>> {
        let dir = self.folder();
        let flag =
            if self.scratch.is_some() { "--scratch" } else { "the temporary folder ($TMPDIR)" };
        ensure!(dir.is_dir(), "{flag} {}: not a folder", dir.display());
        let probe = dir.join(format!(".mosic-eval-probe-{}", std::process::id()));
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"probe"))
            .with_context(|| format!("{flag} {}: cannot write there", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let need = (rows.saturating_mul(dim as u64 * 4)).saturating_sub(self.bytes);
        let (free, memory) = space(&dir);
        if let Some(free) = free {
            ensure!(
                need <= free,
                "{what}: about {} of features do not fit --memory-gb and go to {flag} {}, which has {} free; free space there, point --scratch at a larger disk, or raise --memory-gb",
                human_bytes(need),
                dir.display(),
                human_bytes(free)
            );
        }
        let mut notes = Vec::new();
        if memory && need > 0 {
            notes.push(format!(
                "{flag} {} is in memory (tmpfs): the {} spilled there stay in memory, so --memory-gb does not bound it; point --scratch at a disk",
                dir.display(),
                human_bytes(need)
            ));
        }
        Ok(notes)
    }
}

/// Free bytes of the file system holding `dir`, and whether it lives in memory (tmpfs).
fn space(dir: &Path) -> (Option<u64>, bool) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return (None, false) };
    // SAFETY: statvfs and statfs fill the zeroed structs for a NUL-terminated path.
    unsafe {
        let mut v: libc::statvfs = std::mem::zeroed();
        let free = (libc::statvfs(c.as_ptr(), &mut v) == 0)
            .then(|| (v.f_bavail as u64).saturating_mul(v.f_frsize as u64));
        let mut f: libc::statfs = std::mem::zeroed();
        let tmpfs = libc::statfs(c.as_ptr(), &mut f) == 0 && f.f_type as i64 == 0x0102_1994;
        (free, tmpfs)
    }
}

/// The scratch folders of this process's stores, for [`remove_spills`].
static SPILLS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every scratch folder this process has made: what a SIGINT or SIGTERM handler calls
/// before the process ends (a store's own drop does it otherwise).
pub fn remove_spills() {
    for d in SPILLS.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Removes scratch folders under `dir` left by evaluations that were killed (named after a
/// process that no longer runs): a SIGKILL leaves them, nothing else can. Returns notes.
pub fn sweep_stale(dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let ours =
            e.metadata().is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == unsafe_uid());
        let written = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        if ours && !mosic::fsutil::writer_alive(pid, written) {
            let size = dir_bytes(&e.path());
            if std::fs::remove_dir_all(e.path()).is_ok() {
                notes.push(format!(
                    "removed {} ({}) left by an evaluation that was killed",
                    e.path().display(),
                    human_bytes(size)
                ));
            }
        }
    }
    notes
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn dir_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Scratch folders are named `mosic-eval-<pid>-<random>`.
const PREFIX: &str = "mosic-eval-";

impl Default for Budget {
    fn default() -> Self {
        Self::gb(Self::DEFAULT_GB)
    }
}

/// Rows written to disk are grouped in chunks of about this many bytes.
pub const CHUNK_BYTES: u64 = 64 << 20;

/// Disk chunks hold a multiple of this many rows (when they hold as many), so blockwise
/// passes over a store see the blocks they would see in memory.
pub const ROW_ALIGN: usize = 8192;

/// An append-only matrix of `dim`-wide f32 rows.
pub struct RowStore {
    dim: usize,
    /// Rows kept in memory before spilling; rows per disk chunk.
    mem_rows: usize,
    chunk_rows: usize,
    /// Rows on disk, in order: (file, rows, checksum of each block of the file).
    chunks: Vec<(PathBuf, usize, Vec<u64>)>,
    /// Rows after the disk chunks.
    tail: Vec<f32>,
    dir: Option<tempfile::TempDir>,
    scratch: Option<PathBuf>,
    /// Bytes written to disk so far.
    pub spilled_bytes: u64,
}

impl RowStore {
    /// A store that keeps up to `mem_bytes` of rows in memory.
    pub fn new(dim: usize, mem_bytes: u64, budget: &Budget) -> Self {
        let row = (dim * 4).max(1) as u64;
        let mem_rows = (mem_bytes / row).max(1) as usize;
        // Whole multiples of ROW_ALIGN rows, at least one: a budget smaller than that holds
        // one chunk's worth beyond it while the chunk fills.
        let chunk_rows = (CHUNK_BYTES.min(mem_bytes) / row) as usize / ROW_ALIGN * ROW_ALIGN;
        let chunk_rows = chunk_rows.max(ROW_ALIGN);
        Self {
            dim,
            mem_rows,
            chunk_rows,
            chunks: Vec::new(),
            tail: Vec::new(),
            dir: None,
            scratch: budget.scratch.clone(),
            spilled_bytes: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.1).sum::<usize>() + self.tail.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows held in memory (the tail).
    pub fn rows_in_memory(&self) -> usize {
        self.tail.len() / self.dim.max(1)
    }

    /// Appends rows (a multiple of `dim` values).
    pub fn extend(&mut self, rows: &[f32]) -> Result<()> {
        ensure!(
            rows.len().is_multiple_of(self.dim.max(1)),
            "{} values are not rows of {}",
            rows.len(),
            self.dim
        );
        self.tail.extend_from_slice(rows);
        // Spill whole chunks from the front of the tail once it outgrows its share.
        while self.tail.len() / self.dim > self.mem_rows
            && self.tail.len() / self.dim >= self.chunk_rows
        {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        let n = self.chunk_rows;
        if self.dir.is_none() {
            let mut b = tempfile::Builder::new();
            let prefix = format!("{PREFIX}{}-", std::process::id());
            // Private: other users of a shared /tmp must not read the features.
            b.prefix(&prefix).permissions(std::fs::Permissions::from_mode(0o700));
            let dir = match &self.scratch {
                Some(s) => b.tempdir_in(s),
                None => b.tempdir(),
            };
            let dir = dir.context("cannot make a scratch folder for evaluation features")?;
            SPILLS.lock().unwrap_or_else(|e| e.into_inner()).push(dir.path().to_path_buf());
            self.dir = Some(dir);
        }
        let dir = self.dir.as_ref().expect("made above").path();
        let path = dir.join(format!("chunk-{:06}.f32", self.chunks.len()));
        let values = &self.tail[..n * self.dim];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sums = bytes.chunks(CHECK_BLOCK).map(fnv1a).collect();
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| {
                let mut w = BufWriter::new(f);
                w.write_all(&bytes)?;
                w.flush()
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            if e.kind() == std::io::ErrorKind::StorageFull {
                bail!(
                    "cannot write {}: the scratch disk is full after {} of features; free space there, point --scratch at a larger disk, or raise --memory-gb",
                    path.display(),
                    human_bytes(self.spilled_bytes)
                );
            }
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        self.spilled_bytes += bytes.len() as u64;
        self.tail.drain(..n * self.dim);
        self.chunks.push((path, n, sums));
        Ok(())
    }

    /// Calls `f(first_row, rows)` for every block of rows in order: each disk chunk, read one
    /// at a time, then the rows in memory.
    pub fn for_each_block(&self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let mut first = 0;
        let mut buf = Vec::new();
        for (path, rows, sums) in &self.chunks {
            read_f32(path, sums, 0, rows * self.dim, &mut buf)?;
            f(first, &buf)?;
            first += rows;
        }
        if !self.tail.is_empty() {
            f(first, &self.tail)?;
        }
        Ok(())
    }

    /// Rows `start..start + count` (on disk: read from their chunks).
    pub fn rows(&self, start: usize, count: usize) -> Result<Vec<f32>> {
        ensure!(start + count <= self.len(), "rows {start}..{} of {}", start + count, self.len());
        let mut out = Vec::with_capacity(count * self.dim);
        let (mut at, mut want) = (start, count);
        let mut first = 0;
        let mut buf = Vec::new();
        for (path, rows, sums) in &self.chunks {
            if want > 0 && at < first + rows {
                let skip = at - first;
                let take = (rows - skip).min(want);
                read_f32(path, sums, skip * self.dim, take * self.dim, &mut buf)?;
                out.extend_from_slice(&buf);
                at += take;
                want -= take;
            }
            first += rows;
        }
        if want > 0 {
            let skip = at - first;
            out.extend_from_slice(&self.tail[skip * self.dim..(skip + want) * self.dim]);
        }
        Ok(out)
    }
}

/// Bytes as B, KB, MB or GB (powers of 1024).
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Spilled chunks carry a checksum per block of this many bytes: a read checks the blocks it
/// covers, so a chunk changed on disk is found whatever part of it is read.
const CHECK_BLOCK: usize = 1 << 20;

/// FNV-1a: cheap, and enough to tell a changed block from the one written.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `count` values from `offset` (in values) of a spilled chunk, its blocks checked against
/// `sums`.
fn read_f32(
    path: &Path,
    sums: &[u64],
    offset: usize,
    count: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (start, end) = (offset * 4, (offset + count) * 4);
    let (b0, b1) = (start / CHECK_BLOCK, end.div_ceil(CHECK_BLOCK));
    f.seek(SeekFrom::Start((b0 * CHECK_BLOCK) as u64))?;
    let mut bytes = Vec::with_capacity((b1 - b0) * CHECK_BLOCK);
    f.take(((b1 - b0) * CHECK_BLOCK) as u64)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    for (i, block) in bytes.chunks(CHECK_BLOCK).enumerate() {
        if sums.get(b0 + i) != Some(&fnv1a(block)) {
            bail!("{} changed on disk since it was written (block {}): the evaluation's features are not what it wrote", path.display(), b0 + i);
        }
    }
    let local = &bytes[start - b0 * CHECK_BLOCK..];
    ensure!(local.len() >= end - start, "{} is short", path.display());
    out.clear();
    out.extend(
        local[..end - start].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(())
}

/// Feature maps of one shape under a budget: rows of patches in a [`RowStore`], a map at a
/// time or in runs.
pub struct MapStore {
    pub height: usize,
    pub width: usize,
    rows: RowStore,
}

impl MapStore {
    pub fn new(height: usize, width: usize, dim: usize, mem_bytes: u64, budget: &Budget) -> Self {
        Self { height, width, rows: RowStore::new(dim, mem_bytes, budget) }
    }

    pub fn push(&mut self, m: &crate::FeatureMap) -> Result<()> {
        ensure!(
            (m.height, m.width, m.dim) == (self.height, self.width, self.rows.dim()),
            "feature map {}x{}x{} in a store of {}x{}x{}",
            m.height,
            m.width,
            m.dim,
            self.height,
            self.width,
            self.rows.dim()
        );
        self.rows.extend(&m.data)
    }

    pub fn len(&self) -> usize {
        self.rows.len() / (self.height * self.width).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Result<crate::FeatureMap> {
        let hw = self.height * self.width;
        let data = self.rows.rows(i * hw, hw)?;
        Ok(crate::FeatureMap::new(self.height, self.width, self.rows.dim(), data))
    }

    pub fn spilled_bytes(&self) -> u64 {
        self.rows.spilled_bytes
    }

    /// The patches of every map as rows, in order.
    pub fn rows(&self) -> &RowStore {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_spill_past_the_budget_and_read_back_in_order() {
        let budget = Budget { bytes: 0, scratch: None };
        // 3-wide rows, 1000 rows of memory: chunks of ROW_ALIGN rows go to disk.
        let mut s = RowStore::new(3, 1000 * 12, &budget);
        let rows = 3 * ROW_ALIGN + 123;
        let all: Vec<f32> = (0..3 * rows).map(|v| v as f32).collect();
        for part in all.chunks(3 * 1000) {
            s.extend(part).unwrap();
        }
        assert_eq!(s.len(), rows);
        assert!(s.rows_in_memory() < ROW_ALIGN);
        assert_eq!(s.spilled_bytes, (3 * ROW_ALIGN * 12) as u64);
        let mut seen = Vec::new();
        s.for_each_block(|first, block| {
            assert_eq!(first * 3, seen.len());
            assert!(first % ROW_ALIGN == 0);
            seen.extend_from_slice(block);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, all);
        let r = ROW_ALIGN - 2;
        assert_eq!(s.rows(r, 9).unwrap(), all[3 * r..3 * (r + 9)]);
        assert_eq!(s.rows(rows - 3, 3).unwrap(), all[3 * (rows - 3)..]);
        assert!(s.rows(rows - 1, 2).is_err());
    }

    #[test]
    fn maps_round_trip_through_disk() {
        let budget = Budget { bytes: 0, scratch: None };
        let mut m = MapStore::new(2, 2, 3, 0, &budget);
        // 4 rows a map: 2,100 maps fill a chunk of ROW_ALIGN rows and some.
        let maps: Vec<crate::FeatureMap> = (0..2100)
            .map(|i| {
                crate::FeatureMap::new(2, 2, 3, (0..12).map(|v| (i * 12 + v) as f32).collect())
            })
            .collect();
        for x in &maps {
            m.push(x).unwrap();
        }
        assert!(m.spilled_bytes() > 0);
        for (i, x) in maps.iter().enumerate() {
            assert_eq!(&m.get(i).unwrap(), x);
        }
        assert!(m.push(&crate::FeatureMap::new(1, 2, 3, vec![0.0; 6])).is_err());
    }

    /// A spilled chunk changed on disk is found by the next read (whole-block or partial), and
    /// the scratch folder and its chunks are private to the user.
    #[test]
    fn spills_are_private_and_checked_when_read() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = tempfile::tempdir().unwrap();
        let budget = Budget { bytes: 0, scratch: Some(scratch.path().to_path_buf()) };
        let mut s = RowStore::new(4, 0, &budget);
        let all: Vec<f32> = (0..4 * 2 * ROW_ALIGN).map(|v| v as f32).collect();
        s.extend(&all).unwrap();
        assert_eq!(s.chunks.len(), 2);
        let dir = s.dir.as_ref().unwrap().path().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let chunk = s.chunks[1].0.clone();
        assert_eq!(std::fs::metadata(&chunk).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            s.rows(ROW_ALIGN + 5, 2).unwrap(),
            all[4 * (ROW_ALIGN + 5)..4 * (ROW_ALIGN + 7)]
        );
        // Same length, one value changed.
        let mut bytes = std::fs::read(&chunk).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&chunk, &bytes).unwrap();
        let e = s.rows(ROW_ALIGN + 5, 2).unwrap_err().to_string();
        assert!(e.contains("changed on disk"), "{e}");
        assert!(s
            .for_each_block(|_, _| Ok(()))
            .unwrap_err()
            .to_string()
            .contains("changed on disk"));
        // Removed with the store, and by remove_spills after a signal.
        drop(s);
        assert!(!dir.exists());
        let mut t = RowStore::new(4, 0, &budget);
        t.extend(&all).unwrap();
        let dir = t.dir.as_ref().unwrap().path().to_path_buf();
        remove_spills();
        assert!(!dir.exists());
    }

    /// The checks made before any work: a scratch that is not a writable folder, or one with
    /// less room than the projected spill, is refused with the numbers; folders of killed
    /// evaluations are swept, those of live ones kept.
    #[test]
    fn scratch_is_checked_before_any_work_and_stale_spills_are_swept() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let at = |p: &Path| Budget { bytes: 1 << 20, scratch: Some(p.to_path_buf()) };
        let e = at(&file).check("features", 0, 4).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
        let e = format!("{:#}", at(Path::new("/proc")).check("features", 0, 4).unwrap_err());
        assert!(e.contains("cannot write there"), "{e}");
        // More than any disk holds.
        let e = at(scratch.path()).check("the bank", 1 << 50, 384).unwrap_err().to_string();
        assert!(e.contains("the bank: about") && e.contains("free"), "{e}");
        assert!(at(scratch.path()).check("the bank", 1000, 384).is_ok());
        let dead = scratch.path().join(format!("{PREFIX}4194305-x"));
        let live = scratch.path().join(format!("{PREFIX}{}-y", std::process::id()));
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        let notes = sweep_stale(scratch.path());
        assert!(!dead.exists() && live.exists(), "{notes:?}");
        assert!(notes[0].contains("left by an evaluation that was killed"));
    }
}
