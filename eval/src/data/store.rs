//! Rows of features under a memory budget: kept in memory up to the store's share of the
//! budget, then written to disk in chunks (raw little-endian f32 files in a scratch folder,
//! removed when the store is dropped) and read back a chunk at a time. Evaluation sets whose
//! features exceed the memory (VOC trainaug at 504 px: 21 GB; the paper's Hummingbird bank:
//! 15.7 GB at dimension 384) stream through this.

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
}

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
    /// Rows on disk, in order: (file, rows).
    chunks: Vec<(PathBuf, usize)>,
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
            b.prefix("mosic-eval-");
            let dir = match &self.scratch {
                Some(s) => b.tempdir_in(s),
                None => b.tempdir(),
            };
            self.dir = Some(dir.context("cannot make a scratch folder for evaluation features")?);
        }
        let dir = self.dir.as_ref().expect("made above").path();
        let path = dir.join(format!("chunk-{:06}.f32", self.chunks.len()));
        let mut w = BufWriter::new(
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
        );
        let values = &self.tail[..n * self.dim];
        for v in values {
            w.write_all(&v.to_le_bytes())?;
        }
        w.flush().with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
        self.spilled_bytes += (values.len() * 4) as u64;
        self.tail.drain(..n * self.dim);
        self.chunks.push((path, n));
        Ok(())
    }

    /// Calls `f(first_row, rows)` for every block of rows in order: each disk chunk, read one
    /// at a time, then the rows in memory.
    pub fn for_each_block(&self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let mut first = 0;
        let mut buf = Vec::new();
        for (path, rows) in &self.chunks {
            read_f32(path, 0, rows * self.dim, &mut buf)?;
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
        for (path, rows) in &self.chunks {
            if want > 0 && at < first + rows {
                let skip = at - first;
                let take = (rows - skip).min(want);
                read_f32(path, skip * self.dim, take * self.dim, &mut buf)?;
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

/// `count` values from `offset` (in values) of a raw f32 file.
fn read_f32(path: &Path, offset: usize, count: usize, out: &mut Vec<f32>) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    f.seek(SeekFrom::Start((offset * 4) as u64))?;
    let mut bytes = vec![0u8; count * 4];
    f.read_exact(&mut bytes).with_context(|| format!("{} is short", path.display()))?;
    out.clear();
    out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
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
}
