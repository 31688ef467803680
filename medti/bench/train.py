"""``medti bench train``: steps/s, images/s and peak memory of embedding training, medti against a baseline.

The baseline does what diffusers' examples/textual_inversion/textual_inversion.py does, written here from
its description (no code copied): the placeholder's rows are added to the tokenizer and the whole input
embedding matrix is resized and trained (AdamW state for every row), the rest frozen; after each step every
other row is restored from a copy; every batch goes through the VAE encoder again; the text encoder runs
once per image. To be kind to the baseline, its images are decoded once up front (the script reads and
resizes them in its data loader on every step). ``--diffusers-script PATH`` runs the real script instead
(inside :mod:`medti.bench.diffusers_script`).

Each (model, method) runs in a fresh subprocess, so that one's memory never counts against another.
Peak memory is the CUDA maximum allocated on a GPU; on a CPU it is the peak resident set size of the
training phase (the model is built, then the peak is reset through /proc/self/clear_refs before training
set-up), printed with the resident size at that start (runtime, weights and images). Models are
random-weight architectures built from their configs (no download): tiny (64 px), small (mid-size, 256 px),
sd15 and sd2 (full SD 1.5 / SD 2.0-base, 512 px; opt-in on a CPU, where e.g. ``--resolution 256 --steps 3``
keeps them to minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from PIL import Image

from medti.bench.diffusers_script import SCRIPT_REPORT, SCRIPT_THREADS, SCRIPT_WARMUP
from medti.bench.system import machine_description, reset_rss_peak
from medti.config import check_section, schema_default
from medti.errors import ConfigError, MedtiError
from medti.models.architectures import get_architecture
from medti.models.loading import build_random_model, resolve_device, resolve_dtype, tiny_model_path
from medti.models.token_embedding import vector_tokens
from medti.resources import peak_rss_mb
from medti.textual_inversion.settings import TrainSettings
from medti.textual_inversion.trainer import EmbeddingTrainer
from medti.toydata import draw_shapes

ARCHS = ("tiny", "small", "sd15", "sd2")
CPU_DEFAULT, GPU_DEFAULT = ("tiny", "small"), ARCHS
METHODS = ("medti", "baseline")
TOKEN, INIT_WORD = "<bench>", "disc"


def bench_train(*, models: list[str] | None = None, resolution: int | None = None, steps: int = 20, warmup: int = 3,
                batch_size: int = schema_default("train_embedding.batch_size"),
                num_vectors: int = schema_default("train_embedding.num_vectors"), num_images: int = 16,
                repeats: int = 1, baseline: bool = True, diffusers_script: str | None = None, script_args: str = "",
                gradient_checkpointing: bool = False, compile: bool = False,
                compile_memory_budget: float = schema_default("train_embedding.compile_memory_budget"),
                channels_last: bool = False, device: str = "auto", precision: str = "auto",
                threads: int | None = None) -> dict:
    """Measure medti's training against the baseline (or ``diffusers_script``; neither without ``baseline``) on
    each of ``models`` (default: tiny and small on a CPU, all on a GPU), each (model, method) ``repeats`` times
    in a fresh subprocess, the fastest run counting; print a row per result and return ``{"machine",
    "settings", "results"}``."""
    check_section("train_embedding", {"batch_size": batch_size, "num_vectors": num_vectors, "resolution": resolution,
                                      "compile_memory_budget": compile_memory_budget}, "medti bench train",
                  names={"batch_size": "--batch-size", "num_vectors": "--num-vectors", "resolution": "--resolution",
                         "compile_memory_budget": "--compile-memory-budget"})
    torch_device = resolve_device(device)
    models = models or list(GPU_DEFAULT if torch_device.type == "cuda" else CPU_DEFAULT)
    methods = ["medti"] + ([] if not baseline else ["script" if diffusers_script else "baseline"])
    job = {"resolution": resolution, "steps": steps, "warmup": warmup, "batch_size": batch_size,
           "num_vectors": num_vectors, "images": num_images, "gradient_checkpointing": gradient_checkpointing,
           "compile": compile, "compile_memory_budget": compile_memory_budget, "channels_last": channels_last,
           "device": device, "precision": precision, "threads": threads, "diffusers_script": diffusers_script,
           "script_args": script_args}
    machine = machine_description(torch_device)
    if torch_device.type != "cuda" and {"sd15", "sd2"} & set(models) and not resolution:
        print("note: SD 1.5/2.0 at 512 px on a CPU take minutes per step; --resolution 256 --steps 3 is quicker",
              flush=True)
    print(f"medti bench train on {machine}; batch {batch_size}, {num_vectors} vectors, {num_images} "
          f"images, {steps} timed steps after {warmup}; threads {threads or torch.get_num_threads()}", flush=True)
    results = []
    for arch in models:
        best: dict[str, dict] = {}
        for _ in range(repeats):
            for method in methods:
                r = measure_in_subprocess({**job, "arch": arch, "method": method})
                if method not in best or r["steps_per_s"] > best[method]["steps_per_s"]:
                    best[method] = r
        for method in methods:
            results.append(best[method])
            print(format_row(best[method]), flush=True)
        if len(methods) == 2:
            m, b = best["medti"], best[methods[1]]
            ratio = m["peak_mb"] / b["peak_mb"] if b.get("peak_mb") else float("nan")
            print(f"  {arch}: medti speed-up x{m['steps_per_s'] / b['steps_per_s']:.2f}, "
                  f"peak memory ratio {ratio:.2f} (medti / baseline)", flush=True)
    return {"machine": machine, "settings": job, "results": results}


def format_row(r: dict) -> str:
    mem = f"peak {r['peak_mb']:8.1f} MB" if r.get("peak_mb") is not None else "peak      n/a   "
    start = f" (at start {r['start_mb']:.0f} MB)" if r.get("start_mb") is not None else ""
    return (f"{r['arch']:>6} {r['resolution']:4d}px {r['method']:>8}: {r['steps_per_s']:8.3f} steps/s "
            f"{r['images_per_s']:8.2f} images/s  {mem}{start}  set-up {r['setup_s']:.1f} s")


def measure_in_subprocess(job: dict) -> dict:
    cmd = [sys.executable, "-m", "medti.bench.train", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MedtiError(f"bench train: {job['arch']}/{job['method']} failed: {tail}")
    return json.loads(lines[-1])


# -- the worker: one model, one method, in its own process -----------------------------------------------------

def worker(job: dict) -> dict:
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = resolve_device(job["device"])
    dtype = resolve_dtype(job["precision"], device)
    if job["method"] == "script":
        return run_diffusers_script(job, device)
    model = build_random_model(job["arch"], device=device, dtype=dtype if job["method"] == "medti" else None)
    resolution = job["resolution"] or model.resolution
    images = bench_images(job["images"], resolution)
    before = reset_peak_memory(device)
    t0 = time.perf_counter()
    if job["method"] == "medti":
        trainer = MedtiRunner(model, job, images, device, dtype)
    else:
        trainer = BaselineRunner(model, job, images, device, dtype)
    setup_s = time.perf_counter() - t0
    for _ in range(job["warmup"]):
        trainer.step()
    trainer.sync()
    t0 = time.perf_counter()
    for _ in range(job["steps"]):
        trainer.step()
    trainer.sync()
    elapsed = time.perf_counter() - t0
    return {"arch": job["arch"], "method": job["method"], "resolution": resolution, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "batch_size": job["batch_size"],
            "num_vectors": job["num_vectors"], "steps": job["steps"], "setup_s": round(setup_s, 2),
            "steps_per_s": job["steps"] / elapsed, "images_per_s": job["steps"] * job["batch_size"] / elapsed,
            **peak_memory(device, before)}


def bench_images(n: int, resolution: int):
    """``n`` uint8 RGB images ``[n, 3, R, R]``: alternating discs and rings."""
    grey = np.concatenate([draw_shapes("disc", (n + 1) // 2, 0, resolution),
                           draw_shapes("ring", n // 2, 1, resolution)])
    return torch.from_numpy(grey).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def reset_peak_memory(device) -> dict:
    """Start measuring the training phase's peak; return what the process held and peaked at before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return {"start_mb": round(torch.cuda.memory_allocated(device) / 2**20, 1)}
    before = {"build_peak_mb": round(peak_rss_mb(), 1)}
    start = reset_rss_peak()
    if start is not None:
        before["start_mb"] = start
    return before


