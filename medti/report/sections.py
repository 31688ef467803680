"""The report's sections, one modality at a time: AUC tables, the embedding variants, sample images, embedding
training, image quality, the memorisation audit and checksums. Each adds its blocks to a :class:`Document`.

Embedding variants (``train_embedding.variants``): every section that shows synthetic images or embeddings shows
each variant, the main one first, labelled with its name and images per embedding where there are several."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medti.classifier.data import read_rows
from medti.evaluate.sweeps import FIGURE as SWEEP_FIGURE
from medti.figures import curves, side_by_side_grid
from medti.hashing import dvc_md5, file_sha256
from medti.imageset import read_manifest_images
from medti.report.document import Document, Figure, Table, fmt, fmt_count, fmt_p

if TYPE_CHECKING:
    from medti.report.build import ModalityInputs

# The paper's embedding-size ablation, the figure the variants table echoes.
PAPER_ABLATION = ("This is the paper's key ablation: embeddings learnt from 10 rather than 100 images gave a "
                  "synthetic-only AUC of 0.562 against 0.766.")


# -- variants ------------------------------------------------------------------------------------------------

def _variant(m: ModalityInputs, v: str) -> dict:
    """evaluate.json's block of variant ``v`` (an evaluation from before variants: its top-level blocks)."""
    block = (m.details.get("variants") or {}).get(v)
    if block is not None:
        return block
    return {k: m.details.get(k) for k in ("synthetic_agreement", "quality", "memorisation", "embeddings")} | {
        "folder": "."}


def variant_label(m: ModalityInputs, v: str) -> str:
    """'few (10 images per embedding)', or '' with one variant (nothing to tell apart)."""
    if len(m.variants) < 2:
        return ""
    images = _variant(m, v).get("images")
    return f"{v} ({images} images per embedding)" if images is not None else v


def _labelled(m: ModalityInputs, v: str, text: str) -> str:
    """``text``, with ', variant <label>' where the modality has several variants."""
    label = variant_label(m, v)
    return f"{text}, variant {label}" if label else text


def _synthetic_only(m: ModalityInputs, v: str) -> tuple[str, dict] | tuple[None, None]:
    """The condition trained on variant ``v``'s synthetic images alone (no real image), if any."""
    for c, r in m.details["conditions"].items():
        n_real = [n for n in r.get("n_real") or [] if n is not None]
        variant = r.get("variant", m.main_variant if any(r.get("n_synthetic") or []) else None)
        if variant == v and n_real and not any(n_real):
            return c, r
    return None, None


def variant_rows(m: ModalityInputs) -> list[dict]:
    """Per variant (main first): images per embedding, steps, vectors, the synthetic-only AUC (mean over seeds),
    the synthetic agreement overall and the classifier-space FD (the variants table and summary.json)."""
    rows = []
    for v in m.variants:
        b = _variant(m, v)
        condition, r = _synthetic_only(m, v)
        q = (b.get("quality") or {}).get("classifier") or {}
        rows.append({"variant": v, "images": b.get("images"), "steps": b.get("steps"),
                     "num_vectors": b.get("num_vectors"), "synthetic_only_condition": condition,
                     "synthetic_only_auc": r["auc_mean"] if r else None,
                     "synthetic_only_auc_std": r["auc_std"] if r else None,
                     "agreement": (b.get("synthetic_agreement") or {}).get("overall"),
                     "classifier_fd": (q.get("synthetic_vs_real_train") or {}).get("fd"),
                     "classifier_fd_real_test": (q.get("real_test_vs_real_train") or {}).get("fd")})
    return rows


