"""medti: Textual Inversion embeddings for synthetic medical training data on a budget.

The pipeline's stages, each a package with its Python API in ``__init__`` and its command in ``cli.py``:
``phantoms`` (the embedded default data) -> ``preprocess`` (``medti prepare``) -> ``textual_inversion``
(``medti train-embedding``) -> ``generate`` (``generate``, ``interpolate``, ``inpaint``) -> ``classifier``
(``train-classifier``) -> ``evaluate`` -> ``report``. Beside them: ``models`` (base models), ``embeddings``
(embedding files in every format), ``workflow`` (Snakemake and DVC in step), ``bench`` (benchmarks; no stage
imports it). Shared plumbing: ``config`` (params.yaml and its schema, the one source of defaults),
``cliutils`` (the command-line convention), ``atomic``, ``checkpoint``, ``hashing``, ``deid``, ``manifest``,
``tracking`` (MLflow), ``logs``, ``errors``, ``figures``.
"""

__version__ = "0.1.0"

from medti.errors import MedtiError  # noqa: E402

__all__ = ["MedtiError", "__version__"]
