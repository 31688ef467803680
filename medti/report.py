"""``medti report``: one self-contained HTML page (and the same in Markdown) per pipeline run.

Pipeline: ``--params params.yaml --evaluate results/evaluate --prepared data/prepared --synthetic
data/synthetic --train-reports results/train_embedding --out results/report``. Per modality (params.yaml's,
or standalone the ``results/evaluate/<modality>`` folders found): the AUC table in the paper's layout (mean
+- standard deviation over seeds, bootstrap confidence interval, paired comparison with the reference and
its p-values), ROC curves and confusion matrices, real and synthetic samples per class side by side, the
embeddings' training-loss curves, FID/KID, the memorisation audit, and the checksums of the data and the
embeddings; then the run's params.yaml as it was. A run on a base model with random weights (``tiny``,
``random:...``) says in a banner that its numbers carry no medical meaning.

Outputs: index.html (images embedded as base64 data: no server, no files beside it, no external CSS or
JavaScript), report.md with figures/ (the same content; the Markdown links the PNGs), summary.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.cliutils import add_common, load_params_arg
from medti.errors import InputError

log = logging.getLogger(__name__)

RANDOM_BANNER = ("The base model '{}' has random weights: its synthetic images, and every number in this report "
                 "computed from them, carry no medical meaning. Use a real checkpoint (such as "
                 "stabilityai/stable-diffusion-2-base) for real results.")


# -- a small document model, rendered to HTML and to Markdown ------------------------------------------------

@dataclass
class Figure:
    path: Path          # a PNG inside the report folder
    caption: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Document:
    """Blocks in order: ("h", level, text, anchor), ("p", text), ("warn", text), ("pre", text), Table, Figure."""

    title: str
    blocks: list = field(default_factory=list)

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        self.blocks.append(("h", level, text, anchor))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def warning(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def add(self, block) -> None:
        self.blocks.append(block)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:.8em}
.warn{background:#fff3cd;border:2px solid #d39e00;padding:.8em 1em;font-weight:600;margin:1em 0}
code{background:#f3f3f3;padding:0 .2em}
"""


def _is_number(text: str) -> bool:
    t = text.replace("±", "").replace("−", "-").replace("<", "").replace("[", "").replace("]", "").split()
    try:
        return bool(t) and all(float(x.strip("%,")) is not None for x in t)
    except ValueError:
        return False


