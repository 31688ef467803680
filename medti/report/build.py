"""The report end to end: each modality's inputs gathered (:func:`gather`), the document built
(:func:`build_document`) and written as index.html, report.md with figures/, and summary.json
(:func:`build_report`)."""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from medti import __version__
from medti.atomic import atomic_dir, sweep_stale_temporaries, write_json, write_text
from medti.config import main_variant, schema_default
from medti.errors import InputError
from medti.report.document import Document, render_html, render_markdown
from medti.report.sections import (
    agreement_section,
    auc_overview,
    auc_section,
    checksum_section,
    copy_figure,
    embedding_training_section,
    memorisation_section,
    quality_section,
    samples_section,
    sweep_section,
    variant_rows,
    variants_section,
)
from medti.tracking import git_commit, track

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

RANDOM_BANNER = ("The base model '{}' has random weights: its synthetic images, and every number in this report "
                 "computed from them, carry no medical meaning. Use a real checkpoint (such as "
                 "stabilityai/stable-diffusion-2-base) for real results.")


TOY_BANNER = ("The base model 'toy' is medti's miniature world: a small Stable Diffusion model pre-trained on phantom "
              "images captioned in plain visual words (a bright spot, dark dots), never told a class. The "
              "embeddings found the classes in it, as Textual Inversion finds a disease in Stable Diffusion. It "
              "exists to see and test the method; its numbers are not medical results. With a real checkpoint "
              "and real data the same pipeline produces real ones.")


def is_random_model(name: str | None) -> bool:
    """A base model with random weights (``tiny``, ``random:...``): its numbers mean nothing medically."""
    return bool(name) and (name == "tiny" or name.startswith("random:"))


# -- inputs --------------------------------------------------------------------------------------------------

@dataclass
class ModalityInputs:
    """What the report shows of one modality, found on disk."""

    name: str
    details: dict                 # evaluate.json
    evaluate_dir: Path
    prepared_manifest: Path
    synthetic_manifests: dict[str, Path]       # embedding variant -> its synthetic manifest (those that exist)
    train_reports: dict[str, dict[str, Path]]  # variant -> class -> its embedding's report folder (those that exist)
    interpolation: list[Path]       # medti interpolate's grids (sweeps, combinations), if any

    @property
    def variants(self) -> list[str]:
        """The embedding variants evaluated, the main one first (one, unnamed before variants existed)."""
        return variant_names(self.details)

    @property
    def main_variant(self) -> str:
        return self.variants[0]

    @property
    def synthetic_manifest(self) -> Path | None:
        """The main variant's synthetic manifest."""
        return self.synthetic_manifests.get(self.main_variant)


def variant_names(details: dict) -> list[str]:
    """evaluate.json's variants in order, main first; an evaluation from before variants has one, the main."""
    return list(details.get("variant_names") or [details.get("main_variant") or main_variant({})])


def _variant_path(root: Path | None, modality: str, variant: str, main: bool, *parts: str) -> Path | None:
    """``root/modality/[parts/]variant``: the variant's folder or, for the main variant, the folder without one
    (the layout from before variants, and standalone sets) where the variant's is not there."""
    if root is None:
        return None
    base = root.joinpath(modality, *parts)
    return base if main and not (base / variant).is_dir() else base / variant


def find_modalities(evaluate_dir: Path, params: dict | None) -> list[str]:
    """params.yaml's modalities, or (standalone) those with an evaluate.json."""
    if params is not None:
        return list(params["modalities"])
    found = sorted(p.name for p in evaluate_dir.iterdir()
                   if (p / "evaluate.json").is_file()) if evaluate_dir.is_dir() else []
    if not found:
        raise InputError(f"{evaluate_dir}: no evaluated modalities (<modality>/evaluate.json) found; "
                         "run medti evaluate")
    return found


def gather(modality: str, evaluate_dir: Path, prepared_dir: Path, synthetic_dir: Path | None,
           train_reports_dir: Path | None, interpolate_dir: Path | None = None) -> ModalityInputs:
    """One modality's inputs; InputError when its evaluation or prepared manifest is missing."""
    folder = evaluate_dir / modality
    path = folder / "evaluate.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; run medti evaluate for modality '{modality}' first")
    details = json.loads(path.read_text(encoding="utf-8"))
    prepared = prepared_dir / modality / "manifest.csv"
    if not prepared.is_file():
        raise InputError(f"{prepared}: the prepared manifest of modality '{modality}' is missing")
    names = variant_names(details)
    synthetic, reports = {}, {}
    for v in names:
        main = v == names[0]
        d = _variant_path(synthetic_dir, modality, v, main)
        if d is not None and (d / "manifest.csv").is_file():
            synthetic[v] = d / "manifest.csv"
        elif d is not None:
            log.warning("%s: no synthetic manifest: the report shows no synthetic samples of %s, variant %s",
                        d / "manifest.csv", modality, v)
        for c in details["classes"]:
            d = _variant_path(train_reports_dir, modality, v, main, c)
            if d is not None and (d / "metrics.csv").is_file():
                reports.setdefault(v, {})[c] = d
            else:
                log.warning("no embedding training report for %s/%s, variant %s (%s)", modality, c, v, d)
    grids = sorted((interpolate_dir / modality).glob("*.png")) if interpolate_dir is not None else []
    return ModalityInputs(modality, details, folder, prepared, synthetic, reports, grids)


