"""Embedding files: diffusers loads medti's file as it is; A1111 and kohya files round-trip; pickles that
would run code are refused before anything in them runs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from medti.embeddings import Embedding, convert_embedding, export_embedding, load_embedding, save_embedding
from medti.errors import ModelError


def _embedding(n=3, dim=64, seed=0, **meta) -> Embedding:
    vectors = torch.randn((n, dim), generator=torch.Generator().manual_seed(seed))
    return Embedding(token="<lesion>", vectors=vectors, metadata={"steps": "40", "base_model": "tiny", **meta})


def test_diffusers_loads_medti_file_as_it_is_and_encodes_like_medti(tiny_model_dir, tmp_path):
    """``StableDiffusionPipeline.load_textual_inversion`` on medti's file gives the same token rows and the
    same text-encoder output for a prompt as medti's own splicing."""
    from diffusers import StableDiffusionPipeline

    from medti.generate.embedding_install import install_embeddings
    from medti.models import load_base_model
    from medti.models.token_embedding import expand_prompt, placeholder_tokens

    emb = _embedding()
    path = save_embedding(emb, tmp_path / "lesion.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.load_textual_inversion(str(path))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<lesion>", "<lesion>_1", "<lesion>_2"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], emb.vectors)

    prompt = "a chest x-ray showing <lesion>"
    ids_diffusers = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                                   max_length=77, return_tensors="pt").input_ids
    model = load_base_model(str(tiny_model_dir))
    install_embeddings(model, [path])
    ids_medti = model.tokenizer(expand_prompt(prompt, placeholder_tokens(model.text_encoder)), padding="max_length",
                                max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids_medti, ids_diffusers)
    with torch.no_grad():
        torch.testing.assert_close(model.text_encoder(ids_medti)[0], pipe.text_encoder(ids_diffusers)[0])


