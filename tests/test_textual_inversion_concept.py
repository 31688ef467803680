"""Concept recovery: Textual Inversion finds a concept the base model knows, by training only its vectors.

tests/fixtures/concept_model (built by scripts/build_concept_fixture.py) is a small Stable Diffusion
pre-trained on two synthetic concepts, "a photo of disc" and "a photo of ring" (medti.toydata.draw_shapes).
A fresh placeholder initialised from `ring` is trained on disc images only. It must (a) lower the denoising
loss on held-out disc images clearly and (b) make samples that a simple pixel-space judge calls discs far
above chance. The same criterion must fail for a run whose vectors do not move (learning rate ~0), so the
test fails when the gradient does not reach the vectors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from medti.toydata import draw_shapes

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "concept_model"
PROMPT = "a photo of {}"
SAMPLES = 32


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model: one thread is as fast as two, and avoids OpenMP spin-waiting on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def judge_disc(images) -> torch.Tensor:
    """True where an image shows a filled disc rather than a ring: its centre (where every disc is bright
    and every ring has its hole) is brighter than halfway between the image's dark and bright levels."""
    x = torch.as_tensor(images).float()
    if x.ndim == 4:
        x = x.mean(1)
    x = x / x.amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    h, w = x.shape[-2:]
    centre = x[:, h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2].mean(dim=(1, 2))
    flat = x.flatten(1)
    return centre > (flat.quantile(0.1, dim=1) + flat.quantile(0.9, dim=1)) / 2


def load_fixture():
    from medti.models import load_base_model

    assert (FIXTURE / "model_index.json").is_file(), \
        f"{FIXTURE} is missing: build it with `python scripts/build_concept_fixture.py` and commit it"
    return load_base_model(str(FIXTURE))


@pytest.fixture(scope="module")
def disc_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("discs")
    for i, pixels in enumerate(draw_shapes("disc", 16, seed=11)):
        Image.fromarray(pixels).save(folder / f"disc_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def held_out():
    """Held-out disc latents with fixed noise and timesteps spread over the schedule: a deterministic loss."""
    model = load_fixture()
    pixels = torch.from_numpy(draw_shapes("disc", 16, seed=12)).float().div(127.5).sub(1)
    with torch.no_grad():
        latents = model.vae.encode(pixels.unsqueeze(1).expand(-1, 3, -1, -1)).latent_dist.mean
    latents = latents.repeat(4, 1, 1, 1) * model.vae.config.scaling_factor
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.linspace(50, 950, len(latents)).long()
    return latents, noise, t


def train(folder: Path, lr: float):
    from medti.textual_inversion import TrainSettings, train_embedding

    settings = TrainSettings(token="<shape>", templates=[PROMPT], init="word", init_words="ring", num_vectors=2,
                             steps=80, batch_size=8, lr=lr, lr_scheduler="constant", warmup_steps=0,
                             max_grad_norm=None, validation_images=0, seed=3, device="cpu").validate()
    return train_embedding(folder, settings, base_model=str(FIXTURE))


def recovery(embedding, held_out) -> dict:
    """The judge's disc fraction over samples with the learned token, and the held-out denoising loss with
    the learned vectors relative to their `ring` start."""
    import torch.nn.functional as F

    from medti.embeddings import Embedding
    from medti.generate.embedding_install import install_embeddings
    from medti.generate.sampling import sample
    from medti.models.token_embedding import expand_prompt, placeholder_tokens
    from medti.textual_inversion.text import initial_vectors

    model = load_fixture()
    start = initial_vectors(model.tokenizer, model.text_encoder, "word", embedding.num_vectors, "ring")
    install_embeddings(model, [embedding, Embedding("<start>", start)])
    latents, noise, t = held_out

    @torch.no_grad()
    def loss(token: str) -> float:
        prompt = expand_prompt(PROMPT.format(token), placeholder_tokens(model.text_encoder))
        ids = model.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden = model.text_encoder(ids)[0].expand(len(latents), -1, -1)
        pred = model.unet(model.noise_scheduler.add_noise(latents, noise, t), t, hidden).sample
        return float(F.mse_loss(pred, noise))

    images = sample(model, [PROMPT.format(embedding.token)] * SAMPLES, list(range(1000, 1000 + SAMPLES)),
                    steps=20, guidance=3.0, batch_size=SAMPLES)
    return {"disc_fraction": float(judge_disc(images).float().mean()),
            "loss": loss(embedding.token), "start_loss": loss("<start>")}


def recovered(r: dict) -> bool:
    """The criterion: samples judged disc far above chance (0.5), and the loss clearly lower than at the start."""
    return r["disc_fraction"] >= 0.8 and r["loss"] <= 0.85 * r["start_loss"]


def test_the_fixture_knows_both_concepts_and_the_judge_tells_them_apart():
    from medti.generate.sampling import sample

    assert judge_disc(draw_shapes("disc", 100, seed=21)).all()
    assert not judge_disc(draw_shapes("ring", 100, seed=22)).any()
    model = load_fixture()
    assert model.random_weights is False
    seeds = list(range(SAMPLES))
    discs = sample(model, [PROMPT.format("disc")] * SAMPLES, seeds, steps=20, guidance=3.0, batch_size=SAMPLES)
    rings = sample(model, [PROMPT.format("ring")] * SAMPLES, seeds, steps=20, guidance=3.0, batch_size=SAMPLES)
    assert float(judge_disc(discs).float().mean()) >= 0.9
    assert float(judge_disc(rings).float().mean()) <= 0.1


def test_textual_inversion_recovers_the_disc_from_a_ring_start(disc_folder, held_out):
    result = train(disc_folder, lr=0.05)
    r = recovery(result.embedding, held_out)
    assert recovered(r), r
    assert r["disc_fraction"] >= 0.9


def test_the_criterion_fails_when_the_vectors_do_not_learn(disc_folder, held_out):
    """The same run with a learning rate of ~0 (the gradient has no effect on the vectors) must not pass:
    this is what makes the test above fail when the gradient does not reach the vectors."""
    result = train(disc_folder, lr=1e-9)
    r = recovery(result.embedding, held_out)
    assert not recovered(r), r
    assert r["disc_fraction"] <= 0.2
