"""medti report: one self-contained HTML page and its Markdown, from a small real experiment's outputs."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml
from classifier_support import CLASSES, CONDITIONS, MODALITY, build_toy_experiment, one_line_error, toy_params

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
    evaluate(toy.classifiers, toy.real, project / "results" / "evaluate" / MODALITY, synthetic_manifest=toy.synthetic,
             embeddings=toy.embeddings, modality=MODALITY, classes=list(CLASSES),
             settings=EvaluateSettings(bootstrap=200, kid_subsets=10, top_k=4))
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


def test_no_warning_for_a_real_base_model(reported, toy, tmp_path):
    """The banner follows the base model: a run whose every input names a real checkpoint has none."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(toy.root / "data", project / "data")
    shutil.copytree(toy.root / "results" / "evaluate", project / "evaluate")
    details_path = project / "evaluate" / MODALITY / "evaluate.json"
    details = json.loads(details_path.read_text())
    details["synthetic_base_models"] = ["stabilityai/stable-diffusion-2-base"]
    for e in details["embeddings"].values():
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
