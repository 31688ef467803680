"""``evaluate()``: one modality's classifier experiment end to end (see :mod:`medti.evaluate`): the runs read
and summarised, image quality and the memorisation audit measured, the outputs written and tracked."""

from __future__ import annotations

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
from medti.embeddings import load_embedding
from medti.errors import ConfigError, InputError
from medti.evaluate.agreement import synthetic_agreement
from medti.evaluate.memorisation import memorisation_audit, memorisation_figures, pixel_vectors, unit_rows
from medti.evaluate.quality import classifier_features, image_quality
from medti.evaluate.runs import conditions_roc_figure, confusions, feature_run, load_runs, roc_table
from medti.evaluate.settings import EvaluateSettings
from medti.evaluate.statistics import require_ci_sample, require_classes, summarise_conditions
from medti.figures import confusion_matrices
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

def embedding_files(folder, classes: list[str], synthetic: pd.DataFrame | None) -> dict[str, dict]:
    """Per class, its embedding file's checksums; checks the synthetic images were drawn with it."""
    folder = Path(folder)
    out = {}
    for c in classes:
        path = folder / f"{c}.safetensors"
        if not path.is_file():
            raise InputError(f"{path}: the embedding of class '{c}' is missing")
        emb = load_embedding(path)
        out[c] = {"file": path.name, "md5": file_md5(path), "checksum": emb.checksum(), "token": emb.token,
                  "num_vectors": emb.num_vectors, "base_model": emb.metadata.get("base_model")}
        if synthetic is not None and "embedding_checksum" in synthetic:
            used = set(synthetic.loc[synthetic["class"] == c, "embedding_checksum"].astype(str))
            if used and used != {out[c]["checksum"]}:
                raise InputError(f"{path}: the synthetic images of class '{c}' were not drawn with this embedding "
                                 "(embedding_checksum differs); generate them again")
    return out


# -- metrics.json --------------------------------------------------------------------------------------------

def _condition_metrics(table: dict, reference: str) -> dict:
    """The flat per-condition block of metrics.json (DVC shows it as a table)."""
    out = {}
    for condition, row in table.items():
        entry = {k: row[k] for k in ("auc_mean", "auc_std", "ci_low", "ci_high", "n_seeds")}
        if row.get("two_level_ci_low") is not None:  # with the seed variance (seeds, then cases, resampled)
            entry.update({"ci_low_two_level": row["two_level_ci_low"], "ci_high_two_level": row["two_level_ci_high"]})
        if "comparison" in row:
            c = row["comparison"]
            entry.update({f"auc_diff_vs_{reference}": c["difference"], f"p_value_vs_{reference}": c["p_bootstrap"]})
            if c["p_delong"] is not None:
                entry[f"p_delong_vs_{reference}"] = c["p_delong"]
            if c.get("p_two_level") is not None:
                entry[f"p_two_level_vs_{reference}"] = c["p_two_level"]
            if c.get("p_seed_welch") is not None:
                entry[f"p_seed_welch_vs_{reference}"] = c["p_seed_welch"]
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


# -- API -----------------------------------------------------------------------------------------------------

