//! Exact inner-product search on the CPU: the `k` bank rows most similar to each query row
//! ([`search`], or [`TopK`] fed the bank chunk by chunk) and the k-means assignment step
//! ([`nearest_centroids`]), both on one kernel.
//!
//! The kernel multiplies packed panels of rows (queries, points) and of columns (bank rows,
//! centroids) in register tiles (12 x 32 with AVX-512, 6 x 16 with AVX2 and FMA, 4 x 8
//! otherwise) and never writes the product matrix out: each tile goes straight to an epilogue
//! that compares it with the current k-th best similarity of its queries (or the current
//! nearest centroid of its points), so almost every tile is dismissed with a few compares
//! while still in registers. Columns are packed tile by tile and shared by all threads; rows
//! go in blocks sized for L2, one rayon task each.
//!
//! Every similarity is one chain of fused multiply-adds over the dimensions in order, starting
//! from zero ([`dot`]): the same value whatever the tiling, the chunking, the thread count or
//! the instruction set. With ties broken by the lower index, results are exactly reproducible
//! and do not depend on how the work was split.

use crate::kernels::products::better;
use rayon::prelude::*;

/// One neighbour: similarity and bank index.
pub type Hit = (f32, usize);

/// Columns packed per tile: 12 MiB at dimension 384, read by every thread from L3.
const TILE_COLS: usize = 8192;

/// Size of a block of packed rows, kept in L2 while the column tile streams past it.
const BLOCK_BYTES: usize = 256 << 10;

/// The similarity the kernel computes for a pair of rows: fused multiply-adds in dimension
/// order from zero. Brute-force checks built on it get the kernel's values bit for bit.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (&x, &y)| x.mul_add(y, s))
}

/// Squared L2 norm, summed in 16 lanes then pairwise: vectorisable, and a fixed order.
pub fn sq_norm(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
    }
    chunks.remainder().iter().fold(lanes[0], |s, &v| s + v * v)
}

/// The running top-`k` of a set of queries over the bank rows fed so far.
///
/// Feed the bank in chunks of any size and in any order, each with the bank index of its
/// first row; the result is that of one search over all of them.
#[derive(Clone, Debug)]
pub struct TopK {
    dim: usize,
    k: usize,
    /// Per query, a binary heap of its hits with the worst at the root.
    heaps: Vec<Vec<Hit>>,
}

impl TopK {
    /// Empty lists for `queries` queries of dimension `dim`.
    pub fn new(queries: usize, dim: usize, k: usize) -> Self {
        assert!(dim > 0, "dim must be positive");
        Self { dim, k, heaps: vec![Vec::with_capacity(k); queries] }
    }

    pub fn queries(&self) -> usize {
        self.heaps.len()
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Offers bank rows `first..first + n` (`chunk`, `n x dim`, row-major) to every query
    /// (`queries`, row-major: the same rows at every call).
    pub fn feed(&mut self, queries: &[f32], chunk: &[f32], first: usize) {
        self.feed_on(Kernel::detect(), queries, chunk, first)
    }

    fn feed_on(&mut self, kernel: Kernel, queries: &[f32], chunk: &[f32], first: usize) {
        let dim = self.dim;
        let q = self.heaps.len();
        assert_eq!(queries.len(), q * dim, "queries are not {q} rows of {dim} values");
        assert_eq!(chunk.len() % dim, 0, "the chunk is not rows of {dim} values");
        if self.k == 0 {
            return;
        }
        let epi = Nearest { k: self.k, n: chunk.len() / dim, first };
        let heaps = &mut self.heaps;
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) => drive(&t, &epi, queries, chunk, dim, heaps),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(t) => drive(&t, &epi, queries, chunk, dim, heaps),
            Kernel::Portable => drive(&Portable, &epi, queries, chunk, dim, heaps),
        }
    }

    /// Folds in lists over the same queries from another part of the bank.
    pub fn merge(&mut self, other: TopK) {
        assert_eq!(self.heaps.len(), other.heaps.len(), "lists of different queries");
        for (a, b) in self.heaps.iter_mut().zip(other.heaps) {
            for h in b {
                offer(a, self.k, h);
            }
        }
    }

    /// Per query, its hits best first (ties by the lower index); fewer than `k` when fewer
    /// bank rows were fed.
    pub fn into_sorted(self) -> Vec<Vec<Hit>> {
        self.heaps
            .into_iter()
            .map(|mut h| {
                h.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                h
            })
            .collect()
    }
}

