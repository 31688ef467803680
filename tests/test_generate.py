"""Synthetic sets on the tiny model: per-image seeds, resume, shards and merge, batching, schedulers,
weighted prompts (composable diffusion), embedding-space blends, embedding formats, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from medti.cli import main as medti_main
from medti.embeddings import Embedding, save_embedding
from medti.errors import ConfigError, InputError
from medti.generate.prompts import Blend, interpolate_vectors, parse_weighted_prompt
from medti.generate.sampling import Sampler, sample
from medti.generate.schedulers import SCHEDULERS
from medti.generate.synthetic import ClassSpec, SetSpec, derive_seed, generate_set, merge_shards, save_png
from medti.hashing import file_sha256
from medti.manifest import SYNTHETIC_COLUMNS, read_manifest

ROOT = Path(__file__).resolve().parents[1]
RES, STEPS = 32, 3  # small and few: the tiny model at 32 px draws an image in a few ms per step
SAMPLING = ["--steps", str(STEPS), "--resolution", str(RES)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from medti.models.loading import load_base_model

    return load_base_model(str(tiny_model_dir))


def _vectors(n: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, dim), generator=torch.Generator().manual_seed(seed))


def _spec(**kw) -> SetSpec:
    classes = [ClassSpec("a", 0, ["a chest x-ray"]), ClassSpec("b", 1, ["a brain mri", "an mri of the brain"])]
    settings = dict(modality="t", classes=classes, n_per_class=3, base_model="tiny", text_encoder_hash="x",
                    steps=STEPS, resolution=RES, seed=11)
    return SetSpec(**(settings | kw))


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = medti_main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# -- seeds, resume, shards ----------------------------------------------------------------------------------------
def test_image_seeds_depend_on_base_seed_class_and_index_only():
    assert derive_seed(11, "b", 1) == derive_seed(11, "b", 1) == 5179999849755776168  # stable across versions
    seeds = {derive_seed(s, c, i) for s in (0, 1) for c in ("a", "b") for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def test_set_regenerates_exactly_resumes_and_shards_merge_to_the_same_set(model, tmp_path):
    full = generate_set(model, _spec(), tmp_path / "full", batch_size=1)
    assert (full.generated, full.skipped) == (6, 0)
    manifest = tmp_path / "full" / "manifest.csv"
    df = read_manifest(manifest, absolute=False)
    assert list(df.columns) == SYNTHETIC_COLUMNS and len(df) == 6
    assert df["synthetic"].all() and set(df["split"]) == {"train"} and set(df["label"]) == {0, 1}
    row = df.set_index("path").loc["b/b-00001.png"]
    assert row["prompt"] == "an mri of the brain"  # templates cycle over a class's images
    assert row["seed"] == derive_seed(11, "b", 1) and row["steps"] == STEPS and row["scheduler"] == "dpmsolver++"
    assert row["source_checksum"] == file_sha256(tmp_path / "full" / "b/b-00001.png")
    assert (tmp_path / "full" / "grid.png").stat().st_size > 1000

    # Image 1 of class b drawn alone, from its derived seed, is the same PNG.
    alone = sample(model, ["an mri of the brain"], [derive_seed(11, "b", 1)], steps=STEPS, resolution=RES)
    save_png(alone[0], tmp_path / "alone.png")
    victim = tmp_path / "full" / "b" / "b-00001.png"
    assert (tmp_path / "alone.png").read_bytes() == victim.read_bytes()

    # A killed run resumes: only the missing image is drawn, the others are not touched.
    original = victim.read_bytes()
    victim.unlink()
    others = {p: p.stat().st_mtime_ns for p in (tmp_path / "full").glob("*/*.png")}
    again = generate_set(model, _spec(), tmp_path / "full", batch_size=1)
    assert (again.generated, again.skipped) == (1, 5)
    assert victim.read_bytes() == original
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())

    # Shards in one folder, then merged, make the unsharded set; so do shards in two folders.
    for k in (1, 2):
        generate_set(model, _spec(shard=(k, 2)), tmp_path / "shared", batch_size=1)
    assert not (tmp_path / "shared" / "manifest.csv").exists()
    assert merge_shards(tmp_path / "shared").read_bytes() == manifest.read_bytes()
    for k in (1, 2):
        generate_set(model, _spec(shard=(k, 2)), tmp_path / f"s{k}", batch_size=1)
    with pytest.raises(InputError, match="shard"):
        merge_shards(tmp_path / "m1", [tmp_path / "s1"])  # shard 2/2 is missing
    merged = merge_shards(tmp_path / "merged", [tmp_path / "s1", tmp_path / "s2"])
    assert merged.read_bytes() == manifest.read_bytes()
    assert (tmp_path / "merged" / "b" / "b-00001.png").read_bytes() == original


def test_other_settings_start_the_set_over(model, tmp_path):
    generate_set(model, _spec(), tmp_path / "s", batch_size=4)
    before = (tmp_path / "s" / "a" / "a-00000.png").read_bytes()
    redo = generate_set(model, _spec(guidance=2.0), tmp_path / "s", batch_size=4)
    assert redo.generated == 6 and (tmp_path / "s" / "a" / "a-00000.png").read_bytes() != before
    with pytest.raises(InputError, match="other settings"):
        generate_set(model, _spec(shard=(1, 2)), tmp_path / "s", batch_size=4)


# -- batching and schedulers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_each_scheduler_by_name_and_batching_does_not_change_images(model, scheduler):
    prompts = ["a chest x-ray", "a brain mri", "a chest x-ray:0.4 AND a brain mri:0.6", "a knee"]
    seeds = [5, 6, 7, 8]
    batched = sample(model, prompts, seeds, steps=STEPS, resolution=RES, scheduler=scheduler, batch_size=4)
    one_by_one = sample(model, prompts, seeds, steps=STEPS, resolution=RES, scheduler=scheduler, batch_size=1)
    assert batched.shape == (4, 3, RES, RES) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, one_by_one, atol=1e-4, rtol=0)  # fp32 batch effects only (~1e-6)
    if scheduler != "dpmsolver++":
        other = sample(model, prompts[:1], seeds[:1], steps=STEPS, resolution=RES, scheduler="dpmsolver++")
        assert (other[0] - batched[0]).abs().max() > 1e-3  # the name picks a different sampler


def test_scheduler_names_map_to_the_diffusers_classes(model):
    from medti.generate.schedulers import make_scheduler

    names = {n: type(make_scheduler(n, model.noise_scheduler.config)).__name__ for n in SCHEDULERS}
    assert names["dpmsolver++"] == "DPMSolverMultistepScheduler"
    assert names["euler_a"] == "EulerAncestralDiscreteScheduler"
    assert names["ddim"] == "DDIMScheduler" and names["pndm"] == "PNDMScheduler"
    assert make_scheduler("dpmsolver++", model.noise_scheduler.config).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ConfigError, match="scheduler 'heun'"):
        make_scheduler("heun", model.noise_scheduler.config)


# The scheduler configs the checkpoints ship (scheduler/scheduler_config.json); neither sets timestep_spacing.
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                  "clip_sample": False}
SD20_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SD20_768_SCHEDULER = dict(SD20_SCHEDULER, _class_name="DDIMScheduler", prediction_type="v_prediction")


@pytest.mark.parametrize("config", [SD15_SCHEDULER, SD20_SCHEDULER, SD20_768_SCHEDULER],
                         ids=["sd15", "sd20", "sd20-768"])
def test_samplers_start_where_diffusers_own_defaults_start(config):
    """medti loads a checkpoint's scheduler as a DDPMScheduler (which fills in DDPM's 'leading' spacing); each
    sampler must still start where ``<Class>.from_config(<the checkpoint's config>)`` starts in diffusers:
    Euler a and DPM-Solver++ at t=999 (Euler a from sigma ~14.6, as A1111), DDIM and PNDM at 951."""
    import diffusers

    from medti.generate.schedulers import describe_sampler, make_scheduler

    loaded = diffusers.DDPMScheduler.from_config(config)  # as medti.models.loading loads it
    assert loaded.config.timestep_spacing == "leading"
    first = {}
    for name, (cls_name, extra) in SCHEDULERS.items():
        ours = make_scheduler(name, loaded.config)
        theirs = getattr(diffusers, cls_name).from_config({**config, **extra})
        for sched in (ours, theirs):
            sched.set_timesteps(20)
        assert torch.equal(ours.timesteps, theirs.timesteps), name
        assert ours.config.prediction_type == config.get("prediction_type", "epsilon")
        assert ours.config.steps_offset == 1 and ours.config.beta_schedule == "scaled_linear"
        first[name] = int(ours.timesteps[0])
        record = describe_sampler(name, loaded.config, 20)
        assert record["class"] == cls_name and record["timesteps"][0] == first[name]
        assert record["timesteps"] == [int(t) if float(t).is_integer() else pytest.approx(float(t), abs=1e-4)
                                       for t in ours.timesteps.tolist()]
        assert record["config"]["timestep_spacing"] == ours.config.timestep_spacing
    assert first == {"dpmsolver++": 999, "euler_a": 999, "ddim": 951, "pndm": 951, "ddpm": 951}
    euler = make_scheduler("euler_a", loaded.config)
    euler.set_timesteps(20)
    assert float(euler.sigmas[0]) == pytest.approx(14.61, abs=0.01) and float(euler.init_noise_sigma) > 14.6


def test_a_spacing_the_model_config_sets_is_kept():
    import diffusers

    from medti.generate.schedulers import make_scheduler

    loaded = diffusers.DDPMScheduler.from_config(dict(SD20_SCHEDULER, timestep_spacing="trailing"))
    for name in SCHEDULERS:
        sched = make_scheduler(name, loaded.config)
        sched.set_timesteps(20)
        assert sched.config.timestep_spacing == "trailing" and int(sched.timesteps[0]) == 999, name


def test_generate_json_records_the_sampler_class_config_and_timesteps(model, tmp_path):
    import json

    generate_set(model, _spec(n_per_class=1, scheduler="euler_a"), tmp_path / "s", batch_size=2)
    record = json.loads((tmp_path / "s" / "generate.json").read_text())
    sampler = record["sampler"]
    assert sampler["class"] == "EulerAncestralDiscreteScheduler" and sampler["name"] == "euler_a"
    assert len(sampler["timesteps"]) == STEPS and sampler["timesteps"] == sorted(sampler["timesteps"], reverse=True)
    assert sampler["config"]["num_train_timesteps"] == 1000 and "timestep_spacing" in sampler["config"]
    # the sampler is part of what the images depend on: another sampler is another set
    assert _spec(sampler=sampler).fingerprint() != _spec(sampler=dict(sampler, timesteps=[1, 2, 3])).fingerprint()


# -- weighted prompts and blends ---------------------------------------------------------------------------------
def test_weighted_prompt_parsing():
    assert parse_weighted_prompt("healthy:0.3 AND diseased:0.7").terms == (("healthy", 0.3), ("diseased", 0.7))
    assert parse_weighted_prompt("a <x> AND b").terms == (("a <x>", 1.0), ("b", 1.0))
    assert parse_weighted_prompt(" one prompt ").terms == (("one prompt", 1.0),)
    assert parse_weighted_prompt("a : 1e-1 AND b:-.5").terms == (("a", 0.1), ("b", -0.5))
    assert str(parse_weighted_prompt("a:0.25 AND b")) == "a:0.25 AND b"
    for bad in ("healthy:0.3 AND diseased:heavy", "a:0.3x", "a:0.3 AND", "AND b", "a AND  AND b", "a:0.3 AND b:",
                "a:inf AND b"):
        with pytest.raises(ConfigError, match="prompt '"):
            parse_weighted_prompt(bad)


def test_weights_one_and_zero_equal_the_single_prompt(model):
    kw = dict(steps=STEPS, resolution=RES, batch_size=1)
    single = sample(model, ["a chest x-ray"], [3], **kw)
    assert torch.equal(sample(model, ["a chest x-ray:1 AND a brain mri:0"], [3], **kw), single)
    assert torch.equal(sample(model, ["a brain mri:0 AND a chest x-ray:1.0"], [3], **kw), single)
    half = sample(model, ["a chest x-ray:0.5 AND a brain mri:0.5"], [3], **kw)
    assert (half - single).abs().max() > 1e-3


def _one_ddim_step(model, prompt: str) -> torch.Tensor:
    """The latents after one guided DDIM step from seed 9: affine in the guided noise prediction."""
    s = Sampler(model)
    cond = s.condition([prompt])
    return s.denoise(cond.table, cond.terms, [9], s.latent_shape(RES), steps=1, guidance=5.0, scheduler="ddim")


def test_weights_combine_noise_predictions_not_prompts(model):
    """With one DDIM step the result is affine in the guided noise prediction, so weights that sum to 1 must
    mix the two prompts' results in the same proportions (composable diffusion)."""
    a, b = _one_ddim_step(model, "a chest x-ray"), _one_ddim_step(model, "a brain mri")
    mixed = _one_ddim_step(model, "a chest x-ray:0.3 AND a brain mri:0.7")
    torch.testing.assert_close(mixed, 0.3 * a + 0.7 * b, atol=1e-4, rtol=1e-4)


def test_blend_endpoints_are_the_embeddings():
    a, b = _vectors(4, seed=1), _vectors(4, seed=2)
    for mode in ("linear", "slerp"):
        assert torch.equal(interpolate_vectors(a, b, 0.0, mode), a)
        assert torch.equal(interpolate_vectors(a, b, 1.0, mode), b)
    mid = interpolate_vectors(a, b, 0.5, "slerp")
    torch.testing.assert_close(mid.norm(dim=-1), (a.norm(dim=-1) + b.norm(dim=-1)) / 2)
    ua, ub, um = (x / x.norm(dim=-1, keepdim=True) for x in (a, b, mid))
    torch.testing.assert_close((um * ua).sum(-1), (um * ub).sum(-1))  # halfway along the great circle
    torch.testing.assert_close(interpolate_vectors(a, b, 0.25, "linear"), 0.75 * a + 0.25 * b)
    with pytest.raises(ConfigError, match="blend mode"):
        Blend("a", "b", 0.5, "cubic")


def test_blends_interpolate_the_learned_vectors(tiny_model_dir):
    from medti.generate.embedding_install import install_embeddings
    from medti.models.loading import load_base_model

    model = load_base_model(str(tiny_model_dir))
    va, vb = _vectors(2, seed=3), _vectors(2, seed=4)
    install_embeddings(model, [Embedding("<bl-a>", va), Embedding("<bl-b>", vb),
                               Embedding("<bl-mid>", (va + vb) / 2)])
    s = Sampler(model)
    pa, pb = "a chest x-ray showing <bl-a>", "a chest x-ray showing <bl-b>"
    enc = s.encode_texts([pa, pb, "a chest x-ray showing <bl-mid>"])
    # The two prompts differ only in their learned vectors, and encode differently (were they encoded alike,
    # e.g. with the placeholders' vectors ignored, every comparison below would hold trivially).
    gap = float((enc[0] - enc[1]).abs().max())
    assert gap > 1e-2, gap
    for mode in ("linear", "slerp"):
        assert torch.equal(s.encode_blend(Blend(pa, pb, 0.0, mode))[0], enc[0])
        assert torch.equal(s.encode_blend(Blend(pa, pb, 1.0, mode))[0], enc[1])
        mid = s.encode_blend(Blend(pa, pb, 0.5, mode))[0]
        for end in enc[:2]:
            assert float((mid - end).abs().max()) > 0.1 * gap, mode  # halfway is neither end
    torch.testing.assert_close(s.encode_blend(Blend(pa, pb, 0.5, "linear"))[0], enc[2])
    kw = dict(steps=STEPS, resolution=RES, batch_size=1)
    assert torch.equal(s.sample([Blend(pa, pb, 0.0, "slerp")], [1], **kw), s.sample([pa], [1], **kw))
    assert torch.equal(s.sample([Blend(pa, pb, 1.0, "slerp")], [1], **kw), s.sample([pb], [1], **kw))
    assert not torch.equal(s.sample([pa], [1], **kw), s.sample([pb], [1], **kw))


def test_blending_prompts_of_different_lengths_warns_once_per_pair(tiny_model_dir, caplog):
    from medti.generate.embedding_install import install_embeddings
    from medti.models.loading import load_base_model

    model = load_base_model(str(tiny_model_dir))
    install_embeddings(model, [Embedding("<len-2>", _vectors(2, seed=3)), Embedding("<len-2b>", _vectors(2, seed=5)),
                               Embedding("<len-4>", _vectors(4, seed=4))])
    s = Sampler(model)

    def warnings():
        return [r for r in caplog.records if r.name == "medti.generate.sampling"]

    with caplog.at_level("WARNING", logger="medti.generate.sampling"):
        s.encode_blend(Blend("an x-ray of <len-2>", "an x-ray of <len-2b>", 0.5, "linear"))
        assert not warnings()  # same length: nothing to say
        for t in (0.25, 0.5, 0.75):
            s.encode_blend(Blend("an x-ray of <len-2>", "an x-ray of <len-4>", t, "slerp"))
    (record,) = warnings()
    assert "slerp blend of 'an x-ray of <len-2>' (9 tokens) and 'an x-ray of <len-4>' (11 tokens)" in record.message
    assert "'A:w AND B:w' has no such limit" in record.message


# -- embedding formats, standalone and pipeline CLI ------------------------------------------------------------
def _redraw(rows: pd.DataFrame, vectors: dict[str, torch.Tensor], channels: dict[str, str], folder: Path):
    """Each row's image as ``sample`` draws it (its prompt, seed and settings) on a fresh copy of the rows' base
    model holding ``vectors`` (token -> [n, dim]), written as generation writes PNGs; returns {row path: pixels}."""
    import numpy as np
    from PIL import Image

    from medti.generate.embedding_install import install_embeddings
    from medti.models.loading import load_base_model

    (base,) = set(rows["base_model"])
    model = load_base_model(base)
    install_embeddings(model, [Embedding(token, v) for token, v in vectors.items()])
    out = {}
    for r in rows.itertuples(index=False):
        image = sample(model, [r.prompt], [int(r.seed)], negative_prompt=r.negative_prompt if isinstance(
            r.negative_prompt, str) else "", steps=int(r.steps), guidance=float(r.guidance), scheduler=r.scheduler,
            resolution=RES)[0]
        path = folder / r.path
        save_png(image, path, channels=channels[r.path])
        with Image.open(path) as im:
            out[r.path] = np.asarray(im).astype(int)
    return out


def assert_drawn_with(df: pd.DataFrame, out: Path, vectors: dict[str, torch.Tensor]) -> None:
    """The set's images under ``out`` were drawn with exactly ``vectors``: redrawn with them they match (to one
    grey level and 0.01 on average: batches of other sizes round differently), redrawn with only each
    embedding's last vector changed every image differs by far more (so every vector counted)."""
    import numpy as np
    from PIL import Image

    written = {}
    for rel in df["path"]:
        with Image.open(out / rel) as im:
            written[rel] = (np.asarray(im).astype(int), "grey" if im.mode == "L" else "rgb")
    channels = {rel: c for rel, (_, c) in written.items()}
    folder = out.parent / (out.name + "-redrawn")
    same = _redraw(df, vectors, channels, folder / "same")
    g = torch.Generator().manual_seed(9)
    changed = {t: torch.cat([v[:-1], v[-1:] + 3 * torch.randn(v[-1:].shape, generator=g)]) for t, v in vectors.items()}
    other = _redraw(df, changed, channels, folder / "last-changed")
    for rel, (pixels, _) in written.items():
        assert np.abs(pixels - same[rel]).max() <= 1 and np.abs(pixels - same[rel]).mean() < 0.01, rel
        # measured: a mean of 1.6-1.9 grey levels on the tiny model, 14-30 on the toy model
        assert np.abs(pixels - other[rel]).mean() > 0.5 and np.abs(pixels - other[rel]).max() > 4, rel


def test_standalone_cli_loads_diffusers_and_a1111_embeddings(tmp_path, capsys):
    """Three formats at once: diffusers' learned_embeds.bin (one 1-D vector) and .safetensors, and the
    A1111 web UI's .pt; each prompt names its token, its manifest rows carry that embedding's checksum, and its
    images were drawn with that embedding's vectors."""
    from safetensors.torch import save_file

    v_bin, v_st, v_pt = _vectors(1, seed=5)[0], _vectors(2, seed=6), _vectors(3, seed=7)
    torch.save({"<fmt-bin>": v_bin}, str(tmp_path / "learned_embeds.bin"))
    save_file({"<fmt-st>": v_st}, str(tmp_path / "learned_embeds.safetensors"))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v_pt}, "name": "fmtpt", "step": 500,
                "sd_checkpoint": None, "sd_checkpoint_name": "tiny"}, str(tmp_path / "fmtpt.pt"))
    out = tmp_path / "set"
    rc, err = _cli(capsys, "generate", "--base-model", "tiny", "--embedding", tmp_path / "learned_embeds.bin",
                   "--embedding", tmp_path / "learned_embeds.safetensors",
                   "--embedding", f"<pt>={tmp_path / 'fmtpt.pt'}",
                   "--prompt", "an x-ray of <fmt-bin>", "--class", "bin",
                   "--prompt", "<fmt-st>:0.5 AND <pt>:0.5", "--class", "mix",
                   "--n", 2, "--seed", 4, "--batch-size", 4, "--out", out, *SAMPLING)
    assert rc == 0, err
    df = read_manifest(out / "manifest.csv", absolute=False)
    checks = dict(zip(df["class"], df["embedding_checksum"]))
    assert checks["bin"] == Embedding("<fmt-bin>", v_bin[None]).checksum()
    assert checks["mix"] == f"{Embedding('<fmt-st>', v_st).checksum()};{Embedding('<pt>', v_pt).checksum()}"
    assert set(df["seed"]) == {derive_seed(4, c, i) for c in ("bin", "mix") for i in range(2)}
    assert set(df["guidance"]) == {5.0} and set(df["steps"]) == {STEPS}
    # The images were drawn with these vectors (every one of them): each is what `sample` draws for its row on
    # a model holding the three embeddings, and not what it draws when only their last vectors differ.
    loaded = {"<fmt-bin>": v_bin[None], "<fmt-st>": v_st, "<pt>": v_pt}
    assert_drawn_with(df, out, loaded)


