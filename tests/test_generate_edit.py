"""Disease interpolation sweeps, combined pathologies and inpainting on the tiny model, through the CLI
and the Python API: labelled figures, shared seeds per column, masks, blur, strength, both inpainting
methods, and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medti.cli import main as medti_main
from medti.embeddings import Embedding, save_embedding
from medti.errors import ConfigError, InputError
from medti.generate.embedding_install import install_embeddings
from medti.generate.inpaint import MaskSpec, blur_mask, inpaint, make_mask, mask_spec
from medti.generate.interpolate import combine_rows, sweep_rows
from medti.generate.sampling import sample

ROOT = Path(__file__).resolve().parents[1]
RES, STEPS = 32, 3
SAMPLING = ["--steps", str(STEPS), "--resolution", str(RES)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from medti.models.loading import load_base_model

    return load_base_model(str(tiny_model_dir))


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = medti_main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _embeddings(folder: Path, tokens, seed=0) -> list[Path]:
    paths = []
    for i, token in enumerate(tokens):
        vectors = torch.randn((2, 64), generator=torch.Generator().manual_seed(seed + i))
        paths.append(save_embedding(Embedding(token, vectors), folder / f"{token.strip('<>')}.safetensors"))
    return paths


def _chest_xray_embeddings(folder: Path) -> Path:
    """The pipeline's layout: ``<folder>/<class>.safetensors`` under the tokens of params.yaml's chest_xray."""
    for path in _embeddings(folder, ["<chest_xray-normal>", "<chest_xray-opacity>"]):
        path.rename(path.with_name(path.name.replace("chest_xray-", "")))
    return folder


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(int)


# -- interpolation -----------------------------------------------------------------------------------------------
def test_sweep_and_combination_rows():
    rows = sweep_rows("healthy <h>", "sick <s>", [0, 0.25, 1])
    assert [str(r.prompt) for r in rows] == ["healthy <h> AND sick <s>:0", "healthy <h>:0.75 AND sick <s>:0.25",
                                             "healthy <h>:0 AND sick <s>"]
    assert [r.label for r in rows] == ["w = 0.00", "w = 0.25", "w = 1.00"]
    blend = sweep_rows("a", "b", [0.5], "slerp")[0].prompt
    assert (blend.a, blend.b, blend.t, blend.mode) == ("a", "b", 0.5, "slerp")
    combo = combine_rows(["<x>", "<y>:0.5"], ["x", "y"])
    assert [(r.label, r.prompt) for r in combo] == [("x", "<x>"), ("y", "<y>:0.5"), ("x + y", "<x> AND <y>:0.5")]
    for bad in ([0, 1.5], [], [float("nan")]):
        with pytest.raises(ConfigError, match="weight"):
            sweep_rows("a", "b", bad)
    with pytest.raises(ConfigError, match="linear interpolation blends two plain prompts"):
        sweep_rows("a AND c", "b", [0.5], "linear")
    with pytest.raises(ConfigError, match="weight 'x'"):
        combine_rows(["<x>:x", "<y>"])


def test_interpolate_cli_sweeps_and_combines_with_shared_seeds(model, tmp_path, capsys):
    a, b = _embeddings(tmp_path, ["<ip-healthy>", "<ip-sick>"])
    out = tmp_path / "interp"
    start, end = "a chest x-ray, <ip-healthy>", "a chest x-ray, <ip-sick>"
    rc, err = _cli(capsys, "interpolate", "--base-model", "tiny", "--embedding", a, "--embedding", b,
                   "--from", start, "--to", end, "--combine", "<ip-healthy>", "--combine", "<ip-sick>:0.5",
                   "--weights", "0,0.5,1", "--n", 2, "--seed", 3, "--batch-size", 6, "--out", out, *SAMPLING)
    assert rc == 0, err
    table = pd.read_csv(out / "interpolate.csv")
    assert len(table) == 3 * 2 + 3 * 2 and set(table["figure"]) == {"sweep.png", "combine.png"}
    for _, fig in table.groupby("figure"):
        assert fig.groupby("column")["seed"].nunique().eq(1).all()  # a column keeps its seed across rows
        assert fig["seed"].nunique() == 2
    for name in ("sweep.png", "combine.png"):
        with Image.open(out / name) as im:
            assert im.width > 150 and im.height > 200  # 2 columns, 3 labelled rows
    sweep = table[table["figure"] == "sweep.png"].set_index(["weight", "column"])
    assert sweep.loc[(0.0, 0), "prompt"] == f"{start} AND {end}:0"
    assert sweep.loc[(1.0, 0), "embedding_checksum"].count(";") == 1  # both embeddings drive every row
    w0, w1 = _png(out / sweep.loc[(0.0, 0), "path"]), _png(out / sweep.loc[(1.0, 0), "path"])
    assert np.abs(w0 - w1).mean() > 1
    # Weight 0 is the start prompt alone, drawn with the column's seed (up to fp32 batch effects).
    install_embeddings(model, [a, b])
    alone = sample(model, [start], [int(sweep.loc[(0.0, 0), "seed"])], steps=STEPS, resolution=RES)
    assert np.abs(w0 - (alone[0].permute(1, 2, 0).numpy() * 255).round()).max() <= 1
    combine = table[table["figure"] == "combine.png"]
    assert set(combine["mode"]) == {"noise"}
    assert list(combine[combine["column"] == 0]["label"]) == ["<ip-healthy>", "<ip-sick>:0.5",
                                                              "<ip-healthy> + <ip-sick>:0.5"]


@pytest.mark.parametrize("mode", ["linear", "slerp"])
def test_embedding_space_sweep_ends_at_the_two_prompts(model, tmp_path, mode):
    from medti.generate.interpolate import Figure, draw_figures
    from medti.generate.jobs import Loaded, settings

    cfg = settings(None, None, "interpolate", n=1, mode=mode, weights=[0, 0.5, 1], steps=STEPS, resolution=RES,
                   seed=5, batch_size=1)
    loaded = Loaded(model, torch.device("cpu"), torch.float32)
    rows = sweep_rows("a chest x-ray", "a brain mri", cfg["weights"], mode)
    table = pd.read_csv(draw_figures(loaded, [Figure("sweep", "t", rows, mode)], tmp_path, cfg))
    assert set(table["mode"]) == {mode}
    w0, half, w1 = (_png(tmp_path / p) for p in table.sort_values("weight")["path"])
    seed = int(table["seed"].iloc[0])
    ends = sample(model, ["a chest x-ray", "a brain mri"], [seed, seed], steps=STEPS, resolution=RES, batch_size=1)
    for png, img in ((w0, ends[0]), (w1, ends[1])):
        assert np.array_equal(png, (img.permute(1, 2, 0).numpy() * 255).round().astype(int))
    assert np.abs(half - w0).mean() > 0.5 and np.abs(half - w1).mean() > 0.5
    assert (tmp_path / "sweep.png").is_file()


def test_interpolate_pipeline_mode_names_classes(tmp_path, capsys):
    _chest_xray_embeddings(tmp_path / "emb")
    out = tmp_path / "interp"
    rc, err = _cli(capsys, "interpolate", "--params", ROOT / "params.yaml", "--modality", "chest_xray",
                   "--embeddings", tmp_path / "emb", "--n", 1, "--weights", "0,1", "--out", out, *SAMPLING)
    assert rc == 0, err
    assert (out / "sweep-normal-to-opacity.png").is_file()
    table = pd.read_csv(out / "interpolate.csv")
    assert table["prompt"].iloc[0] == "a chest x-ray showing <chest_xray-normal> AND a chest x-ray showing " \
                                      "<chest_xray-opacity>:0"
    rc, err = _cli(capsys, "interpolate", "--params", ROOT / "params.yaml", "--modality", "chest_xray",
                   "--embeddings", tmp_path / "emb", "--combine", "normal", "--n", 1, "--out", out, *SAMPLING)
    assert rc == 2 and "at least two --combine" in err


# -- inpainting --------------------------------------------------------------------------------------------------
def _image(path: Path, size=32, mode="L") -> Path:
    y, x = np.mgrid[0:size, 0:size]
    grey = (128 + 100 * np.sin(x / 3) * np.cos(y / 5)).astype(np.uint8)
    Image.fromarray(grey if mode == "L" else np.stack([grey, 255 - grey, grey // 2], -1), mode).save(path)
    return path


def test_masks_from_shapes_and_files(tmp_path):
    box = make_mask(mask_spec(box="8,4,24,12"), (32, 32))
    assert box.sum() == 16 * 8 and box[4, 8] == 1 and box[12, 8] == 0 and box[4, 24] == 0
    circle = make_mask(mask_spec(circle="16,16,5"), (32, 32))
    assert circle[16, 16] == 1 and circle[16, 22] == 0 and 70 < circle.sum() < 90  # ~ pi r^2
    Image.fromarray((box * 200).astype(np.uint8), "L").save(tmp_path / "m.png")  # >= 50 % grey repaints
    assert np.array_equal(make_mask(mask_spec(mask=str(tmp_path / "m.png")), (32, 32)), box)
    soft = blur_mask(box, 2)
    assert soft[8, 16] > 0.9 and 0 < soft[3, 16] < 1 and soft[25, 16] == 0 and np.array_equal(blur_mask(box, 0), box)
    with pytest.raises(InputError, match="m.png: the mask is 32x32 pixels but the image is 64x48"):
        make_mask(mask_spec(mask=str(tmp_path / "m.png")), (64, 48))
    with pytest.raises(InputError, match="nothing to repaint"):
        make_mask(MaskSpec("circle", (100.0, 100.0, 3.0)), (32, 32))
    for kw in ({"circle": "1,2"}, {"box": "4,4,2,8"}, {"circle": "1,2,-3"}, {}, {"box": "1,1,2,2", "circle": "1,1,1"}):
        with pytest.raises(ConfigError):
            mask_spec(**kw)


def test_inpaint_cli_repaints_inside_and_keeps_outside(tmp_path, capsys):
    image = _image(tmp_path / "scan.png")
    out = tmp_path / "inp"
    rc, err = _cli(capsys, "inpaint", "--base-model", "tiny", "--image", image, "--circle", "16,16,7",
                   "--mask-blur", 2, "--prompt", "a lesion", "--n", 2, "--steps", 4, "--out", out)
    assert rc == 0, err
    record = __import__("json").loads((out / "inpaint.json").read_text())
    assert record["method"] == "latent blending" and record["strength"] == 0.9 and record["mask_blur"] == 2
    assert len(set(record["seeds"])) == 2 and "scan.png" not in (out / "inpaint.json").read_text()
    soft = blur_mask(make_mask(mask_spec(circle="16,16,7"), (32, 32)), 2)
    assert np.array_equal(_png(out / "mask.png"), (soft * 255).round())  # the blurred mask that was used
    before, results = _png(image), [_png(out / f"inpainted-{k}.png") for k in range(2)]
    for after in results:
        assert after.shape == before.shape  # a grey image stays grey
        assert np.array_equal(after[soft == 0], before[soft == 0])
        assert np.abs(after - before)[soft > 0.95].mean() > 10
    assert np.abs(results[0] - results[1])[soft > 0.95].mean() > 1  # two seeds, two lesions
    with Image.open(out / "before_after.png") as fig:
        assert fig.width > 3 * fig.height  # before, mask and two results side by side


def test_inpaint_strength_sets_the_steps_run_and_outside_stays_exact(model, tmp_path):
    from medti.generate.inpaint import load_image
    from medti.generate.sampling import Denoising, Sampler

    pixels, _ = load_image(_image(tmp_path / "scan.png", mode="RGB"))
    soft = blur_mask(make_mask(mask_spec(box="8,8,24,24"), (32, 32)), 1)
    outside = torch.from_numpy(soft == 0)
    for strength in (0.25, 1.0):
        result = inpaint(model, pixels, soft, ["a lesion"], [2], strength=strength, steps=8, scheduler="ddim")[0]
        assert torch.equal(result[:, outside], pixels[:, outside])
    s = Sampler(model)
    cond = s.condition(["a lesion"])
    init = s.encode_images(pixels[None])
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., 2:6, 2:6] = 1
    for strength, expected in ((0.25, 2), (0.9, 7), (1.0, 8)):
        steps_run = []
        latents = s.denoise(cond.table, cond.terms, [2], s.latent_shape(32), steps=8, guidance=5.0, scheduler="ddim",
                            denoising=Denoising(init_latents=init, strength=strength, keep_mask=keep),
                            on_step=steps_run.append)
        assert len(steps_run) == expected  # strength 0.9 of 8 steps: the last 7, from the image noised to there
        assert torch.equal(latents * (1 - keep), init * (1 - keep))  # latent blending keeps the image outside
        assert (latents - init)[..., 2:6, 2:6].abs().mean() > 0.1
    with pytest.raises(ConfigError, match="strength"):
        inpaint(model, pixels, soft, ["a lesion"], [2], strength=0.0)


def test_inpaint_with_an_inpainting_checkpoint(tiny_model_dir, tmp_path, capsys):
    """A 9-channel UNet (the tiny model's, re-initialised with the mask and masked-image inputs) is used
    as an inpainting checkpoint; the base model's own UNet is refused as one."""
    from diffusers import UNet2DConditionModel

    checkpoint = tmp_path / "tiny-inpainting"
    shutil.copytree(tiny_model_dir, checkpoint)
    config = dict(UNet2DConditionModel.load_config(str(tiny_model_dir / "unet")), in_channels=9)
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config).save_pretrained(str(checkpoint / "unet"))
    image = _image(tmp_path / "scan.png", mode="RGB")
    rc, err = _cli(capsys, "inpaint", "--base-model", "tiny", "--inpainting-model", checkpoint, "--image", image,
                   "--box", "8,8,24,24", "--mask-blur", 0, "--prompt", "a lesion", "--steps", 3,
                   "--out", tmp_path / "o")
    assert rc == 0, err
    assert "inpainting checkpoint" in (tmp_path / "o" / "inpaint.json").read_text()
    hard = make_mask(mask_spec(box="8,8,24,24"), (32, 32))
    before, after = _png(image), _png(tmp_path / "o" / "inpainted-0.png")
    assert np.array_equal(after[hard == 0], before[hard == 0]) and np.abs(after - before)[hard == 1].mean() > 10
    rc, err = _cli(capsys, "inpaint", "--base-model", "tiny", "--inpainting-model", tiny_model_dir, "--image", image,
                   "--box", "8,8,24,24", "--prompt", "a lesion", "--out", tmp_path / "bad")
    assert rc == 2 and "not an inpainting checkpoint" in err and not (tmp_path / "bad").exists()


