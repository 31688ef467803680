"""Running diffusers' examples/textual_inversion/textual_inversion.py as ``medti bench train``'s baseline:
``python -m medti.bench.diffusers_script SCRIPT ARGS...`` runs the script unchanged, as ``python SCRIPT ARGS...``
would, with every UNet forward pass stamped, and reports the steps/s after the warm-up and the peak memory
(one JSON line on stderr) at exit. Where torchvision is missing, its one transform is stood in for.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import importlib.util
import json
import os
import runpy
import sys
import time
import types

import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from medti.bench.system import proc_status_mb, reset_rss_peak

SCRIPT_REPORT, SCRIPT_WARMUP, SCRIPT_THREADS = "MEDTI_SCRIPT_REPORT", "MEDTI_SCRIPT_WARMUP", "MEDTI_SCRIPT_THREADS"


def _torchvision_stand_in() -> None:
    """Where torchvision is missing (a CPU machine of this project: its wheels pull a CUDA torch), give the
    script the one thing it takes from it, ``transforms.RandomHorizontalFlip`` on a PIL image."""

    class RandomHorizontalFlip:
        def __init__(self, p: float = 0.5):
            self.p = p

        def __call__(self, img):  # one draw from torch's generator per image, as torchvision's does
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img

    transforms = types.ModuleType("torchvision.transforms")
    transforms.RandomHorizontalFlip = RandomHorizontalFlip
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    for module in (torchvision, transforms):  # so that find_spec() of them answers, as for real modules
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms})


def run_script(script: str, argv: list[str]) -> None:
    """Run ``script`` as ``python script argv...`` would, stamping each UNet forward pass; at exit print the
    steps/s after ``$MEDTI_SCRIPT_WARMUP`` passes and the CUDA peak (on a CPU: the peak RSS from the first
    training step on, as medti's side measures its training phase) to stderr (one JSON line)."""
    if os.environ.get(SCRIPT_THREADS):
        torch.set_num_threads(int(os.environ[SCRIPT_THREADS]))
    if importlib.util.find_spec("torchvision") is None:
        _torchvision_stand_in()
    stamps: list[float] = []
    rss: dict[str, float] = {}
    forward = UNet2DConditionModel.forward

    def stamped_forward(self, *args, **kwargs):
        if not stamps and not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            start = reset_rss_peak()  # the models are loaded: from here on, the training phase's peak
            if start is not None:
                rss["rss_start_mb"] = start
        stamps.append(time.perf_counter())
        return forward(self, *args, **kwargs)

    def report() -> None:
        warmup = int(os.environ.get(SCRIPT_WARMUP, "0"))
        out = {"unet_calls": len(stamps), "timed_steps": 0, "steps_per_s": None, "cuda_peak_mb": None}
        if len(stamps) > warmup + 1:  # the last stamp opens the last step: time up to it, count the steps between
            out["timed_steps"] = len(stamps) - 1 - warmup
            out["steps_per_s"] = out["timed_steps"] / (stamps[-1] - stamps[warmup])
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        elif rss:
            out.update(rss, rss_peak_mb=round(proc_status_mb("VmHWM"), 1))
        print(f"{SCRIPT_REPORT} {json.dumps(out)}", file=sys.stderr, flush=True)

    UNet2DConditionModel.forward = stamped_forward
    atexit.register(report)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    run_script(sys.argv[1], sys.argv[2:])
