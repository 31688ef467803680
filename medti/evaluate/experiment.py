"""``evaluate()``: one modality's classifier experiment end to end (see :mod:`medti.evaluate`): the runs read
and summarised, image quality and the memorisation audit measured, the outputs written and tracked."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medti.atomic import atomic_dir, sweep_stale_temporaries, write_json, write_text
from medti.classifier.data import check_same_labels, read_rows, task_classes
from medti.classifier.training import load_classifier
from medti.config import modality as modality_of
from medti.config import stage
from medti.config import variants as params_variants
from medti.embeddings import load_embedding
from medti.errors import ConfigError, InputError
from medti.evaluate.agreement import synthetic_agreement
from medti.evaluate.memorisation import memorisation_audit, memorisation_figures, pixel_vectors, unit_rows
from medti.evaluate.quality import classifier_features, image_quality
from medti.evaluate.runs import conditions_roc_figure, confusions, feature_run, load_runs, roc_table
from medti.evaluate.settings import EvaluateSettings
from medti.evaluate.statistics import require_ci_sample, require_classes, summarise_conditions
from medti.evaluate.sweeps import FIGURE as SWEEP_FIGURE
from medti.evaluate.sweeps import judge_sweeps, sweep_figure, sweep_metrics
from medti.evaluate.variants import (
    DEFAULT_MAIN,
    condition_variants,
    cross_variant_pairs,
    embedding_path,
    synthetic_sets,
    variant_facts,
)
from medti.figures import confusion_matrices
from medti.generate.interpolate import TABLE as INTERPOLATE_TABLE
from medti.hashing import dvc_md5, file_md5, file_sha256
from medti.imageset import read_manifest_images
from medti.tracking import track

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class EvaluateResult:
    """An evaluated modality: its output folder and its metrics.json."""

    out: Path
    metrics: dict


# -- embeddings ----------------------------------------------------------------------------------------------

def _metadata_int(metadata: dict, key: str) -> int | None:
    """A whole number the embedding's metadata records as text (images, steps); None when absent."""
    try:
        return int(metadata[key])
    except (KeyError, TypeError, ValueError):
        return None


def embedding_files(folder, classes: list[str], synthetic: pd.DataFrame | None,
                    variant: str | None = None) -> dict[str, dict]:
    """Per class, its embedding file's checksums and what it was trained with (images, steps, vectors); checks
    the synthetic images were drawn with it. ``variant``: the embedding of that variant where the folder holds
    one folder per class (:func:`~medti.evaluate.variants.embedding_path`)."""
    folder = Path(folder)
    out = {}
    for c in classes:
        path = embedding_path(folder, c, variant)
        if not path.is_file():
            raise InputError(f"{path}: the embedding of class '{c}'{f' (variant {variant})' if variant else ''} "
                             "is missing")
        emb = load_embedding(path)
        out[c] = {"file": path.relative_to(folder).as_posix(), "md5": file_md5(path), "checksum": emb.checksum(),
                  "token": emb.token, "num_vectors": emb.num_vectors, "images": _metadata_int(emb.metadata, "images"),
                  "steps": _metadata_int(emb.metadata, "steps"), "base_model": emb.metadata.get("base_model")}
        if synthetic is not None and "embedding_checksum" in synthetic:
            used = set(synthetic.loc[synthetic["class"] == c, "embedding_checksum"].astype(str))
            if used and used != {out[c]["checksum"]}:
                raise InputError(f"{path}: the synthetic images of class '{c}'"
                                 f"{f' (variant {variant})' if variant else ''} were not drawn with this embedding "
                                 "(embedding_checksum differs); generate them again")
    return out


# -- metrics.json --------------------------------------------------------------------------------------------

def _comparison_metrics(c: dict, other: str) -> dict:
    """A comparison (:class:`~medti.evaluate.statistics.Comparison`) as metrics.json keys ``..._vs_<other>``."""
    out = {f"auc_diff_vs_{other}": c["difference"], f"p_value_vs_{other}": c["p_bootstrap"]}
    for key in ("p_delong", "p_two_level", "p_seed_welch"):
        if c.get(key) is not None:
            out[f"{key}_vs_{other}"] = c[key]
    return out


