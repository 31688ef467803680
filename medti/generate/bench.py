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
import platform
import subprocess
import sys
import time

TARGET = 2.0
PROMPT = "a chest x-ray showing a focal opacity"


def add_bench_parser(bsub) -> None:
    from medti.cliutils import add_common

    p = add_common(bsub.add_parser(
        "generate", help="images/s and peak memory: medti's batched sampling vs diffusers one image at a time",
        description=__doc__.split("\n\n")[0]), params=False)
    p.add_argument("--base-model", default="tiny", help="tiny, random:<small|sd15|sd2>, a local folder or a cached hub id")
    p.add_argument("--n", type=int, default=8, help="images each side draws (after one warm-up image)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5, help="medti's guidance (diffusers' default is 7.5)")
    p.add_argument("--scheduler", default="dpmsolver++", help="both sides use this scheduler")
    p.add_argument("--batch-size", type=int, default=8, help="medti's images per UNet call")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="medti's precision (auto: bf16/fp16 on GPU, fp32 on CPU); diffusers keeps its fp32 default")
    p.add_argument("--diffusers-precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="diffusers' weights (default fp32, its own default; fp16 gives a stricter comparison on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in both processes")
    p.add_argument("--only", choices=["medti", "diffusers"], help="run one side only")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from medti.errors import ConfigError

    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        raise ConfigError("--n, --steps and --batch-size must be at least 1")
    config = {k: getattr(args, k) for k in ("base_model", "n", "steps", "guidance", "scheduler", "batch_size",
                                            "resolution", "device", "precision", "diffusers_precision", "threads")}
    sides = [args.only] if args.only else ["medti", "diffusers"]
    results = {side: _run_worker(side, config) for side in sides}
    summary = {"config": config, "machine": machine(), "results": results}
    if len(results) == 2:
        summary["speedup"] = results["medti"]["images_per_s"] / results["diffusers"]["images_per_s"]
    print(report(summary))
    if args.json:
        from medti.atomic import write_json

        write_json(args.json, summary)
    return 0


def _run_worker(side: str, config: dict) -> dict:
    from medti.errors import MedtiError

    cmd = [sys.executable, "-m", "medti.generate.bench", side, json.dumps(config)]
    # Idle OpenMP threads sleep (both sides alike): spinning ones distort timings on a shared CPU.
    env = os.environ | {"MEDTI_PROGRESS": "0", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MedtiError(f"bench generate: the {side} run failed: {detail}")
    return json.loads(lines[-1])


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


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
    import torch

    from medti.bench import peak_rss_mb
    from medti.logs import quiet_libraries

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
    import torch
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
