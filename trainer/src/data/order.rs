//! The order of an epoch: which clips of every video it holds, the row groups in a seeded
//! shuffle, and the shuffle buffer the drawn clips pass through.

use super::epoch_seed;
use super::{DRAW, ORDER};
use anyhow::Result;
use mosic::rng::SplitMix64;
use mosic::{Clip, ShardReader, ShardSpec};
use std::path::{Path, PathBuf};

/// One row group of one shard: the unit of reading and of the first shuffle.
pub(super) struct Unit {
    pub(super) shard: usize,
    pub(super) group: usize,
}

pub(super) struct Source {
    pub(super) spec: ShardSpec,
    pub(super) paths: Vec<PathBuf>,
    pub(super) units: Vec<Unit>,
    /// Every video's clips as (unit, row), videos in key order.
    pub(super) videos: Vec<Vec<(usize, usize)>>,
    /// Rows of each unit, as read at open.
    pub(super) unit_rows: Vec<usize>,
}

impl Source {
    pub(super) fn read(&self, unit: usize) -> Result<Vec<Clip>> {
        let u = &self.units[unit];
        let clips = ShardReader::open(&self.paths[u.shard])?.clips_in(true, Some(vec![u.group]))?;
        Ok(clips.collect::<mosic::Result<Vec<_>>>()?)
    }

    pub(super) fn path_of(&self, unit: usize) -> &Path {
        &self.paths[self.units[unit].shard]
    }

    /// The rows of each unit that epoch `epoch` draws (`per_video` of every video, 0 = all).
    pub(super) fn draw(&self, seed: u64, epoch: u64, per_video: usize) -> Vec<Vec<usize>> {
        let s = epoch_seed(seed, epoch, DRAW);
        let mut rows = vec![Vec::new(); self.units.len()];
        for (v, clips) in self.videos.iter().enumerate() {
            let mut clips = clips.clone();
            if per_video > 0 && per_video < clips.len() {
                SplitMix64::stream(s, v as u64).shuffle(&mut clips);
                clips.truncate(per_video);
            }
            for (u, r) in clips {
                rows[u].push(r);
            }
        }
        rows.iter_mut().for_each(|r| r.sort_unstable());
        rows
    }
}

/// The clip order of one epoch as (unit, row) pairs: units in a shuffled order, their drawn
/// rows through the shuffle buffer.
pub(super) struct EpochOrder {
    pub(super) units: Vec<usize>,
    pub(super) next_unit: usize,
    pub(super) held: Vec<(usize, usize)>,
    pub(super) draw: SplitMix64,
    pub(super) cap: usize,
}

impl EpochOrder {
    pub(super) fn new(seed: u64, epoch: u64, units: usize, cap: usize) -> Self {
        let s = epoch_seed(seed, epoch, ORDER);
        let mut order: Vec<usize> = (0..units).collect();
        SplitMix64::stream(s, 0).shuffle(&mut order);
        Self {
            units: order,
            next_unit: 0,
            held: Vec::new(),
            draw: SplitMix64::stream(s, 1),
            cap: cap.max(1),
        }
    }

    /// The next clip; `enter(unit)` is called as a unit's drawn rows enter the buffer.
    pub(super) fn next(
        &mut self,
        rows: &[Vec<usize>],
        mut enter: impl FnMut(usize) -> Result<()>,
    ) -> Result<Option<(usize, usize)>> {
        while self.held.len() < self.cap && self.next_unit < self.units.len() {
            let u = self.units[self.next_unit];
            self.next_unit += 1;
            if !rows[u].is_empty() {
                enter(u)?;
                self.held.extend(rows[u].iter().map(|&r| (u, r)));
            }
        }
        if self.held.is_empty() {
            return Ok(None);
        }
        let i = self.draw.below(self.held.len() as u64) as usize;
        Ok(Some(self.held.swap_remove(i)))
    }
}
