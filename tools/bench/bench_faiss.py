#!/usr/bin/env python3
"""Our exact kNN and k-means (`mosic bench knn|kmeans`) beside FAISS on the very same vectors.

usage: /work/venv/bin/python tools/bench/bench_faiss.py [--threads 2] [--runs 3] [--what knn,kmeans]
           [--bank 100000 --queries 10000 --dim 384 --k 30]
           [--points 100000 --clusters 256 --iters 20 --max-points-per-centroid 0]

Needs numpy and faiss-cpu, and a release build of mosic (`cargo build --release -p mosic-cli`).
Our bench draws seeded random unit vectors and saves them as .npy; FAISS (`IndexFlatIP`,
`faiss.Kmeans` with the same K, niter, nredo 1 and max_points_per_centroid, so both fit the
same points) loads them. Both sides run in their own processes with the same thread count
(RAYON_NUM_THREADS and --threads for ours; OMP/OpenBLAS variables and omp_set_num_threads
for FAISS), alternating, `--runs` times: the ratios are FAISS time / ours, given as a range
because other work may share the cores. kNN: queries/s and whether both return the same
neighbours (swaps between near-equal similarities are counted apart). k-means: time per
iteration and the final objective (the random starts differ, so objectives differ a little).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def faiss_side(a):
    """One FAISS measurement in this (fresh) process; prints a JSON line."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(a.threads)
    x = np.load(a.vectors, mmap_mode=None)
    out = {"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    if a.faiss_side == "knn":
        bank, queries = x[: a.bank], x[a.bank :]
        index = faiss.IndexFlatIP(a.dim)
        index.add(bank)
        t = time.perf_counter()
        sims, ids = index.search(queries, a.k)
        out["seconds"] = time.perf_counter() - t
        np.save(a.result + ".ids.npy", ids.astype(np.int64))
        np.save(a.result + ".sims.npy", sims.astype(np.float32))
    else:
        km = faiss.Kmeans(
            a.dim,
            a.clusters,
            niter=a.iters,
            nredo=1,
            seed=a.seed,
            max_points_per_centroid=a.max_points_per_centroid,
            verbose=False,
        )
        t = time.perf_counter()
        km.train(x)
        out["seconds"] = time.perf_counter() - t
        out["objective"] = float(km.obj[-1])
    out["peak_rss_mib"] = peak_rss_mib()
    print("json " + json.dumps(out))


def run_json(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    line = [l for l in p.stdout.splitlines() if l.startswith("json ")][-1]
    return json.loads(line[5:])


def span(xs, fmt="{:.2f}"):
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) if len(xs) == 1 else f"{fmt.format(lo)} - {fmt.format(hi)}"


def agreement(vectors, bank_n, ours_prefix, theirs_prefix, tol):
    """How far our neighbour lists and FAISS's agree."""
    import numpy as np

    x = np.load(vectors, mmap_mode="r")
    bank, queries = x[:bank_n], x[bank_n:]
    oi, os_ = np.load(ours_prefix + ".ids.npy"), np.load(ours_prefix + ".sims.npy")
    fi, fs = np.load(theirs_prefix + ".ids.npy"), np.load(theirs_prefix + ".sims.npy")
    m, k = oi.shape
    identical = (oi == fi).all(axis=1)
    same_set = np.array([set(a) == set(b) for a, b in zip(oi, fi)])
    exact = lambda q, ids: bank[ids].astype(np.float64) @ queries[q].astype(np.float64)
    near, real, swapped = 0, 0, 0
    order_near, order_real = 0, 0
    for q in np.nonzero(~identical)[0]:
        if same_set[q]:
            # Same neighbours in another order: fine if the reordered ones are near-equal.
            s = exact(q, fi[q])
            d = exact(q, oi[q]) - s  # exact similarity at each rank, ours minus FAISS's
            if np.abs(d).max() <= tol:
                order_near += 1
            else:
                order_real += 1
            continue
        a = sorted(set(oi[q]) - set(fi[q]))
        b = sorted(set(fi[q]) - set(oi[q]))
        swapped += len(a)
        sa, sb = np.sort(exact(q, a)), np.sort(exact(q, b))
        if np.abs(sa - sb).max() <= tol:
            near += 1
        else:
            real += 1
    # Rounding: our similarities against FAISS's for the same neighbour, on a sample.
    sample = np.arange(0, m, max(1, m // 1000))
    diffs, errs = [], []
    for q in sample:
        common = {i: s for i, s in zip(fi[q], fs[q])}
        for i, s in zip(oi[q], os_[q]):
            if i in common:
                diffs.append(abs(float(s) - float(common[i])))
            errs.append(abs(float(s) - float(exact(q, [i])[0])))
    return {
        "queries": m,
        "identical": int(identical.sum()),
        "same_set_other_order_near_equal": order_near,
        "same_set_other_order_not_near": order_real,
        "differ_near_equal": near,
        "differ_not_near": real,
        "neighbours_swapped": swapped,
        "neighbours": m * k,
        "max_sim_diff_ours_vs_faiss": max(diffs) if diffs else 0.0,
        "max_sim_error_ours_vs_f64": max(errs) if errs else 0.0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mosic", default=os.path.join(HERE, "..", "..", "target", "release", "mosic"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--what", default="knn,kmeans", help="comma list of knn, kmeans")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the vectors and results go (default: a temporary folder)")
    p.add_argument("--bank", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--tol", type=float, default=1e-5, help="near-equal similarities (exact, f64)")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--clusters", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--max-points-per-centroid", type=int, default=0, help="0: every point is used")
    # Internal: one FAISS measurement in a child process.
    p.add_argument("--faiss-side", choices=["knn", "kmeans"], help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.faiss_side:
        return faiss_side(a)

    t = str(a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
    work = a.workdir or tempfile.mkdtemp(prefix="bench_faiss_")
    os.makedirs(work, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__), "--threads", t, "--dim", str(a.dim), "--seed", str(a.seed)]
    print(f"threads {a.threads}, runs {a.runs}, vectors in {work}")

    if "knn" in a.what.split(","):
        vec = os.path.join(work, "knn.npy")
        ours_p, theirs_p = os.path.join(work, "ours"), os.path.join(work, "faiss")
        sizes = ["--bank", str(a.bank), "--queries", str(a.queries), "--dim", str(a.dim), "--k", str(a.k)]
        rows = []
        for r in range(a.runs):
            io = ["--save", vec] if r == 0 else ["--load", vec]
            ours = run_json(
                [a.mosic, "bench", "knn", *sizes, "--threads", t, "--seed", str(a.seed), *io, "--result", ours_p],
                env,
            )
            theirs = run_json(
                me + ["--faiss-side", "knn", "--vectors", vec, "--result", theirs_p, *sizes[:4], "--k", str(a.k)], env
            )
            o, f = min(ours["seconds"]), theirs["seconds"]
            rows.append((o, f, ours["peak_rss_mib"], theirs["peak_rss_mib"]))
            print(
                f"knn run {r + 1}: ours {o:.3f} s ({a.queries / o:.0f} q/s), FAISS {theirs['faiss']} {f:.3f} s "
                f"({a.queries / f:.0f} q/s), FAISS / ours {f / o:.2f}x"
            )
        ag = agreement(vec, a.bank, ours_p, theirs_p, a.tol)
        print(
            f"knn bank {a.bank}, queries {a.queries}, dim {a.dim}, k {a.k}, threads {a.threads}: "
            f"ours {span([a.queries / x[0] for x in rows], '{:.0f}')} q/s, "
            f"FAISS {span([a.queries / x[1] for x in rows], '{:.0f}')} q/s, "
            f"ratio FAISS time / ours {span([x[1] / x[0] for x in rows])}x; "
            f"peak memory ours {max(x[2] for x in rows):.0f} MiB, FAISS {max(x[3] for x in rows):.0f} MiB"
        )
        m = ag["queries"]
        print(
            f"neighbours: {ag['identical']} / {m} queries identical ({100 * ag['identical'] / m:.2f}%); "
            f"same set, other order: {ag['same_set_other_order_near_equal']} near-equal, "
            f"{ag['same_set_other_order_not_near']} not; other sets: {ag['differ_near_equal']} queries differ only by "
            f"near-equal similarities (|diff| <= {a.tol}), {ag['differ_not_near']} otherwise; "
            f"{ag['neighbours_swapped']} of {ag['neighbours']} neighbours swapped"
        )
        print(
            f"similarities: max |ours - FAISS| {ag['max_sim_diff_ours_vs_faiss']:.2e} on common neighbours, "
            f"max |ours - exact f64| {ag['max_sim_error_ours_vs_f64']:.2e} (sampled queries)"
        )

    if "kmeans" in a.what.split(","):
        vec = os.path.join(work, "kmeans.npy")
        mppc = a.max_points_per_centroid or -(-a.points // a.clusters)
        rows = []
        for r in range(a.runs):
            io = ["--save", vec] if r == 0 else ["--load", vec]
            ours = run_json(
                [a.mosic, "bench", "kmeans", "--points", str(a.points), "--dim", str(a.dim), "--k", str(a.clusters),
                 "--iters", str(a.iters), "--max-points-per-centroid", str(mppc), "--threads", t,
                 "--seed", str(a.seed), *io],
                env,
            )
            theirs = run_json(
                me + ["--faiss-side", "kmeans", "--vectors", vec, "--clusters", str(a.clusters), "--iters",
                      str(a.iters), "--max-points-per-centroid", str(mppc)],
                env,
            )
            o, f = min(ours["seconds"]) / a.iters, theirs["seconds"] / a.iters
            rows.append((o, f, ours["objective"], theirs["objective"], ours["peak_rss_mib"], theirs["peak_rss_mib"]))
            print(
                f"kmeans run {r + 1}: ours {o * 1e3:.1f} ms/iteration, objective {ours['objective']:.6e}; "
                f"FAISS {f * 1e3:.1f} ms/iteration, objective {theirs['objective']:.6e}; FAISS / ours {f / o:.2f}x"
            )
        used = min(a.points, mppc * a.clusters)
        print(
            f"kmeans points {a.points} ({used} used, max_points_per_centroid {mppc}), dim {a.dim}, K {a.clusters}, "
            f"{a.iters} iterations, threads {a.threads}: ours {span([used / x[0] for x in rows], '{:.0f}')} points/s, "
            f"FAISS {span([used / x[1] for x in rows], '{:.0f}')} points/s, "
            f"ratio FAISS time / ours {span([x[1] / x[0] for x in rows])}x; objective ours {rows[-1][2]:.6e}, "
            f"FAISS {rows[-1][3]:.6e} (ours / FAISS - 1 = {rows[-1][2] / rows[-1][3] - 1:+.2e}); "
            f"peak memory ours {max(x[4] for x in rows):.0f} MiB, FAISS {max(x[5] for x in rows):.0f} MiB"
        )


if __name__ == "__main__":
    main()
