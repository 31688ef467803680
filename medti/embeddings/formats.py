"""Embedding files: medti's safetensors format, and reading and writing diffusers, A1111 and kohya files.

medti writes ``<name>.safetensors`` holding exactly one tensor, ``{token: float32[num_vectors, dim]}``, so
diffusers' ``pipeline.load_textual_inversion(path)`` loads it as it is. The safetensors header metadata
(strings only) records the base model, a hash of the text encoder's config, the token, vector count,
steps, the manifest checksum and the medti version. It never holds a DICOM header value. Every safetensors file
medti writes has a canonical header (keys sorted, compact JSON), so identical tensors and metadata give
identical bytes in every process and on every machine (the safetensors library writes its metadata map in an
order that varies between processes), and dvc.lock hashes change only when an embedding does.

Other formats, for use in other tools (``export_embedding`` / ``medti embedding convert``):
- ``diffusers``: ``{token: tensor}`` without medti's metadata, as ``.safetensors`` or ``learned_embeds.bin``;
- ``a1111``: the AUTOMATIC1111 web UI's ``.pt``: ``{"string_to_token": {"*": 265}, "string_to_param":
  {"*": tensor}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"}``; as in the web UI, the token is
  the file's name (``lesion.pt`` is written ``lesion`` in prompts), whatever its ``name`` field says;
- ``kohya``: sd-scripts' ``{"emb_params": tensor}`` safetensors (SD 1.x/2.x).

Pickle-based files (A1111 ``.pt``, diffusers ``.bin``) are read with ``torch.load(weights_only=True)``
only: a pickle that would run code is refused, and nothing in it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

from medti.atomic import atomic_path
from medti.errors import ConfigError, ModelError
from medti.hashing import sha256_of

FORMAT = "medti-ti/1"
FORMATS = ("medti", "diffusers", "a1111", "kohya")
A1111_STAR_TOKEN = 265  # the id of "*" in CLIP's vocabulary, which the web UI writes in string_to_token
_SUFFIXES = {"medti": (".safetensors",), "diffusers": (".safetensors", ".bin"), "a1111": (".pt",),
             "kohya": (".safetensors",)}


@dataclass
class Embedding:
    token: str
    vectors: torch.Tensor  # [num_vectors, dim], float32, on the CPU
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def checksum(self) -> str:
        """sha256 of the token and the vectors' bytes: identifies the embedding whatever the file format."""
        return sha256_of([self.token, self.vectors.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()])


def _tensor(emb: Embedding):
    return emb.vectors.detach().to(torch.float32).contiguous().cpu()


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file of ``tensors`` with its JSON header in a canonical form: keys sorted,
    no spaces, padded with spaces to 8 bytes as the format asks. Same tensors and metadata, same bytes."""
    data = save_bytes(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file`` with a canonical header (:func:`canonical_safetensors`)."""
    with open(path, "wb") as fh:
        fh.write(canonical_safetensors(tensors, metadata))


def save_embedding(emb: Embedding, path: str | os.PathLike) -> Path:
    """Write medti's safetensors file atomically."""
    path = Path(path)
    meta = {str(k): str(v) for k, v in emb.metadata.items() if v is not None}
    meta.setdefault("format", FORMAT)
    meta["token"] = emb.token
    meta["num_vectors"] = str(emb.num_vectors)
    meta["dim"] = str(emb.dim)
    with atomic_path(path) as tmp:
        save_file({emb.token: _tensor(emb)}, str(tmp), metadata=meta)
    return path


def infer_format(path: str | os.PathLike) -> str:
    """The format a file name suggests: .pt -> a1111, .bin -> diffusers, .safetensors -> medti."""
    suffix = Path(path).suffix
    by_suffix = {".pt": "a1111", ".bin": "diffusers", ".safetensors": "medti"}
    if suffix not in by_suffix:
        raise ConfigError(f"{path}: cannot tell the embedding format from '{suffix}' (use .safetensors, .pt or .bin)")
    return by_suffix[suffix]


