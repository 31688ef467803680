"""The toy world (issue 14): the default `toy` base model knows how the phantoms look, in visual words, and was
never told a class; its pre-training images are not the default data set's; it loads offline from the package.

The method's effect on it (synthetic-only AUC, agreement, a negative control) is checked end to end in
tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import yaml

from medti.models.toy import MODALITIES, PRETRAIN_SEED, TOY_FOLDER
from medti.phantoms import generate_phantoms
from medti.phantoms.kinds import DEFAULT_CLASSES
from medti.phantoms.looks import FORBIDDEN_WORDS, caption, looks

ROOT = Path(__file__).resolve().parents[1]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower().replace("_", " ")))


def test_no_caption_names_a_class_or_a_word_of_its_init_phrase():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    banned = set(FORBIDDEN_WORDS)
    for entry in params["classes"].values():
        banned |= _words(entry["class"]) | _words(entry["init"])
    assert {"opacity", "cancer", "nuclei", "benign", "atypical", "normal"} <= banned
    captions = [caption(m, k, v) for m in MODALITIES for k in looks(m) for v in range(6)]
    assert len(set(captions)) > 3 * len(captions) // 6  # several phrasings per look
    for text in captions:
        assert not (_words(text) & banned), (text, _words(text) & banned)


def test_look_labels_leave_the_pixels_alone(tmp_path):
    """The pre-training set's look labels come from the same draws: the DICOM files are the class-labelled ones."""
    for modality in ("chest_xray", "histopathology"):
        a = generate_phantoms(modality, tmp_path / "class" / modality, subjects_per_class=4, seed=3)
        b = generate_phantoms(modality, tmp_path / "look" / modality, subjects_per_class=4, seed=3, label="look")
        files_a = sorted(p.relative_to(a.out) for p in a.out.rglob("*.dcm"))
        assert files_a == sorted(p.relative_to(b.out) for p in b.out.rglob("*.dcm"))
        assert all((a.out / f).read_bytes() == (b.out / f).read_bytes() for f in files_a)
        rows_a = [r.rsplit(",", 1) for r in (a.out / "labels.csv").read_text().splitlines()[1:]]
        rows_b = [r.rsplit(",", 1) for r in (b.out / "labels.csv").read_text().splitlines()[1:]]
        assert [k for k, _ in rows_a] == [k for k, _ in rows_b]
        assert {v for _, v in rows_b} <= set(looks(modality))
        healthy = {"chest_xray": {"clear"}, "histopathology": {"rings_1", "rings_2"}}[modality]
        for (_, cls), (_, look) in zip(rows_a, rows_b):  # the look says what the class shows, in other words
            assert (look in healthy) == (cls == {"chest_xray": "normal", "histopathology": "benign"}[modality])


def _prepared(root: Path, modality: str, seed: int, n: int) -> np.ndarray:
    from PIL import Image

    from medti.models.toy import _default_sources
    from medti.preprocess import prepare_source

    raw = generate_phantoms(modality, root / "raw" / modality, subjects_per_class=n, seed=seed).out
    source = _default_sources()[modality]
    source = {**source, "path": str(raw), "labels": {**source["labels"], "csv": str(raw / "labels.csv")}}
    out = prepare_source(source, list(DEFAULT_CLASSES[modality]), root / "prep" / modality,
                         modality=modality, root=root, settings={"size": 64}, seed=seed).out
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).ravel()
                     for p in sorted(Path(out).glob("images/*/*/*.png"))])


def test_pre_training_images_are_not_the_default_data_sets(tmp_path):
    """No pre-training image equals or nearly equals an image of the default run: its own seed, and at 64 px
    every default image is further from its nearest pre-training image than a near-duplicate would be."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert PRETRAIN_SEED != params["phantoms"]["seed"]
    for modality in MODALITIES:
        default = _prepared(tmp_path / "default", modality, params["phantoms"]["seed"], 6)
        pretrain = _prepared(tmp_path / "pretrain", modality, PRETRAIN_SEED, 6)
        d = ((default[:, None, :] - pretrain[None, :, :]) ** 2).mean(axis=2) ** 0.5  # RMS difference, 0-255
        # a near-duplicate (the same anatomy re-encoded) differs by a few grey levels; phantoms of the same
        # kind but another subject differ by tens
        assert d.min() > 8.0, (modality, float(d.min()))


def test_the_toy_model_is_shipped_small_pretrained_and_loads_offline():
    from medti.models.loading import load_base_model

    size = sum(p.stat().st_size for p in TOY_FOLDER.rglob("*") if p.is_file())
    assert size < 20 * 2**20, size
    model = load_base_model("toy")
    assert not model.random_weights and model.resolution == 64
    info = model.info
    assert info["medti_arch"] == "toy" and info["settings"]["phantom_seed"] == PRETRAIN_SEED
    assert "never by class" in info["pretrained_on"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["base_model"]["id"] == "toy"  # the default; `tiny` (random) stays for fast unit tests


def _sample(model, prompt: str, n: int, seed: int) -> torch.Tensor:
    """``n`` images of ``prompt`` drawn by medti's own sampler (as generate draws them), grey in [0, 1]."""
    from medti.generate.sampling import sample

    images = sample(model, [prompt] * n, [seed * 1000 + i for i in range(n)], steps=20, guidance=4.0,
                    scheduler="dpmsolver++", batch_size=n)
    return images.mean(dim=1)


def test_the_toy_model_draws_what_its_visual_words_say():
    """Not noise: asked for a bright spot low in the right field of a radiograph, it puts one there (brighter than
    when asked for clear fields); asked for packed dark dots on a slide, it draws a darker patch than rings."""
    from medti.models.loading import load_base_model

    model = load_base_model("toy")
    spot = _sample(model, caption("chest_xray", "spot_right_lower"), 6, 0)
    clear = _sample(model, caption("chest_xray", "clear"), 6, 0)
    field = (slice(28, 46), slice(38, 54))  # the right lung's lower half, in image coordinates
    assert spot[:, field[0], field[1]].mean() > clear[:, field[0], field[1]].mean() + 0.03
    dense = _sample(model, caption("histopathology", "dense"), 6, 1)
    rings = _sample(model, caption("histopathology", "rings_1"), 6, 1)
    assert dense.mean() < rings.mean() - 0.03


def test_the_build_script_builds_a_loadable_model(tmp_path):
    """scripts/build-toy-model.py end to end at a few steps: phantoms by look, prepare, autoencoder, UNet, a
    diffusers folder with its record; a second build resumes after the autoencoder."""
    import json
    import subprocess
    import sys

    from medti.models.loading import load_base_model

    out, work = tmp_path / "toy", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "scripts" / "build-toy-model.py"), "--out", str(out), "--work", str(work),
           "--subjects-per-class", "40", "--vae-steps", "2", "--unet-steps", "2", "--unet-batch-size", "4"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=600)
    info = json.loads((out / "medti_model.json").read_text())
    assert info["random_weights"] is False and info["settings"]["unet_steps"] == 2 and info["images"] > 50
    model = load_base_model(str(out))
    assert not model.random_weights and model.resolution == 64 and model.vae.config.scaling_factor != 0.18215
    assert (work / "vae.pt").is_file()
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "again")], check=True, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert "vae step" not in proc.stderr  # the autoencoder was reused, not trained again
