"""The machine a benchmark ran on, printed with every figure. Benchmarks run as scripts
(`python bench/X.py`), so their folder is on sys.path and `from machine import ...` works."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def describe() -> str:
    return (f"machine: {platform.node()} | {cpu_model()} | {os.cpu_count()} cores | "
            f"{platform.system()} {platform.release()} | Python {platform.python_version()} | "
            f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
