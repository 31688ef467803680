"""The orchestration layer: keep the two DAG descriptions (the Snakefile and dvc.yaml) in step, and make
Snakemake trust files that DVC pulled, and record a Snakemake run in dvc.lock (``medti workflow
check|restore-mtimes|record``).

Python API (imported lazily, so ``medti --help`` stays fast)::

    from medti.workflow import check, restore_mtimes
    problems = check(".")          # one line per difference between the Snakemake DAG and dvc.yaml
    restore_mtimes(".")            # after dvc pull: outputs matching dvc.lock re-timed in pipeline order
    record_outputs(".", outputs)   # after a Snakemake run: its outputs recorded in dvc.lock in one pass

``snakemake_jobs``, ``dvc_jobs`` and ``compare`` are the parts of ``check``; ``Job`` is one job of either DAG.
"""

from medti.lazy import lazy_exports

__all__ = [
    "Job",
    "check",
    "compare",
    "dvc_jobs",
    "record_outputs",
    "restore_mtimes",
    "snakemake_jobs",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["Job", "check", "compare", "dvc_jobs", "snakemake_jobs"], "dags"),
    **dict.fromkeys(["restore_mtimes"], "mtimes"),
    **dict.fromkeys(["record_outputs"], "dvclock"),
})
