"""``medti bench generate``: images/s and peak memory of medti's batched sampling against diffusers'
StableDiffusionPipeline called one image at a time with its defaults, on the same model and steps.

Each side runs in its own Python process (so peak memory is its own), loads the model, draws one warm-up
image, then times ``--n`` images. medti runs as ``medti generate`` does: all prompts and the unconditional
branch in one UNet batch per step, fp16/bf16 on a GPU, batched VAE decoding. diffusers runs as its
documentation shows: ``StableDiffusionPipeline.from_pretrained(folder)`` (fp32), ``pipe(prompt)`` per image
with its default guidance (7.5), and the same scheduler and number of steps as medti, so both do equal work
per image. The target is medti >= 2x diffusers' images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from medti.bench.system import machine
from medti.config import check_section, schema_default
from medti.errors import ConfigError, MedtiError
from medti.logs import quiet_libraries
from medti.resources import peak_rss_mb

__all__ = ["bench_generate", "machine", "report"]

TARGET = 2.0
PROMPT = "a chest x-ray showing a focal opacity"


def bench_generate(*, base_model: str = "tiny", n: int = 8, steps: int = schema_default("generate.steps"),
                   guidance: float = 7.5, scheduler: str = schema_default("generate.scheduler"), batch_size: int = 8,
                   resolution: int | None = None, device: str = "auto", precision: str = "auto",
                   diffusers_precision: str = "fp32", threads: int | None = None, only: str | None = None) -> dict:
    """Run both sides (or ``only`` one), each in its own process, and return the figures: ``{"config",
    "machine", "results": {side: ...}, "speedup"}`` (``speedup`` when both ran; ``report`` prints them)."""
    if n < 1:
        raise ConfigError("--n must be at least 1")
    check_section("generate", {"steps": steps, "batch_size": batch_size, "scheduler": scheduler,
                               "guidance": guidance, "resolution": resolution},
                  "medti bench generate", names={"steps": "--steps", "batch_size": "--batch-size",
                                                 "scheduler": "--scheduler", "guidance": "--guidance",
                                                 "resolution": "--resolution"})
    config = {"base_model": base_model, "n": n, "steps": steps, "guidance": guidance, "scheduler": scheduler,
              "batch_size": batch_size, "resolution": resolution, "device": device, "precision": precision,
              "diffusers_precision": diffusers_precision, "threads": threads}
    sides = [only] if only else ["medti", "diffusers"]
    results = {side: _run_worker(side, config) for side in sides}
    summary = {"config": config, "machine": machine(), "results": results}
    if len(results) == 2:
        summary["speedup"] = results["medti"]["images_per_s"] / results["diffusers"]["images_per_s"]
    return summary


def _run_worker(side: str, config: dict) -> dict:
    cmd = [sys.executable, "-m", "medti.bench.generate", side, json.dumps(config)]
    # Idle OpenMP threads sleep (both sides alike): spinning ones distort timings on a shared CPU.
    env = os.environ | {"MEDTI_PROGRESS": "0", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MedtiError(f"bench generate: the {side} run failed: {detail}")
    return json.loads(lines[-1])


def report(summary: dict) -> str:
    c, m = summary["config"], summary["machine"]
    first = next(iter(summary["results"].values()))
    lines = [f"generation benchmark: {c['base_model']}, {c['n']} images, {c['steps']} steps, {c['scheduler']}, "
             f"{first['resolution']} px, {first['device']}",
             f"machine: {m['gpu'] or m['cpu']} ({m['cores']} CPU cores), torch {m['torch']}, "
             f"torch threads {first['threads']}",
             f"{'method':<58}{'images/s':>10}{'s/image':>10}{'peak RSS MB':>13}{'peak GPU MB':>13}"]
    for r in summary["results"].values():
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        lines.append(f"{r['label']:<58}{r['images_per_s']:>10.3f}{1 / r['images_per_s']:>10.2f}"
                     f"{r['peak_rss_mb']:>13.0f}{gpu:>13}")
    if "speedup" in summary:
        verdict = "met" if summary["speedup"] >= TARGET else "NOT met"
        lines.append(f"speed-up: {summary['speedup']:.2f}x (target >= {TARGET:g}x: {verdict})")
    return "\n".join(lines)


# -- the two sides, each in its own process -------------------------------------------------------------------
def _worker(side: str, config: dict) -> dict:
    quiet_libraries()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    run = _medti if side == "medti" else _diffusers
    draw, label, device, dtype, resolution = run(config)
    seeds = list(range(int(config["n"])))
    draw([0], 2)  # warm-up: first-call allocations and kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    draw(seeds, int(config["steps"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"label": label, "images": len(seeds), "seconds": seconds, "images_per_s": len(seeds) / seconds,
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "device": f"{device} ({str(dtype).replace('torch.', '')})", "resolution": resolution,
            "threads": torch.get_num_threads()}


# Each side imports only what it runs, so that its process's peak memory is its own.
def _medti(config: dict):
    from medti.generate.jobs import Runtime
    from medti.generate.sampling import Sampler

    model, device, dtype = Runtime(base_model=config["base_model"], device=config["device"],
                                   precision=config["precision"]).load()
    sampler = Sampler(model, device=device, dtype=dtype)
    resolution = int(config["resolution"] or model.resolution)

    def draw(seeds, steps):
        sampler.sample([PROMPT] * len(seeds), seeds, steps=steps, guidance=float(config["guidance"]),
                       scheduler=config["scheduler"], resolution=resolution, batch_size=int(config["batch_size"]))

    return draw, f"medti Sampler (batch {config['batch_size']})", device, dtype, resolution


def _diffusers(config: dict):
    from diffusers import StableDiffusionPipeline

    from medti.generate.schedulers import make_scheduler
    from medti.models.loading import resolve_device, resolve_dtype, resolve_model_spec

    _, folder = resolve_model_spec(config["base_model"])
    device = resolve_device(config["device"])
    dtype = resolve_dtype(config.get("diffusers_precision") or "fp32", device)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder or config["base_model"]), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True,
                                                   torch_dtype=dtype)
    pipe.scheduler = make_scheduler(config["scheduler"], pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    resolution = int(config["resolution"] or pipe.unet.config.sample_size * pipe.vae_scale_factor)

    def draw(seeds, steps):
        for seed in seeds:
            pipe(PROMPT, num_inference_steps=steps, height=resolution, width=resolution,
                 generator=torch.Generator("cpu").manual_seed(seed))

    label = "diffusers StableDiffusionPipeline (1 image per call" + (
        ")" if dtype == torch.float32 else f", {str(dtype).replace('torch.', '')})")
    return draw, label, device, pipe.unet.dtype, resolution


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one side of medti bench generate (internal)")
    parser.add_argument("side", choices=["medti", "diffusers"])
    parser.add_argument("config")
    args = parser.parse_args(argv)
    print(json.dumps(_worker(args.side, json.loads(args.config))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
