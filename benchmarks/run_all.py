"""Runs every benchmark script in this folder in turn (`make bench`); each writes its own results.

Benchmarks measure speed and accuracy targets; they are not part of the test suite. Run one alone with
``.venv/bin/python benchmarks/<name>.py --help``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(p for p in here.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
