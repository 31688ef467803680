"""A small classifier experiment shared by the evaluate and report tests (built once per test session).

Real pieces throughout: the toy image set (medti.toydata, a known answer), classifiers trained by
``train_classifier``, and Textual Inversion embeddings trained for a few steps on the tiny base model (their
files and training reports). The synthetic set is toy images in ``medti generate``'s manifest form, recorded
as drawn with those embeddings, plus one planted exact copy of a real training image (the memorisation
audit must flag it).

The variant experiment (:func:`build_variant_experiment`) lays the same pieces out as the pipeline does with two
embedding variants: ``full`` (the toy embeddings and synthetic set) and ``few`` (embeddings recorded as trained
on fewer images, and a smaller synthetic set that carries its class worse: some images carry the other class's
label), with a synthetic-only condition on each.

:func:`write_interpolation` writes a fake ``medti interpolate`` folder whose sweeps have a known answer.
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


# The variant experiment: (real count, synthetic count, variant); None = all (variant None: the first)
VARIANTS = {"full": {}, "few": {"images": 2}}
VARIANT_CONDITIONS = {"real": (None, 0, None), "real_synthetic": (None, None, None), "synthetic": (0, None, None),
                      "synthetic_few": (0, None, "few")}
FEW_PER_CLASS, FEW_MISLABELLED = 8, 3  # the few set: images per class, of which carry the other class's label


@dataclass
class VariantExperiment:
    root: Path            # holds params.yaml (variant_params) and every folder at params.yaml's default paths
    real: Path            # data/prepared/toy/manifest.csv
    synthetic: Path       # data/synthetic/toy (…/<variant>/manifest.csv)
    embeddings: Path      # embeddings/toy (…/<class>/<variant>.safetensors)
    train_reports: Path   # results/train_embedding (…/toy/<class>/<variant>/)
    classifiers: Path     # results/classifier/toy (…/<condition>/seed<N>/)
    params: Path


def _few_embeddings(toy: ToyExperiment, folder: Path) -> dict[str, str]:
    """Each class's toy embedding as variant ``full`` and a changed copy recorded as trained on
    ``VARIANTS["few"]["images"]`` images as ``few``; returns the few embeddings' checksums."""
    import shutil

    from medti.embeddings import load_embedding, save_embedding

    checksums = {}
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(toy.embeddings / f"{c}.safetensors", folder / c / "full.safetensors")
        emb = load_embedding(toy.embeddings / f"{c}.safetensors")
        emb.vectors = emb.vectors * 0.5
        emb.metadata = {**emb.metadata, "images": str(VARIANTS["few"]["images"])}
        save_embedding(emb, folder / c / "few.safetensors")
        checksums[c] = emb.checksum()
    return checksums


def build_variant_experiment(root: Path, toy: ToyExperiment) -> VariantExperiment:
    """Build (once: later calls reuse the folder) the two-variant experiment under ``root`` from ``toy``: the
    real data, ``full`` (the toy embeddings, synthetic set, training reports and classifier runs) and ``few``;
    the synthetic-only classifiers of both variants trained here."""
    import json
    import shutil

    from medti.classifier import train_classifier
    from medti.manifest import read_manifest, write_manifest
    from medti.toydata import write_synthetic_set

    prepared = root / "data" / "prepared" / MODALITY
    synthetic = root / "data" / "synthetic" / MODALITY
    embeddings = root / "embeddings" / MODALITY
    reports = root / "results" / "train_embedding"
    classifiers = root / "results" / "classifier" / MODALITY
    if not (root / "built").is_file():
        shutil.copytree(toy.real.parent, prepared, dirs_exist_ok=True)
        shutil.copytree(toy.synthetic.parent, synthetic / "full", dirs_exist_ok=True)
        few_checksums = _few_embeddings(toy, embeddings)
        few = write_synthetic_set(synthetic / "few", n_per_class=FEW_PER_CLASS, classes=CLASSES, modality=MODALITY,
                                  size=32, seed=200)
        rows = read_manifest(few, absolute=False)
        wrong = {label: rows.index[rows["label"] == label][:FEW_MISLABELLED] for label in range(len(CLASSES))}
        for label, index in wrong.items():  # the first few images of each class carry the other class's label
            rows.loc[index, ["label", "class"]] = [1 - label, CLASSES[1 - label]]
        rows["embedding_checksum"] = [few_checksums[c] for c in rows["class"]]
        rows["base_model"] = "tiny"
        write_manifest(rows, few)
        for c in CLASSES:
            for variant in VARIANTS:
                shutil.copytree(toy.train_reports / MODALITY / c, reports / MODALITY / c / variant,
                                dirs_exist_ok=True)
            summary = reports / MODALITY / c / "few" / "summary.json"
            summary.write_text(json.dumps({**json.loads(summary.read_text()), "images": VARIANTS["few"]["images"]}))
        for condition in ("real", "real_synthetic"):
            shutil.copytree(toy.classifiers / condition, classifiers / condition, dirs_exist_ok=True)
        for condition in ("synthetic", "synthetic_few"):
            variant = VARIANT_CONDITIONS[condition][2] or "full"
            for seed in SEEDS:
                train_classifier(prepared / "manifest.csv", classifiers / condition / f"seed{seed}",
                                 settings=fast_settings(), synthetic_manifest=synthetic / variant / "manifest.csv",
                                 real_count=0, synthetic_count=None, seed=seed, modality=MODALITY,
                                 condition=condition, variant=variant)
        (root / "built").write_text("ok")
    params = toy_params(root, conditions=VARIANT_CONDITIONS, variants=VARIANTS)
    return VariantExperiment(root, prepared / "manifest.csv", synthetic, embeddings, reports, classifiers, params)


