"""``medti bench train``: its runners train what they claim (medti its vectors, the diffusers-style baseline the
whole resized vocabulary), diffusers' script is timed after its warm-up, and the command prints its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from medti.bench.diffusers_script import SCRIPT_REPORT, SCRIPT_THREADS, SCRIPT_WARMUP
from medti.bench.train import BaselineRunner, MedtiRunner, bench_images, format_row
from medti.models.loading import build_random_model


def test_bench_runners_train_what_they_claim():
    """medti's runner trains only its vectors; the diffusers-style baseline trains the whole (resized)
    vocabulary matrix and restores every row but the placeholder's after each step."""
    job = dict(arch="tiny", steps=2, warmup=0, batch_size=2, num_vectors=3, gradient_checkpointing=False)
    images = bench_images(4, 32)
    assert images.shape == (4, 3, 32, 32)

    base = build_random_model("tiny")
    rows = base.text_encoder.get_input_embeddings().weight.detach().clone()
    runner = BaselineRunner(base, job, images, torch.device("cpu"), torch.float32)
    table = base.text_encoder.get_input_embeddings().weight
    assert table.shape[0] == rows.shape[0] + 3 and table.requires_grad
    start = table.detach().clone()
    runner.step()
    runner.sync()
    assert torch.equal(table.detach()[: rows.shape[0]], rows)  # the vocabulary restored
    assert not torch.equal(table.detach()[rows.shape[0]:], start[rows.shape[0]:])  # the new rows learned
    assert base.vae.encoder is not None  # it encodes every batch again

    medti = MedtiRunner(build_random_model("tiny"), job, images, torch.device("cpu"), torch.float32)
    before = medti.trainer.vectors.detach().clone()
    medti.step()
    medti.sync()
    assert not torch.equal(before, medti.trainer.vectors.detach())
    line = format_row({"arch": "tiny", "resolution": 32, "method": "medti", "steps_per_s": 3.0, "images_per_s": 6.0,
                       "peak_mb": 600.0, "start_mb": 550.0, "setup_s": 0.4})
    assert "3.000 steps/s" in line and "peak    600.0 MB" in line


SCRIPT = """
import sys, time, torch
from PIL import Image
from torchvision import transforms  # the script's one use of torchvision (stood in for where it is missing)
import importlib.util
assert importlib.util.find_spec("torchvision") is not None  # libraries probing for it get an answer
from diffusers import UNet2DConditionModel
assert sys.argv[1:] == ["--max_train_steps", "6"], sys.argv
assert torch.get_num_threads() == 1
img = Image.new("L", (2, 1))
img.putpixel((0, 0), 255)
assert transforms.RandomHorizontalFlip(p=1.0)(img).getpixel((1, 0)) == 255
unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
held = []
for _ in range(int(sys.argv[2])):
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 77, 32))
    if not held:  # "training" memory, after the first step: the CPU peak must count it
        held.append(torch.ones(64 * 2**20 // 4))
    time.sleep(0.1)
"""


def test_script_runner_times_the_steps_after_the_warmup(tmp_path):
    """``--diffusers-script`` runs the real example inside a wrapper that stamps each UNet pass (one per
    training step): the rate covers only the steps after the warm-up, not start-up or model loading."""
    script = tmp_path / "fake_train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "medti.bench.diffusers_script", str(script), "--max_train_steps", "6"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, SCRIPT_WARMUP: "2", SCRIPT_THREADS: "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(SCRIPT_REPORT)]
    report = json.loads(lines[-1].split(" ", 1)[1])
    assert report["unet_calls"] == 6 and report["timed_steps"] == 3
    assert 1.0 < report["steps_per_s"] < 10.0  # each step sleeps 0.1 s
    if not torch.cuda.is_available():  # the peak RSS from the first step on: the 64 MB held after it, not start-up
        assert 60 < report["rss_peak_mb"] - report["rss_start_mb"] < 200


@pytest.mark.slow
def test_bench_train_cli_prints_figures():
    proc = subprocess.run([sys.executable, "-m", "medti.cli", "bench", "train", "--models", "tiny", "--steps", "2",
                           "--warmup", "1", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "medti:" in proc.stdout and "baseline:" in proc.stdout and "speed-up x" in proc.stdout
