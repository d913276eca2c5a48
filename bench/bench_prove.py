"""Proof-suite figures: total time, slowest obligation, and verdicts across Z3 seeds.

Run: .venv/bin/python bench/bench_prove.py [--seeds 10] [-j 2] [-k PATTERN]
Prints the machine, then per seed the total seconds and the slowest obligation, then whether every
seed gave the same verdict for every obligation (targets: total <= 60 s, none > 10 s, same verdicts).
"""
from __future__ import annotations

import argparse
import os
import platform
import time


from machine import describe  # noqa: E402 (bench/ is on sys.path when run as a script)


def main() -> None:
    from forkspec.specs.prove import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("-k", dest="pattern", default=None)
    parser.add_argument("-j", dest="jobs", type=int, default=1, help="worker processes (forkspec prove uses 2)")
    args = parser.parse_args()
    print(f"{describe()} | {platform.platform()}")
    verdicts: dict[str, set] = {}
    for seed in range(args.seeds):
        start = time.perf_counter()
        results = run(args.pattern, seed=seed, jobs=args.jobs)
        wall = time.perf_counter() - start
        slowest = max(results, key=lambda r: r.seconds)
        bad = [r.obligation for r in results if r.verdict not in ("proved", "skipped")]
        skipped = sum(r.verdict == "skipped" for r in results)
        print(f"seed {seed}: {len(results)} obligations ({skipped} skipped), {wall:.1f} s wall, "
              f"{sum(r.seconds for r in results):.1f} s summed, slowest {slowest.obligation} "
              f"{slowest.seconds:.2f} s, not proved: {bad or 'none'}, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        for r in results:
            verdicts.setdefault(r.obligation, set()).add(r.verdict)
    unstable = {k: v for k, v in verdicts.items() if len(v) > 1}
    print(f"same verdicts across {args.seeds} seeds: {'yes' if not unstable else 'no: ' + repr(unstable)}")


if __name__ == "__main__":
    main()
