"""``make bench``: the quick benchmarks, one after another, each in its own process.

    .venv/bin/python bench/run_all.py [--only speed augment weightmap] [--full]

Runs ``bench_speed.py`` (training / inference vs a classic fp32 U-Net), ``bench_augment.py``
(elastic deformation vs scipy) and ``bench_weightmap.py`` (border weight map vs one distance
transform per object) with fewer repeats than their defaults (``--full``: their defaults), prints
each one's own ratio table, then one summary line per benchmark. None needs the datasets or a
GPU; together they take a minute or two on a quiet 2-core machine. The long benchmarks
(accuracy, annotation loop, diffusion, large images) are run by hand: see docs/benchmarks.md.
Exit status 1 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# name: (script, quick arguments, the line prefix that summarises its result)
QUICK = {
    "speed": ("bench_speed.py", [], "speed:"),
    "augment": ("bench_augment.py", ["--repeats", "10"], "summary:"),
    "weightmap": ("bench_weightmap.py", ["--repeats", "3"], "summary:"),
}


def run(name: str, full: bool) -> tuple[str, float, int]:
    """Run one benchmark with its output streamed; returns (summary line, seconds, exit code)."""
    script, quick, prefix = QUICK[name]
    cmd = [sys.executable, str(BENCH / script), *([] if full else quick)]
    print(f"\n{'=' * 100}\n$ {' '.join(cmd[1:])}\n", flush=True)
    start, summary = time.perf_counter(), ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH.parent) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith(prefix):
                summary = line.strip()
    return summary or "(no summary line)", time.perf_counter() - start, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(QUICK), default=list(QUICK), help="benchmarks to run")
    ap.add_argument("--full", action="store_true", help="each benchmark's default repeats")
    args = ap.parse_args(argv)
    results = {name: run(name, args.full) for name in args.only}
    print(f"\n{'=' * 100}\nsummary ({len(results)} benchmark(s))")
    for name, (summary, seconds, code) in results.items():
        status = "" if code == 0 else f"  [FAILED, exit {code}]"
        print(f"  {name:<10} {seconds:6.0f} s  {summary}{status}")
    return int(any(code != 0 for _, _, code in results.values()))


if __name__ == "__main__":
    raise SystemExit(main())