/// The `k` rows of `bank` most similar (inner product) to each row of `queries`, best first,
/// ties by the lower index; both row-major with `dim` columns.
pub fn search(queries: &[f32], bank: &[f32], dim: usize, k: usize) -> Vec<Vec<Hit>> {
    let mut top = TopK::new(queries.len() / dim, dim, k);
    top.feed(queries, bank, 0);
    top.into_sorted()
}

/// For every row of `data`: the nearest centroid in L2 and the squared distance to it, as
/// FAISS's flat L2 index computes them: the centroid with the smallest |c|^2 - 2 x.c (the
/// lower index on equal values; NaN never wins), and |x|^2 plus that value, clamped at 0.
pub fn nearest_centroids(data: &[f32], dim: usize, centroids: &[f32]) -> (Vec<u32>, Vec<f32>) {
    nearest_centroids_on(Kernel::detect(), data, dim, centroids)
}

fn nearest_centroids_on(
    kernel: Kernel,
    data: &[f32],
    dim: usize,
    centroids: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    let k = centroids.len() / dim.max(1);
    assert!(dim > 0 && k > 0 && centroids.len() == k * dim, "centroids are not rows of {dim}");
    assert!(u32::try_from(k).is_ok(), "{k} centroids");
    assert_eq!(data.len() % dim, 0, "data is not rows of {dim} values");
    // Padded to whole register tiles with +inf, which never wins.
    let mut cn: Vec<f32> = centroids.chunks_exact(dim).map(sq_norm).collect();
    cn.resize(k.next_multiple_of(32), f32::INFINITY);
    let epi = Assign { cn: &cn };
    let mut best = vec![(f32::INFINITY, 0u32); data.len() / dim];
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512(t) => drive(&t, &epi, data, centroids, dim, &mut best),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2(t) => drive(&t, &epi, data, centroids, dim, &mut best),
        Kernel::Portable => drive(&Portable, &epi, data, centroids, dim, &mut best),
    }
    data.par_chunks_exact(dim)
        .zip(best)
        .map(|(x, (v, label))| (label, (sq_norm(x) + v).max(0.0)))
        .unzip()
}

/// Offers a hit to a heap of at most `k` (worst at the root). NaN is never kept.
fn offer(heap: &mut Vec<Hit>, k: usize, h: Hit) {
    if heap.len() < k {
        if h.0.is_nan() {
            return;
        }
        // Sift up: a parent is never better than its children.
        let mut i = heap.len();
        heap.push(h);
        while i > 0 {
            let p = (i - 1) / 2;
            if !better(heap[p], h) {
                break;
            }
            heap[i] = heap[p];
            i = p;
        }
        heap[i] = h;
    } else if k > 0 && better(h, heap[0]) {
        // Replace the root and sift down, the worse child moving up.
        let n = heap.len();
        let mut i = 0;
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let c = if l + 1 < n && better(heap[l], heap[l + 1]) { l + 1 } else { l };
            if !better(h, heap[c]) {
                break;
            }
            heap[i] = heap[c];
            i = c;
        }
        heap[i] = h;
    }
}

/// The similarity a candidate must reach to be looked at: the worst kept one once full.
fn threshold(heap: &[Hit], k: usize) -> f32 {
    if heap.len() < k {
        f32::NEG_INFINITY
    } else {
        heap[0].0
    }
}

/// What becomes of each tile of products: a state per row, touched only by the task that owns
/// the row's block.
trait Epilogue<const MR: usize, const NR: usize>: Sync {
    type State: Send;
    /// A row's state before any column.
    fn start(&self) -> Self::State;
    /// Folds in the state of the same row over other columns.
    fn merge(&self, into: &mut Self::State, from: Self::State);
    /// Rows `r0..r0 + MR` of `rows` (those that exist) against columns `c0..c0 + NR`.
    fn tile(&self, rows: &mut [Self::State], r0: usize, c0: usize, tile: &[[f32; NR]; MR]);
}

/// Top-`k` over a chunk of `n` bank rows, the first of them bank row `first`.
struct Nearest {
    k: usize,
    n: usize,
    first: usize,
}

