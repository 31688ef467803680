"""Blinded reader studies: experts judge real and synthetic images on one offline page, and their answers are
scored with exact statistics (``medti reader-study make`` and ``medti reader-study score``).

The paper's claim that its images are diagnostically accurate rests on a radiologist preferring the diffusion
images over StyleGAN3's in 36 of 50 pairs (p = 0.0026, two-sided). This package gives every group the same
evidence for its own embeddings without the usual mistakes (telling file names, a fixed order, no record, no
statistics):

- :func:`make_study` (:mod:`~medti.reader_study.make`) draws the cases of three tasks (real or synthetic, which
  class, which of two is better) from a pipeline run or image folders, copies the images under random names
  with their metadata stripped, orders the items per reader from the seed, repeats a few cases, and writes a
  shareable study folder with one self-contained page (:mod:`~medti.reader_study.page`) and, apart, the key.
- The page works offline from a USB stick, answers by keyboard, shows progress, keeps answers in the browser
  (a closed tab resumes) and exports them as a file named after the reader.
- :func:`score_study` (:mod:`~medti.reader_study.score`) checks the answer files against the key and computes
  accuracy, sensitivity and specificity per class, the preference rate, exact intervals and binomial tests,
  agreement between readers (Cohen's or Fleiss' kappa) and each reader's consistency
  (:mod:`~medti.reader_study.stats`), then writes a Markdown/HTML summary with figures
  (:mod:`~medti.reader_study.summary`), metrics.json for DVC and, in pipeline mode, an MLflow run.

Python API (imported lazily)::

    from medti.reader_study import make_study, make_from_params, score_study

    study = make_from_params(params, "chest_xray", "reader-study/chest_xray", readers=["alice", "bob"],
                             compare=["full", "few"])                 # key in reader-study/chest_xray-key
    results = score_study(study.key, ["answers-alice.json", "answers-bob.json"], "reader-study/results")
    results["tasks"]["which-better"]["pooled"]["preference_a"]       # {"k", "n", "rate", "ci_low", ..., "p_value"}
"""

from medti.lazy import lazy_exports

__all__ = [
    "TASKS",
    "ImageSource",
    "Study",
    "analyse",
    "answer_files",
    "cohen_kappa",
    "consistency",
    "fisher_difference",
    "fleiss_kappa",
    "fleiss_kappa_ratings",
    "kappa_with_interval",
    "load_key",
    "load_source",
    "make_from_params",
    "make_study",
    "metrics_of",
    "pipeline_sources",
    "proportion",
    "read_answers",
    "render_page",
    "responses",
    "score_study",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["TASKS", "ImageSource", "Study", "load_source", "make_from_params", "make_study",
                     "pipeline_sources"], "make"),
    **dict.fromkeys(["render_page"], "page"),
    **dict.fromkeys(["analyse", "answer_files", "load_key", "metrics_of", "read_answers", "responses",
                     "score_study"], "score"),
    **dict.fromkeys(["cohen_kappa", "consistency", "fisher_difference", "fleiss_kappa", "fleiss_kappa_ratings",
                     "kappa_with_interval", "proportion"], "stats"),
})
