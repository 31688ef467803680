"""Embedding variants (the embedding-size ablation): settings, nested image subsets, the per-class job."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medti.config import condition_variant, embedding_file, load_params, main_variant, validate, variants
from medti.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def small_params(**variant_specs):
    params = load_params(ROOT / "params.yaml")
    params["train_embedding"].update(steps=3, resolution=32, validation_images=0, batch_size=2)
    if variant_specs:
        params["train_embedding"]["variants"] = variant_specs
    return params


def test_variants_conditions_and_layout_from_params():
    params = load_params(ROOT / "params.yaml")
    assert list(variants(params)) == ["full", "few"] and main_variant(params) == "full"
    assert variants(params)["few"] == {"images": 5, "steps": None, "num_vectors": None}
    assert condition_variant(params, "synthetic") == "full"  # no variant named: the first
    assert condition_variant(params, "synthetic_few") == "few"
    assert embedding_file("emb/chest_xray", "opacity", "few") == Path("emb/chest_xray/opacity/few.safetensors")
    assert embedding_file("shared", "opacity") == Path("shared/opacity.safetensors")  # a flat folder


@pytest.mark.parametrize("change, message", [
    (lambda p: p["classifier"]["conditions"]["synthetic"].update(variant="tiny"),
     "classifier.conditions.synthetic.variant: 'tiny' is not one of train_embedding.variants (full, few)"),
    (lambda p: p["modalities"]["chest_xray"].setdefault("overrides", {}).update(
        train_embedding={"variants": {"x": {}}}),
     "modalities.chest_xray.overrides.train_embedding.variants: the variants are the same for every modality"),
    (lambda p: p["train_embedding"]["variants"].update({"Bad-Name": {}}), "train_embedding.variants"),
])
def test_bad_variant_settings_are_one_clear_error(change, message):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    change(raw)
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_smaller_variants_images_are_part_of_a_larger_ones(tmp_path):
    from medti.textual_inversion.data import manifest_images
    from medti.toydata import write_real_set

    manifest = write_real_set(tmp_path / "prepared", {"train": 40, "val": 1, "test": 1}, modality="chest_xray",
                              classes=("normal", "opacity"), size=16)
    every = manifest_images(manifest, "chest_xray", "opacity")
    assert len(every) == 20
    picks = {n: manifest_images(manifest, "chest_xray", "opacity", images=n, seed=11) for n in (3, 5, 10, 20, 50)}
    assert [len(picks[n]) for n in (3, 5, 10, 20, 50)] == [3, 5, 10, 20, 20]
    assert set(picks[3]) < set(picks[5]) < set(picks[10]) < set(every) and picks[20] == every
    assert manifest_images(manifest, "chest_xray", "opacity", images=5, seed=11) == picks[5]  # reproducible
    others = [set(manifest_images(manifest, "chest_xray", "opacity", images=5, seed=s)) for s in range(12, 16)]
    assert any(o != set(picks[5]) for o in others)  # the seed draws, not the file order
    # the pick reads the sources' checksums, not the (salted) subject ids or file names: renaming them keeps it
    df = pd.read_csv(manifest)
    renamed = df.assign(subject_id=df.subject_id.map(lambda s: f"zz{s[::-1]}"))
    renamed.to_csv(manifest, index=False)
    assert manifest_images(manifest, "chest_xray", "opacity", images=5, seed=11) == picks[5]


def test_the_class_job_trains_every_variant_and_resumes_finished_ones(tmp_path, monkeypatch):
    from medti.embeddings import load_embedding
    from medti.textual_inversion import job
    from medti.textual_inversion.data import images_checksum, manifest_images
    from medti.toydata import write_real_set

    manifest = write_real_set(tmp_path / "prepared", {"train": 12, "val": 1, "test": 1}, modality="chest_xray",
                              classes=("normal", "opacity"), size=32)
    params = small_params(full={}, few={"images": 2, "steps": 2, "num_vectors": 2})
    out, reports, ckpt = tmp_path / "emb" / "opacity", tmp_path / "reports" / "opacity", tmp_path / "ckpt"
    calls = []
    real = job.train_from_params

    def failing_second(*args, **kwargs):
        calls.append(kwargs["variant"])
        if kwargs["variant"] == "few":
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "train_from_params", failing_second)
    with pytest.raises(RuntimeError):
        job.train_class(params, "chest_xray", "opacity", manifest, out, reports, checkpoint_dir=ckpt)
    assert any((ckpt / "full").rglob("*.pt"))  # its final checkpoint kept for the rerun
    monkeypatch.setattr(job, "train_from_params", real)
    results = job.train_class(params, "chest_xray", "opacity", manifest, out, reports, checkpoint_dir=ckpt)
    assert results["full"].stats["resumed_from_step"] == 3  # finished before: not trained again
    assert results["few"].stats["resumed_from_step"] == 0
    full, few = load_embedding(out / "full.safetensors"), load_embedding(out / "few.safetensors")
    assert (full.num_vectors, few.num_vectors) == (params["train_embedding"]["num_vectors"], 2)
    assert (full.metadata["steps"], few.metadata["steps"]) == ("3", "2")
    assert (full.metadata["variant"], few.metadata["variant"]) == ("full", "few")
    assert (full.metadata["images"], few.metadata["images"]) == ("6", "2")
    seed = params["seed"] + __import__("zlib").crc32(b"chest_xray/opacity")
    assert few.metadata["images_checksum"] == images_checksum(
        manifest_images(manifest, "chest_xray", "opacity", images=2, seed=seed))
    assert (reports / "full" / "summary.json").is_file() and (reports / "few" / "loss.png").is_file()
    assert not any(ckpt.rglob("*.pt"))  # every checkpoint removed once all variants are done


def test_cli_pipeline_mode_writes_one_file_per_variant(tmp_path, monkeypatch, capsys):
    import yaml

    from medti.cli import main
    from medti.toydata import write_real_set

    manifest = write_real_set(tmp_path / "prepared", {"train": 8, "val": 1, "test": 1}, modality="chest_xray",
                              classes=("normal", "opacity"), size=32)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train_embedding"].update(steps=2, resolution=32, validation_images=0, batch_size=2,
                                  variants={"full": None, "two": {"images": 2}})
    raw["tracking"]["enabled"] = False
    raw["classifier"]["conditions"].pop("synthetic_few")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert main(["train-embedding", "--params", "params.yaml", "--modality", "chest_xray", "--class", "normal",
                 "--manifest", str(manifest), "--variant", "two"]) == 0
    assert sorted(p.name for p in (tmp_path / "embeddings" / "chest_xray" / "normal").iterdir()) == ["two.safetensors"]
    assert (tmp_path / "results" / "train_embedding" / "chest_xray" / "normal" / "two" / "summary.json").is_file()
    assert main(["train-embedding", "--params", "params.yaml", "--modality", "chest_xray", "--class", "normal",
                 "--manifest", str(manifest), "--variant", "huge"]) != 0
    assert "--variant huge: not one of train_embedding.variants (full, two)" in capsys.readouterr().err