def peak_memory(device, before: dict) -> dict:
    if device.type == "cuda":
        return {"peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), **before,
                "memory": "CUDA max allocated during training"}
    reset = "start_mb" in before
    return {"peak_mb": round(peak_rss_mb(), 1), **before,
            "memory": "peak RSS during training" if reset else "peak RSS of the process"}


class MedtiRunner:
    """medti's trainer, exactly as ``medti train-embedding`` runs it (without files or tracking)."""

    def __init__(self, model, job, images, device, dtype):
        settings = TrainSettings(token=TOKEN, init_words=INIT_WORD, num_vectors=job["num_vectors"],
                                 steps=job["warmup"] + job["steps"], batch_size=job["batch_size"],
                                 validation_images=0, gradient_checkpointing=job["gradient_checkpointing"],
                                 compile=bool(job.get("compile")),
                                 compile_memory_budget=float(job.get("compile_memory_budget") or 1.0),
                                 warmup_steps=0).validate()
        if job.get("channels_last"):
            model.unet.to(memory_format=torch.channels_last)
        self.trainer = EmbeddingTrainer(model, settings, images, device, dtype)
        self.device = device

    def step(self) -> None:
        self.trainer.train_step()

    def sync(self) -> None:
        self.trainer.flush()  # fetches the losses: waits for the device


