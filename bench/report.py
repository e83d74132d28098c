"""Shared by the benchmarks: machine description, results JSON, and BENCHMARKS.md sections.

Each benchmark owns one section of BENCHMARKS.md between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
and rewrites only that section, so benchmarks can run separately and the file keeps the others' figures.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def machine_line(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, {m['date_utc']} UTC"


def child_cpu(argv: list[str], cwd: Path = ROOT) -> tuple[float, float]:
    """Run a command to its end, output discarded: (CPU seconds of it and its children, user + sys, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def save_results(name: str, results: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def update_section(name: str, markdown: str) -> None:
    """Replace (or append) this benchmark's section of BENCHMARKS.md."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else (
        "# Benchmarks\n\nWritten by `make bench`. Every figure sits next to a reference measured in the same "
        "run on the same machine; compare ratios, not absolute numbers (the machines are shared and noisy).\n")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