def variants_section(doc: Document, m: ModalityInputs) -> None:
    """The embedding variants side by side: what each embedding was trained with and what its images gave."""
    rows = [[r["variant"] + (" (main)" if r["variant"] == m.main_variant else ""), str(r["images"] or "?"),
             str(r["steps"] or "?"), str(r["num_vectors"] or "?"),
             (f"{fmt(r['synthetic_only_auc'])} ± {fmt(r['synthetic_only_auc_std'])} ({r['synthetic_only_condition']})"
              if r["synthetic_only_condition"] else "–"),
             fmt(r["agreement"], 2), f"{fmt(r['classifier_fd'], 2)} ({fmt(r['classifier_fd_real_test'], 2)})"]
            for r in variant_rows(m)]
    doc.add(Table(["Variant", "Images per embedding", "Steps", "Vectors", "Synthetic-only AUC (mean ± sd)",
                   "Synthetic agreement", "FD, classifier features (real test yardstick)"], rows,
                  caption="Each variant its own embeddings and synthetic set. Synthetic-only AUC: the condition "
                          "trained on the variant's synthetic images alone, on the real test split; synthetic "
                          "agreement: the share of its synthetic images the real-only classifiers put in their "
                          "class; FD: to the embeddings' training images, in the real-only classifier's features "
                          "(lower is closer), beside the real test images' on as many images (the FD grows as sets "
                          "shrink: compare each with its yardstick)."))
    if len(rows) > 1:
        doc.para(PAPER_ABLATION)


# -- figures -------------------------------------------------------------------------------------------------

def sample_figure(m: ModalityInputs, n: int, seed: int, path: Path, variant: str | None = None) -> bool:
    """Real training images and synthetic images (of ``variant``, default the main one) of each class, side by
    side; False when there are none."""
    rng = np.random.default_rng(seed)
    real = read_rows(m.prepared_manifest, m.name)
    real = real[real["split"] == "train"]
    manifest = m.synthetic_manifests.get(variant or m.main_variant)
    syn = read_rows(manifest, m.name) if manifest is not None else None
    rows = {}
    for k, c in enumerate(m.details["classes"]):
        def pick(df, k=k):
            rows_c = df[df["label"] == k]
            idx = np.sort(rng.choice(len(rows_c), min(n, len(rows_c)), replace=False))
            return list(read_manifest_images(list(rows_c["path"].iloc[idx]))) if len(idx) else []
        rows[c] = (pick(real), pick(syn) if syn is not None else [])
    if not any(a or b for a, b in rows.values()):
        return False
    label = variant_label(m, variant or m.main_variant)
    side_by_side_grid(rows, path, left="real (training split)", right=f"synthetic: {label}" if label else "synthetic",
                      suptitle=f"{m.name}: {n} real and {n} synthetic images per class")
    return True


def samples_section(doc: Document, m: ModalityInputs, n: int, seed: int, figures: Path) -> None:
    """One real | synthetic figure per variant, the main one first (the same real images in each)."""
    for v in m.variants:
        path = figures / (f"{m.name}_samples.png" if v == m.main_variant else f"{m.name}_samples_{v}.png")
        if sample_figure(m, n, seed, path, v):
            label = variant_label(m, v)
            doc.add(Figure(path, "Real training images (left) and synthetic images (right), one row per class"
                                 + (f"; synthetic images of variant {label}." if label else ".")))