impl<const MR: usize, const NR: usize> Epilogue<MR, NR> for Nearest {
    type State = Vec<Hit>;

    fn start(&self) -> Vec<Hit> {
        Vec::with_capacity(self.k)
    }

    fn merge(&self, into: &mut Vec<Hit>, from: Vec<Hit>) {
        for h in from {
            offer(into, self.k, h);
        }
    }

    #[inline(always)]
    fn tile(&self, rows: &mut [Vec<Hit>], r0: usize, c0: usize, tile: &[[f32; NR]; MR]) {
        let valid = NR.min(self.n - c0);
        for (heap, row) in rows.iter_mut().skip(r0).zip(tile) {
            let mut thr = threshold(heap, self.k);
            // Once the lists are full, nearly every tile stops here.
            let mut any = false;
            for &s in row {
                any |= s >= thr;
            }
            if !any {
                continue;
            }
            for (c, &s) in row[..valid].iter().enumerate() {
                if s >= thr {
                    offer(heap, self.k, (s, self.first + c0 + c));
                    thr = threshold(heap, self.k);
                }
            }
        }
    }
}

/// Nearest centroid: the running smallest (|c|^2 - 2 x.c, centroid); `cn` holds |c|^2 padded
/// with +inf to whole tiles.
struct Assign<'a> {
    cn: &'a [f32],
}

impl<const MR: usize, const NR: usize> Epilogue<MR, NR> for Assign<'_> {
    type State = (f32, u32);

    /// As the direct loop from (+inf, 0) with a strict `<`: label 0 if nothing is below +inf.
    fn start(&self) -> (f32, u32) {
        (f32::INFINITY, 0)
    }

    fn merge(&self, into: &mut (f32, u32), from: (f32, u32)) {
        if from.0 < into.0 || (from.0 == into.0 && from.1 < into.1) {
            *into = from;
        }
    }

    #[inline(always)]
    fn tile(&self, rows: &mut [(f32, u32)], r0: usize, c0: usize, tile: &[[f32; NR]; MR]) {
        let cn = &self.cn[c0..c0 + NR];
        for (best, row) in rows.iter_mut().skip(r0).zip(tile) {
            let mut v = [0.0f32; NR];
            for ((v, &n), &p) in v.iter_mut().zip(cn).zip(row) {
                *v = n - 2.0 * p;
            }
            let mut m = f32::INFINITY;
            for &x in &v {
                m = if x < m { x } else { m };
            }
            if m > best.0 || m.is_nan() {
                continue;
            }
            // The first column at the minimum: the lower index on equal values.
            if let Some(c) = v.iter().position(|&x| x == m) {
                let j = (c0 + c) as u32;
                if m < best.0 || j < best.1 {
                    *best = (m, j);
                }
            }
        }
    }
}

/// Runs the kernel over `rows` x `cols` (both row-major, `dim` values a row), each tile into
/// `epi` with the states of its rows (`state`, one per row).
///
/// Columns are packed a tile at a time and shared by all threads; rows go in blocks, one task
/// each. With fewer blocks than threads the columns are split instead, each part into fresh
/// states that are merged afterwards.
fn drive<const MR: usize, const NR: usize, K, E>(
    kern: &K,
    epi: &E,
    rows: &[f32],
    cols: &[f32],
    dim: usize,
    state: &mut [E::State],
) where
    K: Sweep<MR, NR>,
    E: Epilogue<MR, NR>,
{
    let (m, n) = (rows.len() / dim, cols.len() / dim);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let block = block_rows(MR, m, dim, threads);
    let blocks = m.div_ceil(block);
    // Rows are packed once when more than one column tile will use them, else per block.
    let mut packed = Vec::new();
    if n > TILE_COLS {
        pack_par::<MR>(rows, dim, &mut packed);
    }
    let packed = &packed;
    // On this thread: all blocks against the tiles of `cols`, the first column being `c1`.
    let serial = |state: &mut [E::State], cols: &[f32], c1: usize| {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (t, tile) in cols.chunks(TILE_COLS * dim).enumerate() {
            pack::<NR>(tile, dim, &mut b);
            for (i, st) in state.chunks_mut(block).enumerate() {
                let a = block_of::<MR>(rows, packed, dim, i * block, st.len(), &mut a);
                kern.sweep(epi, st, a, &b, dim, c1 + t * TILE_COLS);
            }
        }
    };
    if threads == 1 || (blocks == 1 && n < 2 * NR * threads) {
        serial(state, cols, 0);
    } else if blocks < threads && n >= 2 * NR * threads {
        let part = n.div_ceil(threads).next_multiple_of(NR);
        let parts: Vec<Vec<E::State>> = cols
            .par_chunks(part * dim)
            .enumerate()
            .map(|(p, cols)| {
                let mut st: Vec<E::State> = (0..m).map(|_| epi.start()).collect();
                serial(&mut st, cols, p * part);
                st
            })
            .collect();
        for p in parts {
            state.iter_mut().zip(p).for_each(|(s, x)| epi.merge(s, x));
        }
    } else {
        let mut b = Vec::new();
        for (t, tile) in cols.chunks(TILE_COLS * dim).enumerate() {
            pack_par::<NR>(tile, dim, &mut b);
            let b = &b;
            state.par_chunks_mut(block).enumerate().for_each_init(Vec::new, |a, (i, st)| {
                let a = block_of::<MR>(rows, packed, dim, i * block, st.len(), a);
                kern.sweep(epi, st, a, b, dim, t * TILE_COLS);
            });
        }
    }
}