def random_base_model(params: dict | None, inputs: list[ModalityInputs]) -> str | None:
    """The name of a random-weights base model this run used, if it used one."""
    names = []
    if params is not None:
        names.append(str((params.get("base_model") or {}).get("id")))
    for m in inputs:
        names.extend(m.details.get("synthetic_base_models") or [])
        for block in [m.details, *(m.details.get("variants") or {}).values()]:
            names.extend(e.get("base_model") for e in (block.get("embeddings") or {}).values())
        for d in (d for by_class in m.train_reports.values() for d in by_class.values()):
            summary = d / "summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text(encoding="utf-8"))
                if s.get("random_base_model"):
                    return str(s.get("base_model") or "random")
    return next((n for n in names if is_random_model(n)), None)


# -- the document --------------------------------------------------------------------------------------------

def build_document(inputs: list[ModalityInputs], params: dict | None, params_text: str | None, figures: Path,
                   prepared_dir: Path, synthetic_dir: Path | None, samples_per_class: int, seed: int) -> Document:
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
    elif model == "toy":
        doc.warning(TOY_BANNER)
    doc.add(("nav", [("Test AUC", "auc")] + [(m.name, f"m-{m.name}") for m in inputs] + [("Parameters", "params")]))
    doc.heading(2, "Test AUC per modality and condition", "auc")
    auc_overview(doc, inputs, params)
    for m in inputs:
        doc.heading(2, f"{m.name}", f"m-{m.name}")
        doc.heading(3, "Classifiers")
        auc_section(doc, m, params)
        for name, caption in (("roc.png", "Test ROC curves: the mean over seeds, ± one standard deviation shaded."),
                              ("confusion.png", "Test confusion matrices (most probable class), seeds added up.")):
            copy_figure(doc, m.evaluate_dir / name, figures / f"{m.name}_{name}", caption)
        if any(b.get("n_synthetic") or b.get("images") for b in (m.details.get("variants") or {}).values()):
            doc.heading(3, "Embedding variants")
            variants_section(doc, m)
        doc.heading(3, "Real and synthetic images")
        samples_section(doc, m, samples_per_class, seed, figures)
        if m.interpolation or m.details.get("sweeps"):
            doc.heading(3, "Disease interpolation")
            for grid in m.interpolation:
                copy_figure(doc, grid, figures / f"{m.name}_{grid.name}",
                            "Each row one weight (or pathology), each column one seed shared by every row: "
                            "weighted prompts from the first class to the other (composable diffusion).")
            sweep_section(doc, m, figures)
        doc.heading(3, "Embedding training")
        embedding_training_section(doc, m, figures)
        doc.heading(3, "Do the synthetic images carry their class?")
        agreement_section(doc, m)
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

def build_report(evaluate_dir: PathLike, prepared_dir: PathLike, out: PathLike, *,
                 synthetic_dir: PathLike | None = None, train_reports_dir: PathLike | None = None,
                 interpolate_dir: PathLike | None = None, params: dict | None = None,
                 params_path: PathLike | None = None, modalities: list[str] | None = None,
                 samples_per_class: int | None = None) -> Path:
    """Write the report folder ``out`` (index.html, report.md, figures/, summary.json); returns index.html."""
    evaluate_dir, prepared_dir, out = Path(evaluate_dir), Path(prepared_dir), Path(out)
    synthetic_dir = Path(synthetic_dir) if synthetic_dir is not None else None
    train_reports_dir = Path(train_reports_dir) if train_reports_dir is not None else None
    interpolate_dir = Path(interpolate_dir) if interpolate_dir is not None else None
    sweep_stale_temporaries(out.parent, name=out.name)
    section = (params or {}).get("report") or {}
    n = int(samples_per_class or section.get("samples_per_class", schema_default("report.samples_per_class")))
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
                                 for c, r in m.details["conditions"].items()} for m in inputs},
                "variants": {m.name: {row["variant"]: row for row in variant_rows(m)} for m in inputs}})
        tracker.log_artifact(out / "index.html")
    log.info("report: %s", out / "index.html")
    return out / "index.html"