def test_contrast_weighs_each_class_against_the_others_in_the_same_template():
    from medti.generate.jobs import contrast_prompts

    two = {"a": ["x of <a>", "y, <a>"], "b": ["x of <b>", "y, <b>"]}
    assert contrast_prompts(two, 0.0) == two
    assert contrast_prompts(two, 0.5) == {"a": ["x of <a>:1.5 AND x of <b>:-0.5", "y, <a>:1.5 AND y, <b>:-0.5"],
                                          "b": ["x of <b>:1.5 AND x of <a>:-0.5", "y, <b>:1.5 AND y, <a>:-0.5"]}
    three = contrast_prompts({"a": ["<a>"], "b": ["<b>"], "c": ["<c>"]}, 1.0)
    assert three["b"] == ["<b>:2 AND <a>:-0.5 AND <c>:-0.5"]
    for prompts in three.values():  # the weights sum to one: the plain guidance plus the class-vs-others term
        assert sum(w for _, w in parse_weighted_prompt(prompts[0]).terms) == pytest.approx(1.0)
    assert contrast_prompts({"only": ["<only>"]}, 0.5) == {"only": ["<only>"]}


def test_a_negative_weight_extrapolates_away_from_the_other_prompt(model):
    """Contrast is composable diffusion's negation: with one DDIM step the result is affine in the guided noise
    prediction, so 'a:1.5 AND b:-0.5' lands at a + 0.5 (a - b)."""
    a, b = _one_ddim_step(model, "a chest x-ray"), _one_ddim_step(model, "a brain mri")
    torch.testing.assert_close(_one_ddim_step(model, "a chest x-ray:1.5 AND a brain mri:-0.5"), a + 0.5 * (a - b),
                               atol=1e-4, rtol=1e-4)