def evaluate(classifiers: PathLike, real_manifest: PathLike, out: PathLike, *,
             synthetic_manifest: PathLike | None = None, embeddings: PathLike | None = None,
             modality: str | None = None, classes: list[str] | None = None, conditions: list[str] | None = None,
             seeds: list[int] | None = None, settings: EvaluateSettings | None = None, params: dict | None = None,
             metrics_file: PathLike | None = None, roc_file: PathLike | None = None) -> EvaluateResult:
    """Evaluate one modality's classifier runs and synthetic set; write the folder ``out`` (see the module
    package docstring). ``conditions``/``seeds``: the runs to expect (None: the folders found). ``metrics_file`` and
    ``roc_file`` put metrics.json and roc.csv elsewhere than ``out`` (DVC declares them as metrics and plots,
    which may not lie inside another output)."""
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
    synthetic = None
    if synthetic_manifest is not None:
        synthetic_manifest = Path(synthetic_manifest)
        synthetic = read_rows(synthetic_manifest, modality)
        check_same_labels(real, synthetic, str(real_manifest), str(synthetic_manifest))
    emb_info = embedding_files(embeddings, classes, synthetic) if embeddings is not None else {}

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
    table = summarise_conditions(labels, {c: [r.probs for r in rs] for c, rs in runs.items()}, reference,
                                 settings.bootstrap, settings.confidence, settings.seed)
    for condition, rs in runs.items():
        table[condition]["seeds"] = [r.seed for r in rs]
        table[condition]["n_real"] = [r.metrics.get("n_real") for r in rs]
        table[condition]["n_synthetic"] = [r.metrics.get("n_synthetic") for r in rs]
    title = modality or real_manifest.parent.name

    quality = memo_table = audit = agreement = None
    feature_info = None
    if synthetic is not None and len(synthetic):
        fr = feature_run(runs, reference)
        net, spec = load_classifier(fr.folder)
        feature_info = {"condition": fr.condition, "seed": fr.seed, "folder": str(fr.folder), "arch": spec.arch,
                        "n_synthetic": fr.metrics.get("n_synthetic")}
        log.info("image features from the %s classifier (seed %d)", fr.condition, fr.seed)
        frames = {"real_train": splits["train"], "real_test": test, "synthetic": synthetic}
        images = {name: read_manifest_images(list(df["path"]), size=spec.size) for name, df in frames.items()}
        raw = {name: classifier_features(net, imgs) for name, imgs in images.items()}
        agreement = synthetic_agreement(runs, images["synthetic"], synthetic["label"].to_numpy(dtype=int), classes)
        quality = image_quality(frames, raw, classes, settings, source=str(real_manifest))
        centre = raw["real_train"].mean(axis=0)
        features = {name: unit_rows(f, centre) for name, f in raw.items()}
        pixels = {name: pixel_vectors(imgs, settings.memorisation_size) for name, imgs in images.items()}
        memo_table, audit = memorisation_audit(synthetic, splits["train"], test, pixels, features, classes, modality,
                                               settings.threshold, settings.memorisation_level)
        if audit["overall"]["near_copies"]:
            log.warning("%d of %d synthetic images are near-copies of a real training image "
                        "(pixel correlation >= %.2f)", audit["overall"]["near_copies"], len(synthetic),
                        settings.threshold)
        log.info("memorisation: %d of %d synthetic images flagged at level %g (about %.1f expected by chance with "
                 "no copying)", audit["overall"]["flagged"], len(synthetic), settings.memorisation_level,
                 audit["overall"]["expected_flags"])
    else:
        log.info("no synthetic images: image quality and the memorisation audit are skipped")

    metrics = {**_condition_metrics(table, reference), "n_test": int(len(test))}
    if agreement is not None:
        metrics["synthetic_agreement"] = {k2: agreement[k2] for k2 in [*classes, "overall"]
                                          if agreement[k2] is not None}
    if quality is not None:
        metrics["quality"] = _quality_metrics(quality)
        metrics["memorisation"] = {"level": audit["level"],
                                   **{k2: v for k2, v in audit["overall"].items() if v is not None},
                                   **{f"flag_threshold_{c}": v["flag_threshold"] for c, v in audit["per_class"].items()
                                      if v.get("flag_threshold") is not None}}
    has_models = synthetic is not None and "base_model" in synthetic
    base_models = sorted(set(synthetic["base_model"].astype(str))) if has_models else []
    details = {
        "modality": modality, "classes": classes, "reference": reference, "settings": settings.to_dict(),
        "n_test": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "conditions": table, "statistics": STATISTICS, "quality": quality, "feature_classifier": feature_info,
        "memorisation": {k2: v for k2, v in audit.items() if not k2.startswith("real_test_")} if audit else None,
        "embeddings": emb_info, "synthetic_base_models": base_models, "synthetic_agreement": agreement,
        "inputs": {"real_manifest": str(real_manifest), "real_manifest_sha256": file_sha256(real_manifest),
                   "synthetic_manifest": str(synthetic_manifest) if synthetic_manifest else None,
                   "synthetic_manifest_sha256": file_sha256(synthetic_manifest) if synthetic_manifest else None,
                   "classifiers": str(classifiers), "embeddings": str(embeddings) if embeddings else None,
                   "embeddings_md5": dvc_md5(embeddings) if embeddings else None},
    }
    rocs = roc_table(labels, runs)
    matrices = confusions(labels, runs, k)
    seeds_rows = pd.DataFrame([{"condition": r.condition, "seed": r.seed, "test_auc": table[r.condition]["aucs"][i],
                                "best_val_auc": r.metrics.get("best_val_auc"), "best_step": r.metrics.get("best_step"),
                                "n_real": r.metrics.get("n_real"), "n_synthetic": r.metrics.get("n_synthetic")}
                               for rs in runs.values() for i, r in enumerate(rs)])
    auc_rows = pd.DataFrame([{"condition": c, "n_seeds": row["n_seeds"], "auc_mean": row["auc_mean"],
                              "auc_std": row["auc_std"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                              "two_level_ci_low": row["two_level_ci_low"],
                              "two_level_ci_high": row["two_level_ci_high"],
                              **{f"{key}_vs_{reference}": (row.get("comparison") or {}).get(key)
                                 for key in ("difference", "ci_low", "ci_high", "p_bootstrap", "p_delong",
                                             "two_level_ci_low", "two_level_ci_high", "p_two_level",
                                             "p_seed_welch")}}
                             for c, row in table.items()])

    def csv(df: pd.DataFrame) -> str:
        return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")

    tags = {"modality": modality}
    inputs = {"real": real_manifest, "synthetic": synthetic_manifest, "embeddings": embeddings}
    with track(params, "evaluate", run_name=f"evaluate {title}", tags=tags, inputs=inputs) as tracker:
        tracker.log_params({"evaluate": settings.to_dict(), "modality": modality, "classes": ",".join(classes),
                            "conditions": ",".join(runs), "n_test": len(test)})
        with atomic_dir(out) as tmp:
            write_json(tmp / "metrics.json", _json_safe(metrics))
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
            if memo_table is not None:
                write_text(tmp / "memorisation.csv", csv(memo_table))
                memorisation_figures(memo_table, audit, images, splits["train"], classes, settings.top_k,
                                     tmp, title)
            for name, target in (("metrics.json", metrics_file), ("roc.csv", roc_file)):
                if target is not None:  # moved out last, so a failure before this point leaves neither
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / name, target)
        tracker.log_metrics(_flat_metrics(metrics))
        for name in sorted(p.name for p in out.iterdir()):
            tracker.log_artifact(out / name)
    for condition, row in table.items():
        c = row.get("comparison")
        log.info("%s %s: AUC %.3f ± %.3f (%d seeds; %.0f%% CI %.3f-%.3f)%s", title, condition, row["auc_mean"],
                 row["auc_std"], row["n_seeds"], 100 * settings.confidence, row["ci_low"], row["ci_high"],
                 (f"; vs {reference}: {c['difference']:+.3f}, p = {c['p_bootstrap']:.3g} (cases)"
                  + (f", {c['p_two_level']:.3g} (seeds + cases)" if c.get("p_two_level") is not None else ""))
                 if c else "")
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
                         **overrides) -> EvaluateResult:
    """The pipeline form: the runs are params.yaml's conditions x seeds (unless ``conditions``/``seeds`` are
    given); settings from ``evaluate`` and the project seed, ``overrides`` (EvaluateSettings fields) on top."""
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
                    params=params, metrics_file=metrics_file, roc_file=roc_file)