def export_embedding(emb: Embedding, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``emb`` atomically in ``fmt`` (medti, diffusers, a1111 or kohya; default: from the suffix)."""
    path = Path(path)
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown embedding format (choose from {', '.join(FORMATS)})")
    if path.suffix not in _SUFFIXES[fmt]:
        raise ConfigError(f"{path}: a {fmt} embedding is written as {' or '.join(_SUFFIXES[fmt])}")
    if fmt == "medti":
        return save_embedding(emb, path)
    with atomic_path(path) as tmp:
        if fmt == "diffusers" and path.suffix == ".safetensors":
            save_file({emb.token: _tensor(emb)}, str(tmp))
        elif fmt == "diffusers":
            torch.save({emb.token: _tensor(emb)}, str(tmp))
        elif fmt == "kohya":
            meta = {k: str(v) for k, v in emb.metadata.items() if v is not None and k != "format"}
            meta.update(token=emb.token, num_vectors=str(emb.num_vectors), dim=str(emb.dim))
            save_file({"emb_params": _tensor(emb)}, str(tmp), metadata=meta)
        else:  # a1111
            steps = emb.metadata.get("steps") or emb.metadata.get("step")
            torch.save({
                "string_to_token": {"*": A1111_STAR_TOKEN},
                "string_to_param": {"*": _tensor(emb)},
                "name": emb.token,
                "step": int(steps) if steps and str(steps).isdigit() else 0,
                "sd_checkpoint": None,
                "sd_checkpoint_name": emb.metadata.get("base_model"),
            }, str(tmp))
    return path


def convert_embedding(src: str | os.PathLike, dst: str | os.PathLike, fmt: str | None = None,
                      token: str | None = None) -> Embedding:
    """Read any supported embedding file and write it as ``fmt``; ``token`` renames it."""
    emb = load_embedding(src, token=token)
    export_embedding(emb, dst, fmt)
    return emb


def load_embedding(path: str | os.PathLike, token: str | None = None) -> Embedding:
    """Read any supported embedding file; ``token`` overrides the file's own token name."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: embedding file not found")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
    elif path.suffix in (".pt", ".bin", ".ckpt"):
        state, meta = _read_pickle(path), {}
    else:
        raise ModelError(f"{path}: unknown embedding format '{path.suffix}' (expected .safetensors, .pt or .bin)")
    name, vectors, extra = _parse_state(path, state, meta)
    meta = {**extra, **meta}
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2:
        raise ModelError(f"{path}: embedding tensor has shape {tuple(vectors.shape)}, expected [vectors, dim]")
    if not torch.isfinite(vectors).all():
        raise ModelError(f"{path}: embedding contains NaN or infinite values")
    return Embedding(token=token or name, vectors=vectors.detach().to(torch.float32).cpu(), metadata=meta)


def _read_safetensors(path: Path):
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - a corrupt header raises several types
        raise ModelError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return state, meta


def _read_pickle(path: Path):
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol note adds nothing to the refusal below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{path}: refused: {_unsafe_reason(str(exc))}; medti reads pickles only with "
                         "torch.load(weights_only=True), so nothing in this file was run") from None
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a readable embedding file ({str(exc).splitlines()[0][:160]})") from None


def _unsafe_reason(message: str) -> str:
    """What a refused pickle wanted, from torch's weights_only error (e.g. the global it would call)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"the pickle would call or build {found.group(1)} (it could run code)"
    return "the pickle holds objects other than tensors and plain data (it could run code)"


def _parse_state(path: Path, state, meta: dict):
    """(token name, vectors, metadata found in the payload) of a loaded file."""
    if isinstance(state, torch.Tensor):
        return path.stem, state, {}
    if not isinstance(state, dict):
        raise ModelError(f"{path}: unexpected content ({type(state).__name__}), not an embedding")
    if "string_to_param" in state:  # AUTOMATIC1111
        params = state["string_to_param"]
        if (not isinstance(params, dict) or len(params) != 1
                or not isinstance(next(iter(params.values())), torch.Tensor)):
            raise ModelError(f"{path}: A1111 file whose string_to_param is not one tensor")
        extra = {"source_format": "a1111"}
        if isinstance(state.get("step"), int):
            extra["steps"] = str(state["step"])
        if isinstance(state.get("sd_checkpoint_name"), str):
            extra["base_model"] = state["sd_checkpoint_name"]
        if isinstance(state.get("name"), str) and state["name"] != path.stem:
            extra["a1111_name"] = state["name"]  # the name it was trained under; the web UI ignores it
        return path.stem, next(iter(params.values())), extra  # the web UI's trigger word is the file's name
    if "emb_params" in state:  # kohya sd-scripts (SD 1.x/2.x)
        return str(meta.get("token") or path.stem), state["emb_params"], {"source_format": "kohya"}
    if "clip_l" in state or "clip_g" in state:
        raise ModelError(f"{path}: an SDXL embedding (clip_l/clip_g): only SD 1.x/2.x embeddings are supported")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # medti and diffusers' learned_embeds
        (name, vectors), = tensors.items()
        return name, vectors, {}
    raise ModelError(
        f"{path}: cannot tell which tensor is the embedding (keys: {', '.join(list(state)[:6])}); "
        "expected one tensor, A1111 string_to_param or kohya emb_params"
    )
