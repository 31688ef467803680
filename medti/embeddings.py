"""Embedding files: medti's safetensors format, and reading diffusers, A1111 and kohya files.

medti writes ``<name>.safetensors`` holding exactly one tensor, ``{token: float32[num_vectors, dim]}``, so
diffusers' ``pipeline.load_textual_inversion(path)`` loads it as it is. The safetensors header metadata
(strings only) records the base model, a hash of the text encoder's config, the token, vector count,
steps, the manifest checksum and the medti version. It never holds a DICOM header value.

Pickle-based files (A1111 ``.pt``, diffusers ``learned_embeds.bin``) are read with
``torch.load(weights_only=True)`` only: a pickle that would run code is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medti.errors import ModelError

FORMAT = "medti-ti/1"


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
        h = hashlib.sha256(self.token.encode("utf-8"))
        h.update(self.vectors.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
        return h.hexdigest()


def save_embedding(emb: Embedding, path: str | os.PathLike) -> Path:
    """Write medti's safetensors file atomically."""
    from safetensors.torch import save_file

    from medti.atomic import atomic_path

    path = Path(path)
    meta = {str(k): str(v) for k, v in emb.metadata.items() if v is not None}
    meta.setdefault("format", FORMAT)
    meta["token"] = emb.token
    meta["num_vectors"] = str(emb.num_vectors)
    meta["dim"] = str(emb.dim)
    tensor = emb.vectors.detach().to(torch.float32).contiguous().cpu()
    with atomic_path(path) as tmp:
        save_file({emb.token: tensor}, str(tmp), metadata=meta)
    return path


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
    name, vectors = _parse_state(path, state, meta)
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2:
        raise ModelError(f"{path}: embedding tensor has shape {tuple(vectors.shape)}, expected [vectors, dim]")
    if not torch.isfinite(vectors).all():
        raise ModelError(f"{path}: embedding contains NaN or infinite values")
    return Embedding(token=token or name, vectors=vectors.detach().to(torch.float32).cpu(), metadata=meta)


def _read_safetensors(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - a corrupt header raises several types
        raise ModelError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return state, meta


def _read_pickle(path: Path):
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"{path}: refused: the pickle holds objects other than tensors and plain data "
            f"(it could run code); only weights_only pickles are read ({str(exc).splitlines()[0][:120]})"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a readable embedding file ({str(exc).splitlines()[0][:160]})") from None


def _parse_state(path: Path, state, meta: dict):
    if isinstance(state, torch.Tensor):
        return path.stem, state
    if not isinstance(state, dict):
        raise ModelError(f"{path}: unexpected content ({type(state).__name__}), not an embedding")
    if "string_to_param" in state:  # AUTOMATIC1111
        params = state["string_to_param"]
        if not isinstance(params, dict) or "*" not in params:
            raise ModelError(f"{path}: A1111 file without string_to_param['*']")
        return str(state.get("name") or path.stem), params["*"]
    if "emb_params" in state:  # kohya sd-scripts (SD 1.x/2.x)
        return str(meta.get("token") or path.stem), state["emb_params"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # medti and diffusers' learned_embeds
        (name, vectors), = tensors.items()
        return name, vectors
    raise ModelError(
        f"{path}: cannot tell which tensor is the embedding (keys: {', '.join(list(state)[:6])}); "
        "expected one tensor, A1111 string_to_param or kohya emb_params"
    )


def add_parser(sub) -> None:
    """``medti embedding`` (inspect and convert); its sub-commands are registered by the trainer module."""
    from medti.cliutils import add_common

    p = sub.add_parser("embedding", help="inspect or convert embedding files (medti, diffusers, A1111, kohya)")
    esub = p.add_subparsers(dest="embedding_command", metavar="<action>", required=True)
    info = add_common(esub.add_parser("info", help="print an embedding's token, shape, checksum and metadata"),
                      params=False)
    info.add_argument("path")
    info.set_defaults(func=_info)


def _info(args) -> int:
    import json

    emb = load_embedding(args.path)
    print(json.dumps({"token": emb.token, "num_vectors": emb.num_vectors, "dim": emb.dim,
                      "checksum": emb.checksum(), "bytes": Path(args.path).stat().st_size,
                      "metadata": emb.metadata}, indent=2))
    return 0
