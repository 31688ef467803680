"""A small classifier experiment shared by the evaluate and report tests (built once per test session).

Real pieces throughout: the toy image set (medti.toydata, a known answer), MONAI classifiers trained by
``train_classifier``, and Textual Inversion embeddings trained for a few steps on the tiny base model (their
files and training reports). The synthetic set is toy images in ``medti generate``'s manifest form, recorded
as drawn with those embeddings, plus one planted exact copy of a real training image (the memorisation
audit must flag it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

MODALITY = "toy"
CLASSES = ("normal", "lesion")
CONDITIONS = {"real": (None, 0), "real_synthetic": (None, None)}  # (real count, synthetic count): None = all
SEEDS = (0, 1)


def fast_settings(**overrides):
    """A classifier small and short enough for tests (it still learns the toy set)."""
    from medti.classifier import ClassifierSettings

    kw = dict(arch="resnet10", width=0.25, size=32, steps=30, eval_every=10, batch_size=16, device="cpu")
    kw.update(overrides)
    return ClassifierSettings(**kw)


@dataclass
class ToyExperiment:
    root: Path
    real: Path            # data/prepared/toy/manifest.csv
    synthetic: Path       # data/synthetic/toy/manifest.csv
    embeddings: Path      # embeddings/toy/<class>.safetensors
    train_reports: Path   # results/train_embedding (…/toy/<class>/)
    classifiers: Path     # results/classifier/toy (…/<condition>/seed<N>/)
    planted: str          # the synthetic manifest path of the planted copy
    planted_source: str   # the real manifest path it copies


def _train_embeddings(real: Path, root: Path) -> dict[str, str]:
    """A few real TI steps per class on the tiny model; returns each class's embedding checksum."""
    from medti.classifier import read_rows
    from medti.textual_inversion import TrainSettings, train_embedding

    rows = read_rows(real, MODALITY)
    checksums = {}
    for label, c in enumerate(CLASSES):
        paths = list(rows[(rows["label"] == label) & rows["ti_subset"].astype(bool)]["path"])[:4]
        settings = TrainSettings(token=f"<{MODALITY}-{c}>", init_words="round blob", steps=4, batch_size=2,
                                 warmup_steps=0, log_every=2, checkpoint_every=0, validation_images=2,
                                 validation_steps=2, device="cpu")
        result = train_embedding(paths, settings, base_model="tiny",
                                 output=root / "embeddings" / MODALITY / f"{c}.safetensors",
                                 report_dir=root / "results" / "train_embedding" / MODALITY / c, modality=MODALITY,
                                 class_name=c)
        checksums[c] = result.embedding.checksum()
    return checksums


def build_toy_experiment(root: Path) -> ToyExperiment:
    """Build (once: later calls reuse the folder) the toy experiment under ``root``."""
    from medti.classifier import train_classifier
    from medti.manifest import read_manifest, write_manifest
    from medti.toydata import write_real_set, write_synthetic_set

    prepared = root / "data" / "prepared" / MODALITY
    synthetic_dir = root / "data" / "synthetic" / MODALITY
    classifiers = root / "results" / "classifier" / MODALITY
    real = prepared / "manifest.csv"
    synthetic = synthetic_dir / "manifest.csv"
    done = root / "built"
    if not done.is_file():
        write_real_set(prepared, per_split={"train": 24, "val": 12, "test": 12}, classes=CLASSES, modality=MODALITY,
                       size=32, seed=0)
        rows = read_manifest(real, absolute=False)
        source = rows[(rows["split"] == "train") & (rows["label"] == 1)]["path"].iloc[3]
        write_synthetic_set(synthetic_dir, n_per_class=12, classes=CLASSES, modality=MODALITY, size=32, seed=100,
                            copies=[(prepared / source, 1)])
        checksums = _train_embeddings(real, root)
        syn = read_manifest(synthetic, absolute=False)
        syn["embedding_checksum"] = [checksums[c] for c in syn["class"]]
        syn["base_model"] = "tiny"
        write_manifest(syn, synthetic)
        for condition, (real_count, synthetic_count) in CONDITIONS.items():
            for seed in SEEDS:
                train_classifier(real, classifiers / condition / f"seed{seed}", settings=fast_settings(),
                                 synthetic_manifest=synthetic, real_count=real_count, synthetic_count=synthetic_count,
                                 seed=seed, modality=MODALITY, condition=condition)
        (root / "planted.txt").write_text(source)
        done.write_text("ok")
    source = (root / "planted.txt").read_text()
    syn = pd.read_csv(synthetic)
    planted = syn[syn["path"].str.endswith(f"{12:05d}.png") & (syn["label"] == 1)]["path"].iloc[0]
    return ToyExperiment(root, real, synthetic, root / "embeddings" / MODALITY, root / "results" / "train_embedding",
                         classifiers, planted, source)


def toy_params(root: Path) -> Path:
    """A params.yaml for the toy modality (for the pipeline form of the commands); returns its path."""
    import yaml

    params = {
        "seed": 3,
        "base_model": {"id": "tiny"},
        "tracking": {"enabled": False},
        "modalities": {MODALITY: {"source": {"type": "folder", "path": "data/raw/toy"},
                                  "templates": ["a toy image of {}"]}},
        "classes": {f"{MODALITY}-{c}": {"modality": MODALITY, "class": c} for c in CLASSES},
        "classifier": {"arch": "resnet10", "width": 0.25, "size": 32, "steps": 30, "eval_every": 10, "batch_size": 16,
                       "device": "cpu", "seeds": list(SEEDS),
                       "conditions": {c: {"real": "all" if r is None else r, "synthetic": "all" if s is None else s}
                                      for c, (r, s) in CONDITIONS.items()}},
        "evaluate": {"bootstrap": 200, "memorisation": {"top_k": 4}, "quality": {"kid_subsets": 10}},
        "report": {"samples_per_class": 3},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``medti argv``; assert it fails with exit status 2 and one error line, and return that line."""
    from medti.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medti: error: ") and "\n" not in err and "Traceback" not in err
    return err
