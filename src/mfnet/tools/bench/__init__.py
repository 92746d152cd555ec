"""The speed benchmark of ``mfnet bench`` and ``benchmarks/``: candidates, a worker process per candidate, the run.

``candidates``: what is measured (a model, an engine, an input) and how one step is prepared and timed;
``worker``: one candidate stepped in a Python process of its own; ``run``: interleaved rounds, the report, the
table and the efficiency plot.
"""

from mfnet.tools.bench.candidates import (
    BenchReport,
    BenchRow,
    Candidate,
    build_benchmark_model,
    parse_candidates,
)
from mfnet.tools.bench.run import format_table, plot_efficiency, run_benchmark

__all__ = [
    "BenchReport",
    "BenchRow",
    "Candidate",
    "build_benchmark_model",
    "format_table",
    "parse_candidates",
    "plot_efficiency",
    "run_benchmark",
]
