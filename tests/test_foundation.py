"""The shared foundation: params validation, atomic outputs, the tiny model and token splicing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medti.config import load_params
from medti.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_validate_and_fill_defaults():
    params = load_params(ROOT / "params.yaml")
    assert set(params["modalities"]) == {"chest_xray", "prostate_mri", "histopathology"}
    assert params["train_embedding"]["augment"]["hflip"] is False  # anatomy is lateralised
    # classes are derived per modality, in label order, from the one `classes` section
    assert params["modalities"]["prostate_mri"]["classes"] == ["no_cspca", "cspca"]
    assert params["modalities"]["chest_xray"]["init_words"]["opacity"] == "focal opacity chest x-ray"


def test_a_modality_with_one_class_is_rejected(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["classes"]["chest_xray-normal"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="chest_xray' needs at least two classes"):
        load_params(tmp_path / "p.yaml")


@pytest.mark.parametrize("path,value,fragment", [
    (("train_embedding", "num_vectors"), 0, "train_embedding.num_vectors"),
    (("generate", "scheduler"), "heun", "generate.scheduler"),
    (("classes", "chest_xray-normal", "class"), "Normal", "classes.chest_xray-normal.class"),
    (("classes", "chest_xray-normal", "modality"), "chest", "classes.chest_xray-normal"),
    (("prepare", "on_error"), "ignore", "prepare.on_error"),
])
def test_bad_params_fail_with_the_setting_named(tmp_path, path, value, fragment):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_is_rejected(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"]["guidence"] = 3
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="guidence"):
        load_params(tmp_path / "p.yaml")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    from medti.atomic import atomic_dir, atomic_path

    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "d") as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("2")
            raise RuntimeError("killed")
    assert (tmp_path / "d" / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_tiny_model_is_a_diffusers_folder_and_deterministic(tiny_model_dir, tmp_path):
    from medti.models.loading import build_model_folder

    assert (tiny_model_dir / "model_index.json").is_file()
    again = build_model_folder(tmp_path / "tiny2", arch="tiny", seed=0)
    a = (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (again / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b


def test_splice_trains_only_the_new_vectors(tiny_model_dir):
    from medti.models import load_base_model
    from medti.models.token_embedding import add_placeholder, expand_prompt, placeholder_tokens

    m = load_base_model(str(tiny_model_dir))
    vec = add_placeholder(m.tokenizer, m.text_encoder, "<t>", torch.zeros(3, m.embedding_dim), trainable=True)
    prompt = expand_prompt("a chest x-ray showing <t>", placeholder_tokens(m.text_encoder))
    assert prompt.endswith("<t> <t>_1 <t>_2")
    ids = m.tokenizer(prompt, padding="max_length", max_length=m.max_length, return_tensors="pt").input_ids
    out = m.text_encoder(ids)[0]
    out.pow(2).sum().backward()
    trainable = [n for n, p in m.text_encoder.named_parameters() if p.requires_grad]
    assert len(trainable) == 1
    assert vec.grad is not None and bool((vec.grad.abs().sum(dim=1) > 0).all())
    # a prompt without the token gives the frozen encoder's exact output
    plain = m.tokenizer("a chest x-ray", padding="max_length", max_length=m.max_length, return_tensors="pt").input_ids
    from transformers import CLIPTextModel

    ref = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder")
    torch.testing.assert_close(m.text_encoder(plain)[0], ref(plain)[0])


def test_placeholder_clashing_with_vocabulary_is_refused(tiny_model_dir):
    from medti.models import load_base_model
    from medti.models.token_embedding import add_placeholder

    m = load_base_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="already in the tokenizer"):
        add_placeholder(m.tokenizer, m.text_encoder, "chest", torch.zeros(1, m.embedding_dim))
    add_placeholder(m.tokenizer, m.text_encoder, "<once>", torch.zeros(1, m.embedding_dim))
    with pytest.raises(ModelError, match="already in the tokenizer"):
        add_placeholder(m.tokenizer, m.text_encoder, "<once>", torch.zeros(1, m.embedding_dim))
    with pytest.raises(ModelError, match="width"):
        add_placeholder(m.tokenizer, m.text_encoder, "<w>", torch.zeros(2, m.embedding_dim + 1))


def test_missing_hub_model_offline_says_what_to_fetch():
    from medti.models import load_base_model

    with pytest.raises(ModelError, match="hf download"):
        load_base_model("medti-test/no-such-model", local_files_only=True)


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "medti.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for stage in ("prepare", "train-embedding", "generate", "train-classifier", "evaluate", "report", "bench"):
        assert stage in out
