//! The reader thread: the epoch's order replayed and its row groups read from Parquet, then
//! each batch's frames decoded, flipped, cropped and resized in parallel.

use super::augment::Aug;
use super::order::{EpochOrder, Source};
use super::points::clip_points;
use super::{epoch_seed, Batch, LoaderConfig, LoaderState, AUG};
use anyhow::{anyhow, bail, ensure, Result};
use mosic::rng::SplitMix64;
use mosic::Clip;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

/// Clips of one batch in order, with the epoch index `first` of the first.
pub(super) struct RawBatch {
    pub(super) epoch: u64,
    pub(super) first: u64,
    pub(super) clips: Vec<Clip>,
    pub(super) units: Vec<usize>,
}

pub(super) struct Reader {
    pub(super) source: Arc<Source>,
    pub(super) cfg: LoaderConfig,
    pub(super) per_epoch: u64,
    /// Clips of the shuffle buffer, by (unit, row).
    pub(super) store: HashMap<(usize, usize), Clip>,
}

impl Reader {
    pub(super) fn run(mut self, start: LoaderState, tx: SyncSender<Result<RawBatch>>) {
        let mut state = start;
        loop {
            match self.epoch(&state, &tx) {
                Ok(true) => state = LoaderState { epoch: state.epoch + 1, position: 0 },
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    }

    /// Sends the batches of one epoch from `state.position` on; false once nobody listens.
    pub(super) fn epoch(
        &mut self,
        state: &LoaderState,
        tx: &SyncSender<Result<RawBatch>>,
    ) -> Result<bool> {
        let ended = || {
            anyhow!("loader: the shards ran out of clips before the manifest's count; were they changed?")
        };
        self.store.clear();
        let rows = self.source.draw(self.cfg.seed, state.epoch, self.cfg.clips_per_video as usize);
        let mut order = EpochOrder::new(
            self.cfg.seed,
            state.epoch,
            self.source.units.len(),
            self.cfg.shuffle_buffer,
        );
        // Resumed: replay the order without reading, then fetch the clips still held.
        for _ in 0..state.position {
            order.next(&rows, |_| Ok(()))?.ok_or_else(ended)?;
        }
        let held: HashSet<(usize, usize)> = order.held.iter().copied().collect();
        let mut units: Vec<usize> = held.iter().map(|&(u, _)| u).collect();
        units.sort_unstable();
        units.dedup();
        for u in units {
            self.load(u, &held)?;
        }

        let b = self.cfg.batch_size as u64;
        let mut first = state.position;
        while first + b <= self.per_epoch {
            let mut raw =
                RawBatch { epoch: state.epoch, first, clips: Vec::new(), units: Vec::new() };
            for _ in 0..b {
                let key = order
                    .next(&rows, |u| self.load(u, &rows[u].iter().map(|&r| (u, r)).collect()))?
                    .ok_or_else(ended)?;
                raw.clips.push(self.store.remove(&key).ok_or_else(ended)?);
                raw.units.push(key.0);
            }
            if tx.send(Ok(raw)).is_err() {
                return Ok(false);
            }
            first += b;
        }
        Ok(true)
    }

    /// Reads a unit and keeps the clips of `want`.
    pub(super) fn load(&mut self, unit: usize, want: &HashSet<(usize, usize)>) -> Result<()> {
        let clips = self.source.read(unit)?;
        let n = clips.len();
        let expected = self.source.unit_rows[unit];
        if n != expected {
            bail!(
                "{}: a row group now has {n} clips, earlier {expected}; was the file changed?",
                self.source.path_of(unit).display()
            );
        }
        self.store.extend(
            clips
                .into_iter()
                .enumerate()
                .filter(|(r, _)| want.contains(&(unit, *r)))
                .map(|(r, c)| ((unit, r), c)),
        );
        Ok(())
    }
}

/// Decodes and augments one batch; runs on the decode pool.
pub(super) fn build_batch(raw: &RawBatch, source: &Source, cfg: &LoaderConfig) -> Result<Batch> {
    let spec = &source.spec;
    // This loader's share of the global batch: its clips alone are decoded, each drawn from
    // its place in the global batch, so every share of a batch is what the whole batch holds.
    let (rank, ranks) = cfg.share;
    let per = raw.clips.len() / ranks.max(1);
    let mine = rank * per..(rank + 1) * per;
    let clips = &raw.clips[mine.clone()];
    let units = &raw.units[mine.clone()];
    let (b, t, s) = (clips.len(), spec.t(), cfg.input_size);
    let n = (cfg.grid * cfg.grid) as usize;
    let (w, h) = (spec.width, spec.height);
    let seed = epoch_seed(cfg.seed, raw.epoch, AUG);
    let augs: Vec<Aug> = mine
        .map(|i| Aug::draw(&mut SplitMix64::stream(seed, raw.first + i as u64), w, h, cfg))
        .collect();

    let mut images = vec![0u8; b * t * 3 * s * s];
    images.par_chunks_mut(3 * s * s).enumerate().try_for_each(|(i, out)| -> Result<()> {
        let (c, f) = (i / t, i % t);
        let clip = &clips[c];
        let file = || source.path_of(units[c]).display();
        let bytes = clip
            .frames
            .get(f)
            .ok_or_else(|| anyhow!("{}: clip {} has no frame {f}", file(), clip.id()))?;
        let img = mosic::imageio::decode_jpeg(bytes)
            .map_err(|e| anyhow!("{}: clip {} frame {f}: {e}", file(), clip.id()))?;
        ensure!(
            img.dimensions() == (w, h),
            "{}: clip {} frame {f} is {} x {}, the spec says {w} x {h}",
            file(),
            clip.id(),
            img.width(),
            img.height()
        );
        augs[c].warp(&img, s, out);
        Ok(())
    })?;

    let per_clip: Vec<_> = clips
        .par_iter()
        .zip(&augs)
        .map(|(clip, aug)| clip_points(clip, aug, s, cfg.grid))
        .collect();
    let mut tracks = Vec::with_capacity(b * t * n * 2);
    let mut visibility = Vec::with_capacity(b * t * n);
    let mut inside = Vec::with_capacity(b * t * n);
    for (tr, vis, ins) in per_clip {
        tracks.extend(tr.into_iter().flatten());
        visibility.extend(vis.into_iter().map(|v| v as u8 as f32));
        inside.extend(ins.into_iter().map(|v| v as u8 as f32));
    }
    Ok(Batch {
        clips: b,
        frames: t,
        points: n,
        size: s,
        images,
        tracks,
        visibility,
        inside,
        ids: clips.iter().map(Clip::id).collect(),
    })
}
