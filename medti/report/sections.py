"""The report's sections, one modality at a time: AUC tables, sample images, embedding training, image
quality, the memorisation audit and checksums. Each adds its blocks to a :class:`Document`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medti.classifier.data import read_rows
from medti.figures import curves, side_by_side_grid
from medti.hashing import dvc_md5, file_sha256
from medti.imageset import read_manifest_images
from medti.report.document import Document, Figure, Table, fmt, fmt_count, fmt_p

if TYPE_CHECKING:
    from medti.report.build import ModalityInputs


# -- figures -------------------------------------------------------------------------------------------------

def sample_figure(m: ModalityInputs, n: int, seed: int, path: Path) -> bool:
    """Real training images and synthetic images of each class, side by side; False when there are none."""
    rng = np.random.default_rng(seed)
    real = read_rows(m.prepared_manifest, m.name)
    real = real[real["split"] == "train"]
    syn = read_rows(m.synthetic_manifest, m.name) if m.synthetic_manifest is not None else None
    rows = {}
    for k, c in enumerate(m.details["classes"]):
        def pick(df, k=k):
            rows_c = df[df["label"] == k]
            idx = np.sort(rng.choice(len(rows_c), min(n, len(rows_c)), replace=False))
            return list(read_manifest_images(list(rows_c["path"].iloc[idx]))) if len(idx) else []
        rows[c] = (pick(real), pick(syn) if syn is not None else [])
    if not any(a or b for a, b in rows.values()):
        return False
    side_by_side_grid(rows, path, left="real (training split)", right="synthetic",
                      suptitle=f"{m.name}: {n} real and {n} synthetic images per class")
    return True


def loss_figure(m: ModalityInputs, path: Path) -> bool:
    """The embeddings' training-loss curves (one per class), smoothed."""
    series = {}
    for c, d in m.train_reports.items():
        df = pd.read_csv(d / "metrics.csv")
        if {"step", "loss"} <= set(df.columns) and len(df):
            series[f"<{m.name}-{c}>"] = (df["step"].to_numpy(), df["loss"].to_numpy())
    if not series:
        return False
    longest = max(len(x) for x, _ in series.values())
    curves(series, path, xlabel="step", ylabel="diffusion loss (MSE)",
           smooth=max(2, longest // 20) if longest >= 20 else 0, title=f"{m.name}: embedding training loss")
    return True


# -- the document --------------------------------------------------------------------------------------------

def _conditions_text(params: dict | None, condition: str) -> str:
    c = ((params or {}).get("classifier") or {}).get("conditions", {}).get(condition)
    return f"{condition} (real: {c['real']}, synthetic: {c['synthetic']})" if c else condition


def auc_overview(doc: Document, inputs: list[ModalityInputs], params: dict | None) -> None:
    conditions = []
    for m in inputs:
        conditions += [c for c in m.details["conditions"] if c not in conditions]
    rows = []
    for c in conditions:
        row = [_conditions_text(params, c)]
        for m in inputs:
            r = m.details["conditions"].get(c)
            row.append(f"{fmt(r['auc_mean'])} ± {fmt(r['auc_std'])}" if r else "–")
        rows.append(row)
    ref = inputs[0].details["reference"]
    doc.add(Table(["Training data"] + [m.name for m in inputs], rows,
                  caption=f"Test AUC on the held-out real test split, mean ± standard deviation over seeds (as in "
                          f"the paper's table). Details, intervals and p-values against '{ref}' per modality below."))


def auc_section(doc: Document, m: ModalityInputs, params: dict | None) -> None:
    d = m.details
    ref, s = d["reference"], d["settings"]
    level = int(round(100 * s["confidence"]))
    binary = len(d["classes"]) == 2
    rows = []

    def interval(lo, hi, signed=False) -> str:  # None: one seed, no seed variance to include
        if lo is None or hi is None:
            return "–"
        return f"[{lo:+.3f}, {hi:+.3f}]" if signed else f"{fmt(lo)}–{fmt(hi)}"

    for c, r in d["conditions"].items():
        comp = r.get("comparison")
        rows.append([
            c, f"{fmt_count(r.get('n_real', []))} + {fmt_count(r.get('n_synthetic', []))}", str(r["n_seeds"]),
            f"{fmt(r['auc_mean'])} ± {fmt(r['auc_std'])}", f"{fmt(r['ci_low'])}–{fmt(r['ci_high'])}",
            interval(r.get("two_level_ci_low"), r.get("two_level_ci_high")),
            ", ".join(fmt(a) for a in r["aucs"]),
            f"{comp['difference']:+.3f} [{comp['ci_low']:+.3f}, {comp['ci_high']:+.3f}]" if comp else "(reference)",
            fmt_p(comp["p_bootstrap"]) if comp else "–", fmt_p(comp["p_delong"]) if comp else "–",
            interval(comp.get("two_level_ci_low"), comp.get("two_level_ci_high"), signed=True) if comp else "–",
            fmt_p(comp["p_two_level"]) if comp and comp.get("p_two_level") is not None else "–",
            fmt_p(comp["p_seed_welch"]) if comp and comp.get("p_seed_welch") is not None else "–",
        ])
    n_test = ", ".join(f"{c}: {n}" for c, n in d["n_test"].items())
    doc.add(Table(["Condition", "Training images (real + synthetic)", "Seeds", "AUC (mean ± sd)",
                   f"{level}% CI (cases)", f"{level}% CI (seeds + cases)", "AUC per seed",
                   f"Δ AUC vs {ref} [{level}% CI, cases]", "p (paired bootstrap)", "p (DeLong)",
                   f"Δ {level}% CI (seeds + cases)", "p (two-level bootstrap, seeds + cases)",
                   "p (Welch, seed AUCs)"], rows,
                  caption=f"Test split: {n_test} images. Case level (the trained networks held fixed): CI from "
                          f"{s['bootstrap']} bootstrap resamples of the test set (stratified by class) of the seeds' "
                          f"mean AUC; Δ: difference of mean AUCs, on the same resamples (paired); DeLong's test of "
                          f"the same contrast{'' if len(d['classes']) == 2 else ' (binary tasks only)'}. With the "
                          f"seed variance (what the ± shows): the two-level bootstrap draws each condition's seeds "
                          f"with replacement, then the test cases; Welch's t-test takes each seed's AUC as one "
                          f"observation (both need two seeds or more; with few seeds they are coarse). AUC: "
                          f"{'positive class ' + repr(d['classes'][1]) if binary else 'one-vs-rest macro average'}."))


def quality_section(doc: Document, m: ModalityInputs) -> None:
    q = m.details.get("quality")
    if not q:
        doc.para("No synthetic images: no image quality measured.")
        return
    rows = []
    for space, label in (("classifier", "real-only classifier"), ("inception", "Inception-v3")):
        r = q.get(space) or {}
        if "skipped" in r:
            rows.append([label, "(skipped)", "–", "–", "–"])
            continue
        ref = {"ti": "the embeddings' training images", "train": "real training"}.get(r.get("reference"),
                                                                                         "real training")
        pairs = [(f"synthetic vs {ref}", r.get("synthetic_vs_real_train")),
                 (f"real test vs {ref} (yardstick)", r.get("real_test_vs_real_train"))]
        for c, v in (r.get("per_class") or {}).items():
            pairs += [(f"synthetic vs {ref}, class {c}", v),
                      (f"real test vs {ref}, class {c} (yardstick)", (r.get("per_class_real_test") or {}).get(c))]
        for what, v in pairs:
            if v:
                rows.append([label, what, fmt(v["fd"], 2), f"{fmt(v['kid'], 4)} ± {fmt(v['kid_std'], 4)}",
                             f"{v['n_a']} / {v['n_b']}"])
    fc = m.details.get("feature_classifier") or {}
    doc.add(Table(["Feature space", "Sets", "FD", "KID (mean ± sd)", "Images"], rows,
                  caption=f"Fréchet (FD) and kernel (KID) distances; lower is closer. The classifier's features "
                          f"({fc.get('arch')}, condition '{fc.get('condition')}', seed {fc.get('seed')}) need no "
                          f"download but are not comparable with published FIDs: compare with the yardstick row, "
                          f"measured on as many images. Inception sees the images at their prepared size. KID "
                          f"subsets hold at most half the smaller set."))
    skipped = (q.get("inception") or {}).get("skipped")
    if skipped:
        doc.para(skipped)


def agreement_section(doc: Document, m: ModalityInputs) -> None:
    """Do the synthetic images carry their class? The real-only classifiers' verdict, per class."""
    a = m.details.get("synthetic_agreement")
    if not a:
        doc.para("No synthetic images, or no real-only classifier: agreement not measured.")
        return
    classes = m.details.get("classes") or []
    rows = [[c, fmt(a.get(c), 2)] for c in classes if a.get(c) is not None] + [["all", fmt(a.get("overall"), 2)]]
    doc.add(Table(["Synthetic images of class", "Put in that class by the real-only classifiers"], rows,
                  caption=f"Each real-only classifier (condition '{a.get('classifier_condition')}', seeds "
                          f"{', '.join(map(str, a.get('seeds') or []))}) labels every synthetic image; the share "
                          f"of a class's synthetic images it puts in that class, averaged over the seeds. Chance "
                          f"is about 1/{max(2, len(classes))}; a synthetic set that carries its class scores "
                          f"near 1."))


def memorisation_section(doc: Document, m: ModalityInputs, figures: Path) -> None:
    a = m.details.get("memorisation")
    if not a:
        doc.para("No synthetic images: no memorisation audit.")
        return
    thr = a["threshold"]
    o = a["overall"]
    lvl = a.get("level")
    flagged = (f"{o['flagged']} are flagged at level {lvl:g}: above the upper {lvl:g} quantile of the real test "
               f"images' own r to their nearest training image (the null; with no copying about "
               f"{o.get('expected_flags', 0):.1f} flags are expected by chance)" if "flagged" in o
               else f"{o.get('closer_than_real_test', 0)} are closer to a training image than any real test image of "
                    f"their class is")
    doc.para(f"Every synthetic image was compared with every real training image: by pixel correlation r (grey "
             f"{m.details['settings']['memorisation_size']} px) and by the cosine similarity of the real-only "
             f"classifier's features. {o['near_copies']} of {o['n']} synthetic images are near-copies (r ≥ {thr:.2f}); "
             f"{flagged}. A synthetic image no closer to the training set than unseen real images are gives no sign "
             f"of memorisation.")
    rows = []
    embeddings = m.details.get("embeddings") or {}
    for c, s in a["per_class"].items():
        token = (embeddings.get(c) or {}).get("token") or f"<{m.name}-{c}>"
        if not s.get("n"):
            rows.append([c, token, "0", "–", "–", "–", "–", "–", "–"])
            continue
        flag = (f"{s['flagged']} (r > {fmt(s.get('flag_threshold'))}, {s.get('null')} null)" if "flagged" in s
                else str(s.get("closer_than_real_test")))
        rows.append([c, token, str(s["n"]), str(s["near_copies"]), flag,
                     f"{fmt(s['pixel_similarity_median'])} [{fmt(s['pixel_similarity_max'])}]",
                     f"{fmt(s['real_test_pixel_similarity_median'])} [{fmt(s['real_test_pixel_similarity_max'])}]",
                     fmt(s["feature_similarity_median"]), f"{100 * s['nearest_is_embedding_training_image']:.0f}%"])
    doc.add(Table(["Class", "Embedding", "Synthetic images", f"Near-copies (r ≥ {thr:.2f})",
                   "Flagged (calibrated threshold)", "r to nearest training: median [max]",
                   "Real test r: median [max] (yardstick)", "Feature cosine: median",
                   "Nearest is one of the embedding's training images"], rows,
                  caption="Per embedding (one per class). Full list: memorisation.csv in the evaluate folder."))
    for name, caption in (("memorisation_pairs.png", "The closest synthetic–training pairs (pixel correlation)."),
                          ("memorisation_similarity.png", "Similarity to the nearest real training image: synthetic "
                                                          "images against real test images (the yardstick)."),
                          ("memorisation_features.png", "The same in the classifier's feature space.")):
        copy_figure(doc, m.evaluate_dir / name, figures / f"{m.name}_{name}", caption)


def copy_figure(doc: Document, src: Path, dst: Path, caption: str) -> None:
    if src.is_file():
        shutil.copyfile(src, dst)
        doc.add(Figure(dst, caption))


def checksum_section(doc: Document, m: ModalityInputs, prepared_dir: Path, synthetic_dir: Path | None) -> None:
    d = m.details
    rows = [["prepared data (folder, DVC md5)", str(prepared_dir / m.name), dvc_md5(prepared_dir / m.name)],
            ["prepared manifest (sha256)", str(m.prepared_manifest), file_sha256(m.prepared_manifest)]]
    if m.synthetic_manifest is not None:
        rows += [["synthetic data (folder, DVC md5)", str(m.synthetic_manifest.parent),
                  dvc_md5(m.synthetic_manifest.parent)],
                 ["synthetic manifest (sha256)", str(m.synthetic_manifest), file_sha256(m.synthetic_manifest)]]
    inputs = d.get("inputs") or {}
    if inputs.get("embeddings_md5"):
        rows.append(["embeddings (folder, DVC md5)", inputs["embeddings"], inputs["embeddings_md5"]])
    for e in (d.get("embeddings") or {}).values():
        rows.append([f"embedding {e['token']} (file md5 / vectors sha256)", e["file"], f"{e['md5']} / {e['checksum']}"])
    if inputs.get("real_manifest_sha256") and inputs["real_manifest_sha256"] != rows[1][2]:
        doc.warning(f"{m.prepared_manifest} changed after the evaluation (its checksum differs from the one "
                    "medti evaluate read): re-run the pipeline")
    doc.add(Table(["Item", "Path", "Checksum"], rows))