def test_medti_file_holds_one_tensor_and_the_listed_metadata(tmp_path):
    from safetensors import safe_open

    emb = _embedding(manifest_checksum="ab" * 32, text_encoder_hash="0123456789abcdef", medti_version="0.1")
    path = save_embedding(emb, tmp_path / "e.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert list(fh.keys()) == ["<lesion>"]
        meta = fh.metadata()
    assert {"format", "token", "num_vectors", "dim", "steps", "base_model", "manifest_checksum",
            "text_encoder_hash", "medti_version"} <= set(meta)
    assert (meta["token"], meta["num_vectors"], meta["dim"]) == ("<lesion>", "3", "64")
    again = load_embedding(path)
    assert again.token == "<lesion>" and torch.equal(again.vectors, emb.vectors)
    assert again.metadata["manifest_checksum"] == "ab" * 32


@pytest.mark.parametrize("fmt,name", [("a1111", "e.pt"), ("kohya", "e.safetensors"),
                                      ("diffusers", "learned_embeds.bin"), ("diffusers", "e.safetensors")])
def test_export_import_round_trip(tmp_path, fmt, name):
    emb = _embedding(n=4)
    src = save_embedding(emb, tmp_path / "src.safetensors")
    out = tmp_path / fmt / name
    convert_embedding(src, out, fmt)
    back = load_embedding(out, token="<lesion>")
    assert torch.equal(back.vectors, emb.vectors)
    assert back.checksum() == emb.checksum()
    # and back into medti's format: still the same embedding
    final = convert_embedding(out, tmp_path / "final.safetensors", "medti", token="<lesion>")
    assert load_embedding(tmp_path / "final.safetensors").checksum() == final.checksum() == emb.checksum()


def test_a1111_file_has_the_web_ui_layout(tmp_path):
    emb = _embedding(n=2)
    path = export_embedding(emb, tmp_path / "lesion.pt", "a1111")
    data = torch.load(str(path), weights_only=True)
    assert set(data) >= {"string_to_token", "string_to_param", "name", "step"}
    assert list(data["string_to_param"]) == ["*"] and torch.equal(data["string_to_param"]["*"], emb.vectors)
    assert data["step"] == 40 and data["name"] == "<lesion>"
    back = load_embedding(path)
    assert back.metadata["source_format"] == "a1111" and back.metadata["steps"] == "40"
    # as in the web UI, the token is the file's name, whatever the `name` field says
    assert back.token == "lesion" and back.metadata["a1111_name"] == "<lesion>"
    renamed = path.rename(tmp_path / "<opacity>.pt")
    assert load_embedding(renamed).token == "<opacity>"
    assert load_embedding(renamed, token="<x>").token == "<x>"


def test_an_a1111_file_named_after_a_known_word_asks_for_another_token(tmp_path, tiny_model_dir):
    from medti.generate.embedding_install import install_embeddings
    from medti.models import load_base_model

    model = load_base_model(str(tiny_model_dir))
    path = export_embedding(_embedding(n=2), tmp_path / "chest.pt", "a1111")  # "chest" is a vocabulary word
    with pytest.raises(ModelError, match=r"chest.pt: token 'chest' is a word the base model already knows: "
                                         r"give it another name with TOKEN=PATH"):
        install_embeddings(model, [path])
    (installed,) = install_embeddings(model, [("<chest>", path)])
    assert installed.token == "<chest>" and installed.num_vectors == 2


def test_kohya_file_reads_as_emb_params(tmp_path):
    from safetensors.torch import load_file

    emb = _embedding(n=2)
    path = export_embedding(emb, tmp_path / "lesion.safetensors", "kohya")
    assert set(load_file(str(path))) == {"emb_params"}
    back = load_embedding(path)
    assert back.token == "<lesion>" and back.metadata["source_format"] == "kohya"


class _RunsCode:
    """Unpickling this calls os.system: what a malicious embedding file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_pickle(payload, path):
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "evil": payload}, str(path))


def _legacy_pickle(payload, path):
    path.write_bytes(pickle.dumps({"string_to_param": {"*": torch.zeros(1, 4)}, "evil": payload}))


@pytest.mark.parametrize("writer", [_zip_pickle, _legacy_pickle])
@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, writer, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    writer(_RunsCode(marker), path)
    assert zipfile.is_zipfile(path) == (writer is _zip_pickle)  # torch's zip form (A1111) and a plain pickle
    # the payload really runs code when unpickled unsafely (so the refusal below is what protects us)
    check = tmp_path / "unsafe_load_does_run"
    writer(_RunsCode(check), tmp_path / "probe.pt")
    if writer is _zip_pickle:
        torch.load(str(tmp_path / "probe.pt"), weights_only=False)
    else:
        pickle.loads((tmp_path / "probe.pt").read_bytes())
    assert check.exists()

    with pytest.raises(ModelError) as err:
        load_embedding(path)
    message = str(err.value)
    assert "refused" in message and str(path) in message and "\n" not in message
    assert not marker.exists()


def test_malicious_pickle_through_the_cli_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _zip_pickle(_RunsCode(marker), path)
    proc = subprocess.run([sys.executable, "-m", "medti.cli", "embedding", "convert", str(path),
                           "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "refused" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_the_commands_convert_and_describe_files(tmp_path, capsys):
    from medti.cli import main

    emb = _embedding()
    src = save_embedding(emb, tmp_path / "lesion.safetensors")
    assert main(["embedding", "convert", str(src), "--out", str(tmp_path / "web.pt")]) == 0  # a1111 by its suffix
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "a1111" and printed["checksum"] == emb.checksum()
    again = load_embedding(tmp_path / "web.pt")  # A1111: the token is the file's name
    assert again.token == "web" and torch.equal(again.vectors, emb.vectors)
    assert main(["embedding", "convert", str(src), "--out", str(tmp_path / "k.safetensors"), "--format", "kohya",
                 "--token", "<spot>"]) == 0
    capsys.readouterr()
    assert main(["embedding", "info", str(tmp_path / "k.safetensors")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["token"] == "<spot>" and info["metadata"]["source_format"] == "kohya" and info["num_vectors"] == 3
    assert main(["embedding", "convert", str(src), "--out", str(tmp_path / "x.pt"), "--format", "onnx"]) == 2
    assert "unknown embedding format" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    with pytest.raises(SystemExit):  # the output is --out, as in every command
        main(["embedding", "convert", str(src), str(tmp_path / "y.pt")])


def test_embedding_help_loads_no_torch():
    code = ("import sys\nfrom medti.cli import main\ntry:\n    main(['embedding', 'convert', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'safetensors' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--out OUT" in proc.stdout and proc.stdout.splitlines()[-1] == "False False"


def test_64_vectors_of_1024_stay_under_300_kb(tmp_path):
    emb = _embedding(n=64, dim=1024, manifest_checksum="ab" * 32, text_encoder_hash="0" * 16,
                     images_checksum="cd" * 32, medti_version="0.1.0")
    for fmt, name in (("medti", "e.safetensors"), ("a1111", "e.pt"), ("kohya", "k.safetensors")):
        path = export_embedding(emb, tmp_path / name, fmt)
        assert path.stat().st_size < 300 * 1024, (fmt, path.stat().st_size)


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_embedding(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 40)
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_embedding(garbage)
    nan = Embedding("<n>", torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ModelError, match="NaN"):
        load_embedding(save_embedding(nan, tmp_path / "nan.safetensors"))
    torch.save({"a": torch.zeros(2), "b": torch.zeros(2)}, str(tmp_path / "two.pt"))
    with pytest.raises(ModelError, match="which tensor"):
        load_embedding(tmp_path / "two.pt")


def test_an_embedding_of_the_wrong_width_is_refused_by_name(tiny_model_dir, tmp_path):
    from medti.generate.embedding_install import install_embeddings
    from medti.models import load_base_model

    model = load_base_model(str(tiny_model_dir))
    path = save_embedding(_embedding(dim=32), tmp_path / "narrow.safetensors")
    with pytest.raises(ModelError, match="narrow.safetensors: embedding width 32 does not match"):
        install_embeddings(model, [path])



def test_identical_embeddings_are_identical_files_in_every_process(tmp_path):
    """The safetensors header is canonical (sorted keys): the same tensor and metadata, saved by two processes
    with different hash seeds and metadata given in different orders, give the same bytes (and dvc.lock hash)."""
    script = """
import sys, torch
from medti.embeddings import Embedding, export_embedding, save_embedding
meta = {"steps": "40", "base_model": "tiny", "seed": "7", "lr": "0.005", "medti_version": "0.1", "images": "12"}
if sys.argv[2] == "reversed":
    meta = dict(reversed(list(meta.items())))
vectors = torch.randn((4, 32), generator=torch.Generator().manual_seed(3))
emb = Embedding(token="<chest_xray-opacity>", vectors=vectors, metadata=meta)
save_embedding(emb, sys.argv[1] + ".safetensors")
export_embedding(emb, sys.argv[1] + "_kohya.safetensors", "kohya")
"""
    for name, seed, order in (("a", "1", "forward"), ("b", "2", "reversed"), ("c", "3", "forward")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name), order], check=True, env=env)
    for suffix in (".safetensors", "_kohya.safetensors"):
        files = {(tmp_path / f"{n}{suffix}").read_bytes() for n in "abc"}
        assert len(files) == 1, suffix
    data = (tmp_path / "a.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"]) and (8 + n) % 8 == 0
    emb = load_embedding(tmp_path / "a.safetensors")  # still an ordinary safetensors file
    assert emb.token == "<chest_xray-opacity>" and emb.metadata["seed"] == "7" and emb.num_vectors == 4