def loss_figure(m: ModalityInputs, path: Path) -> bool:
    """The embeddings' training-loss curves (one per class and variant), smoothed."""
    series = {}
    for v, by_class in m.train_reports.items():
        for c, d in by_class.items():
            df = pd.read_csv(d / "metrics.csv")
            if {"step", "loss"} <= set(df.columns) and len(df):
                name = f"<{m.name}-{c}>" + (f" {v}" if len(m.variants) > 1 else "")
                series[name] = (df["step"].to_numpy(), df["loss"].to_numpy())
    if not series:
        return False
    longest = max(len(x) for x, _ in series.values())
    curves(series, path, xlabel="step", ylabel="diffusion loss (MSE)",
           smooth=max(2, longest // 20) if longest >= 20 else 0, title=f"{m.name}: embedding training loss")
    return True


def embedding_training_section(doc: Document, m: ModalityInputs, figures: Path) -> None:
    """The loss curves, a summary row per class and variant (summary.json), and the final validation grids."""
    path = figures / f"{m.name}_embedding_loss.png"
    if not loss_figure(m, path):
        doc.para("No embedding training reports found.")
        return
    doc.add(Figure(path, "Textual Inversion training loss per embedding (thin: per step; thick: moving average)."))
    rows = []
    for v in m.variants:
        for c, d in (m.train_reports.get(v) or {}).items():
            summary = d / "summary.json"
            s = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}
            rows.append([f"<{m.name}-{c}>", v, str(s.get("images", "?")), str(s.get("steps", "?")),
                         f"{fmt(s.get('loss_first'), 4)} → {fmt(s.get('loss_last'), 4)}",
                         fmt(s.get("train_seconds"), 1)])
    doc.add(Table(["Embedding", "Variant", "Images", "Steps", "Loss: first → last tenth", "Training time (s)"], rows,
                  caption="From each embedding's training report (summary.json); the loss is the mean over the "
                          "first and the last tenth of the steps."))
    for v in m.variants:
        for c, d in (m.train_reports.get(v) or {}).items():
            suffix = "" if v == m.main_variant else f"_{v}"
            copy_figure(doc, d / "validation_final.png", figures / f"{m.name}_{c}{suffix}_validation.png",
                        _labelled(m, v, f"<{m.name}-{c}>: training images and samples drawn with the final "
                                        "embedding") + ".")


def sweep_lines(details: dict) -> list[str]:
    """Per sweep judged by medti evaluate (evaluate.json ``sweeps``): 'Share judged lesion by the real-only
    classifiers (normal → lesion): w=0.00 0.17, ... (rises: yes, Spearman 0.97)'; none without sweeps."""
    return [f"Share judged {s['to']} by the real-only classifiers ({s['from']} → {s['to']}): "
            + ", ".join(f"w={w:.2f} {fmt(x, 2)}" for w, x in zip(s["weights"], s["share_target"]))
            + f" (rises: {'yes' if s['rises'] else 'no'}, Spearman {fmt(s['spearman'], 2)})"
            for s in (details.get("sweeps") or {}).values()]


def sweep_section(doc: Document, m: ModalityInputs, figures: Path) -> None:
    """The real-only classifiers' verdict on the interpolation sweeps, beside their grids (nothing without)."""
    sweeps = m.details.get("sweeps") or {}
    if not sweeps:
        return
    for line in sweep_lines(m.details):
        doc.para(line)
    s = next(iter(sweeps.values()))
    copy_figure(doc, m.evaluate_dir / SWEEP_FIGURE, figures / f"{m.name}_{SWEEP_FIGURE}",
                f"Each sweep's images, per weight, labelled by the real-only classifiers (condition "
                f"'{s['classifier_condition']}', seeds {', '.join(map(str, s.get('seeds') or []))}): the share put "
                f"in the sweep's target class, the mean over the seeds (shaded: their range). If the weight brings "
                f"the disease in, the share rises with it.")


# -- the document --------------------------------------------------------------------------------------------

def _conditions_text(params: dict | None, condition: str, variant: str | None = None) -> str:
    """'synthetic_few (real: 0, synthetic: all, variant few)'; the variant where one is given."""
    c = ((params or {}).get("classifier") or {}).get("conditions", {}).get(condition)
    parts = [f"real: {c['real']}", f"synthetic: {c['synthetic']}"] if c else []
    if variant is not None:
        parts.append(f"variant {variant}")
    return f"{condition} ({', '.join(parts)})" if parts else condition


def auc_overview(doc: Document, inputs: list[ModalityInputs], params: dict | None) -> None:
    conditions = []
    for m in inputs:
        conditions += [c for c in m.details["conditions"] if c not in conditions]
    several = any(len(m.variants) > 1 for m in inputs)  # the variant of each row, where there is a choice
    rows = []
    for c in conditions:
        variant = next((m.details["conditions"][c].get("variant") for m in inputs if c in m.details["conditions"]),
                       None)
        row = [_conditions_text(params, c, variant if several else None)]
        for m in inputs:
            r = m.details["conditions"].get(c)
            row.append(f"{fmt(r['auc_mean'])} ± {fmt(r['auc_std'])}" if r else "–")
        rows.append(row)
    ref = inputs[0].details["reference"]
    doc.add(Table(["Training data"] + [m.name for m in inputs], rows,
                  caption=f"Test AUC on the held-out real test split, mean ± standard deviation over seeds (as in "
                          f"the paper's table). Details, intervals and p-values against '{ref}' per modality below."))


def _interval(lo, hi, signed: bool = False) -> str:
    """'[+0.010, +0.050]' or '0.910–0.950'; '–' without one (one seed: no seed variance to include)."""
    if lo is None or hi is None:
        return "–"
    return f"[{lo:+.3f}, {hi:+.3f}]" if signed else f"{fmt(lo)}–{fmt(hi)}"


def _comparison_cells(comp: dict | None) -> list[str]:
    """Δ [CI], p (paired bootstrap), p (DeLong), Δ CI (seeds + cases), p (two-level), p (Welch) of a comparison."""
    if not comp:
        return ["(reference)", "–", "–", "–", "–", "–"]
    return [f"{comp['difference']:+.3f} [{comp['ci_low']:+.3f}, {comp['ci_high']:+.3f}]",
            fmt_p(comp["p_bootstrap"]), fmt_p(comp["p_delong"]),
            _interval(comp.get("two_level_ci_low"), comp.get("two_level_ci_high"), signed=True),
            fmt_p(comp.get("p_two_level")), fmt_p(comp.get("p_seed_welch"))]


def _comparison_header(level: int, against: str) -> list[str]:
    return [f"Δ AUC vs {against} [{level}% CI, cases]", "p (paired bootstrap)", "p (DeLong)",
            f"Δ {level}% CI (seeds + cases)", "p (two-level bootstrap, seeds + cases)", "p (Welch, seed AUCs)"]


def auc_section(doc: Document, m: ModalityInputs, params: dict | None) -> None:
    d = m.details
    ref, s = d["reference"], d["settings"]
    level = int(round(100 * s["confidence"]))
    binary = len(d["classes"]) == 2
    rows, across = [], []
    for c, r in d["conditions"].items():
        rows.append([
            c, r.get("variant") or "–",
            f"{fmt_count(r.get('n_real', []))} + {fmt_count(r.get('n_synthetic', []))}", str(r["n_seeds"]),
            f"{fmt(r['auc_mean'])} ± {fmt(r['auc_std'])}", f"{fmt(r['ci_low'])}–{fmt(r['ci_high'])}",
            _interval(r.get("two_level_ci_low"), r.get("two_level_ci_high")),
            ", ".join(fmt(a) for a in r["aucs"]), *_comparison_cells(r.get("comparison")),
        ])
        for other, comp in (r.get("comparisons") or {}).items():
            across.append([c, r.get("variant") or "–", f"{other} ({d['conditions'][other].get('variant') or '–'})",
                           *_comparison_cells(comp)])
    n_test = ", ".join(f"{c}: {n}" for c, n in d["n_test"].items())
    doc.add(Table(["Condition", "Variant", "Training images (real + synthetic)", "Seeds", "AUC (mean ± sd)",
                   f"{level}% CI (cases)", f"{level}% CI (seeds + cases)", "AUC per seed",
                   *_comparison_header(level, ref)], rows,
                  caption=f"Test split: {n_test} images. Variant: the embeddings the synthetic training images were "
                          f"drawn with. Case level (the trained networks held fixed): CI from "
                          f"{s['bootstrap']} bootstrap resamples of the test set (stratified by class) of the seeds' "
                          f"mean AUC; Δ: difference of mean AUCs, on the same resamples (paired); DeLong's test of "
                          f"the same contrast{'' if len(d['classes']) == 2 else ' (binary tasks only)'}. With the "
                          f"seed variance (what the ± shows): the two-level bootstrap draws each condition's seeds "
                          f"with replacement, then the test cases; Welch's t-test takes each seed's AUC as one "
                          f"observation (both need two seeds or more; with few seeds they are coarse). AUC: "
                          f"{'positive class ' + repr(d['classes'][1]) if binary else 'one-vs-rest macro average'}."))
    if across:
        doc.add(Table(["Condition", "Variant", "Compared with (variant)",
                       *_comparison_header(level, "the main variant")], across,
                      caption=f"Across embedding variants: each condition on another variant than the main one "
                              f"('{m.main_variant}') against the condition with the same real and synthetic amounts "
                              f"on the main variant; the same statistics as above, on the same resamples."))


def quality_section(doc: Document, m: ModalityInputs) -> None:
    several = len(m.variants) > 1
    rows = []
    for v in m.variants:
        q = _variant(m, v).get("quality")
        for space, label in (("classifier", "real-only classifier"), ("inception", "Inception-v3")) if q else ():
            first = [v] if several else []
            r = q.get(space) or {}
            if "skipped" in r:
                rows.append(first + [label, "(skipped)", "–", "–", "–"])
                continue
            ref = {"ti": "the embeddings' training images", "train": "real training"}.get(r.get("reference"),
                                                                                             "real training")
            pairs = [(f"synthetic vs {ref}", r.get("synthetic_vs_real_train")),
                     (f"real test vs {ref} (yardstick)", r.get("real_test_vs_real_train"))]
            for c, x in (r.get("per_class") or {}).items():
                pairs += [(f"synthetic vs {ref}, class {c}", x),
                          (f"real test vs {ref}, class {c} (yardstick)", (r.get("per_class_real_test") or {}).get(c))]
            for what, x in pairs:
                if x:
                    rows.append(first + [label, what, fmt(x["fd"], 2), f"{fmt(x['kid'], 4)} ± {fmt(x['kid_std'], 4)}",
                                         f"{x['n_a']} / {x['n_b']}"])
    if not rows:
        doc.para("No synthetic images: no image quality measured.")
        return
    fc = m.details.get("feature_classifier") or {}
    doc.add(Table((["Variant"] if several else []) + ["Feature space", "Sets", "FD", "KID (mean ± sd)", "Images"], rows,
                  caption=f"Fréchet (FD) and kernel (KID) distances; lower is closer. The classifier's features "
                          f"({fc.get('arch')}, condition '{fc.get('condition')}', seed {fc.get('seed')}) need no "
                          f"download but are not comparable with published FIDs: compare with the yardstick row, "
                          f"measured on as many images. Inception sees the images at their prepared size. KID "
                          f"subsets hold at most half the smaller set."))
    skipped = ((_variant(m, m.main_variant).get("quality") or {}).get("inception") or {}).get("skipped")
    if skipped:
        doc.para(skipped)


def agreement_section(doc: Document, m: ModalityInputs) -> None:
    """Do the synthetic images carry their class? The real-only classifiers' verdict, per class and variant."""
    found = {v: a for v in m.variants if (a := _variant(m, v).get("synthetic_agreement"))}
    if not found:
        doc.para("No synthetic images, or no real-only classifier: agreement not measured.")
        return
    classes = m.details.get("classes") or []
    a = next(iter(found.values()))
    rows = [[c, *(fmt(x.get(c), 2) for x in found.values())] for c in classes
            if any(x.get(c) is not None for x in found.values())]
    rows.append(["all", *(fmt(x.get("overall"), 2) for x in found.values())])
    what = "Put in that class by the real-only classifiers"
    header = [what] if len(m.variants) < 2 else [f"{what}: variant {variant_label(m, v)}" for v in found]
    doc.add(Table(["Synthetic images of class", *header], rows,
                  caption=f"Each real-only classifier (condition '{a.get('classifier_condition')}', seeds "
                          f"{', '.join(map(str, a.get('seeds') or []))}) labels every synthetic image; the share "
                          f"of a class's synthetic images it puts in that class, averaged over the seeds. Chance "
                          f"is about 1/{max(2, len(classes))}; a synthetic set that carries its class scores "
                          f"near 1."))


def memorisation_section(doc: Document, m: ModalityInputs, figures: Path) -> None:
    audited = [v for v in m.variants if _variant(m, v).get("memorisation")]
    if not audited:
        doc.para("No synthetic images: no memorisation audit.")
        return
    for v in audited:
        if len(m.variants) > 1:
            doc.heading(4, f"Variant {variant_label(m, v)}")
        _memorisation_audit(doc, m, v, figures)


def _memorisation_audit(doc: Document, m: ModalityInputs, v: str, figures: Path) -> None:
    """One variant's audit: the summary, a row per embedding (class), and its figures."""
    block = _variant(m, v)
    a = block["memorisation"]
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
    embeddings = block.get("embeddings") or {}
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
    folder = m.evaluate_dir / block.get("folder", ".")
    doc.add(Table(["Class", "Embedding", "Synthetic images", f"Near-copies (r ≥ {thr:.2f})",
                   "Flagged (calibrated threshold)", "r to nearest training: median [max]",
                   "Real test r: median [max] (yardstick)", "Feature cosine: median",
                   "Nearest is one of the embedding's training images"], rows,
                  caption="Per embedding (one per class). Full list: "
                          f"{(Path(block.get('folder', '.')) / 'memorisation.csv').as_posix()} in the evaluate "
                          "folder."))
    suffix = "" if v == m.main_variant else f"_{v}"
    for name, caption in (("memorisation_pairs.png", "The closest synthetic–training pairs (pixel correlation)"),
                          ("memorisation_similarity.png", "Similarity to the nearest real training image: synthetic "
                                                          "images against real test images (the yardstick)"),
                          ("memorisation_features.png", "The same in the classifier's feature space")):
        copy_figure(doc, folder / name, figures / f"{m.name}{suffix}_{name}", _labelled(m, v, caption) + ".")


def copy_figure(doc: Document, src: Path, dst: Path, caption: str) -> None:
    if src.is_file():
        shutil.copyfile(src, dst)
        doc.add(Figure(dst, caption))


def checksum_section(doc: Document, m: ModalityInputs, prepared_dir: Path, synthetic_dir: Path | None) -> None:
    d = m.details
    rows = [["prepared data (folder, DVC md5)", str(prepared_dir / m.name), dvc_md5(prepared_dir / m.name)],
            ["prepared manifest (sha256)", str(m.prepared_manifest), file_sha256(m.prepared_manifest)]]
    for v, manifest in m.synthetic_manifests.items():
        what = f"synthetic data, variant {v}" if len(m.variants) > 1 else "synthetic data"
        rows += [[f"{what} (folder, DVC md5)", str(manifest.parent), dvc_md5(manifest.parent)],
                 [f"{what}: manifest (sha256)", str(manifest), file_sha256(manifest)]]
    inputs = d.get("inputs") or {}
    if inputs.get("embeddings_md5"):
        rows.append(["embeddings (folder, DVC md5)", inputs["embeddings"], inputs["embeddings_md5"]])
    for v in m.variants:
        for e in (_variant(m, v).get("embeddings") or {}).values():
            rows.append([f"embedding {e['token']}" + (f", variant {v}" if len(m.variants) > 1 else "")
                         + " (file md5 / vectors sha256)", e["file"], f"{e['md5']} / {e['checksum']}"])
    if inputs.get("real_manifest_sha256") and inputs["real_manifest_sha256"] != rows[1][2]:
        doc.warning(f"{m.prepared_manifest} changed after the evaluation (its checksum differs from the one "
                    "medti evaluate read): re-run the pipeline")
    doc.add(Table(["Item", "Path", "Checksum"], rows))