class BaselineRunner:
    """The diffusers example's way (see the module docstring), with the same model, images and settings.

    As in the example under mixed precision, the UNet and VAE are in the half dtype on a GPU while the text
    encoder, whose embedding matrix trains, stays fp32 under autocast."""

    def __init__(self, model, job, images, device, dtype):
        self.device, self.dtype = device, dtype
        self.batch_size = job["batch_size"]
        self.tokenizer, self.text_encoder = model.tokenizer, model.text_encoder
        self.unet, self.vae, self.scheduler = model.unet, model.vae, model.noise_scheduler
        self.unet.to(dtype=dtype)
        self.vae.to(dtype=dtype)
        names = vector_tokens(TOKEN, job["num_vectors"])
        self.tokenizer.add_tokens(names)
        new_ids = self.tokenizer.convert_tokens_to_ids(names)
        init_id = self.tokenizer(INIT_WORD, add_special_tokens=False).input_ids[0]
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        table = self.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[new_ids] = table[init_id].clone()
        table.requires_grad_(True)
        self.text_encoder.train()
        self.optimizer = torch.optim.AdamW([table], lr=5e-3, weight_decay=1e-2)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        self.original = table.detach().clone()
        self.keep = torch.ones(len(self.tokenizer), dtype=torch.bool, device=device)
        self.keep[new_ids] = False
        prompt = "a photo of " + " ".join(names)
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        self.input_ids = ids.expand(self.batch_size, -1).to(device)
        self.pixels = images.float().div(127.5).sub(1.0)
        self.generator = torch.Generator().manual_seed(0)
        self.step_index = 0

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def step(self) -> None:
        n = self.pixels.shape[0]
        pick = torch.arange(self.step_index * self.batch_size, (self.step_index + 1) * self.batch_size) % n
        self.step_index += 1
        pixels = self.pixels[pick].to(self.device, self.dtype)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        with self._autocast():
            hidden = self.text_encoder(self.input_ids)[0].to(self.dtype)
            pred = self.unet(noisy, t, hidden).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            table = self.text_encoder.get_input_embeddings().weight
            table[self.keep] = self.original[self.keep]
        self._last_loss = loss.detach()

    def sync(self) -> None:
        float(self._last_loss)


def run_diffusers_script(job: dict, device) -> dict:
    """Run the real example script once for ``warmup + steps`` steps on the same architecture and images.

    The script runs inside :func:`medti.bench.diffusers_script.run_script`, which stamps the start of every
    UNet forward pass (one per training step; the script waits for each step's loss, so host stamps follow
    the device) and reports steps/s over the steps after the warm-up, and the CUDA peak, at exit. Start-up and
    model loading stay out of the rate. On a CPU peak memory is the child's peak RSS."""
    if not Path(job["diffusers_script"]).is_file():
        raise ConfigError(f"--diffusers-script {job['diffusers_script']}: no such file")
    resolution = job["resolution"] or get_architecture(job["arch"]).resolution
    folder = tiny_model_path(job["arch"])  # built into medti's cache once (on the GPU where there is one)
    with tempfile.TemporaryDirectory(prefix="medti-bench-") as tmp:
        data = Path(tmp) / "images"
        data.mkdir()
        for i, img in enumerate(bench_images(job["images"], resolution)):
            Image.fromarray(img[0].numpy()).save(data / f"{i:03d}.png")
        steps = job["warmup"] + job["steps"]
        cmd = [sys.executable, "-m", "medti.bench.diffusers_script", job["diffusers_script"],
               "--pretrained_model_name_or_path", str(folder),
               "--train_data_dir", str(data), "--placeholder_token", TOKEN, "--initializer_token", INIT_WORD,
               "--num_vectors", str(job["num_vectors"]), "--resolution", str(resolution),
               "--train_batch_size", str(job["batch_size"]), "--max_train_steps", str(steps),
               "--learning_rate", "5e-3", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
               "--output_dir", str(Path(tmp) / "out"), "--seed", "0",
               "--save_steps", "1000000", "--checkpointing_steps", "1000000",
               *(["--mixed_precision", "fp16"] if device.type == "cuda" else []), *job["script_args"].split()]
        env = os.environ | {SCRIPT_WARMUP: str(job["warmup"]), SCRIPT_THREADS: str(job.get("threads") or "")}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise MedtiError(f"{job['diffusers_script']} failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    reports = [json.loads(line.split(" ", 1)[1]) for line in proc.stderr.splitlines() if line.startswith(SCRIPT_REPORT)]
    if not reports or not reports[-1].get("steps_per_s"):
        raise MedtiError(f"{job['diffusers_script']}: no timed UNet steps seen (did it train {steps} steps?)")
    r = reports[-1]
    start = {}
    if device.type == "cuda":
        peak, memory = r.get("cuda_peak_mb"), "CUDA max allocated by the script"
    elif r.get("rss_peak_mb"):
        peak, memory = r["rss_peak_mb"], "peak RSS of the script from its first training step"
        start = {"start_mb": r["rss_start_mb"]}
    else:
        peak, memory = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "peak RSS of the script"
    return {"arch": job["arch"], "method": "script", "resolution": resolution, "device": str(device),
            "batch_size": job["batch_size"], "num_vectors": job["num_vectors"], "steps": r["timed_steps"],
            "setup_s": round(wall - r["timed_steps"] / r["steps_per_s"], 2), "steps_per_s": r["steps_per_s"],
            "images_per_s": r["steps_per_s"] * job["batch_size"],
            "peak_mb": round(peak, 1) if peak is not None else None, "memory": memory, **start}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))), flush=True)