def _condition_metrics(table: dict, reference: str) -> dict:
    """The flat per-condition block of metrics.json (DVC shows it as a table): the comparison with the
    reference and, for a condition on another embedding variant, the one with its main-variant counterpart."""
    out = {}
    for condition, row in table.items():
        entry = {k: row[k] for k in ("auc_mean", "auc_std", "ci_low", "ci_high", "n_seeds")}
        if row.get("two_level_ci_low") is not None:  # with the seed variance (seeds, then cases, resampled)
            entry.update({"ci_low_two_level": row["two_level_ci_low"], "ci_high_two_level": row["two_level_ci_high"]})
        if "comparison" in row:
            entry.update(_comparison_metrics(row["comparison"], reference))
        for other, c in (row.get("comparisons") or {}).items():
            entry.update(_comparison_metrics(c, other))
        out[condition] = entry
    return out


# What each statistic is (evaluate.json "statistics"): the labels of metrics.json and the report.
STATISTICS = {
    "ci_low, ci_high": "case level: bootstrap interval of the mean AUC over seeds, test cases resampled "
                       "(stratified by class), the trained networks fixed",
    "ci_low_two_level, ci_high_two_level": "with the seed variance: two-level bootstrap, each resample draws the "
                                           "seeds with replacement, then the test cases",
    "p_value_vs_<ref>": "case level: paired bootstrap (the same case resamples for both conditions)",
    "p_delong_vs_<ref>": "case level: DeLong's test of the difference of mean AUCs (binary tasks)",
    "p_two_level_vs_<ref>": "with the seed variance: two-level bootstrap (seeds drawn per condition, test cases "
                            "shared)",
    "p_seed_welch_vs_<ref>": "seed level: Welch's t-test on the seeds' AUCs (each seed one observation)",
    "..._vs_<other>": "a condition on another embedding variant than the main one against the condition with the "
                      "same real and synthetic amounts on the main variant: the same statistics, on the same case "
                      "resamples and seed draws",
}


def _quality_metrics(quality: dict | None) -> dict:
    if not quality:
        return {}
    out = {}
    for space, q in quality.items():
        if q.get("synthetic_vs_real_train") and q.get("real_test_vs_real_train"):
            out.update({f"{space}_n": q["n_compared"], f"{space}_n_reference": q["n_reference"],
                        f"{space}_fd": q["synthetic_vs_real_train"]["fd"],
                        f"{space}_kid": q["synthetic_vs_real_train"]["kid"],
                        f"{space}_fd_real_test": q["real_test_vs_real_train"]["fd"],
                        f"{space}_kid_real_test": q["real_test_vs_real_train"]["kid"]})
    return out


def _json_safe(obj):
    """NaN and infinities -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# -- one variant's synthetic set -----------------------------------------------------------------------------

@dataclass
class SyntheticAnalysis:
    """One variant's synthetic set measured: the real-only classifiers' agreement, image quality and the
    memorisation audit (its table, and the images its figures show)."""

    agreement: dict | None
    quality: dict
    table: pd.DataFrame
    audit: dict
    images: dict[str, np.ndarray]

    def metrics(self, classes: list[str]) -> dict:
        """Its metrics.json block: ``synthetic_agreement`` (with a real-only condition), ``quality``,
        ``memorisation``."""
        out = {}
        if self.agreement is not None:
            out["synthetic_agreement"] = {k: self.agreement[k] for k in [*classes, "overall"]
                                          if self.agreement[k] is not None}
        out["quality"] = _quality_metrics(self.quality)
        out["memorisation"] = {"level": self.audit["level"],
                               **{k: v for k, v in self.audit["overall"].items() if v is not None},
                               **{f"flag_threshold_{c}": v["flag_threshold"] for c, v in self.audit["per_class"].items()
                                  if v.get("flag_threshold") is not None}}
        return out


def _synthetic_details(a: SyntheticAnalysis | None) -> dict:
    """evaluate.json's blocks of one variant (None: no synthetic images)."""
    if a is None:
        return {"synthetic_agreement": None, "quality": None, "memorisation": None}
    return {"synthetic_agreement": a.agreement, "quality": a.quality,
            "memorisation": {k: v for k, v in a.audit.items() if not k.startswith("real_test_")}}


