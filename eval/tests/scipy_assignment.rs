//! `linear_sum_assignment` against scipy on larger matrices
//! (tests/fixtures/eval/assignment.json, made by tools/goldens/make_eval_golden.py).

use mosic_eval::kernels::hungarian::{assignment_cost, linear_sum_assignment};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    rows: usize,
    cols: usize,
    kind: String,
    cost: Vec<f64>,
    pairs: Vec<(usize, usize)>,
    optimal_cost: f64,
    unique: bool,
}

#[test]
fn matches_scipy() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/eval/assignment.json");
    let text = std::fs::read_to_string(path).expect("run tools/goldens/make_eval_golden.py");
    let golden: Golden = serde_json::from_str(&text).unwrap();
    assert!(golden.cases.len() >= 4);
    let mut compared_pairs = 0;
    for case in &golden.cases {
        let name = format!("{}x{} {}", case.rows, case.cols, case.kind);
        let pairs = linear_sum_assignment(&case.cost, case.rows, case.cols);
        assert_eq!(pairs.len(), case.rows.min(case.cols), "{name}");
        let mut used = vec![false; case.cols];
        for &(_, c) in &pairs {
            assert!(!std::mem::replace(&mut used[c], true), "{name}: column {c} twice");
        }
        let cost = assignment_cost(&case.cost, case.cols, &pairs);
        assert!(
            (cost - case.optimal_cost).abs() <= 1e-9,
            "{name}: cost {cost} vs scipy {}",
            case.optimal_cost
        );
        // With ties several assignments are optimal and the two solvers may pick different
        // ones; only a unique optimum must agree pair by pair.
        if case.unique {
            assert_eq!(pairs, case.pairs, "{name}");
            compared_pairs += 1;
        }
    }
    assert!(compared_pairs >= 4, "too few unique cases to compare assignments");
}
