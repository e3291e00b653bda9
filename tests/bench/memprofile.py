"""Run `archaudit` under tracemalloc and write where its memory is at the peak (benchmark use only).

`python tests/bench/memprofile.py OUT run [flags...]` behaves as `archaudit run [flags...]`; a sampler
thread reads the traced total every second and, each time it is a new high (5% above the last one
written), takes a snapshot and rewrites OUT with the top allocation sites, by line and by traceback,
and the process's VmRSS/VmHWM at that moment. OUT therefore always holds the latest peak, even if the
process is killed. tracemalloc roughly doubles the process's memory and slows it down: figures from a
profiled run are for finding sites, never for the benchmark table.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import tracemalloc
from pathlib import Path

_FRAMES = 10
_TOP = 40
_GROWTH = 1.05


def _proc_figures() -> str:
    status = Path("/proc/self/status").read_text()
    found = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M))
    return ", ".join(f"{k} {int(v) / 1024:.0f} MiB" for k, v in sorted(found.items()))


def _report(snapshot: tracemalloc.Snapshot, traced: int, started: float) -> str:
    # Module imports (code objects, class bodies) are a fixed cost measured apart
    # (`python -c "import archaudit.app"`): left out, so that what the operator does shows.
    runtime = snapshot.filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib.*>", all_frames=True),
        )
    )
    imports = traced - sum(stat.size for stat in runtime.statistics("filename"))
    snapshot = runtime
    lines = [
        f"peak traced {traced / 2**20:.1f} MiB at {time.monotonic() - started:.0f}s "
        f"({imports / 2**20:.1f} MiB of it by imports); {_proc_figures()}",
        "",
        f"top {_TOP} allocation sites (line):",
    ]
    for stat in snapshot.statistics("lineno")[:_TOP]:
        where = f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}"
        lines.append(f"  {stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {where}")
    lines += ["", "top 15 tracebacks:"]
    for stat in snapshot.statistics("traceback")[:15]:
        lines.append(f"  {stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks")
        lines += [f"      {frame.filename}:{frame.lineno}" for frame in stat.traceback]
    return "\n".join(lines) + "\n"


def _sample(out: Path, started: float, stop: threading.Event) -> None:
    written = 0
    while not stop.wait(1.0):
        traced, _peak = tracemalloc.get_traced_memory()
        if traced > written * _GROWTH:
            written = traced
            out.write_text(_report(tracemalloc.take_snapshot(), traced, started))


def main() -> int:
    out = Path(sys.argv[1])
    tracemalloc.start(_FRAMES)
    started = time.monotonic()
    stop = threading.Event()
    threading.Thread(target=_sample, args=(out, started, stop), daemon=True, name="memprofile").start()
    from archaudit.cli import main as archaudit_main

    try:
        return archaudit_main(sys.argv[2:])
    finally:
        stop.set()


if __name__ == "__main__":
    raise SystemExit(main())