def test_pipeline_contrast_draws_the_weighted_prompts_and_keeps_each_class_embedding(tmp_path, capsys):
    from medti.config import class_token

    emb_dir = tmp_path / "emb"
    embeddings = {cls: Embedding(class_token("chest_xray", cls), _vectors(2, seed=20 + i))
                  for i, cls in enumerate(("normal", "opacity"))}
    for cls, emb in embeddings.items():
        save_embedding(emb, emb_dir / f"{cls}.safetensors")
    common = ["generate", "--params", ROOT / "params.yaml", "--modality", "chest_xray", "--embeddings", emb_dir,
              "--n", 2, *SAMPLING]
    rc, err = _cli(capsys, *common, "--out", tmp_path / "plain", "--contrast", 0)
    assert rc == 0, err
    rc, err = _cli(capsys, *common, "--out", tmp_path / "contrast", "--contrast", 0.5)
    assert rc == 0, err
    df = read_manifest(tmp_path / "contrast" / "manifest.csv", absolute=False).sort_values("path")
    assert list(df[df["class"] == "normal"]["prompt"]) == [
        "a chest x-ray showing <chest_xray-normal>:1.5 AND a chest x-ray showing <chest_xray-opacity>:-0.5",
        "a frontal chest radiograph, <chest_xray-normal>:1.5 AND a frontal chest radiograph, <chest_xray-opacity>:-0.5"]
    # evaluate checks each class's images against its own embedding: the checksum names the class's, not both
    assert dict(zip(df["class"], df["embedding_checksum"])) == {c: e.checksum() for c, e in embeddings.items()}
    assert_drawn_with(df, tmp_path / "contrast", {e.token: e.vectors for e in embeddings.values()})
    plain = read_manifest(tmp_path / "plain" / "manifest.csv", absolute=False).sort_values("path")
    assert list(plain["seed"]) == list(df["seed"])  # the same noise, drawn with other guidance
    assert all(file_sha256(tmp_path / "plain" / p) != file_sha256(tmp_path / "contrast" / p) for p in df["path"])
    rc, err = _cli(capsys, "generate", "--base-model", "tiny", "--prompt", "a chest x-ray", "--out",
                   tmp_path / "standalone", "--contrast", 0.5)
    assert rc == 2 and "--contrast is for pipeline mode" in err and not (tmp_path / "standalone").exists()