# A fake ``medti interpolate`` folder of the toy modality: at weight w, SWEEP_LESIONS[w] of the SWEEP_PER_WEIGHT
# images are toy lesion images, the rest normal ones. "sweep-normal-to-lesion" thus brings the lesion in with the
# weight, "sweep-lesion-to-normal" (the same images) takes its target, normal, out: a falling sweep.
SWEEP_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWEEP_PER_WEIGHT = 24
SWEEP_LESIONS = {w: round(w * SWEEP_PER_WEIGHT) for w in SWEEP_WEIGHTS}
SWEEPS = ("sweep-normal-to-lesion", "sweep-lesion-to-normal")


def write_interpolation(folder: Path, seed: int = 7) -> Path:
    """The two toy sweeps and a combination figure (left out by evaluate) in ``medti interpolate``'s layout:
    ``<figure>/<row>-<label>-s<column>.png`` and interpolate.csv with its columns; returns ``folder``."""
    import numpy as np
    from PIL import Image

    from medti.toydata import toy_image

    rng = np.random.default_rng(seed)
    records = []

    def add(figure: str, r: int, label: str, weight, j: int, lesion: bool, prompt: str) -> None:
        rel = f"{figure}/{r:02d}-{label.replace(' ', '_')}-s{j}.png"
        (folder / figure).mkdir(parents=True, exist_ok=True)
        Image.fromarray(toy_image(int(lesion), rng, 32)).save(folder / rel)
        records.append({"figure": f"{figure}.png", "row": r, "label": label, "weight": weight, "column": j,
                        "seed": 1000 + j, "prompt": prompt, "mode": "noise", "path": rel,
                        "embedding_checksum": "toy", "base_model": "tiny", "steps": 2, "guidance": 7.5,
                        "scheduler": "ddim", "negative_prompt": ""})

    for figure in SWEEPS:
        a, b = figure.removeprefix("sweep-").split("-to-")
        for r, w in enumerate(SWEEP_WEIGHTS):
            for j in range(SWEEP_PER_WEIGHT):
                add(figure, r, f"w = {w:.2f}", w, j, j < SWEEP_LESIONS[w],
                    f"a toy image of <{MODALITY}-{a}>:{1 - w:g} AND a toy image of <{MODALITY}-{b}>:{w:g}")
    combined = " + ".join(CLASSES)
    for r, label in enumerate([*CLASSES, combined]):
        for j in range(2):
            add("combine-normal+lesion", r, label, None, j, label != "normal", label)
    pd.DataFrame(records).to_csv(folder / "interpolate.csv", index=False, lineterminator="\n")
    return folder


def toy_params(root: Path, conditions: dict | None = None, variants: dict | None = None) -> Path:
    """A params.yaml for the toy modality (for the pipeline form of the commands); returns its path.
    ``conditions``: name -> (real, synthetic[, variant]) (default CONDITIONS); ``variants``:
    ``train_embedding.variants`` (default: none, the schema's one)."""
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
                       "conditions": {c: {"real": "all" if spec[0] is None else spec[0],
                                          "synthetic": "all" if spec[1] is None else spec[1],
                                          **({"variant": spec[2]} if len(spec) > 2 and spec[2] else {})}
                                      for c, spec in (conditions or CONDITIONS).items()}},
        "evaluate": {"bootstrap": 200, "memorisation": {"top_k": 4}, "quality": {"kid_subsets": 10}},
        "report": {"samples_per_class": 3},
    }
    if variants:
        params["train_embedding"] = {"variants": variants}
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