def test_inpaint_pipeline_mode_paints_a_class_and_rejects_a_wrong_mask(tmp_path, capsys):
    emb = _chest_xray_embeddings(tmp_path / "emb")
    image = _image(tmp_path / "scan.png")
    common = ["inpaint", "--params", ROOT / "params.yaml", "--modality", "chest_xray", "--embeddings", emb,
              "--image", image, "--steps", 2]
    rc, err = _cli(capsys, *common, "--class", "opacity", "--box", "0,0,16,16", "--out", tmp_path / "o")
    assert rc == 0, err
    assert '"prompt": "a chest x-ray showing <chest_xray-opacity>"' in (tmp_path / "o" / "inpaint.json").read_text()
    Image.new("L", (16, 16), 255).save(tmp_path / "small.png")
    rc, err = _cli(capsys, *common, "--mask", tmp_path / "small.png", "--out", tmp_path / "bad")
    lines = [ln for ln in err.splitlines() if "medti: error:" in ln]
    assert rc == 2 and len(lines) == 1 and "small.png: the mask is 16x16 pixels but the image is 32x32" in lines[0]
    assert not (tmp_path / "bad").exists()


def test_an_inpainting_unet_sees_the_masked_region_blanked_to_grey(model, tmp_path, monkeypatch):
    """diffusers and A1111 blank the region to repaint to 0 in the VAE's [-1, 1] space (mid-grey), not to black
    (-1); the 9-channel checkpoints were trained on such masked images."""
    from diffusers import UNet2DConditionModel

    from medti.generate.inpaint import load_image, masked_image
    from medti.generate.sampling import Sampler

    pixels, _ = load_image(_image(tmp_path / "scan.png", mode="RGB"))
    hard = torch.from_numpy(make_mask(mask_spec(box="8,8,24,24"), (32, 32)))
    blanked = masked_image(pixels[None], hard.view(1, 1, 32, 32))
    assert torch.equal((blanked * 2 - 1)[..., hard == 1], torch.zeros(1, 3, int(hard.sum())))  # grey, not -1
    assert torch.equal(blanked[..., hard == 0], pixels[None][..., hard == 0])

    seen = []
    encode = Sampler.encode_images

    def spy(self, images):
        seen.append(images.clone())
        return encode(self, images)

    monkeypatch.setattr(Sampler, "encode_images", spy)
    config = dict(model.unet.config, in_channels=9)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    inpaint(model, pixels, hard.numpy(), ["a lesion"], [1], steps=2, unet=unet)
    assert len(seen) == 2  # the start image, then the masked image for the UNet's extra channels
    torch.testing.assert_close(seen[1], blanked)
