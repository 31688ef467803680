"""Checkpoints of a training run (an embedding, a classifier), written atomically so that a run killed at any
moment resumes.

One file, ``state.pt``, holds what the run needs to continue exactly where it stopped: its trainable
tensors, the optimiser and LR-scheduler states, every random-number state (torch CPU and CUDA, numpy,
Python, and the run's own generator), the step and the metrics so far. It is written to a temporary file and
renamed, so it is always a complete checkpoint; it is read with ``torch.load(weights_only=True)``. A
``fingerprint`` of the inputs and settings that shape the result is stored with it: a run with other inputs
does not resume from it.

The folder also stages a run's report files (validation grids made along the way) until the run finishes,
and holds a lock so two processes never train into the same checkpoint. It lives outside the declared
outputs (``.medti/checkpoints/...`` under the project root by default), so a failed job's checkpoint
survives for the retry; it is removed once the run has written its outputs.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import torch

from medti.atomic import atomic_path, sweep_stale_temporaries, try_lock
from medti.errors import TrainingError
from medti.hashing import json_digest, sha256_hex

log = logging.getLogger(__name__)

FORMAT = "medti-ti-checkpoint/1"  # the name predates the classifier's use of the same format
STATE = "state.pt"
LOCK = "lock"


def fingerprint(*parts) -> str:
    """A hash of JSON-serialisable inputs that define a run's result."""
    return json_digest(parts)


def checkpoint_dir_for(output: str | os.PathLike, params: dict | None, *names, kind: str = "") -> Path:
    """``.medti/checkpoints/<names...>`` (a pipeline job, e.g. modality and class) or, when a name is missing,
    ``.medti/checkpoints/standalone/<kind><output name>-<hash of its path>``, under the project root: outside
    the declared outputs, so a failed job's checkpoint survives its retry."""
    from medti.config import project_root

    base = project_root(params) / ".medti" / "checkpoints"
    if names and all(names):
        return base.joinpath(*map(str, names))
    out = Path(output).resolve()
    return base / "standalone" / f"{kind}{out.stem}-{sha256_hex(str(out))[:10]}"


def capture_rng(generator: torch.Generator) -> dict:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "generator": generator.get_state(),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_tuples(state["python"]))
    generator.set_state(state["generator"])


def _tuples(obj):
    return tuple(_tuples(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


class CheckpointStore:
    """The checkpoint folder of one training run; ``run_key`` (a ``fingerprint``) is saved with every
    checkpoint, and only a checkpoint with the same key is resumed."""

    def __init__(self, folder: str | Path, run_key: str):
        self.folder = Path(folder)
        self.run_key = run_key

    @property
    def state_path(self) -> Path:
        return self.folder / STATE

    @property
    def staging(self) -> Path:
        """Report files made during the run (validation grids), kept across a resume."""
        return self.folder / "report"

    def lock(self):
        """Exclusive use of this folder; a second process training the same run fails at once."""
        lock = try_lock(self.folder / LOCK)
        if lock is None:
            raise TrainingError(f"{self.folder}: another medti process is training this run now "
                                "(its checkpoint folder is locked)")
        return lock

    def load(self) -> dict | None:
        """The last checkpoint of this same run, or None (no checkpoint, or one from other inputs)."""
        sweep_stale_temporaries(self.folder)
        if not self.state_path.is_file():
            return None
        try:
            state = torch.load(str(self.state_path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means starting over
            log.warning("ignoring unreadable checkpoint %s (%s): starting over", self.state_path,
                        str(exc).splitlines()[0][:120])
            return None
        if state.get("format") != FORMAT or state.get("fingerprint") != self.run_key:
            log.warning("checkpoint %s belongs to a run with other settings, base model or images: starting over",
                        self.state_path)
            self.discard()
            return None
        return state

    def saved_step(self) -> int | None:
        """The step of the checkpoint on disk (None when there is none or it cannot be read)."""
        if not self.state_path.is_file():
            return None
        try:
            return int(torch.load(str(self.state_path), map_location="cpu", weights_only=True)["step"])
        except Exception:  # noqa: BLE001 - only used to describe the checkpoint in a message
            return None

    def save(self, state: dict) -> None:
        state = dict(state, format=FORMAT, fingerprint=self.run_key)
        with atomic_path(self.state_path) as tmp:
            torch.save(state, str(tmp))

    def discard(self) -> None:
        """Remove the checkpoint and staged report (the lock file stays while it is held)."""
        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def remove(self) -> None:
        """After a finished run: remove what this store wrote, and the folder if that leaves it empty (it may be
        a folder the user named, holding other files)."""
        self.discard()
        (self.folder / LOCK).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass
