//! Exact minimum-cost assignment on rectangular matrices (the problem
//! `scipy.optimize.linear_sum_assignment` solves).
//!
//! Shortest augmenting paths with dual potentials (Jonker-Volgenant style): each row is added
//! in turn and joined to the matching along a Dijkstra-like shortest path on reduced costs,
//! which keeps every reduced cost non-negative. O(r^2 c) for r <= c rows and columns, so
//! O(n^3) for square matrices.

/// Minimum-cost assignment of a row-major `rows x cols` cost matrix.
///
/// Returns `min(rows, cols)` `(row, col)` pairs sorted by row, each row and column used at
/// most once, minimising the summed cost. Costs must be finite (forbidden pairs can be
/// expressed with a large finite cost). An empty matrix gives no pairs.
pub fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    assert_eq!(
        cost.len(),
        rows * cols,
        "cost has {} values, not {rows}x{cols}",
        cost.len()
    );
    assert!(cost.iter().all(|c| c.is_finite()), "costs must be finite");
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    if rows <= cols {
        let col_of_row = solve_wide(|r, c| cost[r * cols + c], rows, cols);
        col_of_row.into_iter().enumerate().collect()
    } else {
        // The solver needs at least as many columns as rows: solve the transpose, then
        // swap each pair back and order by row.
        let col_of_row = solve_wide(|r, c| cost[c * cols + r], cols, rows);
        let mut pairs: Vec<(usize, usize)> = col_of_row
            .into_iter()
            .enumerate()
            .map(|(c, r)| (r, c))
            .collect();
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

/// Core solver for `n <= m`: returns, for each of the `n` rows, its column.
///
/// Indices are 1-based inside, with column 0 a virtual column that holds the row being
/// inserted: that way the augmenting path always starts at column 0 and ends at a free
/// column, with no special cases.
fn solve_wide(a: impl Fn(usize, usize) -> f64, n: usize, m: usize) -> Vec<usize> {
    debug_assert!(n <= m);
    const FREE: usize = 0;
    // Dual potentials: reduced cost a(i, j) - u[i] - v[j] stays >= 0 for all pairs and is 0
    // on matched pairs, which is what certifies optimality at the end.
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    // row_of[j]: the row matched to column j (FREE if none); row_of[0] is the row being added.
    let mut row_of = vec![FREE; m + 1];
    // prev[j]: the column before j on the shortest path found so far.
    let mut prev = vec![0usize; m + 1];
    let mut dist = vec![f64::INFINITY; m + 1];
    let mut done = vec![false; m + 1];

    for i in 1..=n {
        row_of[0] = i;
        dist.fill(f64::INFINITY);
        done.fill(false);
        let mut j0 = 0;
        // Dijkstra over columns until a free column is reached.
        loop {
            done[j0] = true;
            let i0 = row_of[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if done[j] {
                    continue;
                }
                let reduced = a(i0 - 1, j - 1) - u[i0] - v[j];
                if reduced < dist[j] {
                    dist[j] = reduced;
                    prev[j] = j0;
                }
                // Strict `<` keeps the lowest column on ties, so results are reproducible.
                if dist[j] < delta {
                    delta = dist[j];
                    j1 = j;
                }
            }
            // Shift potentials so the tree's edges stay tight and the next column's
            // tentative distance drops to zero.
            for j in 0..=m {
                if done[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    dist[j] -= delta;
                }
            }
            j0 = j1;
            if row_of[j0] == FREE {
                break;
            }
        }
        // Augment: walk the path back to the virtual column, shifting each row one column on.
        loop {
            let j1 = prev[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }

    let mut col_of_row = vec![0usize; n];
    for j in 1..=m {
        if row_of[j] != FREE {
            col_of_row[row_of[j] - 1] = j - 1;
        }
    }
    col_of_row
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
            let (small, large) = if transpose {
                (cols, rows)
            } else {
                (rows, cols)
            };
            if i == small {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..large {
                if used[j] {
                    continue;
                }
                used[j] = true;
                let c = if transpose {
                    cost[j * cols + i]
                } else {
                    cost[i * cols + j]
                };
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
        assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "rows sorted and distinct"
        );
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
