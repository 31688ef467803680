"""One self-contained HTML page (and the same in Markdown) per pipeline run (``medti report``).

Per modality: the AUC table in the paper's layout (mean +- standard deviation over seeds, bootstrap
confidence interval, paired comparison with the reference and its p-values; each condition's embedding variant,
and a condition on another variant than the main one compared with its main-variant counterpart), ROC curves and
confusion matrices, the embedding variants side by side (images per embedding, steps, vectors, synthetic-only
AUC, agreement, FD: the paper's 10- vs 100-image ablation), real and synthetic samples per class side by side
(per variant, the main one first), the interpolation grids with the real-only classifiers' verdict on each
healthy-to-diseased sweep (the share judged diseased per weight, where medti evaluate judged the sweeps), the
embeddings' training-loss curves and summaries (per class and variant), FID/KID, the memorisation audit, and the
checksums of the data and the embeddings; then the run's params.yaml as it was. Inputs in the pipeline's layout
(``<synthetic>/<modality>/<variant>/``, ``<train-reports>/<modality>/<class>/<variant>/``) or the older one
without a variant folder (read as the main variant). A run on a base model with random weights (``tiny``,
``random:...``) says in a banner that its numbers carry no medical meaning.

Outputs: index.html (images embedded as base64 data: no server, no files beside it, no external CSS or
JavaScript), report.md with figures/ (the same content; the Markdown links the PNGs), summary.json.

Python API (imported lazily, so ``import medti.report`` loads no numpy)::

    from medti.report import build_report

    build_report("results/evaluate", "data/prepared", "results/report", synthetic_dir="data/synthetic",
                 train_reports_dir="results/train_embedding", params=params, params_path="params.yaml")

Parts: :mod:`~medti.report.document` (the document model, HTML and Markdown), :mod:`~medti.report.sections`
(what each section shows), :mod:`~medti.report.build` (inputs, the document, the folder),
:mod:`~medti.report.cli` (the command).
"""

from medti.lazy import lazy_exports

__all__ = [
    "Document",
    "Figure",
    "ModalityInputs",
    "Table",
    "build_document",
    "build_report",
    "gather",
    "render_html",
    "render_markdown",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["ModalityInputs", "build_document", "build_report", "gather"], "build"),
    **dict.fromkeys(["Document", "Figure", "Table", "render_html", "render_markdown"], "document"),
})
