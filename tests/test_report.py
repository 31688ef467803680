"""medti report: one self-contained HTML page and its Markdown, from a small real experiment's outputs."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml
from classifier_support import (
    CLASSES,
    CONDITIONS,
    MODALITY,
    build_toy_experiment,
    one_line_error,
    toy_params,
    write_interpolation,
)

from medti.cli import main
from medti.errors import InputError
from medti.evaluate import EvaluateSettings, evaluate
from medti.report import build_report


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_model_dir):
    return build_toy_experiment(tmp_path_factory.getbasetemp() / "toy_experiment")


@pytest.fixture(scope="module")
def reported(toy, tmp_path_factory):
    """The pipeline's command lines, run in a project folder holding the toy experiment."""
    project = toy.root
    params = toy_params(project)
    interpolation = write_interpolation(project / "results" / "interpolate" / MODALITY)  # interpolate.out
    evaluate(toy.classifiers, toy.real, project / "results" / "evaluate" / MODALITY, synthetic_manifest=toy.synthetic,
             embeddings=toy.embeddings, modality=MODALITY, classes=list(CLASSES),
             settings=EvaluateSettings(bootstrap=200, kid_subsets=10, top_k=4), interpolate=interpolation)
    rc = main(["report", "--params", str(params), "-q"])  # every input and the output: params.yaml's paths
    assert rc == 0
    return project / "results" / "report"