def test_pipeline_mode_generates_every_class_with_its_templates_and_tracks(tmp_path, capsys, tracking_env):
    from mlflow.tracking import MlflowClient

    from medti.config import class_token

    emb_dir = tmp_path / "emb"
    embeddings = {cls: Embedding(class_token("chest_xray", cls), _vectors(2, seed=10 + i))
                  for i, cls in enumerate(("normal", "opacity"))}
    for cls, emb in embeddings.items():
        save_embedding(emb, emb_dir / f"{cls}.safetensors")
    out = tmp_path / "synthetic"
    rc, err = _cli(capsys, "generate", "--params", ROOT / "params.yaml", "--modality", "chest_xray",
                   "--embeddings", emb_dir, "--out", out, "--n", 2, *SAMPLING)
    assert rc == 0, err
    df = read_manifest(out / "manifest.csv", absolute=False)
    assert sorted(df["path"]) == [f"{c}/{c}-{i:05d}.png" for c in ("normal", "opacity") for i in range(2)]
    assert list(df[df["class"] == "opacity"].sort_values("path")["prompt"]) == [
        "a chest x-ray showing <chest_xray-opacity>", "a frontal chest radiograph, <chest_xray-opacity>"]
    assert set(df[df["class"] == "opacity"]["label"]) == {1}
    assert dict(zip(df["class"], df["embedding_checksum"])) == {c: e.checksum() for c, e in embeddings.items()}
    assert_drawn_with(df, out, {e.token: e.vectors for e in embeddings.values()})
    assert (out / "grid.png").is_file() and (out / "generate.json").is_file()
    client = MlflowClient(tracking_uri=tracking_env)
    run = client.search_runs([client.get_experiment_by_name("medti").experiment_id])[0]
    assert run.info.run_name == "generate-chest_xray" and run.data.metrics["generated"] == 4
    assert run.data.params["steps"] == str(STEPS)


