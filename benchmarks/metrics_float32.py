"""Float32 against float64 for every similarity measure of lib.metrics, on real activations.

The activations: every ReLU layer of the two smoke-scale models of one zoo family (default the
Myrtle CNN pair, width 0.125, seeds 0 and 1, each trained for 1 epoch on 512 CIFAR-10 images by
``lib.zoo`` at scale ``smoke``; trained into ``$SYMMETRIES_CACHE`` in seconds if missing), on
``--n`` CIFAR-10 test images (the book's fixed subset, ``lib.data.subset``), held in float32 as the
chapters hold them. For each measure it prints the largest and the median ``|float32 - float64|``
over layer pairs beside the float32 speed-up (float64 seconds / float32 seconds, the best of
``--repeat`` runs), for two paths:

- ``direct``: every measure of ``lib.metrics.MEASURES``, ``lib.metrics.<measure>(X, Y, dtype=...)``,
  on the pairs of same-index layers (model A's layer i against model B's layer i),
  ``zero_channels="keep"`` as in the chapters;
- ``matrices``: ``lib.metrics.similarity_matrices`` over all layer pairs (the chapters' path; the
  Procrustes measures on the same-shaped pairs only).

A GPU user can read off whether float32 is accurate enough for a measure and what it saves. Timings
depend on the machine and on other processes (the load average is printed).

    SYMMETRIES_DATA=... SYMMETRIES_CACHE=... .venv/bin/python benchmarks/metrics_float32.py
    ... benchmarks/metrics_float32.py --n 500 --family resnet20 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import lib.metrics as M
from lib import zoo
from lib.data import load_data, subset, to_input
from lib.similarity import layer_features

DTYPES = (torch.float64, torch.float32)


def best_time(fn, repeat: int):
    """``fn()``'s result and its smallest wall-clock time over ``repeat`` runs, in seconds."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def activations(family: str, n: int, device) -> tuple[dict, dict]:
    """The float32 features of every ReLU layer of the smoke-scale pair of ``family``, on ``n``
    test images: ``({layer: (n, c, h, w)}, {layer: ...})`` on the CPU."""
    data = load_data("cifar10")
    net_a, net_b = zoo.load_pairs(family, "smoke", 0, 1, data=data, device=device)[0]
    x = to_input(subset(data.x_test, data.y_test, n)[0], device)
    fa = layer_features(net_a, x)
    return fa, layer_features(net_b, x, list(fa))


def direct_rows(fa: dict, fb: dict, args) -> list[tuple]:
    """(measure, path, pairs, errors, seconds per dtype) for the direct API on same-index pairs."""
    rows = []
    for m, spec in M.MEASURES.items():
        f, kw = spec.function, spec.pick(zero_channels="keep")
        pairs = [
            (a, b)
            for a, b in zip(fa, fb)
            if spec.kind != "procrustes" or fa[a].shape[2:] == fb[b].shape[2:]
        ]
        values, seconds = {}, {}
        for dt in DTYPES:

            def run(f=f, kw=kw, pairs=pairs, dt=dt):
                return [f(fa[a], fb[b], dtype=dt, device=args.device, **kw) for a, b in pairs]

            values[dt], seconds[dt] = best_time(run, args.repeat)
        errors = np.abs(np.array(values[torch.float32]) - np.array(values[torch.float64]))
        rows.append((m, "direct", len(pairs), errors, seconds))
    return rows


def matrix_rows(fa: dict, fb: dict, args) -> list[tuple]:
    """The same for ``similarity_matrices`` over all layer pairs (one measure at a time)."""
    rows = []
    for m in M.MATRIX_MEASURES:
        values, seconds = {}, {}
        for dt in DTYPES:

            def run(m=m, dt=dt):
                return M.similarity_matrices(fa, fb, (m,), dtype=dt, device=args.device)[m]

            values[dt], seconds[dt] = best_time(run, args.repeat)
        diff = np.abs(values[torch.float32] - values[torch.float64])
        errors = diff[~np.isnan(diff)]
        rows.append((m, "matrices", errors.size, errors, seconds))
    return rows


def print_table(rows: list[tuple]) -> None:
    head = (
        f"| {'measure':21s} | {'path':8s} | pairs | max abs err f32 | median err | "
        f"f64 s  | f32 s  | speed-up |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for m, path, n_pairs, errors, s in rows:
        t64, t32 = s[torch.float64], s[torch.float32]
        print(
            f"| {m:21s} | {path:8s} | {n_pairs:5d} | {errors.max():15.1e} | "
            f"{statistics.median(errors.tolist()):10.1e} | {t64:6.2f} | {t32:6.2f} | "
            f"{t64 / t32:7.2f}x |"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="test images (default 1000)")
    p.add_argument(
        "--family",
        default="myrtle",
        choices=["myrtle", "resnet20"],
        help="the zoo family whose smoke-scale pair gives the activations",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is kept")
    p.add_argument("--device", default="cpu", help="where the measures run (e.g. cuda)")
    args = p.parse_args(argv)
    if args.n < 4 or args.repeat < 1:
        p.error("--n must be at least 4 and --repeat at least 1")
    fa, fb = activations(args.family, args.n, args.device)
    shapes = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in fa.items())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"load average {os.getloadavg()[0]:.1f}; smoke {args.family} pair, {args.n} test images; "
        f"layers {shapes}\n"
    )
    print_table(direct_rows(fa, fb, args) + matrix_rows(fa, fb, args))
    print(f"\nfinal load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