def _analyse_synthetic(synthetic: pd.DataFrame, runs: dict, net, size: int, real_frames: dict[str, pd.DataFrame],
                       real_images: dict[str, np.ndarray], real_raw: dict[str, np.ndarray], classes: list[str],
                       settings: EvaluateSettings, modality: str | None, source: str) -> SyntheticAnalysis:
    """Agreement, image quality and the memorisation audit of one synthetic set; the real images and their
    classifier features (``real_images``/``real_raw``: real_train, real_test) are shared by every set."""
    frames = {**real_frames, "synthetic": synthetic}
    images = {**real_images, "synthetic": read_manifest_images(list(synthetic["path"]), size=size)}
    raw = {**real_raw, "synthetic": classifier_features(net, images["synthetic"])}
    agreement = synthetic_agreement(runs, images["synthetic"], synthetic["label"].to_numpy(dtype=int), classes)
    quality = image_quality(frames, raw, classes, settings, source=source)
    centre = raw["real_train"].mean(axis=0)
    features = {name: unit_rows(f, centre) for name, f in raw.items()}
    pixels = {name: pixel_vectors(imgs, settings.memorisation_size) for name, imgs in images.items()}
    table, audit = memorisation_audit(synthetic, frames["real_train"], frames["real_test"], pixels, features, classes,
                                      modality, settings.threshold, settings.memorisation_level)
    if audit["overall"]["near_copies"]:
        log.warning("%d of %d synthetic images are near-copies of a real training image "
                    "(pixel correlation >= %.2f)", audit["overall"]["near_copies"], len(synthetic), settings.threshold)
    log.info("memorisation: %d of %d synthetic images flagged at level %g (about %.1f expected by chance with "
             "no copying)", audit["overall"]["flagged"], len(synthetic), settings.memorisation_level,
             audit["overall"]["expected_flags"])
    return SyntheticAnalysis(agreement, quality, table, audit,
                             {"synthetic": images["synthetic"], "real_train": images["real_train"]})


# auc_table.csv: the comparison columns, against the reference and against the main-variant counterpart
COMPARISON_COLUMNS = ("difference", "ci_low", "ci_high", "p_bootstrap", "p_delong", "two_level_ci_low",
                      "two_level_ci_high", "p_two_level", "p_seed_welch")


def _comparison_columns(c: dict | None, suffix: str) -> dict:
    return {f"{key}_vs_{suffix}": (c or {}).get(key) for key in COMPARISON_COLUMNS}


def _vs_text(other: str, c: dict) -> str:
    """'; vs other: +0.012, p = 0.3 (cases), 0.4 (seeds + cases)' for the log."""
    return (f"; vs {other}: {c['difference']:+.3f}, p = {c['p_bootstrap']:.3g} (cases)"
            + (f", {c['p_two_level']:.3g} (seeds + cases)" if c.get("p_two_level") is not None else ""))


# -- API -----------------------------------------------------------------------------------------------------

