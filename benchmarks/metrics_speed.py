"""Speed and memory of lib.metrics.grelu_cka against the slow references of lib.metrics.

For N samples of post-ReLU-like conv features with C channels at each spatial size, one run on the
same data times the full G_ReLU-CKA of two representations computed with

- the library (blocked max-kernel Gram matrices, bounded temporaries, upper triangle only),
- the row loop of the authors' code (row i against all rows < i; elementwise product and sum, which
  makes an (i, C, H, W) temporary per row),
- the same row loop with matrix-vector products (no temporary: a stronger baseline than the
  authors'),
- a naive (N, N, C) tensor of per-channel inner products followed by a maximum over channels,

and prints their ratios, then the largest N whose peak memory fits ``--memory-budget``. The row
loops can be timed on every k-th row (``--row-stride``): the cost of row i grows linearly in i, so k
times the sampled sum is the full time to within a few per cent. The naive reference runs on the
largest subset whose temporary fits ``--naive-limit`` and is extrapolated by (N / subset)^2, the
growth of its work.

    .venv/bin/python benchmarks/metrics_speed.py            # N = 2000, C = 64, 16x16 and 8x8
    .venv/bin/python benchmarks/metrics_speed.py --quick    # N = 200, stride 2: under a minute
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time

import torch

import lib.metrics as M

UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """'8GiB', '512M', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 8GiB, 512M, 1e9)")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def features(n, c, size, seed, dtype):
    """Post-ReLU-like features X and a correlated Y, built in place (no large temporaries)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty((n, c, size, size), dtype=dtype).normal_(generator=g).add_(0.3).relu_()
    y = torch.empty_like(x).normal_(generator=g).mul_(0.7).add_(x).relu_()
    return x, y


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def row_loop_time(z, kind, stride):
    """Time of the reference row loop over all rows, from every ``stride``-th row, and the rows."""
    n = z.shape[0]
    rows = list(range(min(stride // 2, n - 1), n, stride))
    total, got = 0.0, {}
    for i in rows:
        got[i], t = timed(lambda: M._reference_max_kernel_row(z, i, kind))
        total += t
    return total * stride, got


def check_rows(K, rows):
    worst = max((float((K[i, :i] - r).abs().max()) for i, r in rows.items() if i > 0), default=0.0)
    assert worst <= 1e-10 * float(K.abs().max()), (
        f"reference rows differ from the library's Gram: {worst}"
    )


def run_size(args, size, dtype):
    n, c = args.n, args.channels
    x, y = features(n, c, size, args.seed, dtype)
    print(f"\n== N={n}, C={c}, {size}x{size}, {dtype} ==")
    value, t_lib = timed(lambda: M.grelu_cka(x, y, dtype=dtype))
    block, chunk = M._block_plan(n, c, x.element_size(), x.device, None, None)
    print(
        f"library grelu_cka               {t_lib:9.2f} s   value {value:.6f}  "
        f"(blocks of {block} rows x {chunk} channels)"
    )
    # Pieces shared by every reference: the same preprocessing and estimator as the library.
    (zx, zy), t_pre = timed(
        lambda: (M.normalize_channels(x, dtype=dtype), M.normalize_channels(y, dtype=dtype))
    )
    (kx, ky), _ = timed(lambda: (M.max_kernel_gram(zx), M.max_kernel_gram(zy)))
    _, t_cka = timed(lambda: M.cka_from_grams(kx, ky))
    results = {}
    for kind, label in (
        ("authors", "row loop, authors' form"),
        ("matvec", "row loop, matrix-vector"),
    ):
        tx, rows_x = row_loop_time(zx, kind, args.row_stride)
        ty, rows_y = row_loop_time(zy, kind, args.row_stride)
        check_rows(kx, rows_x)
        check_rows(ky, rows_y)
        note = (
            f"(1 row in {args.row_stride} timed, x{args.row_stride})"
            if args.row_stride > 1
            else "(all rows)"
        )
        results[label] = (t_pre + tx + ty + t_cka, note)
    # The naive reference materialises (m, m, C); run it on the largest m whose tensor fits the
    # limit.
    m = min(n, math.isqrt(int(args.naive_limit // (c * x.element_size()))))
    if m < 4:
        results["naive (N, N, C) tensor"] = (float("nan"), "(skipped: --naive-limit too small)")
    else:
        t_naive = 0.0
        for z, k in ((zx, kx), (zy, ky)):
            kn, t = timed(lambda: M._reference_max_kernel_naive(z[:m]))
            assert torch.allclose(kn, k[:m, :m], rtol=1e-10, atol=1e-12), (
                "naive Gram differs from the library's"
            )
            t_naive += t * (n / m) ** 2
            del kn
        note = (
            "(full N)"
            if m == n
            else (
                f"(timed at N={m}, (N,N,C) tensor {fmt_bytes(m * m * c * x.element_size())}"
                f" each; x{(n / m) ** 2:.2f} for N^2)"
            )
        )
        results["naive (N, N, C) tensor"] = (t_pre + t_naive + t_cka, note)
    for label, (t, note) in results.items():
        print(f"{label:31s} {t:9.2f} s   ratio {t / t_lib:6.1f}x  {note}")
    return t_lib, results


def memory_report(args, size, dtype):
    shape = (args.channels, size, size)
    size_b = torch.empty(0, dtype=dtype).element_size()
    budget = fmt_bytes(args.memory_budget)
    print(f"\nlargest N within {budget} at {size}x{size} ({args.channels} channels):")
    for dt in (torch.float64, torch.float32):
        n = M.grelu_cka_max_samples(args.memory_budget, shape, dtype=dt)
        estimate = fmt_bytes(M.grelu_cka_memory(n, shape, dtype=dt))
        print(f"  library grelu_cka, {str(dt):14s} N = {n}  (estimate {estimate})")
    # The naive reference needs the library's Gram matrices and copies plus its (N, N, C) tensor.
    n = M.grelu_cka_max_samples(args.memory_budget, shape, dtype=dtype)
    while (
        n > 0
        and M.grelu_cka_memory(n, shape, dtype=dtype) + n * n * args.channels * size_b
        > args.memory_budget
    ):
        n = int(n * 0.99)
    print(f"  naive (N, N, C) tensor, {dtype}: N = {n}")


def _status_bytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak(n, c, size):
    """Run grelu_cka in this process and print the rise of its peak RSS over the RSS before the
    call.

    The peak is VmHWM, reset to the current RSS first (getrusage's ru_maxrss would be no good here:
    Linux carries it over from the parent process across fork and exec).
    """
    x, y = features(n, c, size, 0, torch.float64)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = _status_bytes("VmRSS")
    M.grelu_cka(x, y)
    print(_status_bytes("VmHWM") - rss_before)


def memory_check(args, size):
    """Compare the estimate of grelu_cka_memory with the measured peak in a fresh process."""
    n = min(args.n, 1500)
    out = subprocess.run(
        [sys.executable, __file__, "--_measure", str(n), str(args.channels), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = int(out.stdout.split()[-1])
    estimate = M.grelu_cka_memory(n, (args.channels, size, size))
    print(
        f"memory check at N={n}, {size}x{size}: measured peak {fmt_bytes(measured)}, "
        f"estimate {fmt_bytes(estimate)}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="samples (default 2000; 200 with --quick)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[16, 8], help="spatial sizes (height = width)"
    )
    p.add_argument(
        "--memory-budget",
        type=parse_bytes,
        default=parse_bytes("8GiB"),
        help="total memory for the 'largest N' report (e.g. 8GiB)",
    )
    p.add_argument(
        "--naive-limit",
        type=parse_bytes,
        default=parse_bytes("1GiB"),
        help="largest (N, N, C) tensor the naive reference may allocate",
    )
    p.add_argument(
        "--row-stride",
        type=int,
        default=None,
        help="time every k-th row of the row loops (default 8; 2 with --quick)",
    )
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N = 200 and row stride 2: a smoke run")
    p.add_argument("--_measure", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._measure:
        return measure_peak(*args._measure)
    args.n = args.n or (200 if args.quick else 2000)
    args.row_stride = args.row_stride or (2 if args.quick else 8)
    if args.n < 4 or args.channels < 1 or args.row_stride < 1:
        p.error("--n must be at least 4, --channels and --row-stride at least 1")
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU load average "
        f"{os.getloadavg()[0]:.1f} (other processes slow every timing alike)"
    )
    start = time.perf_counter()
    for size in args.sizes:
        run_size(args, size, dtype)
    for size in args.sizes:
        memory_report(args, size, dtype)
    memory_check(args, args.sizes[0])
    print(
        f"\ntotal {time.perf_counter() - start:.0f} s, final load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