def test_html_is_self_contained(reported):
    html = (reported / "index.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no links to files, scripts or stylesheets; every image is inline PNG.
    assert not re.search(r"<script|<link|@import|url\(", html)
    sources = re.findall(r"<img [^>]*src='([^']*)'", html)
    assert len(sources) >= 8
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_content(reported, toy):
    html = (reported / "index.html").read_text()
    metrics = json.loads((toy.root / "results" / "evaluate" / MODALITY / "metrics.json").read_text())
    # The random-weights warning (the toy embeddings were trained on the tiny model).
    assert "carry no medical meaning" in html
    # The AUC table in the paper's layout: mean ± sd for every condition, with intervals and p-values.
    for condition in CONDITIONS:
        m = metrics[condition]
        assert f"{m['auc_mean']:.3f} ± {m['auc_std']:.3f}" in html
        assert f"{m['ci_low']:.3f}–{m['ci_high']:.3f}" in html
    assert "p (paired bootstrap)" in html and "p (DeLong)" in html
    # Figures and sections people look for.
    for caption in ("Test ROC curves", "Real training images (left) and synthetic images (right)",
                    "Textual Inversion training loss", "The closest synthetic–training pairs", "Fréchet (FD)"):
        assert caption in html, caption
    # The audit reports the planted copy.
    assert "1 of 25 synthetic images are near-copies" in html
    # Parameters verbatim and checksums of data and embeddings.
    params_text = (toy.root / "params.yaml").read_text()
    assert "samples_per_class: 3" in params_text and "samples_per_class: 3" in html
    details = json.loads((toy.root / "results" / "evaluate" / MODALITY / "evaluate.json").read_text())
    for c in CLASSES:
        assert details["embeddings"][c]["md5"] in html and details["embeddings"][c]["checksum"] in html
    from medti.hashing import dvc_md5

    assert dvc_md5(toy.real.parent) in html and dvc_md5(toy.synthetic.parent) in html


def test_markdown_has_the_same_tables_and_links_its_figures(reported):
    md = (reported / "report.md").read_text()
    assert "carry no medical meaning" in md and "| Condition |" in md
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert figures and all((reported / f).is_file() for f in figures)
    assert "&lt;toy-lesion&gt;" in md  # tokens are escaped, not swallowed as HTML tags
    summary = json.loads((reported / "summary.json").read_text())
    assert summary["random_base_model"] == "tiny" and set(summary["auc"][MODALITY]) == set(CONDITIONS)


def test_the_sweeps_verdict_is_shown_beside_the_interpolation(reported, toy):
    """Each sweep's share judged its target class per weight, whether it rises, and the figure."""
    sweeps = json.loads((toy.root / "results" / "evaluate" / MODALITY / "evaluate.json").read_text())["sweeps"]
    md = (reported / "report.md").read_text()
    section = md[md.index("### Disease interpolation"):md.index("### Embedding training")]
    for figure, target, rises in (("sweep-normal-to-lesion", "lesion", "yes"), ("sweep-lesion-to-normal", "normal",
                                                                                "no")):
        s = sweeps[figure]
        shares = ", ".join(f"w={w:.2f} {x:.2f}" for w, x in zip(s["weights"], s["share_target"]))
        line = (f"Share judged {target} by the real-only classifiers ({s['from']} → {target}): {shares} "
                f"(rises: {rises}, Spearman {s['spearman']:.2f})")
        assert line in section.splitlines(), line
    assert "w=0.00 " in section and "w=1.00 " in section
    assert f"(figures/{MODALITY}_sweep_judgement.png)" in section
    assert (reported / "figures" / f"{MODALITY}_sweep_judgement.png").is_file()
    assert "Share judged lesion by the real-only classifiers" in (reported / "index.html").read_text()


def test_no_warning_for_a_real_base_model(reported, toy, tmp_path):
    """The banner follows the base model: a run whose every input names a real checkpoint has none."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(toy.root / "data", project / "data")
    shutil.copytree(toy.root / "results" / "evaluate", project / "evaluate")
    details_path = project / "evaluate" / MODALITY / "evaluate.json"
    details = json.loads(details_path.read_text())
    details["synthetic_base_models"] = ["stabilityai/stable-diffusion-2-base"]
    for block in [details, *details["variants"].values()]:
        for e in block["embeddings"].values():
            e["base_model"] = "stabilityai/stable-diffusion-2-base"
    details_path.write_text(json.dumps(details))
    index = build_report(project / "evaluate", project / "data" / "prepared", project / "report",
                         synthetic_dir=project / "data" / "synthetic")
    html = index.read_text()
    assert "carry no medical meaning" not in html and "No embedding training reports found." in html


def test_missing_evaluation_is_one_clear_line(toy, tmp_path, capsys):
    params = yaml.safe_load((toy.root / "params.yaml").read_text())
    params["modalities"]["other"] = params["modalities"][MODALITY]
    params["classes"].update({f"other-{c}": {"modality": "other", "class": c} for c in CLASSES})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    rc = main(["report", "--params", str(path), "--evaluate", str(toy.root / "results" / "evaluate"), "--prepared",
               str(toy.root / "data" / "prepared"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "other/evaluate.json: not found; run medti evaluate for modality 'other' first" in err
    assert not (tmp_path / "report").exists()
    with pytest.raises(InputError, match="no evaluated modalities"):
        build_report(tmp_path / "nothing", toy.root / "data" / "prepared", tmp_path / "r2")
    err = one_line_error(capsys, ["report", "--evaluate", str(toy.root / "results" / "evaluate")])
    assert "standalone needs --prepared, --out" in err
    err = one_line_error(capsys, ["report", "--params", str(path), "--samples-per-class", "0"])
    assert "--samples-per-class: 0 is less than the minimum of 1" in err


# -- embedding variants --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def variants_reported(toy, tmp_path_factory):
    """The two-variant experiment evaluated and reported by the pipeline's command lines."""
    from classifier_support import build_variant_experiment

    exp = build_variant_experiment(tmp_path_factory.getbasetemp() / "variant_experiment", toy)
    assert main(["evaluate", "--params", str(exp.params), "--modality", MODALITY, "-q"]) == 0
    assert main(["report", "--params", str(exp.params), "-q"]) == 0
    evaluated = exp.root / "results" / "evaluate"
    return (exp, exp.root / "results" / "report", json.loads((evaluated / f"{MODALITY}.metrics.json").read_text()),
            json.loads((evaluated / MODALITY / "evaluate.json").read_text()))


def _md_row(md: str, *cells: str) -> str:
    """The Markdown table line that starts with ``cells``."""
    start = "| " + " | ".join(cells) + " |"
    lines = [line for line in md.splitlines() if line.startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


def test_the_variants_table_is_the_ablation(variants_reported):
    exp, reported, metrics, _ = variants_reported
    summary = json.loads((reported / "summary.json").read_text())["variants"][MODALITY]
    md = (reported / "report.md").read_text()
    for variant, condition, images, label in (("full", "synthetic", 4, "full (main)"),
                                              ("few", "synthetic_few", 2, "few")):
        row, v, m = summary[variant], metrics["variants"][variant], metrics[condition]
        assert row["synthetic_only_condition"] == condition
        assert row["synthetic_only_auc"] == pytest.approx(m["auc_mean"])
        assert row["images"] == v["images"] == images and row["steps"] == v["steps"] == 4
        assert row["agreement"] == pytest.approx(v["synthetic_agreement"]["overall"])
        assert row["classifier_fd"] == pytest.approx(v["quality"]["classifier_fd"])
        _md_row(md, label, str(images), "4", str(v["num_vectors"]),
                f"{m['auc_mean']:.3f} ± {m['auc_std']:.3f} ({condition})",
                f"{v['synthetic_agreement']['overall']:.2f}",
                f"{v['quality']['classifier_fd']:.2f} ({v['quality']['classifier_fd_real_test']:.2f})")
    assert md.index("| full (main) |") < md.index("| few | 2 |")  # the main variant first
    assert "## toy" in md and "### Embedding variants" in md and "0.562 against 0.766" in md


def test_conditions_show_their_variant_and_the_comparison_across_variants(variants_reported):
    _, reported, _, details = variants_reported
    md = (reported / "report.md").read_text()
    _md_row(md, "real", "–")
    for condition in ("real_synthetic", "synthetic"):
        _md_row(md, condition, "full")
    comp = details["conditions"]["synthetic_few"]["comparisons"]["synthetic"]
    row = _md_row(md, "synthetic_few", "few", "synthetic (full)")
    assert f"{comp['difference']:+.3f} [{comp['ci_low']:+.3f}, {comp['ci_high']:+.3f}]" in row
    assert "Across embedding variants" in md and "Δ AUC vs the main variant" in md
    assert "synthetic_few (real: 0, synthetic: all, variant few)" in md  # the overview names the variant


def test_samples_training_and_audit_per_variant(variants_reported):
    from medti.hashing import dvc_md5

    exp, reported, metrics, _ = variants_reported
    md = (reported / "report.md").read_text()
    html = (reported / "index.html").read_text()
    for variant, images in (("full", 4), ("few", 2)):
        assert f"synthetic images of variant {variant} ({images} images per embedding)." in md
        assert dvc_md5(exp.synthetic / variant) in html
        for c in CLASSES:  # the loss and summary of each class and variant, from the per-variant report folders
            _md_row(md, f"&lt;{MODALITY}-{c}&gt;", variant, str(images), "4")
    assert (reported / "figures" / f"{MODALITY}_samples.png").is_file()
    assert (reported / "figures" / f"{MODALITY}_samples_few.png").is_file()
    assert (reported / "figures" / f"{MODALITY}_lesion_few_validation.png").is_file()
    few = metrics["variants"]["few"]["memorisation"]
    assert "#### Variant few (2 images per embedding)" in md
    assert f"{few['near_copies']} of {few['n']} synthetic images are near-copies" in md and few["n"] == 16
    assert "1 of 25 synthetic images are near-copies" in md
    assert (reported / "figures" / f"{MODALITY}_few_memorisation_pairs.png").is_file()
    # evaluated without --interpolate: no sweeps, so no verdict (and no interpolation grids: no section)
    assert "Share judged" not in md and "### Disease interpolation" not in md
