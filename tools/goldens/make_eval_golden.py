#!/usr/bin/env python3
"""Builds tests/fixtures/eval/assignment.json: scipy references for eval/src/hungarian.rs.

Seeded random cost matrices (square, wide and tall) are solved with
scipy.optimize.linear_sum_assignment. For each one the file holds the matrix (row-major),
scipy's pairs, the optimal cost and whether the optimal assignment is unique.

Most matrices hold integers, so every value and every sum is exact in float64 and the
optimal cost can be compared at 1e-9 without any float-parsing question. Integers from
a large range make ties unlikely (assignment comparable); integers from 0..9 make them
common (only the cost is comparable). One float matrix (normal values, written with
repr so they round-trip) covers negative, non-integer costs.

Uniqueness: an optimal assignment is unique iff forbidding any one of its pairs makes
the optimum strictly worse (another optimum would have to avoid at least one of them).

usage: python tools/goldens/make_eval_golden.py --out tests/fixtures/eval
needs: numpy, scipy
"""
import argparse
import json
import pathlib

import numpy as np
from scipy.optimize import linear_sum_assignment

# (rows, cols, kind); kind: "wide" = ints in [0, 1e6), "ties" = ints in [0, 10),
# "normal" = float64 N(0, 1).
CASES = [
    (30, 30, "wide"),
    (20, 35, "wide"),
    (35, 20, "wide"),
    (50, 50, "wide"),
    (1, 40, "wide"),
    (30, 30, "ties"),
    (25, 40, "ties"),
    (30, 30, "normal"),
]


def solve(cost):
    r, c = linear_sum_assignment(cost)
    return r, c, float(cost[r, c].sum())


def is_unique(cost, rows, cols, best):
    # A finite stand-in for "forbidden" that is larger than any full assignment.
    big = np.abs(cost).sum() * 4 + 1.0
    for i, j in zip(rows, cols):
        forbidden = cost.copy()
        forbidden[i, j] = big
        if solve(forbidden)[2] <= best + 1e-9:
            return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/eval")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    cases = []
    for rows, cols, kind in CASES:
        if kind == "wide":
            cost = rng.integers(0, 1_000_000, size=(rows, cols)).astype(np.float64)
        elif kind == "ties":
            cost = rng.integers(0, 10, size=(rows, cols)).astype(np.float64)
        else:
            cost = rng.standard_normal((rows, cols))
        r, c, best = solve(cost)
        cases.append({
            "rows": rows,
            "cols": cols,
            "kind": kind,
            # Integers are written as integers; floats with repr (17 significant digits).
            "cost": [int(v) if kind != "normal" else float(v) for v in cost.ravel()],
            "pairs": [[int(i), int(j)] for i, j in zip(r, c)],
            "optimal_cost": best,
            "unique": is_unique(cost, r, c, best),
        })

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "assignment.json"
    path.write_text(json.dumps({"seed": args.seed, "cases": cases}, separators=(",", ":")) + "\n")
    summary = ", ".join(f"{c['rows']}x{c['cols']} {c['kind']} unique={c['unique']}" for c in cases)
    print(f"wrote {path} ({path.stat().st_size} bytes): {summary}")


if __name__ == "__main__":
    main()
