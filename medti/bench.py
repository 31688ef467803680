"""``medti bench``: benchmarks that print their figures (speed and memory targets are checked here, not
by timed tests). Each stage module owns its benchmark and registers it through ``add_bench_parser``.
"""

from __future__ import annotations

import importlib

BENCH_MODULES = (
    "medti.preprocess.bench",          # medti bench ingest
    "medti.textual_inversion.bench",   # medti bench train
    "medti.generate.bench",            # medti bench generate
)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: ingestion, embedding training, generation (prints figures)")
    bsub = p.add_subparsers(dest="bench_command", metavar="<benchmark>", required=True)
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # that stage's benchmark is not built yet
        module.add_bench_parser(bsub)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB), as the kernel counts it."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