/// Rows `r..r + len` packed: a slice of `packed` if all rows were packed, else packed into
/// `buf`.
fn block_of<'a, const MR: usize>(
    rows: &[f32],
    packed: &'a [f32],
    dim: usize,
    r: usize,
    len: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    if packed.is_empty() {
        pack::<MR>(&rows[r * dim..(r + len) * dim], dim, buf);
        buf
    } else {
        &packed[r * dim..(r + len).next_multiple_of(MR) * dim]
    }
}

/// Rows per block: a packed block of about [`BLOCK_BYTES`], fewer when that would leave
/// threads idle (about four blocks a thread keeps them evenly loaded).
fn block_rows(mr: usize, m: usize, dim: usize, threads: usize) -> usize {
    let cap = (BLOCK_BYTES / (dim * 4) / mr).max(1) * mr;
    let even = m.div_ceil(4 * threads).next_multiple_of(mr);
    cap.min(even).max(mr)
}

/// Packs rows (`dim` values each) into panels of `W` rows stored dimension-major
/// (`panel[d * W + w]`), zero rows filling the last panel.
fn pack<const W: usize>(src: &[f32], dim: usize, out: &mut Vec<f32>) {
    // Every value is written below: what a previous use left needs no clearing.
    out.resize((src.len() / dim).div_ceil(W) * W * dim, 0.0);
    for (o, s) in out.chunks_exact_mut(W * dim).zip(src.chunks(W * dim)) {
        pack_panel::<W>(s, dim, o);
    }
}

/// [`pack`] with the panels spread over the threads.
fn pack_par<const W: usize>(src: &[f32], dim: usize, out: &mut Vec<f32>) {
    out.resize((src.len() / dim).div_ceil(W) * W * dim, 0.0);
    out.par_chunks_exact_mut(W * dim)
        .zip(src.par_chunks(W * dim))
        .for_each(|(o, s)| pack_panel::<W>(s, dim, o));
}

fn pack_panel<const W: usize>(src: &[f32], dim: usize, out: &mut [f32]) {
    let rows = src.len() / dim;
    if rows == W {
        // Written in order, the W rows read in step.
        let r: [&[f32]; W] = std::array::from_fn(|w| &src[w * dim..(w + 1) * dim]);
        for (d, o) in out.chunks_exact_mut(W).enumerate() {
            for (o, r) in o.iter_mut().zip(&r) {
                *o = r[d];
            }
        }
    } else {
        for (d, o) in out.chunks_exact_mut(W).enumerate() {
            for (w, o) in o.iter_mut().enumerate() {
                *o = if w < rows { src[w * dim + d] } else { 0.0 };
            }
        }
    }
}

