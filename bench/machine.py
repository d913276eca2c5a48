"""The machine a benchmark ran on, printed with every figure."""
from __future__ import annotations

import os
import platform


def describe() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"machine: {platform.node()} | {cpu} | {os.cpu_count()} cores | "
            f"{platform.system()} {platform.release()} | Python {platform.python_version()}")
