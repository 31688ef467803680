"""One modality's classifier experiments, image quality and a memorisation audit (``medti evaluate``).

1. AUC. Every run's predictions on the held-out real test split (predictions.csv of ``medti
   train-classifier``) are checked against the real manifest's test split. Per condition: the seeds'
   AUCs, mean +- standard deviation, a bootstrap confidence interval of the mean AUC (test cases resampled
   within each class), and each condition against the reference (``evaluate.reference``): the difference
   of mean AUCs with its paired bootstrap interval and p-value, and DeLong's test (binary tasks). These are
   case-level: the trained networks are held fixed. Beside them, labelled as including the seed variance: a
   two-level bootstrap (seeds, then test cases, resampled) interval of each mean AUC and of each difference
   with its p-value, and Welch's t-test on the seeds' AUCs (see :mod:`~medti.evaluate.statistics`).
2. Image quality (:mod:`~medti.evaluate.quality`, the paper's protocol): FID/KID-style distances between the
   synthetic images and the reference, the embeddings' training images (``quality.reference: ti``; or the
   whole train split, ``train``), in the feature space of the trained real-only classifier (always; no
   download), with the real test images' distance to the same reference, on as many images, as the
   yardstick; the Inception FID/KID too, on the images at their prepared size, when torch-fidelity and its
   weights are there.
3. Memorisation audit (:mod:`~medti.evaluate.memorisation`): for every synthetic image its nearest real
   training image, by pixel correlation (grey, ``memorisation.size`` px) and by cosine similarity of the
   classifier's features; near-copies (a pixel correlation at or above ``memorisation.threshold``) are
   flagged, and so are images above the upper ``memorisation.level`` quantile of the real test images' own
   nearest-training correlations (the null: with no copying about that share is flagged by chance).
4. Interpolation sweeps (``interpolate``, optional; :mod:`~medti.evaluate.sweeps`): the real-only classifiers
   label every image of each healthy-to-diseased sweep of ``medti interpolate``; per weight, the share put in
   the sweep's target class (mean over seeds), Spearman's rho against the weight, and whether it rises.

Embedding variants (``train_embedding.variants``, :mod:`~medti.evaluate.variants`): 2. and 3. are measured for
each variant's synthetic set (``<generate.out>/<modality>/<variant>/``) and the embeddings checked per variant;
every condition records the variant it drew from, and a condition on another variant than the main (first) one
is also compared with the condition taking the same amounts on the main variant (the same statistics, on the same
resamples). A single synthetic manifest is one set, the main variant.

Outputs (the folder appears whole or not at all):

- metrics.json (or ``metrics_file``): DVC metrics: per condition ``auc_mean, auc_std, ci_low, ci_high,
  n_seeds`` (and ``auc_diff_vs_<ref>, p_value_vs_<ref>`` (paired bootstrap), ``p_delong_vs_<ref>``: case
  level), with two seeds or more ``ci_low_two_level, ci_high_two_level`` (and ``p_two_level_vs_<ref>``,
  ``p_seed_welch_vs_<ref>``: with the seed variance; a condition on another variant also the same keys
  ``..._vs_<other>`` against its main-variant counterpart), the main variant's ``synthetic_agreement``,
  ``quality`` and ``memorisation`` summaries (the level and each class's flag threshold included), and
  ``variants``: per variant those three with its ``images`` (per embedding), ``steps`` and ``num_vectors``;
  with ``interpolate``, ``sweeps``: per sweep ``<from>_to_<to>`` its ``share_at_0``, ``share_at_1`` (the share
  judged the target class at the lowest and the highest weight) and ``spearman``;
- roc.csv (or ``roc_file``): DVC plot data, long format ``condition, seed, fpr, tpr`` (one curve per run);
- evaluate.json: everything above in full (per variant under ``variants``; the main variant's also at the top
  level; ``sweeps``: per sweep figure its ``from``, ``to``, ``weights``, ``share_target`` (mean over seeds) and
  ``share_target_per_seed``, ``spearman``, ``rises``, ``n_per_weight``, ``classifier_condition``), with the
  inputs' checksums (read by ``medti report``);
- auc_table.csv (one row per condition: its ``variant``, the comparison with the reference and, where it has
  one, with its main-variant counterpart ``main_variant_condition``), auc_seeds.csv (one row per run);
- sweep_judgement.png (with sweeps): the share judged the target class against the weight, per sweep;
- roc.png (mean ROC per condition, +- one standard deviation over seeds), confusion.png and confusion.csv
  (test predictions of all seeds of a condition added up);
- memorisation.csv (one row per synthetic image), memorisation_pairs.png (the closest pairs),
  memorisation_similarity.png and memorisation_features.png (the similarity distributions per class, pixels
  and features, with the real yardstick): the main variant's; the other variants' in ``variants/<name>/``.

MLflow (one ``evaluate`` run per modality): the settings, every number of metrics.json, and the files above.

Python API (imported lazily, so ``import medti.evaluate`` loads no torch)::

    from medti.evaluate import EvaluateSettings, evaluate, evaluate_from_params

    evaluate("results/classifier/chest_xray", "data/prepared/chest_xray/manifest.csv", "results/evaluate/cx",
             synthetic_manifest="data/synthetic/chest_xray", settings=EvaluateSettings(bootstrap=2000))
    evaluate_from_params(params, "chest_xray", classifiers, real, synthetic, embeddings, out)  # as the pipeline

Parts: :mod:`~medti.evaluate.settings`, :mod:`~medti.evaluate.statistics` (AUC, bootstrap, DeLong),
:mod:`~medti.evaluate.variants` (the synthetic sets per embedding variant, each condition's variant),
:mod:`~medti.evaluate.runs` (the classifier runs, ROC, confusion), :mod:`~medti.evaluate.quality` (FID/KID),
:mod:`~medti.evaluate.memorisation` (the audit), :mod:`~medti.evaluate.sweeps` (the interpolation sweeps judged),
:mod:`~medti.evaluate.experiment` (``evaluate()``),
:mod:`~medti.evaluate.cli` (the command).
"""

from medti.lazy import lazy_exports

__all__ = [
    "ClassifierRun",
    "EvaluateResult",
    "EvaluateSettings",
    "auc",
    "delong_test",
    "embedding_files",
    "evaluate",
    "evaluate_from_params",
    "find_runs",
    "frechet_distance",
    "image_quality",
    "judge_sweeps",
    "kernel_distance",
    "load_runs",
    "memorisation_audit",
    "nearest",
    "pixel_vectors",
    "quality_report",
    "roc_table",
    "summarise_conditions",
    "synthetic_sets",
    "unit_rows",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["EvaluateSettings"], "settings"),
    **dict.fromkeys(["EvaluateResult", "embedding_files", "evaluate", "evaluate_from_params"], "experiment"),
    **dict.fromkeys(["ClassifierRun", "find_runs", "load_runs", "roc_table"], "runs"),
    **dict.fromkeys(["frechet_distance", "image_quality", "kernel_distance", "quality_report"], "quality"),
    **dict.fromkeys(["memorisation_audit", "nearest", "pixel_vectors", "unit_rows"], "memorisation"),
    **dict.fromkeys(["auc", "delong_test", "summarise_conditions"], "statistics"),
    **dict.fromkeys(["synthetic_sets"], "variants"),
    **dict.fromkeys(["judge_sweeps"], "sweeps"),
})
