"""The Textual Inversion trainer on the offline tiny model: what trains, the loss it computes, resuming
after SIGKILL, what it writes and tracks, and each bad input of the issue."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medti.errors import ConfigError, InputError, ModelError, TrainingError
from medti.textual_inversion import TrainSettings, train_embedding
from medti.toydata import draw_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast as two, and avoids OpenMP spin-waiting when the CPU is
    shared; it also gives the in-process runs the same arithmetic as the subprocess runs (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_images(folder: Path, n: int = 6, size: int = 32, seed: int = 0, name: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(draw_shapes("disc", n, seed, size=size)):
        Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return folder


def quick(**overrides) -> TrainSettings:
    """A few steps at 32 px (the tiny model's latents are 8x8 there), on the CPU (where runs are bit-exact)."""
    values = dict(token="<t>", init_words="round disc", num_vectors=2, resolution=32, steps=6, batch_size=2,
                  lr=1e-2, warmup_steps=0, validation_images=0, checkpoint_every=0, log_every=2, seed=1, device="cpu")
    values.update(overrides)
    return TrainSettings(**values).validate()


def load_tiny(tiny_model_dir):
    from medti.models import load_base_model

    return load_base_model(str(tiny_model_dir))


# -- method ---------------------------------------------------------------------------------------------------

def test_initial_vectors_from_word_phrase_zeros_and_random(tiny_model_dir):
    from medti.textual_inversion.text import initial_vectors

    m = load_tiny(tiny_model_dir)
    table = m.text_encoder.get_input_embeddings().weight.detach()
    words = ["round", "bright", "disc"]
    rows = table[m.tokenizer.convert_tokens_to_ids([f"{w}</w>" for w in words])]
    assert m.tokenizer.tokenize("round bright disc") == [f"{w}</w>" for w in words]

    one = initial_vectors(m.tokenizer, m.text_encoder, "word", 1, "disc")
    assert torch.equal(one, rows[2:3])
    # a phrase's tokens spread over the vectors: one each, repeated in order, or averaged in groups
    assert torch.equal(initial_vectors(m.tokenizer, m.text_encoder, "word", 3, "round bright disc"), rows)
    six = initial_vectors(m.tokenizer, m.text_encoder, "word", 6, "round bright disc")
    assert torch.equal(six, rows.repeat_interleave(2, dim=0))
    torch.testing.assert_close(initial_vectors(m.tokenizer, m.text_encoder, "word", 1, "round bright disc"),
                               rows.mean(0, keepdim=True))
    two = initial_vectors(m.tokenizer, m.text_encoder, "word", 2, "round bright disc")
    torch.testing.assert_close(two, torch.stack([rows[0], rows[1:].mean(0)]))

    assert torch.equal(initial_vectors(m.tokenizer, m.text_encoder, "zeros", 4), torch.zeros(4, m.embedding_dim))
    r1 = initial_vectors(m.tokenizer, m.text_encoder, "random", 64, seed=1)
    assert torch.equal(r1, initial_vectors(m.tokenizer, m.text_encoder, "random", 64, seed=1))
    assert not torch.equal(r1, initial_vectors(m.tokenizer, m.text_encoder, "random", 64, seed=2))
    ratio = r1.std(0).mean() / table.std(0).mean()
    assert 0.8 < float(ratio) < 1.2  # the vocabulary's spread
    with pytest.raises(ConfigError, match="no tokens"):
        initial_vectors(m.tokenizer, m.text_encoder, "word", 2, "   ")


def test_training_starts_from_the_init_and_moves_only_the_new_vectors(tiny_model_dir):
    """UNet, VAE decoder, text encoder and its vocabulary matrix end bit-identical; the optimiser holds
    only the placeholder's [num_vectors, dim] tensor, which has moved away from its init."""
    from medti.textual_inversion.text import initial_vectors
    from medti.textual_inversion.trainer import EmbeddingTrainer

    m = load_tiny(tiny_model_dir)
    frozen = {name: {k: v.clone() for k, v in getattr(m, name).state_dict().items()}
              for name in ("unet", "text_encoder")}
    decoder = {k: v.clone() for k, v in m.vae.decoder.state_dict().items()}
    vocab_rows = m.text_encoder.get_input_embeddings().weight.shape
    s = quick(num_vectors=3, steps=5, validation_images=2)
    init = initial_vectors(m.tokenizer, m.text_encoder, "word", 3, "round disc")
    pixels = torch.from_numpy(draw_shapes("disc", 4, 0)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    encoded = []
    m.vae.encoder.register_forward_hook(lambda module, inputs, output: encoded.append(inputs[0].shape[0]))
    trainer = EmbeddingTrainer(m, s, pixels, torch.device("cpu"), torch.float32)
    assert torch.equal(trainer.vectors.detach(), init)
    assert sum(encoded) == 4  # each image through the VAE encoder once...
    assert m.vae.encoder is None  # ...then it leaves memory (the decoder stays for validation grids)
    for _ in range(s.steps):
        trainer.train_step()

    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is trainer.vectors and tuple(params[0].shape) == (3, m.embedding_dim)
    assert float((trainer.vectors.detach() - init).abs().max()) > 1e-3  # the gradient reached every vector...
    assert bool(((trainer.vectors.detach() - init).abs().sum(1) > 0).all())
    for name, before in frozen.items():  # ...and nothing else changed
        after = getattr(m, name).state_dict()
        if name == "text_encoder":
            base = after.pop("embeddings.token_embedding.base.weight")
            after = {k: v for k, v in after.items() if ".token_embedding.vectors." not in k}
            after["embeddings.token_embedding.weight"] = base
        assert set(after) == set(before)
        for k, v in before.items():
            assert torch.equal(after[k], v), f"{name}.{k} changed"
    for k, v in m.vae.decoder.state_dict().items():
        assert torch.equal(v, decoder[k]), f"vae.decoder.{k} changed"
    assert m.text_encoder.get_input_embeddings().weight.shape == vocab_rows  # no vocabulary resize
    trainable = [n for n, p in [*m.unet.named_parameters(), *m.text_encoder.named_parameters(),
                                *m.vae.named_parameters()] if p.requires_grad]
    assert trainable == ["embeddings.token_embedding.vectors.x3ctx3e"]


@pytest.fixture(scope="module")
def v_prediction_model(tmp_path_factory):
    from medti.models.loading import build_model_folder

    return build_model_folder(tmp_path_factory.mktemp("vpred") / "tiny-v", prediction_type="v_prediction")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
def test_loss_matches_diffusers_reference(tiny_model_dir, v_prediction_model, prediction_type, min_snr_gamma):
    """One micro-step's loss equals the loss built from diffusers' own pieces: ``add_noise``, the target
    (noise, or ``get_velocity`` for v-prediction) and min-SNR weights from ``compute_snr``."""
    from diffusers.training_utils import compute_snr

    from medti.models import load_base_model
    from medti.textual_inversion.trainer import EmbeddingTrainer

    m = load_base_model(str(tiny_model_dir if prediction_type == "epsilon" else v_prediction_model))
    assert m.prediction_type == prediction_type
    s = quick(batch_size=4, min_snr_gamma=min_snr_gamma, templates=["a photo of {}", "a picture of {}, round"])
    pixels = torch.from_numpy(draw_shapes("disc", 4, 0)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    trainer = EmbeddingTrainer(m, s, pixels, torch.device("cpu"), torch.float32)
    g = torch.Generator().set_state(trainer.generator.get_state())
    loss = trainer._micro_step(0, 0)

    rows, templates = trainer.rows[0, 0], trainer.templates_used[0, 0]
    mean, std = trainer.latents.mean[rows], trainer.latents.std[rows]
    latents = mean + std * torch.randn(mean.shape, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    sched = m.noise_scheduler
    with torch.no_grad():
        hidden = m.text_encoder(trainer.prompt_ids[templates])[0]
        pred = m.unet(sched.add_noise(latents, noise, t), t, hidden).sample
    target = noise if prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    per_image = (pred - target).pow(2).mean(dim=(1, 2, 3))
    if min_snr_gamma:
        snr = compute_snr(sched, t)
        weight = snr.clamp(max=min_snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        per_image = per_image * weight
    torch.testing.assert_close(loss, per_image.mean(), rtol=1e-4, atol=1e-6)
    assert trainer.vectors.grad is not None and bool(trainer.vectors.grad.abs().sum() > 0)


def test_gradient_checkpointing_gives_the_same_vectors(tiny_model_dir):
    """With and without gradient checkpointing the same steps give the same vectors, and those vectors have
    trained: every one moved from its start by far more than the tolerance of the comparison (two runs that
    both failed to train would agree too)."""
    from medti.textual_inversion.trainer import EmbeddingTrainer

    pixels = torch.from_numpy(draw_shapes("disc", 4, 0)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    vectors, starts = [], []
    for checkpointing in (False, True):
        m = load_tiny(tiny_model_dir)
        trainer = EmbeddingTrainer(m, quick(steps=3, gradient_checkpointing=checkpointing), pixels,
                                   torch.device("cpu"), torch.float32)
        starts.append(trainer.learned_vectors())
        for _ in range(3):
            trainer.train_step()
        assert m.unet.is_gradient_checkpointing == checkpointing
        vectors.append(trainer.learned_vectors())
    torch.testing.assert_close(starts[1], starts[0], rtol=0, atol=0)
    for start, end in zip(starts, vectors):
        moved = (end - start).abs().max(dim=1).values  # per vector
        assert bool((moved > 1e-3).all()), moved  # lr 1e-2, 3 Adam steps: ~1e-2 per element per step
    torch.testing.assert_close(vectors[1], vectors[0], rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_half_precision_training_on_the_gpu_follows_fp32(tiny_model_dir):
    """On a GPU the frozen weights are bf16 (or fp16 with a gradient scaler) under autocast while the vectors
    stay fp32: the first micro-step's loss and the vectors' gradient match an fp32 run up to rounding."""
    import torch.nn.functional as F

    from medti.models import load_base_model
    from medti.textual_inversion.trainer import EmbeddingTrainer

    cuda = torch.device("cuda")
    pixels = torch.from_numpy(draw_shapes("disc", 4, 0)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    results = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        m = load_base_model(str(tiny_model_dir), device=cuda, dtype=dtype)
        trainer = EmbeddingTrainer(m, quick(batch_size=4, device="cuda"), pixels, cuda, dtype)
        assert next(m.unet.parameters()).dtype == dtype and trainer.vectors.dtype == torch.float32
        assert (trainer.scaler is not None) == (dtype == torch.float16)
        loss = float(trainer._micro_step(0, 0))
        grad = trainer.vectors.grad.detach().float().clone()
        if trainer.scaler is not None:
            grad /= trainer.scaler.get_scale()
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
        results[dtype] = loss, grad
    ref_loss, ref_grad = results[torch.float32]
    for dtype in (torch.bfloat16, torch.float16):
        loss, grad = results[dtype]
        assert abs(loss - ref_loss) <= 0.03 * abs(ref_loss) + 1e-3, (dtype, loss, ref_loss)
        assert float(F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)) > 0.98, dtype


@pytest.mark.gpu
def test_gpu_run_writes_an_fp32_embedding_that_moved(tmp_path, tiny_model_dir):
    from medti.embeddings import load_embedding

    images = write_images(tmp_path / "images", n=6)
    out, ckpt = tmp_path / "t.safetensors", tmp_path / "ckpt"
    result = train_embedding(images, quick(device="cuda", steps=20, checkpoint_every=10, lr=5e-2),
                             base_model=str(tiny_model_dir), output=out, checkpoint_dir=ckpt)
    emb = load_embedding(out)
    assert emb.vectors.dtype == torch.float32 and emb.vectors.shape == (2, 64)
    assert torch.isfinite(emb.vectors).all()
    # "moved": every vector left its start (the init words' embeddings) by far more than bf16/fp16 rounding
    from medti.textual_inversion.text import initial_vectors

    s = quick()
    m = load_tiny(tiny_model_dir)
    start = initial_vectors(m.tokenizer, m.text_encoder, s.init, s.num_vectors, s.init_words, seed=s.seed)
    assert start.shape == emb.vectors.shape
    moved = (emb.vectors - start).abs().max(dim=1).values
    assert bool((moved > 1e-2).all()), moved  # lr 5e-2 for 20 Adam steps
    assert result.stats["device"].startswith("cuda") and result.stats["dtype"] in ("bfloat16", "float16")
    assert math.isfinite(result.stats["loss_last"]) and result.stats["peak_memory_mb"] > 0
    assert not ckpt.exists()  # removed once the outputs are written


def test_augmented_views_are_drawn_once_and_flips_are_off_by_default():
    from medti.textual_inversion.data import ViewMaker, to_unit_range
    from medti.textual_inversion.settings import Augment

    assert Augment().num_views == 1 and not Augment().hflip  # anatomy is lateralised: no flips unless asked
    pixels = torch.from_numpy(draw_shapes("ring", 6, 0)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    views = ViewMaker(Augment(hflip=True, views=4), 6, seed=0)
    assert views.num_views == 4
    original = to_unit_range(pixels)
    assert torch.equal(views(pixels, 0, 0), original)
    flipped = 0
    for v in range(1, 4):
        out = views(pixels, v, 0)
        for i in range(6):
            same, mirrored = torch.allclose(out[i], original[i], atol=1e-5), \
                torch.allclose(out[i], original[i].flip(-1), atol=1e-5)
            assert same or mirrored
            flipped += mirrored and not same
        assert torch.equal(views(pixels[2:4], v, 2), out[2:4])  # a view does not depend on the batching
    assert 0 < flipped < 18


# -- checkpoint and resume --------------------------------------------------------------------------------------

def _cli_args(images: Path, out: Path, ckpt: Path) -> list[str]:
    return ["train-embedding", "--base-model", "tiny", "--images", str(images), "--token", "<t>", "--init", "disc",
            "--num-vectors", "2", "--resolution", "32", "--batch-size", "2", "--steps", "60", "--lr", "0.01",
            "--seed", "5", "--checkpoint-every", "10", "--log-every", "5", "--validation-images", "2",
            "--validation-every", "30", "--device", "cpu", "--out", str(out), "--checkpoint-dir", str(ckpt)]


def test_sigkilled_cli_run_resumes_to_the_same_embedding(tmp_path, tiny_model_dir, capsys):
    """The standalone CLI on a plain folder, killed with SIGKILL between checkpoints and restarted with the
    same command, ends with the embedding of an uninterrupted run (within 1e-6) and a complete report."""
    from medti.cli import build_parser
    from medti.embeddings import load_embedding
    from medti.textual_inversion.cli import run

    images = write_images(tmp_path / "images", n=6)
    out, ckpt = tmp_path / "killed" / "t.safetensors", tmp_path / "killed_ckpt"
    cmd = [sys.executable, "-m", "medti.cli", *_cli_args(images, out, ckpt)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = ckpt / "state.pt"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)  # land between checkpoints: the restart must replay steps, not just continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    saved = torch.load(str(state), weights_only=True)
    assert 10 <= saved["step"] < 60 and saved["step"] % 10 == 0
    assert not out.exists()  # a killed run leaves no output

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from the checkpoint at step {saved['step']}" in again.stderr
    summary = json.loads(again.stdout)
    assert summary["token"] == "<t>" and summary["steps"] == 60 and summary["images"] == 6
    assert not ckpt.exists()  # removed once the outputs are written

    ref_out = tmp_path / "ref" / "t.safetensors"
    assert run(build_parser().parse_args(_cli_args(images, ref_out, tmp_path / "ref_ckpt"))) == 0
    capsys.readouterr()
    resumed, reference = load_embedding(out), load_embedding(ref_out)
    assert resumed.vectors.shape == (2, 64)
    assert float((resumed.vectors - reference.vectors).abs().max()) <= 1e-6
    assert not torch.equal(reference.vectors, _init_vectors(tiny_model_dir))  # it did train

    report = out.with_name("t_report")
    rows = (report / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s,steps_per_s,elapsed_s" and len(rows) == 61
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 61))
    ref_losses = (ref_out.with_name("t_report") / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == [r.split(",")[1] for r in ref_losses[1:]]
    assert {p.name for p in report.glob("validation_*.png")} == {"validation_step30.png", "validation_final.png"}


def _init_vectors(tiny_model_dir) -> torch.Tensor:
    from medti.textual_inversion.text import initial_vectors

    m = load_tiny(tiny_model_dir)
    return initial_vectors(m.tokenizer, m.text_encoder, "word", 2, "disc")


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, caplog):
    images = write_images(tmp_path / "images", n=4)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingError):  # leave a checkpoint behind: NaN after the first checkpoint
        train_embedding(images, quick(lr=1e30, max_grad_norm=None, checkpoint_every=1, log_every=1),
                        checkpoint_dir=ckpt)
    assert (ckpt / "state.pt").is_file()
    result = train_embedding(images, quick(steps=3), checkpoint_dir=ckpt)
    assert result.stats["resumed_from_step"] == 0
    assert "belongs to a run with other settings" in caplog.text


# -- outputs and observability --------------------------------------------------------------------------------

def test_outputs_metrics_mlflow_and_validation_grids_without_phi(tmp_path, tracking_env):
    """Loss, lr and throughput reach metrics.csv and MLflow each step; grids are written at validation_every
    and at the end; the embedding's metadata has the listed keys and no trace of the (PHI-like) file names."""
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open

    phi = "DOE_JOHN_19600101"
    images = write_images(tmp_path / phi, n=5, name=phi)
    out, report = tmp_path / "out" / "lesion.safetensors", tmp_path / "out" / "report"
    s = quick(token="<lesion>", steps=6, validation_every=3, validation_images=2, validation_steps=4, log_every=4,
              lr_scheduler="constant_with_warmup", warmup_steps=3)
    result = train_embedding(images, s, base_model="tiny", output=out, report_dir=report,
                             checkpoint_dir=tmp_path / "ckpt")  # random weights: the note below

    rows = (report / "metrics.csv").read_text().splitlines()
    assert len(rows) == 7 and all(float(r.split(",")[3]) > 0 for r in rows[1:])  # images/s
    assert {p.name for p in report.iterdir()} == {"metrics.csv", "loss.png", "summary.json",
                                                  "validation_step3.png", "validation_final.png"}
    with Image.open(report / "validation_final.png") as grid:
        assert grid.size[0] > 200 and grid.size[1] > 150
        assert np.asarray(grid.convert("L")).std() > 5  # not a blank figure
    summary = json.loads((report / "summary.json").read_text())
    assert "carry no medical meaning" in summary["note"] and summary["random_base_model"] is True
    assert summary["steps"] == 6 and summary["embedding_bytes"] == out.stat().st_size

    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
        assert list(fh.keys()) == ["<lesion>"] and tuple(fh.get_tensor("<lesion>").shape) == (2, 64)
    assert {"base_model", "text_encoder_hash", "token", "num_vectors", "dim", "steps", "images_checksum",
            "medti_version", "format"} <= set(meta)
    assert meta["base_model"] == "tiny" and meta["steps"] == "6" and meta["random_base_model"] == "true"

    client = MlflowClient(tracking_env)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    for key in ("loss", "lr", "images_per_s", "steps_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(h.step for h in history) == list(range(1, 7)), key
    lrs = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, "lr"))
    assert [v for _, v in lrs] == pytest.approx([0.0, 1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2, 1e-2])  # warm-up, then flat
    losses = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "loss")}
    assert losses[6] == pytest.approx(float(rows[6].split(",")[1]), rel=1e-5)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"embedding", "validation"} <= artifacts
    assert run.data.tags["random_base_model"] == "True"

    texts = [out.read_bytes().decode("latin-1"), *(p.read_text() for p in report.glob("*.csv")),
             (report / "summary.json").read_text(), json.dumps(run.data.params), json.dumps(run.data.tags)]
    assert not any(phi in t for t in texts)
    assert result.embedding.checksum() == summary["embedding_checksum"]


def test_pipeline_form_reads_params_and_manifest(tmp_path):
    from medti.config import load_params
    from medti.textual_inversion import train_from_params
    from medti.textual_inversion.data import images_checksum
    from medti.toydata import write_real_set

    manifest = write_real_set(tmp_path / "prepared", {"train": 4, "val": 1, "test": 1}, modality="chest_xray",
                              classes=("normal", "opacity"), size=48)
    params = load_params(ROOT / "params.yaml")
    params["train_embedding"].update(steps=3, resolution=32, validation_images=0, batch_size=2)
    out = tmp_path / "emb" / "opacity.safetensors"
    result = train_from_params(params, "chest_xray", "opacity", manifest, out, tmp_path / "report",
                               checkpoint_dir=tmp_path / "ckpt")
    emb = result.embedding
    assert emb.token == "<chest_xray-opacity>" and emb.num_vectors == params["train_embedding"]["num_vectors"]
    assert result.stats["images"] == 2  # the train split's ti_subset rows of that class only
    meta = emb.metadata
    # what it learnt from, by content; nothing that depends on the clone's salt (the manifest's subject ids)
    assert "manifest_checksum" not in meta
    trained_on = sorted(manifest.parent / p for p in pd.read_csv(manifest).query(
        "split == 'train' and `class` == 'opacity' and ti_subset")["path"])
    assert meta["images_checksum"] == images_checksum(trained_on)
    assert (meta["modality"], meta["class"]) == ("chest_xray", "opacity")
    assert meta["init_words"] == "focal opacity chest x-ray"  # the class's init phrase in params.yaml
    assert result.stats["settings"]["templates"] == params["modalities"]["chest_xray"]["templates"]


# -- bad input ------------------------------------------------------------------------------------------------

def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_empty_and_one_image_sets_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no training images") as err:
        train_embedding(tmp_path / "empty", quick())
    assert str(tmp_path / "empty") in _one_line(err)
    one = write_images(tmp_path / "one", n=1)
    with pytest.raises(InputError, match="only one training image"):
        train_embedding(one, quick())
    with pytest.raises(InputError, match="image folder not found"):
        train_embedding(tmp_path / "nowhere", quick())
    (tmp_path / "broken").mkdir()
    write_images(tmp_path / "broken", n=2)
    (tmp_path / "broken" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png: not a readable image"):
        train_embedding(tmp_path / "broken", quick())


def test_mixed_image_sizes_are_resized_with_a_warning(tmp_path, caplog):
    from medti.textual_inversion.data import load_images

    folder = tmp_path / "mixed"
    write_images(folder, n=2, size=32, name="a")
    write_images(folder, n=1, size=64, name="b")
    Image.fromarray(np.full((24, 40), 200, np.uint8)).save(folder / "c_wide.png")
    ramp = np.tile(np.linspace(0, 4095, 32), (32, 1)).astype(np.uint16)  # 12-bit values in a 16-bit PNG
    Image.fromarray(ramp).save(folder / "d_16bit.png")
    result = train_embedding(folder, quick(steps=2, grad_accum=2))
    assert result.stats["images"] == 5 and result.stats["settings"]["grad_accum"] == 2
    assert "2 of 5 training images are not 32x32" in caplog.text and "centre-cropped" in caplog.text
    pixels = load_images(sorted(folder.glob("*.png")), 32)
    assert pixels.shape == (5, 3, 32, 32) and pixels.dtype == torch.uint8
    assert int(pixels[3].float().mean()) == 200  # the wide image, cropped to its centre and resized
    assert int(pixels[4].min()) == 0 and int(pixels[4].max()) == 255  # 16-bit: stretched, not clipped to white
    assert 120 < float(pixels[4].float().mean()) < 135


def test_a_token_already_in_the_vocabulary_is_refused(tmp_path):
    images = write_images(tmp_path / "images", n=2)
    with pytest.raises(ModelError, match="token 'disc' is already in the tokenizer's vocabulary") as err:
        train_embedding(images, quick(token="disc"))
    _one_line(err)


def test_more_vectors_than_the_context_leaves_room_for(tmp_path, tiny_model_dir):
    from medti.textual_inversion.text import check_context_room, template_tokens

    m = load_tiny(tiny_model_dir)
    templates = ["a chest x-ray showing {}", "a frontal chest radiograph of the left upper lung, {}"]
    longest = max(template_tokens(m.tokenizer, t) for t in templates)
    room = 77 - 2 - longest
    check_context_room(m.tokenizer, templates, room)  # exactly full is fine
    images = write_images(tmp_path / "images", n=2)
    with pytest.raises(ConfigError) as err:
        train_embedding(images, quick(num_vectors=room + 1, templates=templates, init="zeros"))
    message = _one_line(err)
    assert f"at most {room} vectors" in message and templates[1] in message
    # and the longest template with the maximum does train (64 vectors fit with short templates)
    result = train_embedding(images, quick(num_vectors=room, templates=templates, init="zeros", steps=1))
    assert result.embedding.num_vectors == room


def test_an_init_embedding_of_another_width_is_refused(tmp_path):
    from medti.embeddings import Embedding, save_embedding

    images = write_images(tmp_path / "images", n=2)
    wrong = save_embedding(Embedding("<w>", torch.zeros(2, 32)), tmp_path / "sd2.safetensors")
    with pytest.raises(ModelError, match="sd2.safetensors: embedding width 32 does not match") as err:
        train_embedding(images, quick(), init_embedding=wrong)
    _one_line(err)
    right = save_embedding(Embedding("<w>", torch.full((3, 64), 0.01)), tmp_path / "start.safetensors")
    result = train_embedding(images, quick(steps=1), init_embedding=right)
    assert result.embedding.num_vectors == 3 and result.embedding.metadata["init"] == "embedding"


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    images = write_images(tmp_path / "images", n=4)
    out, report, ckpt = tmp_path / "e.safetensors", tmp_path / "report", tmp_path / "ckpt"
    s = quick(lr=1e30, max_grad_norm=None, checkpoint_every=1, log_every=1, steps=10)
    with pytest.raises(TrainingError) as err:
        train_embedding(images, s, output=out, report_dir=report, checkpoint_dir=ckpt)
    message = _one_line(err)
    assert "the loss became nan at step 2" in message
    assert f"last good checkpoint (step 1, {ckpt / 'state.pt'}) is kept" in message
    state = torch.load(str(ckpt / "state.pt"), weights_only=True)
    assert state["step"] == 1 and bool(torch.isfinite(state["vectors"]).all())
    assert not out.exists() and not report.exists()


def test_cli_bad_input_is_one_line_on_stderr(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "medti.cli", "train-embedding", "--images", str(tmp_path / "empty"),
                           "--token", "<t>", "--init", "disc", "--out", str(tmp_path / "o.safetensors")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medti: error:")]
    assert len(errors) == 1 and "no training images" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["--num-vectors", "0"], "--num-vectors: 0 is less than the minimum of 1"),
    (["--num-vectors", "76"], "--num-vectors: 76 is greater than the maximum of 75"),
    (["--resolution", "30"], "--resolution: 30 is not a multiple of 8"),
    (["--template", "no placeholder"], "must contain '{}' exactly once"),
    (["--token", "two words"], "must be one word without spaces"),
    (["--lr", "0"], "--lr: 0.0 is less than or equal to the minimum of 0"),
    # overflowed float32 in the optimiser
    (["--lr", "1e300"], r"--lr: 1e\+300 is greater than the maximum of 3\.4e\+38"),
    (["--lr", "nan"], "lr: must be a finite number"),
    (["--rotate-degrees", "181"], "--rotate-degrees: 181.0 is greater than the maximum of 180"),
    (["--scale", "0", "1"], "--scale: 0.0 is less than or equal to the minimum of 0"),
])
def test_cli_settings_are_validated(tmp_path, argv, fragment):
    from medti.cli import build_parser
    from medti.textual_inversion.cli import build_settings

    base = ["train-embedding", "--images", str(tmp_path), "--token", "<t>", "--init", "disc",
            "--out", str(tmp_path / "o.safetensors")]
    args = build_parser().parse_args(base + argv)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        build_settings(args, None)