def render_html(doc: Document) -> str:
    """The whole page, images inlined as base64 PNG."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(doc.title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for block in doc.blocks:
        if isinstance(block, Table):
            cells = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td class='num'>{esc(c)}</td>" if _is_number(c) else f"<td>{esc(c)}</td>"
                                            for c in row) + "</tr>" for row in block.rows)
            caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
            parts.append(f"<table>{caption}<thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(block.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(block.caption)}</figcaption></figure>")
        elif block[0] == "h":
            _, level, text, anchor = block
            ident = f" id='{esc(anchor)}'" if anchor else ""
            parts.append(f"<h{level}{ident}>{esc(text)}</h{level}>")
        elif block[0] == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif block[0] == "warn":
            parts.append(f"<div class='warn'>⚠ {esc(block[1])}</div>")
        elif block[0] == "pre":
            parts.append(f"<pre>{esc(block[1])}</pre>")
        elif block[0] == "nav":
            items = "".join(f"<li><a href='#{esc(a)}'>{esc(t)}</a></li>" for t, a in block[1])
            parts.append(f"<nav><ul>{items}</ul></nav>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(doc: Document, root: Path) -> str:
    """The same content as Markdown; figures are linked relative to ``root`` (the report folder)."""
    def text(t: str) -> str:  # tokens like <chest_xray-normal> would read as HTML tags
        return t.replace("<", "&lt;").replace(">", "&gt;")

    def cell(t: str) -> str:
        return text(t).replace("|", "\\|").replace("\n", " ")

    out = []
    for block in doc.blocks:
        if isinstance(block, Table):
            out.append("| " + " | ".join(cell(h) for h in block.header) + " |")
            out.append("|" + "|".join("---" for _ in block.header) + "|")
            out.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows)
            if block.caption:
                out.append(f"\n*{text(block.caption)}*")
        elif isinstance(block, Figure):
            out.append(f"![{text(block.caption)}]({block.path.relative_to(root).as_posix()})\n\n*{text(block.caption)}*")
        elif block[0] == "h":
            anchor = f'<a id="{block[3]}"></a>\n\n' if block[3] else ""
            out.append(anchor + "#" * block[1] + " " + text(block[2]))
        elif block[0] == "p":
            out.append(text(block[1]))
        elif block[0] == "warn":
            out.append(f"> **Warning:** {text(block[1])}")
        elif block[0] == "pre":
            out.append("```\n" + block[1].rstrip("\n") + "\n```")
        elif block[0] == "nav":
            out.extend(f"- [{text(t)}](#{a})" for t, a in block[1])
        out.append("")
    return "\n".join(out)


# -- formatting ----------------------------------------------------------------------------------------------

def fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_count(values) -> str:
    """A count that is the same for every seed, or its range."""
    values = [v for v in values if v is not None]
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def is_random_model(name: str | None) -> bool:
    return bool(name) and (name == "tiny" or name.startswith("random:"))


# -- inputs --------------------------------------------------------------------------------------------------

@dataclass
class ModalityInputs:
    name: str
    details: dict                 # evaluate.json
    evaluate_dir: Path
    prepared_manifest: Path
    synthetic_manifest: Path | None
    train_reports: dict[str, Path]  # class -> its report folder (those that exist)
    interpolation: list[Path]       # medti interpolate's grids (sweeps, combinations), if any


def find_modalities(evaluate_dir: Path, params: dict | None) -> list[str]:
    if params is not None:
        return list(params["modalities"])
    found = sorted(p.name for p in evaluate_dir.iterdir() if (p / "evaluate.json").is_file()) if evaluate_dir.is_dir() else []
    if not found:
        raise InputError(f"{evaluate_dir}: no evaluated modalities (<modality>/evaluate.json) found; run medti evaluate")
    return found


def gather(modality: str, evaluate_dir: Path, prepared_dir: Path, synthetic_dir: Path | None,
           train_reports_dir: Path | None, interpolate_dir: Path | None = None) -> ModalityInputs:
    folder = evaluate_dir / modality
    path = folder / "evaluate.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; run medti evaluate for modality '{modality}' first")
    details = json.loads(path.read_text(encoding="utf-8"))
    prepared = prepared_dir / modality / "manifest.csv"
    if not prepared.is_file():
        raise InputError(f"{prepared}: the prepared manifest of modality '{modality}' is missing")
    synthetic = synthetic_dir / modality / "manifest.csv" if synthetic_dir is not None else None
    if synthetic is not None and not synthetic.is_file():
        log.warning("%s: no synthetic manifest: the report shows no synthetic samples for %s", synthetic, modality)
        synthetic = None
    reports = {}
    for c in details["classes"]:
        d = train_reports_dir / modality / c if train_reports_dir is not None else None
        if d is not None and (d / "metrics.csv").is_file():
            reports[c] = d
        else:
            log.warning("no embedding training report for %s/%s (%s)", modality, c, d)
    grids = sorted((interpolate_dir / modality).glob("*.png")) if interpolate_dir is not None else []
    return ModalityInputs(modality, details, folder, prepared, synthetic, reports, grids)


def random_base_model(params: dict | None, inputs: list[ModalityInputs]) -> str | None:
    """The name of a random-weights base model this run used, if it used one."""
    names = []
    if params is not None:
        names.append(str((params.get("base_model") or {}).get("id")))
    for m in inputs:
        names.extend(m.details.get("synthetic_base_models") or [])
        names.extend(e.get("base_model") for e in (m.details.get("embeddings") or {}).values())
        for d in m.train_reports.values():
            summary = d / "summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text(encoding="utf-8"))
                if s.get("random_base_model"):
                    return str(s.get("base_model") or "random")
    return next((n for n in names if is_random_model(n)), None)


# -- figures -------------------------------------------------------------------------------------------------

def sample_figure(m: ModalityInputs, n: int, seed: int, path: Path) -> bool:
    """Real training images and synthetic images of each class, side by side; False when there are none."""
    from medti.classifier_data import read_rows
    from medti.figures import side_by_side_grid
    from medti.imageset import load_images

    rng = np.random.default_rng(seed)
    real = read_rows(m.prepared_manifest, m.name)
    real = real[real["split"] == "train"]
    syn = read_rows(m.synthetic_manifest, m.name) if m.synthetic_manifest is not None else None
    rows = {}
    for k, c in enumerate(m.details["classes"]):
        def pick(df):
            rows_c = df[df["label"] == k]
            idx = np.sort(rng.choice(len(rows_c), min(n, len(rows_c)), replace=False))
            return list(load_images(list(rows_c["path"].iloc[idx]))) if len(idx) else []
        rows[c] = (pick(real), pick(syn) if syn is not None else [])
    if not any(a or b for a, b in rows.values()):
        return False
    side_by_side_grid(rows, path, left="real (training split)", right="synthetic",
                      suptitle=f"{m.name}: {n} real and {n} synthetic images per class")
    return True


def loss_figure(m: ModalityInputs, path: Path) -> bool:
    """The embeddings' training-loss curves (one per class), smoothed."""
    import pandas as pd

    from medti.figures import curves

    series = {}
    for c, d in m.train_reports.items():
        df = pd.read_csv(d / "metrics.csv")
        if {"step", "loss"} <= set(df.columns) and len(df):
            series[f"<{m.name}-{c}>"] = (df["step"].to_numpy(), df["loss"].to_numpy())
    if not series:
        return False
    longest = max(len(x) for x, _ in series.values())
    curves(series, path, xlabel="step", ylabel="diffusion loss (MSE)", smooth=max(2, longest // 20) if longest >= 20 else 0,
           title=f"{m.name}: embedding training loss")
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
    rows = []
    for c, r in d["conditions"].items():
        comp = r.get("comparison")
        rows.append([
            c, f"{fmt_count(r.get('n_real', []))} + {fmt_count(r.get('n_synthetic', []))}", str(r["n_seeds"]),
            f"{fmt(r['auc_mean'])} ± {fmt(r['auc_std'])}", f"{fmt(r['ci_low'])}–{fmt(r['ci_high'])}",
            ", ".join(fmt(a) for a in r["aucs"]),
            f"{comp['difference']:+.3f} [{comp['ci_low']:+.3f}, {comp['ci_high']:+.3f}]" if comp else "(reference)",
            fmt_p(comp["p_bootstrap"]) if comp else "–", fmt_p(comp["p_delong"]) if comp else "–",
        ])
    n_test = ", ".join(f"{c}: {n}" for c, n in d["n_test"].items())
    doc.add(Table(["Condition", "Training images (real + synthetic)", "Seeds", "AUC (mean ± sd)", f"{level}% CI",
                   "AUC per seed", f"Δ AUC vs {ref} [{level}% CI]", "p (paired bootstrap)", "p (DeLong)"], rows,
                  caption=f"Test split: {n_test} images. CI: {s['bootstrap']} bootstrap resamples of the test set "
                          f"(stratified by class) of the seeds' mean AUC. Δ: difference of mean AUCs, on the same "
                          f"resamples (paired); DeLong's test of the same contrast"
                          f"{'' if len(d['classes']) == 2 else ' (binary tasks only)'}. AUC: "
                          f"{'positive class ' + repr(d['classes'][1]) if len(d['classes']) == 2 else 'one-vs-rest macro average'}."))


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
        pairs = [("synthetic vs real training", r.get("synthetic_vs_real_train")),
                 ("real test vs real training (yardstick)", r.get("real_test_vs_real_train"))]
        pairs += [(f"synthetic vs real training, class {c}", v) for c, v in (r.get("per_class") or {}).items()]
        for what, v in pairs:
            if v:
                rows.append([label, what, fmt(v["fd"], 2), f"{fmt(v['kid'], 4)} ± {fmt(v['kid_std'], 4)}",
                             f"{v['n_a']} / {v['n_b']}"])
    fc = m.details.get("feature_classifier") or {}
    doc.add(Table(["Feature space", "Sets", "FD", "KID (mean ± sd)", "Images"], rows,
                  caption=f"Fréchet (FD) and kernel (KID) distances; lower is closer. The classifier's features "
                          f"({fc.get('arch')}, condition '{fc.get('condition')}', seed {fc.get('seed')}) need no "
                          f"download but are not comparable with published FIDs: compare with the yardstick row."))
    skipped = (q.get("inception") or {}).get("skipped")
    if skipped:
        doc.para(skipped)


def memorisation_section(doc: Document, m: ModalityInputs, figures: Path) -> None:
    a = m.details.get("memorisation")
    if not a:
        doc.para("No synthetic images: no memorisation audit.")
        return
    thr = a["threshold"]
    o = a["overall"]
    doc.para(f"Every synthetic image was compared with every real training image: by pixel correlation r (grey "
             f"{m.details['settings']['memorisation_size']} px) and by the cosine similarity of the real-only "
             f"classifier's features. {o['near_copies']} of {o['n']} synthetic images are near-copies (r ≥ {thr:.2f}); "
             f"{o['closer_than_real_test']} are closer to a training image than any real test image of their class "
             f"is. A synthetic image no closer to the training set than unseen real images are gives no sign of "
             f"memorisation.")
    rows = []
    embeddings = m.details.get("embeddings") or {}
    for c, s in a["per_class"].items():
        token = (embeddings.get(c) or {}).get("token") or f"<{m.name}-{c}>"
        if not s.get("n"):
            rows.append([c, token, "0", "–", "–", "–", "–", "–", "–"])
            continue
        rows.append([c, token, str(s["n"]), str(s["near_copies"]), str(s["closer_than_real_test"]),
                     f"{fmt(s['pixel_similarity_median'])} [{fmt(s['pixel_similarity_max'])}]",
                     f"{fmt(s['real_test_pixel_similarity_median'])} [{fmt(s['real_test_pixel_similarity_max'])}]",
                     fmt(s["feature_similarity_median"]), f"{100 * s['nearest_is_embedding_training_image']:.0f}%"])
    doc.add(Table(["Class", "Embedding", "Synthetic images", f"Near-copies (r ≥ {thr:.2f})",
                   "Closer than any real test image", "r to nearest training: median [max]",
                   "Real test r: median [max] (yardstick)", "Feature cosine: median",
                   "Nearest is one of the embedding's training images"], rows,
                  caption="Per embedding (one per class). Full list: memorisation.csv in the evaluate folder."))
    for name, caption in (("memorisation_pairs.png", "The closest synthetic–training pairs (pixel correlation)."),
                          ("memorisation_similarity.png", "Similarity to the nearest real training image: synthetic "
                                                          "images against real test images (the yardstick)."),
                          ("memorisation_features.png", "The same in the classifier's feature space.")):
        _copy_figure(doc, m.evaluate_dir / name, figures / f"{m.name}_{name}", caption)


def _copy_figure(doc: Document, src: Path, dst: Path, caption: str) -> None:
    if src.is_file():
        shutil.copyfile(src, dst)
        doc.add(Figure(dst, caption))


def checksum_section(doc: Document, m: ModalityInputs, prepared_dir: Path, synthetic_dir: Path | None) -> None:
    from medti.checksums import dvc_md5
    from medti.manifest import file_sha256

    d = m.details
    rows = [["prepared data (folder, DVC md5)", str(prepared_dir / m.name), dvc_md5(prepared_dir / m.name)],
            ["prepared manifest (sha256)", str(m.prepared_manifest), file_sha256(m.prepared_manifest)]]
    if m.synthetic_manifest is not None:
        rows += [["synthetic data (folder, DVC md5)", str(m.synthetic_manifest.parent), dvc_md5(m.synthetic_manifest.parent)],
                 ["synthetic manifest (sha256)", str(m.synthetic_manifest), file_sha256(m.synthetic_manifest)]]
    inputs = d.get("inputs") or {}
    if inputs.get("embeddings_md5"):
        rows.append(["embeddings (folder, DVC md5)", inputs["embeddings"], inputs["embeddings_md5"]])
    for c, e in (d.get("embeddings") or {}).items():
        rows.append([f"embedding {e['token']} (file md5 / vectors sha256)", e["file"], f"{e['md5']} / {e['checksum']}"])
    if inputs.get("real_manifest_sha256") and inputs["real_manifest_sha256"] != rows[1][2]:
        doc.warning(f"{m.prepared_manifest} changed after the evaluation (its checksum differs from the one "
                    "medti evaluate read): re-run the pipeline")
    doc.add(Table(["Item", "Path", "Checksum"], rows))


def build_document(inputs: list[ModalityInputs], params: dict | None, params_text: str | None, figures: Path,
                   prepared_dir: Path, synthetic_dir: Path | None, samples_per_class: int, seed: int) -> Document:
    from medti import __version__
    from medti.tracking import git_commit

    doc = Document("medti report")
    doc.heading(1, "medti report: medical textual inversion")
    commit = git_commit((params or {}).get("_meta", {}).get("root"))
    model = str(((params or {}).get("base_model") or {}).get("id", "?"))
    doc.para(f"Generated {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} by medti {__version__}"
             + (f", git commit {commit}" if commit else "") + f"; base model: {model}; modalities: "
             + ", ".join(m.name for m in inputs) + ".")
    random_model = random_base_model(params, inputs)
    if random_model:
        doc.warning(RANDOM_BANNER.format(random_model))
    doc.add(("nav", [("Test AUC", "auc")] + [(m.name, f"m-{m.name}") for m in inputs] + [("Parameters", "params")]))
    doc.heading(2, "Test AUC per modality and condition", "auc")
    auc_overview(doc, inputs, params)
    for m in inputs:
        doc.heading(2, f"{m.name}", f"m-{m.name}")
        doc.heading(3, "Classifiers")
        auc_section(doc, m, params)
        for name, caption in (("roc.png", "Test ROC curves: the mean over seeds, ± one standard deviation shaded."),
                              ("confusion.png", "Test confusion matrices (most probable class), seeds added up.")):
            _copy_figure(doc, m.evaluate_dir / name, figures / f"{m.name}_{name}", caption)
        doc.heading(3, "Real and synthetic images")
        path = figures / f"{m.name}_samples.png"
        if sample_figure(m, samples_per_class, seed, path):
            doc.add(Figure(path, "Real training images (left) and synthetic images (right), one row per class."))
        if m.interpolation:
            doc.heading(3, "Disease interpolation")
            for grid in m.interpolation:
                _copy_figure(doc, grid, figures / f"{m.name}_{grid.name}",
                             "Each row one weight (or pathology), each column one seed shared by every row: "
                             "weighted prompts from the first class to the other (composable diffusion).")
        doc.heading(3, "Embedding training")
        path = figures / f"{m.name}_embedding_loss.png"
        if loss_figure(m, path):
            doc.add(Figure(path, "Textual Inversion training loss per embedding (thin: per step; thick: moving average)."))
        else:
            doc.para("No embedding training reports found.")
        for c, d in m.train_reports.items():
            _copy_figure(doc, d / "validation_final.png", figures / f"{m.name}_{c}_validation.png",
                         f"<{m.name}-{c}>: training images and samples drawn with the final embedding.")
        doc.heading(3, "Image quality (FID / KID)")
        quality_section(doc, m)
        doc.heading(3, "Memorisation audit")
        memorisation_section(doc, m, figures)
        doc.heading(3, "Checksums of data and embeddings")
        checksum_section(doc, m, prepared_dir, synthetic_dir)
    doc.heading(2, "Parameters", "params")
    if params_text is not None:
        doc.para("params.yaml of this run, as it was:")
        doc.pre(params_text)
    else:
        doc.para("Standalone run: no params.yaml given.")
    return doc


# -- API -----------------------------------------------------------------------------------------------------

def build_report(evaluate_dir, prepared_dir, out, *, synthetic_dir=None, train_reports_dir=None,
                 interpolate_dir=None, params: dict | None = None, params_path=None, modalities: list[str] | None = None,
                 samples_per_class: int | None = None) -> Path:
    """Write the report folder ``out`` (index.html, report.md, figures/, summary.json); returns index.html."""
    from medti.atomic import atomic_dir, sweep_stale_temporaries, write_json, write_text
    from medti.tracking import track

    evaluate_dir, prepared_dir, out = Path(evaluate_dir), Path(prepared_dir), Path(out)
    synthetic_dir = Path(synthetic_dir) if synthetic_dir is not None else None
    train_reports_dir = Path(train_reports_dir) if train_reports_dir is not None else None
    interpolate_dir = Path(interpolate_dir) if interpolate_dir is not None else None
    sweep_stale_temporaries(out.parent, name=out.name)
    section = (params or {}).get("report") or {}
    n = int(samples_per_class or section.get("samples_per_class", 4))
    names = modalities or find_modalities(evaluate_dir, params)
    inputs = [gather(name, evaluate_dir, prepared_dir, synthetic_dir, train_reports_dir, interpolate_dir)
              for name in names]
    params_text = Path(params_path).read_text(encoding="utf-8") if params_path else None
    with track(params, "report", run_name="report", tags={"modalities": ",".join(names)}) as tracker:
        with atomic_dir(out) as tmp:
            figures = tmp / "figures"
            figures.mkdir()
            doc = build_document(inputs, params, params_text, figures, prepared_dir, synthetic_dir, n,
                                 int((params or {}).get("seed", 0)))
            write_text(tmp / "index.html", render_html(doc))
            write_text(tmp / "report.md", render_markdown(doc, tmp))
            write_json(tmp / "summary.json", {
                "modalities": names, "random_base_model": random_base_model(params, inputs),
                "auc": {m.name: {c: {k: r[k] for k in ("auc_mean", "auc_std", "ci_low", "ci_high", "n_seeds")}
                                 for c, r in m.details["conditions"].items()} for m in inputs}})
        tracker.log_artifact(out / "index.html")
    log.info("report: %s", out / "index.html")
    return out / "index.html"


# -- CLI -----------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML (and Markdown) report of a pipeline run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--evaluate", required=True, metavar="DIR", help="medti evaluate's outputs, DIR/<modality>/")
    p.add_argument("--prepared", required=True, metavar="DIR", help="the prepared data, DIR/<modality>/manifest.csv")
    p.add_argument("--synthetic", metavar="DIR", help="the synthetic data, DIR/<modality>/manifest.csv")
    p.add_argument("--train-reports", metavar="DIR", help="embedding training reports, DIR/<modality>/<class>/")
    p.add_argument("--interpolate", metavar="DIR", help="medti interpolate's figures, DIR/<modality>/*.png")
    p.add_argument("--out", required=True, metavar="DIR", help="the report folder")
    p.add_argument("--modalities", help="comma-separated modalities (default: params.yaml's, else those evaluated)")
    p.add_argument("--samples-per-class", type=int, help="real and synthetic images per class in the sample grids")
    p.set_defaults(func=run)


def run(args) -> int:
    params = load_params_arg(args)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    build_report(args.evaluate, args.prepared, args.out, synthetic_dir=args.synthetic,
                 train_reports_dir=args.train_reports, interpolate_dir=args.interpolate, params=params, params_path=args.params, modalities=modalities,
                 samples_per_class=args.samples_per_class)
    return 0