def evaluate(classifiers: PathLike, real_manifest: PathLike, out: PathLike, *,
             synthetic_manifest: PathLike | None = None, embeddings: PathLike | None = None,
             modality: str | None = None, classes: list[str] | None = None, conditions: list[str] | None = None,
             seeds: list[int] | None = None, settings: EvaluateSettings | None = None, params: dict | None = None,
             metrics_file: PathLike | None = None, roc_file: PathLike | None = None,
             variants: list[str] | None = None, interpolate: PathLike | None = None) -> EvaluateResult:
    """Evaluate one modality's classifier runs and synthetic sets; write the folder ``out`` (see the module
    package docstring). ``synthetic_manifest``: a manifest (one set, the main variant) or a folder of
    ``<variant>/manifest.csv`` (:func:`~medti.evaluate.variants.synthetic_sets`); ``variants``: the embedding
    variants to expect there, the main one first (pipeline: params.yaml's; None: the folders found).
    ``conditions``/``seeds``: the runs to expect (None: the folders found). ``metrics_file`` and ``roc_file``
    put metrics.json and roc.csv elsewhere than ``out`` (DVC declares them as metrics and plots, which may not
    lie inside another output). ``params`` (pipeline): its ``classifier.conditions`` say which variant each
    condition drew from (:mod:`~medti.evaluate.variants`). ``interpolate``: the modality's ``medti interpolate``
    folder (interpolate.csv and its images): its healthy-to-diseased sweeps are judged by the real-only
    classifiers (:mod:`~medti.evaluate.sweeps`)."""
    settings = (settings or EvaluateSettings()).validate()
    real_manifest, out = Path(real_manifest), Path(out)
    sweep_stale_temporaries(out.parent, name=out.name)
    real = read_rows(real_manifest, modality)
    classes = task_classes(real, str(real_manifest), classes)
    k = len(classes)
    splits = {s: real[real["split"] == s] for s in ("train", "val", "test")}
    for name, rows in splits.items():
        require_classes(rows["label"], k, f"{real_manifest}: {name} split ({len(rows)} images)")
    test = splits["test"]
    require_ci_sample(test["label"], k, settings.min_test_per_class, f"{real_manifest}: test split")
    sets = synthetic_sets(synthetic_manifest, variants) if synthetic_manifest is not None else {}
    main = next(iter(sets), None) or (variants[0] if variants else DEFAULT_MAIN)
    names = list(sets) or [main]
    synthetic = {}
    for v, path in sets.items():
        synthetic[v] = read_rows(path, modality)
        check_same_labels(real, synthetic[v], str(real_manifest), str(path))
    emb_info = ({v: embedding_files(embeddings, classes, synthetic.get(v), v) for v in names}
                if embeddings is not None else {})

    runs = load_runs(classifiers, test, classes, real_manifest, conditions, seeds)
    labels = test["label"].to_numpy(dtype=int)
    reference = settings.reference
    if reference not in runs:
        raise ConfigError(f"evaluate.reference: condition '{reference}' has no classifier runs in {classifiers} "
                          f"(have: {', '.join(runs)})")
    runs = {reference: runs[reference], **{c: r for c, r in runs.items() if c != reference}}
    few = [c for c, rs in runs.items() if len(rs) < 3]
    if few:
        log.warning("condition(s) %s have fewer than 3 seeds: their standard deviations mean little", ", ".join(few))
    variant_of = condition_variants(runs, params, main)
    pairs = cross_variant_pairs(runs, params, variant_of, main, {v: len(df) for v, df in synthetic.items()})
    table = summarise_conditions(labels, {c: [r.probs for r in rs] for c, rs in runs.items()}, reference,
                                 settings.bootstrap, settings.confidence, settings.seed, pairs=pairs)
    for condition, rs in runs.items():
        table[condition]["variant"] = variant_of[condition]
        table[condition]["seeds"] = [r.seed for r in rs]
        table[condition]["n_real"] = [r.metrics.get("n_real") for r in rs]
        table[condition]["n_synthetic"] = [r.metrics.get("n_synthetic") for r in rs]
    title = modality or real_manifest.parent.name

    analyses: dict[str, SyntheticAnalysis] = {}
    feature_info = None
    if any(len(df) for df in synthetic.values()):
        fr = feature_run(runs, reference)
        net, spec = load_classifier(fr.folder)
        feature_info = {"condition": fr.condition, "seed": fr.seed, "folder": str(fr.folder), "arch": spec.arch,
                        "n_synthetic": fr.metrics.get("n_synthetic")}
        log.info("image features from the %s classifier (seed %d)", fr.condition, fr.seed)
        real_frames = {"real_train": splits["train"], "real_test": test}
        real_images = {name: read_manifest_images(list(df["path"]), size=spec.size) for name, df in real_frames.items()}
        real_raw = {name: classifier_features(net, imgs) for name, imgs in real_images.items()}
        for v, df in synthetic.items():
            if len(names) > 1:
                log.info("%s, variant %s: %d synthetic images", title, v, len(df))
            if len(df):
                analyses[v] = _analyse_synthetic(df, runs, net, spec.size, real_frames, real_images, real_raw,
                                                 classes, settings, modality, str(real_manifest))
    else:
        log.info("no synthetic images: image quality and the memorisation audit are skipped")

    sweeps = judge_sweeps(runs, interpolate, classes) if interpolate is not None else {}
    facts = {v: variant_facts(v, emb_info.get(v), params, modality) for v in names}
    metrics = {**_condition_metrics(table, reference), "n_test": int(len(test))}
    if main in analyses:
        metrics.update(analyses[main].metrics(classes))
    if sweeps:
        metrics["sweeps"] = sweep_metrics(sweeps)
    if sets:
        metrics["variants"] = {v: {**(analyses[v].metrics(classes) if v in analyses else {}),
                                   **{key: x for key, x in facts[v].items() if x is not None}} for v in names}
    folder_of = {v: "." if v == main else f"variants/{v}" for v in names}
    base_models = sorted({str(b) for df in synthetic.values() if "base_model" in df for b in df["base_model"]})
    details = {
        "modality": modality, "classes": classes, "reference": reference, "settings": settings.to_dict(),
        "n_test": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "conditions": table, "statistics": STATISTICS, "feature_classifier": feature_info,
        "main_variant": main, "variant_names": names,  # in order, main first (JSON keys are written sorted)
        "cross_variant_comparisons": pairs,
        **_synthetic_details(analyses.get(main)),  # the main variant's, as before variants
        "embeddings": emb_info.get(main, {}), "synthetic_base_models": base_models, "sweeps": sweeps,
        "variants": {v: {"synthetic_manifest": str(sets[v]) if v in sets else None,
                         "n_synthetic": int(len(synthetic[v])) if v in synthetic else 0,
                         "folder": folder_of[v], **facts[v], "embeddings": emb_info.get(v, {}),
                         **_synthetic_details(analyses.get(v))} for v in names},
        "inputs": {"real_manifest": str(real_manifest), "real_manifest_sha256": file_sha256(real_manifest),
                   "synthetic": str(synthetic_manifest) if synthetic_manifest is not None else None,
                   "synthetic_manifest": str(sets[main]) if main in sets else None,
                   "synthetic_manifest_sha256": file_sha256(sets[main]) if main in sets else None,
                   "synthetic_manifests_sha256": {v: file_sha256(path) for v, path in sets.items()},
                   "classifiers": str(classifiers), "embeddings": str(embeddings) if embeddings else None,
                   "embeddings_md5": dvc_md5(embeddings) if embeddings else None,
                   "interpolate": str(interpolate) if interpolate is not None else None,
                   "interpolate_table_sha256": (file_sha256(Path(interpolate) / INTERPOLATE_TABLE)
                                                if interpolate is not None else None)},
    }
    rocs = roc_table(labels, runs)
    matrices = confusions(labels, runs, k)
    seeds_rows = pd.DataFrame([{"condition": r.condition, "variant": variant_of[r.condition], "seed": r.seed,
                                "test_auc": table[r.condition]["aucs"][i],
                                "best_val_auc": r.metrics.get("best_val_auc"), "best_step": r.metrics.get("best_step"),
                                "n_real": r.metrics.get("n_real"), "n_synthetic": r.metrics.get("n_synthetic")}
                               for rs in runs.values() for i, r in enumerate(rs)])
    auc_rows = pd.DataFrame([{"condition": c, "variant": row["variant"], "n_seeds": row["n_seeds"],
                              "auc_mean": row["auc_mean"], "auc_std": row["auc_std"], "ci_low": row["ci_low"],
                              "ci_high": row["ci_high"], "two_level_ci_low": row["two_level_ci_low"],
                              "two_level_ci_high": row["two_level_ci_high"],
                              **_comparison_columns(row.get("comparison"), reference),
                              "main_variant_condition": pairs.get(c),
                              **_comparison_columns((row.get("comparisons") or {}).get(pairs.get(c)), "main_variant")}
                             for c, row in table.items()])

    def csv(df: pd.DataFrame) -> str:
        return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")

    tags = {"modality": modality}
    inputs = {"real": real_manifest, "synthetic": synthetic_manifest, "embeddings": embeddings,
              "interpolate": interpolate}
    with track(params, "evaluate", run_name=f"evaluate {title}", tags=tags, inputs=inputs) as tracker:
        tracker.log_params({"evaluate": settings.to_dict(), "modality": modality, "classes": ",".join(classes),
                            "conditions": ",".join(runs), "n_test": len(test), "variants": ",".join(names)})
        with atomic_dir(out) as tmp:
            # in the order built (the reference first, the main variant first): not sorted like other JSON files
            write_text(tmp / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
            write_json(tmp / "evaluate.json", _json_safe(details))
            write_text(tmp / "roc.csv", csv(rocs))
            write_text(tmp / "auc_table.csv", csv(auc_rows))
            write_text(tmp / "auc_seeds.csv", csv(seeds_rows))
            write_text(tmp / "confusion.csv", csv(pd.DataFrame(
                [{"condition": c, "true": classes[i], "predicted": classes[j], "count": int(m[i, j])}
                 for c, m in matrices.items() for i in range(k) for j in range(k)])))
            conditions_roc_figure(labels, runs, table, tmp / "roc.png", f"{title}: test ROC (mean ± sd over seeds)")
            confusion_matrices({f"{c} ({len(runs[c])} seeds)": m for c, m in matrices.items()}, classes,
                               tmp / "confusion.png", suptitle=f"{title}: test predictions, all seeds added up")
            if sweeps:
                sweep_figure(sweeps, tmp / SWEEP_FIGURE, title)
            for v, a in analyses.items():  # the main variant's at the top, the others' in variants/<name>/
                folder = tmp / folder_of[v]
                folder.mkdir(parents=True, exist_ok=True)
                write_text(folder / "memorisation.csv", csv(a.table))
                memorisation_figures(a.table, a.audit, a.images, splits["train"], classes, settings.top_k, folder,
                                     f"{title}, variant {v}" if len(names) > 1 else title)
            for name, target in (("metrics.json", metrics_file), ("roc.csv", roc_file)):
                if target is not None:  # moved out last, so a failure before this point leaves neither
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / name, target)
        tracker.log_metrics(_flat_metrics(metrics))
        for name in sorted(p.name for p in out.iterdir()):
            tracker.log_artifact(out / name)
    for condition, row in table.items():
        v = row["variant"]
        log.info("%s %s%s: AUC %.3f ± %.3f (%d seeds; %.0f%% CI %.3f-%.3f)%s%s", title, condition,
                 f" [variant {v}]" if v is not None else " [no synthetic images]", row["auc_mean"], row["auc_std"],
                 row["n_seeds"], 100 * settings.confidence, row["ci_low"], row["ci_high"],
                 _vs_text(reference, row["comparison"]) if "comparison" in row else "",
                 "".join(_vs_text(o, c) for o, c in (row.get("comparisons") or {}).items()))
    return EvaluateResult(out=out, metrics=metrics)