/// One MR x NR tile of products of a packed row panel `a` and a packed column panel `b`.
#[inline(always)]
fn micro<const MR: usize, const NR: usize>(a: &[f32], b: &[f32], dim: usize) -> [[f32; NR]; MR] {
    assert!(a.len() >= MR * dim && b.len() >= NR * dim);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[0.0f32; NR]; MR];
    for d in 0..dim {
        // SAFETY: d < dim, so both reads lie within the lengths asserted above (and f32
        // arrays need no more alignment than f32).
        let (av, bv) = unsafe {
            (&*(a.add(d * MR) as *const [f32; MR]), &*(b.add(d * NR) as *const [f32; NR]))
        };
        for (row, &x) in acc.iter_mut().zip(av) {
            for (s, &y) in row.iter_mut().zip(bv) {
                *s = x.mul_add(y, *s);
            }
        }
    }
    acc
}

/// All tiles of packed rows `a` x packed columns `b` (the first of them column `c`) into
/// `epi`, a column panel at a time so that it stays in L1 for every row panel.
#[inline(always)]
fn sweep<const MR: usize, const NR: usize, E: Epilogue<MR, NR>>(
    epi: &E,
    st: &mut [E::State],
    a: &[f32],
    b: &[f32],
    dim: usize,
    c: usize,
) {
    for (j, bp) in b.chunks_exact(NR * dim).enumerate() {
        for (i, ap) in a.chunks_exact(MR * dim).enumerate() {
            epi.tile(st, i * MR, c + j * NR, &micro::<MR, NR>(ap, bp, dim));
        }
    }
}

/// [`sweep`] compiled for one instruction set (with the epilogue inlined into it).
trait Sweep<const MR: usize, const NR: usize>: Sync {
    fn sweep<E: Epilogue<MR, NR>>(
        &self,
        epi: &E,
        st: &mut [E::State],
        a: &[f32],
        b: &[f32],
        dim: usize,
        c: usize,
    );
}

/// The kernels; [`Kernel::detect`] picks the widest this CPU runs. A wide kernel carries the
/// token its detection made: there is no other way to hold one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512(isa::Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx2(isa::Avx2),
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        *Self::available().last().expect("the portable kernel")
    }

    /// The kernels this CPU runs, narrowest first.
    fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            all.extend(isa::Avx2::detect().map(Kernel::Avx2));
            all.extend(isa::Avx512::detect().map(Kernel::Avx512));
        }
        all
    }
}

/// The wide kernels. Their tokens have a private field, so outside this module the only way
/// to get one is its `detect`, which checks the CPU: the `unsafe` calls of their sweeps hold
/// by construction. The two impls differ only in tile and `target_feature`: each needs its own
/// function carrying the attribute for the compiler to vectorise the one generic `sweep` at
/// that width.
#[cfg(target_arch = "x86_64")]
mod isa {
    use super::{sweep, Epilogue, Sweep};

    /// The CPU has AVX-512F (which implies FMA).
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) struct Avx512(());

    impl Avx512 {
        pub(super) fn detect() -> Option<Self> {
            std::arch::is_x86_feature_detected!("avx512f").then_some(Self(()))
        }
    }

    impl Sweep<12, 32> for Avx512 {
        fn sweep<E: Epilogue<12, 32>>(
            &self,
            epi: &E,
            st: &mut [E::State],
            a: &[f32],
            b: &[f32],
            dim: usize,
            c: usize,
        ) {
            #[target_feature(enable = "avx512f")]
            fn wide<E: Epilogue<12, 32>>(
                epi: &E,
                st: &mut [E::State],
                a: &[f32],
                b: &[f32],
                dim: usize,
                c: usize,
            ) {
                sweep(epi, st, a, b, dim, c)
            }
            // SAFETY: `self` exists only where `detect` found AVX-512F on this CPU.
            unsafe { wide(epi, st, a, b, dim, c) }
        }
    }

    /// The CPU has AVX2 and FMA.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) struct Avx2(());

    impl Avx2 {
        pub(super) fn detect() -> Option<Self> {
            (std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"))
            .then_some(Self(()))
        }
    }

    impl Sweep<6, 16> for Avx2 {
        fn sweep<E: Epilogue<6, 16>>(
            &self,
            epi: &E,
            st: &mut [E::State],
            a: &[f32],
            b: &[f32],
            dim: usize,
            c: usize,
        ) {
            #[target_feature(enable = "avx2,fma")]
            fn mid<E: Epilogue<6, 16>>(
                epi: &E,
                st: &mut [E::State],
                a: &[f32],
                b: &[f32],
                dim: usize,
                c: usize,
            ) {
                sweep(epi, st, a, b, dim, c)
            }
            // SAFETY: `self` exists only where `detect` found AVX2 and FMA on this CPU.
            unsafe { mid(epi, st, a, b, dim, c) }
        }
    }
}