# -- bad input ---------------------------------------------------------------------------------------------------
def _emb_file(tmp_path, name, dim=64, **meta):
    return save_embedding(Embedding(f"<{name}>", _vectors(1, dim=dim), metadata=meta), tmp_path / f"{name}.safetensors")


BAD = {
    "unknown token": (["--prompt", "a scan of <nowhere>"], "unknown token '<nowhere>'"),
    "embedding width": (["--prompt", "<narrow>", "--embedding", "{narrow}"], "embedding width 32 does not match"),
    "other text encoder": (["--prompt", "<other>", "--embedding", "{other}"], "trained for another text encoder"),
    "weights": (["--prompt", "healthy:0.3 AND diseased:heavy"], "weight 'heavy'"),
    "count of zero": (["--prompt", "a chest x-ray", "--n", "0"], "--n: 0 is less than the minimum of 1"),
    "shard": (["--prompt", "a chest x-ray", "--shard", "3/2"], "--shard '3/2'"),
    "resolution": (["--prompt", "a chest x-ray", "--resolution", "30"], "multiple of 4"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, capsys):
    files = {"narrow": _emb_file(tmp_path, "narrow", dim=32),
             "other": _emb_file(tmp_path, "other", text_encoder_hash="0123456789abcdef", base_model="sd2")}
    argv, message = BAD[case]
    argv = [a.format(**files) for a in argv]
    out = tmp_path / "out"
    rc, err = _cli(capsys, "generate", "--base-model", "tiny", "--out", out, "--steps", 2, *argv)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if "medti: error:" in ln]
    assert len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_python_api_raises_the_same_errors(model):
    with pytest.raises(ConfigError, match="unknown token '<nope>'"):
        sample(model, ["<nope>"], [0], steps=1, resolution=RES)
    with pytest.raises(ConfigError, match="number of images to draw is zero"):
        sample(model, [], [], steps=1)
    with pytest.raises(ConfigError, match="n_per_class is 0"):
        _spec(n_per_class=0)