def _flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out


def evaluate_from_params(params: dict, modality: str, classifiers: PathLike, real_manifest: PathLike,
                         synthetic_manifest: PathLike | None, embeddings: PathLike | None, out: PathLike,
                         metrics_file: PathLike | None = None, roc_file: PathLike | None = None,
                         conditions: list[str] | None = None, seeds: list[int] | None = None,
                         interpolate: PathLike | None = None, **overrides) -> EvaluateResult:
    """The pipeline form: the runs are params.yaml's conditions x seeds (unless ``conditions``/``seeds`` are
    given), the synthetic sets its embedding variants (``synthetic_manifest``: the modality's folder of
    ``<variant>/manifest.csv``, or one manifest); settings from ``evaluate`` and the project seed,
    ``overrides`` (EvaluateSettings fields) on top; ``interpolate`` as for :func:`evaluate` (only where given)."""
    classes = modality_of(params, modality)["classes"]
    section = stage(params, "evaluate", modality)
    seed = overrides.pop("seed", None)
    settings = EvaluateSettings.from_section(section, seed=params.get("seed") if seed is None else seed, **overrides)
    clf = params.get("classifier") or {}
    if conditions is None:
        conditions = list(clf.get("conditions") or {}) or None
    if seeds is None:
        seeds = [int(s) for s in clf.get("seeds") or []] or None
    return evaluate(classifiers, real_manifest, out, synthetic_manifest=synthetic_manifest, embeddings=embeddings,
                    modality=modality, classes=classes, conditions=conditions, seeds=seeds, settings=settings,
                    params=params, metrics_file=metrics_file, roc_file=roc_file, variants=list(params_variants(params)),
                    interpolate=interpolate)
