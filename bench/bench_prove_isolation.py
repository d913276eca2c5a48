"""Does an obligation's verdict or Z3 work depend on what ran before it in the same process?

Run: .venv/bin/python bench/bench_prove_isolation.py [-k PATTERN] [--seed N] [--modes suite,reversed,fresh,runner]

Each obligation is proved (specs.prove.prove_one, default rlimit) and measured by its verdict and
the Z3 resource units it consumed (the context's `rlimit count` statistic after minus before;
deterministic, unlike seconds). Modes:
  suite     one process proves every obligation in suite order (the old `forkspec prove -j 1`);
  reversed  one process, reverse order: another history before each obligation;
  fresh     every obligation in its own newly spawned interpreter (nothing ran before it);
  fresh2    fresh again: shows whether a fresh process is itself reproducible (hash seeds differ);
  runner    specs.prove.run(jobs=2), what `forkspec prove` does.
Every mode is compared with `fresh`: obligations whose verdict differs, whose rlimit consumption
differs, the largest ratios, and the wall time of each mode. Prints the machine first.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time

from machine import cpu_model  # noqa: E402 (bench/ is on sys.path when run as a script)


def _count() -> int:
    """The main Z3 context's cumulative resource count (a trivial check costs 2 units)."""
    import z3
    s = z3.Solver()
    s.check()
    st = s.statistics()
    return int(st.get_key_value("rlimit count")) if "rlimit count" in st.keys() else 0


def measure(name: str, seed: int) -> tuple[str, str, int, float]:
    from forkspec.specs.prove import prove_one, select_obligations
    (o,) = [o for o in select_obligations(name) if o.name == name]
    before = _count()
    r = prove_one(o, seed)
    return name, r.verdict, _count() - before - 2, r.seconds


def in_one_process(names: list[str], seed: int) -> list[tuple]:
    return [measure(n, seed) for n in names]


def run_mode(mode: str, names: list[str], seed: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    if mode in ("suite", "reversed"):
        order = names if mode == "suite" else names[::-1]
        with ctx.Pool(1) as pool:
            rows = pool.apply(in_one_process, (order, seed))
    elif mode.startswith("fresh"):
        with ctx.Pool(min(2, os.cpu_count() or 1), maxtasksperchild=1) as pool:
            rows = pool.starmap(measure, [(n, seed) for n in names], chunksize=1)
    else:   # runner
        from forkspec.specs import prove
        rows = [(r.obligation, r.verdict, used, r.seconds)
                for r, used in prove.run_measured(names, seed=seed, jobs=min(2, os.cpu_count() or 1))]
    return {name: (verdict, used, secs) for name, verdict, used, secs in rows}


def compare(label: str, got: dict, ref: dict) -> None:
    verdicts = [n for n in ref if got[n][0] != ref[n][0]]
    differ = [n for n in ref if got[n][1] != ref[n][1]]
    ratios = sorted(((max(got[n][1], 1) / max(ref[n][1], 1), n) for n in differ), reverse=True)
    total_got, total_ref = sum(v[1] for v in got.values()), sum(v[1] for v in ref.values())
    print(f"{label} vs fresh: {len(verdicts)} verdicts differ {verdicts or ''}; rlimit differs for "
          f"{len(differ)}/{len(ref)} obligations; total rlimit {total_got:,} vs {total_ref:,}")
    for ratio, n in ratios[:3] + ratios[-3:] if len(ratios) > 6 else ratios:
        print(f"    {n}: {got[n][1]:,} vs {ref[n][1]:,} units (x{ratio:.2f}), {got[n][0]} vs {ref[n][0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="pattern", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="suite,reversed,fresh,runner")
    parser.add_argument("--dump", default=None, help="write every mode's rows to this JSON file")
    args = parser.parse_args()
    from forkspec.specs.prove import select_obligations
    names = [o.name for o in select_obligations(args.pattern) if not o.skip]
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}")
    print(f"{len(names)} obligations (skipped ones left out), seed {args.seed}")
    modes = args.modes.split(",")
    if "fresh" not in modes:
        modes.insert(0, "fresh")
    results = {}
    for mode in ["fresh"] + [m for m in modes if m != "fresh"]:
        start = time.perf_counter()
        results[mode] = run_mode(mode, names, args.seed)
        print(f"{mode}: {time.perf_counter() - start:.1f} s wall, "
              f"{sum(v[2] for v in results[mode].values()):.1f} s summed in the solver", flush=True)
    for mode, got in results.items():
        if mode != "fresh":
            compare(mode, got, results["fresh"])
    heavy = sorted(results["fresh"].items(), key=lambda kv: -kv[1][1])[:5]
    print("most rlimit units (fresh): " + ", ".join(f"{n} {v[1]:,}" for n, v in heavy))
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