/// Any CPU. On x86 without FMA `mul_add` is a library call: slow, but the same values.
struct Portable;

impl Sweep<4, 8> for Portable {
    fn sweep<E: Epilogue<4, 8>>(
        &self,
        epi: &E,
        st: &mut [E::State],
        a: &[f32],
        b: &[f32],
        dim: usize,
        c: usize,
    ) {
        sweep(epi, st, a, b, dim, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::kmeans::{faiss_kmeans, FaissParams};
    use mosic::rng::SplitMix64;

    fn random(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n * dim).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
    }

    /// All bank rows sorted best first, ties by index, cut to `k`.
    fn brute(queries: &[f32], bank: &[f32], dim: usize, k: usize) -> Vec<Vec<Hit>> {
        queries
            .chunks(dim)
            .map(|q| {
                let mut all: Vec<Hit> =
                    bank.chunks(dim).enumerate().map(|(j, b)| (dot(q, b), j)).collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                all.truncate(k);
                all
            })
            .collect()
    }

    fn search_on(
        kernel: Kernel,
        queries: &[f32],
        bank: &[f32],
        dim: usize,
        k: usize,
    ) -> Vec<Vec<Hit>> {
        let mut top = TopK::new(queries.len() / dim, dim, k);
        top.feed_on(kernel, queries, bank, 0);
        top.into_sorted()
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    #[test]
    fn every_kernel_equals_brute_force() {
        // Sizes around the tile edges, k beyond the bank, a single query, dimension 1.
        let cases = [
            (1, 1, 1, 1),
            (5, 3, 7, 10),
            (13, 33, 5, 4),
            (40, 300, 37, 30),
            (1, 2000, 16, 7),
            (3, 500, 64, 0),
            (25, 70, 1, 3),
        ];
        for kernel in Kernel::available() {
            for (i, &(m, n, dim, k)) in cases.iter().enumerate() {
                let q = random(m, dim, 2 * i as u64);
                let b = random(n, dim, 2 * i as u64 + 1);
                let want = brute(&q, &b, dim, k);
                for threads in [1, 3] {
                    let got = in_pool(threads, || search_on(kernel, &q, &b, dim, k));
                    assert_eq!(got, want, "{kernel:?} {m}x{n}x{dim} k={k}, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        // A few directions repeated: most similarities tie exactly.
        let dim = 4;
        let dirs = [[1.0f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]];
        let bank: Vec<f32> = (0..200).flat_map(|i| dirs[(i * 7) % 3]).collect();
        let queries: Vec<f32> = dirs.iter().flatten().copied().collect();
        for kernel in Kernel::available() {
            let got = search_on(kernel, &queries, &bank, dim, 9);
            assert_eq!(got, brute(&queries, &bank, dim, 9), "{kernel:?}");
            // Query 0 matches direction 0 (rows i with 7i = 0 mod 3) first, lowest rows first.
            let rows: Vec<usize> = got[0].iter().map(|h| h.1).collect();
            assert_eq!(rows, vec![0, 3, 6, 9, 12, 15, 18, 21, 24]);
        }
    }

    #[test]
    fn k_beyond_the_bank_keeps_every_row() {
        let (q, b) = (random(4, 8, 1), random(6, 8, 2));
        let got = search(&q, &b, 8, 50);
        assert!(got.iter().all(|l| l.len() == 6));
        assert_eq!(got, brute(&q, &b, 8, 50));
        // NaN similarities are never returned.
        let mut b2 = b.clone();
        b2[8] = f32::NAN;
        let got = search(&q, &b2, 8, 50);
        assert!(got.iter().all(|l| l.len() == 5 && l.iter().all(|h| h.1 != 1)));
    }

    #[test]
    fn chunks_in_any_order_give_the_whole_search() {
        let (m, n, dim, k) = (30, 20_000, 24, 12);
        let q = random(m, dim, 5);
        let b = random(n, dim, 6);
        let whole = search(&q, &b, dim, k);
        assert_eq!(whole, brute(&q, &b, dim, k));
        // Uneven chunks, fed last first; one of them alone also spans several column tiles.
        let cuts = [0, 1, 13, 4000, 4001, 18_500, n];
        let mut top = TopK::new(m, dim, k);
        for w in cuts.windows(2).rev() {
            top.feed(&q, &b[w[0] * dim..w[1] * dim], w[0]);
        }
        assert_eq!(top.into_sorted(), whole);
        // Two halves searched apart and merged.
        let mut a = TopK::new(m, dim, k);
        a.feed(&q, &b[..7000 * dim], 0);
        let mut c = TopK::new(m, dim, k);
        c.feed(&q, &b[7000 * dim..], 7000);
        a.merge(c);
        assert_eq!(a.into_sorted(), whole);
        // Threads do not change anything, nor does the bank tiling with few queries.
        for threads in [1, 2, 5] {
            assert_eq!(in_pool(threads, || search(&q, &b, dim, k)), whole, "{threads}");
            assert_eq!(in_pool(threads, || search(&q[..dim], &b, dim, k))[0], whole[0]);
        }
    }

    /// The assignment as a direct loop over the kernel's values.
    fn brute_assign(data: &[f32], dim: usize, cents: &[f32]) -> (Vec<u32>, Vec<f32>) {
        data.chunks(dim)
            .map(|x| {
                let mut best = (0u32, f32::INFINITY);
                for (j, c) in cents.chunks(dim).enumerate() {
                    let v = sq_norm(c) - 2.0 * dot(x, c);
                    if v < best.1 {
                        best = (j as u32, v);
                    }
                }
                (best.0, (sq_norm(x) + best.1).max(0.0))
            })
            .unzip()
    }

    #[test]
    fn nearest_centroids_equals_the_direct_loop() {
        for kernel in Kernel::available() {
            for (n, dim, k) in [(1, 3, 1), (100, 7, 9), (3000, 33, 70), (500, 16, 300)] {
                let data = random(n, dim, n as u64);
                let cents = random(k, dim, k as u64);
                let want = brute_assign(&data, dim, &cents);
                for threads in [1, 3] {
                    let got = in_pool(threads, || nearest_centroids_on(kernel, &data, dim, &cents));
                    assert_eq!(got, want, "{kernel:?} {n}x{dim} k={k}, {threads} threads");
                }
            }
            // Duplicated centroids: the lower index wins.
            let data = random(50, 5, 1);
            let mut cents = random(4, 5, 2);
            cents.extend_from_within(..);
            let (l, _) = nearest_centroids_on(kernel, &data, 5, &cents);
            assert!(l.iter().all(|&l| l < 4));
            assert_eq!(l, brute_assign(&data, 5, &cents).0);
        }
    }

    fn blobs(n: usize, dim: usize, centres: usize, spread: f64, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let c: Vec<f32> = (0..centres * dim).map(|_| rng.uniform(-4.0, 4.0) as f32).collect();
        (0..n)
            .flat_map(|i| {
                let c = &c[(i % centres) * dim..(i % centres + 1) * dim];
                c.iter().map(|&v| v + rng.uniform(-spread, spread) as f32).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn faiss_kmeans_objective_is_unchanged() {
        // Objectives of these runs with the earlier GEMM assignment (matrixmultiply).
        let rel = |a: f64, b: f64| ((a - b) / b).abs();
        let a = blobs(384, 8, 6, 1.5, 5);
        for (k, before) in [(4, 5049.489802360535), (8, 2172.6703634262085)] {
            let r = faiss_kmeans(&a, 8, k, &FaissParams::new(100, 5, 3));
            assert!(rel(r.objective, before) < 1e-4, "K={k}: {} vs {before}", r.objective);
        }
        let b = blobs(6000, 64, 40, 3.0, 6);
        let p = FaissParams::new(20, 2, 9);
        let r = faiss_kmeans(&b, 64, 32, &p);
        assert!(rel(r.objective, 1547804.5491638184) < 1e-4, "{}", r.objective);
        // And it does not depend on the thread count.
        assert_eq!(in_pool(1, || faiss_kmeans(&b, 64, 32, &p)), r);
        assert_eq!(in_pool(3, || faiss_kmeans(&b, 64, 32, &p)), r);
    }
}
