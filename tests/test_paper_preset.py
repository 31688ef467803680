"""params-paper.yaml, the paper's setup as a full params file: it validates against the schema, every stage's
settings class takes it, and it says what the paper did (SD 2.0 base, 64 vectors, 200 real training images in
total, 1,000 synthetic per class, ResNet-18 from ImageNet at 196 px, 6,250 steps, five seeds, heavy
augmentation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medti.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "params-paper.yaml"


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_params(PRESET)  # validated against medti/schemas/params.schema.yaml, defaults filled


def test_the_preset_is_a_full_params_file():
    raw = yaml.safe_load(PRESET.read_text())
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(default)  # every section of params.yaml spelt out


def test_the_preset_is_the_papers_setup(paper):
    assert paper["base_model"]["id"] == "stabilityai/stable-diffusion-2-base"
    te = paper["train_embedding"]
    assert te["num_vectors"] == 64 and te["lr"] == 5e-3 and te["lr_scheduler"] == "constant"
    assert te["max_grad_norm"] is None and te["warmup_steps"] == 0 and te["batch_size"] == 1
    assert te["steps"] == 50000 and te["grad_accum"] == 1
    prep = paper["prepare"]
    assert prep["ti_per_class"] == 100 and prep["size"] == 512
    for name, mod in paper["modalities"].items():  # split counts are subjects per class
        assert prep["split"]["train"] * len(mod["classes"]) == 200, name
        assert prep["ti_per_class"] <= prep["split"]["train"]
    gen = paper["generate"]
    assert gen["n_per_class"] == 1000 and gen["scheduler"] == "euler_a"
    clf = paper["classifier"]
    assert (clf["arch"], clf["width"], clf["pretrained"], clf["size"]) == ("resnet18", 1.0, "imagenet", 196)
    assert (clf["lr"], clf["batch_size"], clf["steps"], clf["augment"]) == (1e-4, 32, 6250, "paper")
    assert len(clf["seeds"]) == 5
    assert clf["conditions"] == {"real": {"real": "all", "synthetic": 0},
                                 "real_synthetic": {"real": "all", "synthetic": "all"},
                                 "synthetic": {"real": 0, "synthetic": "all"},
                                 "synthetic_10": {"real": 0, "synthetic": "all", "variant": "images_10"}}
    assert te["variants"] == {"images_100": {}, "images_10": {"images": 10}}  # 10 of the 100, nested
    assert paper["evaluate"]["quality"]["reference"] == "ti"
    assert paper["phantoms"]["modalities"] == []  # the paper's data, not phantoms


def test_every_stage_takes_the_preset(paper):
    from medti.classifier import ClassifierSettings
    from medti.cli import build_parser
    from medti.config import stage
    from medti.evaluate import EvaluateSettings
    from medti.textual_inversion.cli import build_settings

    for modality in paper["modalities"]:
        clf = ClassifierSettings.from_section(stage(paper, "classifier", modality))
        assert clf.augment == "paper" and clf.pretrained == "imagenet"
        ev = EvaluateSettings.from_section(stage(paper, "evaluate", modality), seed=paper["seed"])
        assert ev.quality_reference == "ti" and ev.memorisation_level == 0.05
    args = build_parser().parse_args(["train-embedding", "--params", str(PRESET), "--modality", "chest_xray",
                                      "--class", "opacity"])
    te = build_settings(args, paper)
    assert te.num_vectors == 64 and te.max_grad_norm is None and te.warmup_steps == 0 and te.steps == 50000


def test_snakemake_plans_the_papers_whole_table(tmp_path):
    """The Snakefile reads params.yaml (DVC reads the same file): the preset copied over it in a copy of the
    workflow, with the raw-data paths it names present, plans every embedding, synthetic set and classifier run
    of the paper's table: 3 modalities x 2 classes x 2 embedding variants (100 and 10 images), x 4 conditions
    (real, real + synthetic, synthetic from each variant) x 5 seeds."""
    import re
    import shutil
    import subprocess
    import sys

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Snakefile", project / "Snakefile")
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copy(PRESET, project / "params.yaml")
    shutil.copytree(ROOT / "workflow", project / "workflow")
    params = yaml.safe_load(PRESET.read_text())
    for mod in params["modalities"].values():
        source = mod["source"]
        (project / source["path"]).mkdir(parents=True, exist_ok=True)
        if "labels" in source:
            (project / source["labels"]["csv"]).write_text("case,label\n")
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "--dry-run", "--forceall", "--printshellcmds", "--cores", "1"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rules = re.findall(r"^(?:local)?rule (\w+):$", proc.stdout + proc.stderr, flags=re.M)
    assert rules.count("prepare") == 3 and rules.count("train_embedding") == 6 and rules.count("evaluate") == 3
    assert rules.count("generate") == 3 * 2 and rules.count("train_classifier") == 3 * 4
    out = proc.stdout + proc.stderr
    assert "--variant images_10 --embeddings embeddings/prostate_mri --out data/synthetic/prostate_mri/images_10" in out
    assert "output: results/classifier/prostate_mri/synthetic_10\n" in out  # its 5 seeds in one job