@pytest.mark.gpu
def test_half_precision_on_the_gpu_stays_close_to_fp32(tiny_model_dir):
    from medti.generate.jobs import Runtime

    want = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    images = {}
    for precision in ("fp32", "fp16", "bf16"):
        model, device, dtype = Runtime(base_model=str(tiny_model_dir), device="cuda", precision=precision).load()
        # the precision asked for is the one the UNet holds and computes in
        assert dtype == want[precision] and next(model.unet.parameters()).dtype == want[precision]
        assert next(model.vae.parameters()).dtype == want[precision]
        seen: list[torch.dtype] = []
        handle = model.unet.register_forward_hook(lambda module, args, out, seen=seen: seen.append(out.sample.dtype))
        try:
            images[precision] = sample(model, ["a chest x-ray", "a brain mri"], [1, 2], steps=STEPS, resolution=RES,
                                       device=device, dtype=dtype, batch_size=2)
        finally:
            handle.remove()
        assert len(seen) == STEPS and set(seen) == {want[precision]}, (precision, seen)
    for precision in ("fp16", "bf16"):
        assert torch.isfinite(images[precision]).all()
        diff = (images[precision] - images["fp32"]).abs()
        assert diff.mean() < 0.05
        assert diff.max() > 0, precision  # half-precision rounding shows: the images are not fp32's


def test_every_generation_command_has_help(capsys):
    for command in ("generate", "merge-shards", "interpolate", "inpaint"):
        with pytest.raises(SystemExit) as exit_:
            medti_main([command, "--help"])
        assert exit_.value.code == 0
    assert "--shard" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        medti_main(["bench", "generate", "--help"])
    assert "images/s" in capsys.readouterr().out


def test_manifest_rows_mix_with_real_rows(model, tmp_path):
    """The synthetic manifest has the real manifest's columns first, so the two concatenate."""
    from medti.manifest import COLUMNS

    generate_set(model, _spec(n_per_class=1), tmp_path / "s", batch_size=2)
    df = read_manifest(tmp_path / "s" / "manifest.csv")
    real = pd.DataFrame([{"path": "x.png", "modality": "t", "class": "a", "label": 0, "subject_id": "s1",
                          "split": "train", "source_checksum": "0", "synthetic": False}])
    both = pd.concat([real, df[COLUMNS]], ignore_index=True)
    assert list(both["synthetic"]) == [False, True, True] and all(Path(p).is_file() for p in df["path"])
