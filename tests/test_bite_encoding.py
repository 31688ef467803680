"""A multi-vector placeholder is encoded with every one of its vectors, exactly as diffusers does (issue 19).

A planted bug that made generation use only the first vector of a multi-vector embedding was caught only by
chance. Here the reference is diffusers' own pipeline: ``StableDiffusionPipeline.load_textual_inversion`` of
the very file medti's embedding writer saved (medti's format is diffusers' ``{token: float32[n, dim]}``, so no
conversion is needed), then ``pipe.encode_prompt``. medti's side is the path generation takes: the file
installed by ``install_embeddings`` and the prompt encoded by ``Sampler.encode_texts`` (what ``sample`` and
``generate_set`` condition on).
"""

from __future__ import annotations

import pytest
import torch

from medti.embeddings import Embedding, load_embedding, save_embedding

N_VECTORS = 4
TOKEN = "<bite-lesion>"
PROMPTS = [f"a chest x-ray showing {TOKEN}", f"{TOKEN}", f"{TOKEN}, a small round {TOKEN} nodule"]


def _vectors(seed: int, n: int = N_VECTORS, dim: int = 64) -> torch.Tensor:
    """``n`` clearly distinct vectors of about the vocabulary's scale."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, dim), generator=g) * 0.5 + torch.arange(n, dtype=torch.float32)[:, None] * 0.3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two embedding files written by medti's writer: the same vectors except the last one."""
    folder = tmp_path_factory.mktemp("bite-embeddings")
    vectors = _vectors(0)
    other = vectors.clone()
    other[-1] = _vectors(1)[-1]
    assert not torch.equal(other[-1], vectors[-1]) and torch.equal(other[:-1], vectors[:-1])
    meta = {"base_model": "tiny", "steps": "10"}
    first = save_embedding(Embedding(TOKEN, vectors, meta), folder / "lesion.safetensors")
    last_changed = save_embedding(Embedding(TOKEN, other, meta), folder / "lesion-last-changed.safetensors")
    assert load_embedding(first).num_vectors == N_VECTORS
    return first, last_changed


def _medti_encode(tiny_model_dir, path, prompts) -> torch.Tensor:
    from medti.generate.embedding_install import install_embeddings
    from medti.generate.sampling import Sampler
    from medti.models import load_base_model

    model = load_base_model(str(tiny_model_dir))
    (installed,) = install_embeddings(model, [path])
    assert installed.num_vectors == N_VECTORS
    return Sampler(model).encode_texts(prompts)


def _diffusers_encode(tiny_model_dir, path, prompts) -> torch.Tensor:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.load_textual_inversion(str(path), token=TOKEN)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompts, device=torch.device("cpu"), num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    assert negative is None
    return embeds


def test_a_multi_vector_placeholder_encodes_as_diffusers_encode_prompt_does(tiny_model_dir, files):
    path, _ = files
    ours = _medti_encode(tiny_model_dir, path, PROMPTS)
    theirs = _diffusers_encode(tiny_model_dir, path, PROMPTS)
    assert ours.shape == theirs.shape == (len(PROMPTS), 77, 64)
    assert torch.allclose(ours.float(), theirs.float(), rtol=1e-5, atol=1e-5), \
        float((ours.float() - theirs.float()).abs().max())


def test_every_vector_is_used_the_last_one_too(tiny_model_dir, files):
    """Only the last vector differs between the two files, so the encodings agree up to the position of the
    placeholder's last sub-token (CLIP's text encoder is causal) and differ from there on; and each side
    still matches diffusers."""
    from medti.models.token_embedding import vector_tokens

    path, last_changed = files
    prompt = PROMPTS[0]
    a = _medti_encode(tiny_model_dir, path, [prompt])[0]
    b = _medti_encode(tiny_model_dir, last_changed, [prompt])[0]
    assert not torch.allclose(a, b, atol=1e-4)

    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"))
    tok.add_tokens(vector_tokens(TOKEN, N_VECTORS))
    ids = tok(prompt.replace(TOKEN, " ".join(vector_tokens(TOKEN, N_VECTORS)))).input_ids
    last = ids.index(tok.convert_tokens_to_ids(f"{TOKEN}_{N_VECTORS - 1}"))
    assert last == len(ids) - 2  # the placeholder ends the prompt; then the end-of-text token
    torch.testing.assert_close(a[:last], b[:last], rtol=0, atol=1e-6)  # before the last vector: the same
    assert float((a[last] - b[last]).abs().max()) > 1e-3                # at it: different

    theirs = _diffusers_encode(tiny_model_dir, last_changed, [prompt])[0]
    assert torch.allclose(b, theirs, rtol=1e-5, atol=1e-5)


def test_generated_images_depend_on_the_last_vector(tiny_model_dir, files):
    """The images ``sample`` draws from the same seed differ when only the last vector differs."""
    from medti.generate.embedding_install import install_embeddings
    from medti.generate.sampling import sample
    from medti.models import load_base_model

    images = []
    for path in files:
        model = load_base_model(str(tiny_model_dir))
        install_embeddings(model, [path])
        images.append(sample(model, [PROMPTS[0]], [7], steps=2, resolution=32, guidance=7.5))
    assert float((images[0] - images[1]).abs().max()) > 1e-4
