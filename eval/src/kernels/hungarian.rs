//! Exact minimum-cost assignment on rectangular matrices, the algorithm of
//! `scipy.optimize.linear_sum_assignment` (shortest augmenting paths with dual potentials,
//! Crouse 2016), step for step: the reference protocols match clusters to classes with it,
//! and where several assignments are optimal (absent classes, empty clusters) the one it
//! picks changes the score, so ties are broken exactly as scipy breaks them.
//! O(r^2 c) for r <= c rows and columns.

/// Minimum-cost assignment of a row-major `rows x cols` cost matrix.
///
/// Returns `min(rows, cols)` `(row, col)` pairs sorted by row, each row and column used at
/// most once, minimising the summed cost; the same pairs as scipy. Costs must be finite.
/// An empty matrix gives no pairs.
pub fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    assert_eq!(cost.len(), rows * cols, "cost has {} values, not {rows}x{cols}", cost.len());
    assert!(cost.iter().all(|c| c.is_finite()), "costs must be finite");
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    if rows <= cols {
        let col4row = solve(cost, rows, cols);
        col4row.into_iter().enumerate().collect()
    } else {
        // scipy transposes a tall matrix, solves it, then orders the pairs by row.
        let mut t = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = cost[i * cols + j];
            }
        }
        let col4row = solve(&t, cols, rows);
        let mut pairs: Vec<(usize, usize)> =
            col4row.into_iter().enumerate().map(|(c, r)| (r, c)).collect();
        pairs.sort_unstable();
        pairs
    }
}

/// Maximum-score assignment (e.g. maximum pixel overlap): the minimum-cost assignment of
/// the negated scores, with the same output as [`linear_sum_assignment`].
pub fn maximize(score: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let negated: Vec<f64> = score.iter().map(|s| -s).collect();
    linear_sum_assignment(&negated, rows, cols)
}

/// Sum of `matrix[row, col]` over the pairs of an assignment.
pub fn assignment_cost(matrix: &[f64], cols: usize, pairs: &[(usize, usize)]) -> f64 {
    pairs.iter().map(|&(r, c)| matrix[r * cols + c]).sum()
}

const NONE: usize = usize::MAX;

/// scipy's `solve` for `nr <= nc`: the column of each row.
fn solve(cost: &[f64], nr: usize, nc: usize) -> Vec<usize> {
    debug_assert!(nr <= nc);
    let mut u = vec![0.0f64; nr];
    let mut v = vec![0.0f64; nc];
    let mut shortest = vec![f64::INFINITY; nc];
    let mut path = vec![NONE; nc];
    let mut col4row = vec![NONE; nr];
    let mut row4col = vec![NONE; nc];
    let mut sr = vec![false; nr];
    let mut sc = vec![false; nc];
    let mut remaining = vec![0usize; nc];

    for cur in 0..nr {
        // Shortest augmenting path from row `cur` (scipy's `augmenting_path`).
        let mut min_val = 0.0f64;
        let mut num_remaining = nc;
        for (it, r) in remaining.iter_mut().enumerate() {
            // Reverse order: a constant matrix gives the identity, as in scipy.
            *r = nc - it - 1;
        }
        sr.fill(false);
        sc.fill(false);
        shortest.fill(f64::INFINITY);
        let mut i = cur;
        let sink = loop {
            let mut index = NONE;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + cost[i * nc + j] - u[i] - v[j];
                if r < shortest[j] {
                    path[j] = i;
                    shortest[j] = r;
                }
                // Among equally short paths prefer one that ends at a free column.
                if shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == NONE) {
                    lowest = shortest[j];
                    index = it;
                }
            }
            min_val = lowest;
            let j = remaining[index];
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };
        // Dual update.
        u[cur] += min_val;
        for r in 0..nr {
            if sr[r] && r != cur {
                u[r] += min_val - shortest[col4row[r]];
            }
        }
        for c in 0..nc {
            if sc[c] {
                v[c] -= min_val - shortest[c];
            }
        }
        // Augment.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == cur {
                break;
            }
        }
    }
    col4row
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::rng::SplitMix64;

    /// Minimum over all injective maps of the smaller side into the larger one.
    fn brute_force(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn go(
            cost: &[f64],
            rows: usize,
            cols: usize,
            transpose: bool,
            i: usize,
            used: &mut Vec<bool>,
        ) -> f64 {
            let (small, large) = if transpose { (cols, rows) } else { (rows, cols) };
            if i == small {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..large {
                if used[j] {
                    continue;
                }
                used[j] = true;
                let c = if transpose { cost[j * cols + i] } else { cost[i * cols + j] };
                best = best.min(c + go(cost, rows, cols, transpose, i + 1, used));
                used[j] = false;
            }
            best
        }
        let transpose = rows > cols;
        let large = rows.max(cols);
        go(cost, rows, cols, transpose, 0, &mut vec![false; large])
    }

    fn check_valid(pairs: &[(usize, usize)], rows: usize, cols: usize) {
        assert_eq!(pairs.len(), rows.min(cols));
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "rows sorted and distinct");
        let mut seen = vec![false; cols];
        for &(r, c) in pairs {
            assert!(r < rows && c < cols);
            assert!(!seen[c], "column {c} used twice");
            seen[c] = true;
        }
    }

    #[test]
    fn matches_brute_force_on_small_matrices() {
        let mut rng = SplitMix64::new(42);
        for trial in 0..400 {
            let rows = 1 + rng.below(6) as usize;
            let cols = 1 + rng.below(8) as usize;
            // Alternate continuous costs with small integers (many ties) and negatives.
            let cost: Vec<f64> = (0..rows * cols)
                .map(|_| match trial % 3 {
                    0 => rng.uniform(0.0, 1.0),
                    1 => rng.below(4) as f64,
                    _ => rng.uniform(-5.0, 5.0),
                })
                .collect();
            let pairs = linear_sum_assignment(&cost, rows, cols);
            check_valid(&pairs, rows, cols);
            let got = assignment_cost(&cost, cols, &pairs);
            let want = brute_force(&cost, rows, cols);
            assert!((got - want).abs() < 1e-9, "{rows}x{cols}: {got} vs {want}");
        }
    }

    #[test]
    fn maximize_negates() {
        // Overlap-like scores: the best matching is the anti-diagonal.
        let score = [1.0, 2.0, 9.0, 0.0, 8.0, 1.0, 7.0, 0.0, 0.0];
        assert_eq!(maximize(&score, 3, 3), vec![(0, 2), (1, 1), (2, 0)]);
        let wide = [5.0, 1.0, 0.0, 6.0, 0.0, 2.0, 0.0, 1.0];
        assert_eq!(maximize(&wide, 2, 4), vec![(0, 3), (1, 1)]);
    }

    #[test]
    fn empty_and_degenerate_shapes() {
        assert!(linear_sum_assignment(&[], 0, 5).is_empty());
        assert!(linear_sum_assignment(&[], 3, 0).is_empty());
        assert_eq!(linear_sum_assignment(&[3.0, 1.0, 2.0], 1, 3), vec![(0, 1)]);
        assert_eq!(linear_sum_assignment(&[3.0, 1.0, 2.0], 3, 1), vec![(1, 0)]);
    }
}
