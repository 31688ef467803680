"""Training one diagnostic classifier: the protocol of :mod:`medti.classifier`, its checkpoints and outputs.

A fixed number of Adam steps with augmentation (``classifier.augment``: :func:`augment`, a mild scheme, or
:func:`augment_paper`, the paper's), batches in a resumable order
(:class:`BatchOrder`), the validation AUROC every ``eval_every`` steps and the best weights kept (:func:`fit`),
then one test on the held-out real test split (:func:`train_classifier`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medti.atomic import atomic_dir, open_staging, staging_dir, sweep_stale_temporaries, tidy_staging
from medti.checkpoint import CheckpointStore, checkpoint_dir_for, fingerprint
from medti.classifier.data import ExperimentData, condition_counts, load_experiment
from medti.classifier.networks import (
    NetworkSpec,
    build_network,
    check_pretrained,
    legacy_keys,
    place,
    predict,
    standardise,
)
from medti.classifier.outputs import write_outputs
from medti.classifier.settings import ClassifierSettings
from medti.config import condition_variant, project_root, stage
from medti.config import modality as modality_of
from medti.errors import ConfigError, InputError, TrainingError
from medti.evaluate.statistics import auc
from medti.hashing import sha256_of
from medti.logs import progress
from medti.models.loading import resolve_device
from medti.tracking import track

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class ClassifierResult:
    """A trained run: its folder and its metrics.json."""

    out: Path
    metrics: dict


# -- training ------------------------------------------------------------------------------------------------

AUGMENT_LEVELS = ("none", "mild", "paper")


def augment_level(value) -> str:
    """``classifier.augment`` as a level: false/none -> none, true/mild -> mild, paper -> paper."""
    if value is True or value == "mild":
        return "mild"
    if value is False or value in (None, "none"):
        return "none"
    if value == "paper":
        return "paper"
    raise ConfigError(f"classifier.augment: '{value}' is not one of true, false, {', '.join(AUGMENT_LEVELS)}")


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``augment: mild`` (or true, the default): a mild scheme of medti's own, not the paper's (that is
    :func:`augment_paper`): random rotation (+-10 degrees), scale (0.9-1.1), shift (+-5 %), brightness and
    contrast (+-10 %); no flips.

    ``x`` holds float images in [0, 1]; one affine warp per batch (grid_sample), so it costs little.
    """
    n = x.shape[0]

    def uniform(*shape, r):
        return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * r

    angle, scale = uniform(n, r=math.radians(10.0)), 1.0 + uniform(n, r=0.1)
    shift = uniform(n, 2, r=0.1)  # grid coordinates span 2, so 0.1 is 5 % of the image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1.0 + uniform(n, 1, 1, 1, r=0.1).to(x.device)
    brightness = uniform(n, 1, 1, 1, r=0.1).to(x.device)
    return ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


# ``augment: paper``: the paper's heavy augmentation (its list; albumentations' names and, where the paper gives
# none, albumentations' default ranges and probabilities, except channel dropout: 0.2, not 0.5, so a dropped
# sequence or colour stays the exception). Each is drawn independently per image.
PAPER_AUGMENT = {
    "hflip": 0.5,                       # horizontal flip
    "affine": 0.5,                      # rotation and scale together:
    "rotate_degrees": 45.0,             #   uniform in +-45 degrees
    "scale": 0.2,                       #   uniform in 1 +- 0.2
    "distort": 0.5,                     # one of (equally likely):
    "optical_k": 0.3,                   #   optical (barrel / pincushion): r -> r (1 + k r^2), k in +-0.3
    "elastic_sigma": 0.03,              #   elastic: a smooth random displacement field (a 4 x 4 grid of
    "elastic_grid": 4,                  #   N(0, 0.03) offsets, image width 2, upsampled bicubically)
    "gamma": 0.5,                       # gamma in [0.8, 1.2]
    "gamma_range": (0.8, 1.2),
    "noise": 0.5,                       # Gaussian noise, standard deviation in [0.012, 0.028] (albumentations'
    "noise_std": (0.012, 0.028),        #   variance 10-50 on 0-255)
    "channel_dropout": 0.2,             # one channel set to 0
}


def augment_paper(x: torch.Tensor, generator: torch.Generator, p: dict | None = None) -> torch.Tensor:
    """``augment: paper``: the paper's heavy augmentation, in torch only (no torchvision): a horizontal flip,
    rotation (+-45 degrees) and scale (+-20 %), an optical or elastic distortion, gamma, Gaussian noise and
    channel dropout, each with its probability (:data:`PAPER_AUGMENT`; ``p`` overrides some). The geometric
    part is one grid_sample (reflected at the borders); ``x`` holds float images in [0, 1], ``N x C x H x W``.
    """
    p = {**PAPER_AUGMENT, **(p or {})}
    n, c = x.shape[:2]
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    def chance(key):
        return rand(n) < p[key]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * rand(*shape)

    flip = torch.where(chance("hflip"), -1.0, 1.0)
    affine = chance("affine")
    angle = torch.where(affine, uniform(-1.0, 1.0, n) * math.radians(p["rotate_degrees"]), 0.0)
    scale = torch.where(affine, 1.0 + uniform(-1.0, 1.0, n) * p["scale"], 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros(n)
    # output -> input coordinates: rotate and scale, then flip the input's x
    theta = torch.stack([torch.stack([cos * flip, -sin * flip, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [n, c, *x.shape[2:]], align_corners=False)  # n x H x W x 2, on the CPU
    distort = chance("distort")
    optical = distort & (rand(n) < 0.5)
    elastic = distort & ~optical
    k = torch.where(optical, uniform(-1.0, 1.0, n) * p["optical_k"], 0.0).view(n, 1, 1, 1)
    grid = grid * (1.0 + k * (grid ** 2).sum(dim=-1, keepdim=True))
    g = int(p["elastic_grid"])
    field = torch.randn(n, 2, g, g, generator=generator) * p["elastic_sigma"] * elastic.view(n, 1, 1, 1)
    field = F.interpolate(field, size=tuple(x.shape[2:]), mode="bicubic", align_corners=True)
    grid = grid + field.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid.to(dev), mode="bilinear", padding_mode="reflection", align_corners=False)
    lo, hi = p["gamma_range"]
    gamma = torch.where(chance("gamma"), uniform(lo, hi, n), 1.0).view(n, 1, 1, 1).to(dev)
    x = x.clamp(0.0, 1.0) ** gamma
    lo, hi = p["noise_std"]
    std = torch.where(chance("noise"), uniform(lo, hi, n), 0.0).view(n, 1, 1, 1)
    x = x + (torch.randn(x.shape, generator=generator) * std).to(dev)
    drop = chance("channel_dropout")
    which = torch.randint(0, c, (n,), generator=generator)
    keep = torch.ones(n, c)
    keep[drop, which[drop]] = 0.0
    return (x * keep.view(n, c, 1, 1).to(dev)).clamp(0.0, 1.0)


class BatchOrder:
    """Endless shuffled batches of indices: a fresh permutation each epoch, its last partial batch dropped.

    Its position is part of a checkpoint, so a resumed run draws the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm, self.pos = None, 0

    def next(self) -> torch.Tensor:
        if self.n <= self.batch_size:
            return torch.randperm(self.n, generator=self.generator)
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        self.pos += self.batch_size
        return self.perm[self.pos - self.batch_size:self.pos]

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])


def _evaluate(net, split) -> tuple[float, float, np.ndarray]:
    """(AUC, mean cross-entropy, probabilities) on a split; leaves the network in train mode."""
    probs = predict(net, split.images).numpy()
    net.train()
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(probs)), split.labels], 1e-12, None))))
    return auc(split.labels, probs), nll, probs


def fit(net: torch.nn.Module, data: ExperimentData, settings: ClassifierSettings, seed: int, tracker=None,
        store: CheckpointStore | None = None) -> tuple[list[dict], dict, int, float]:
    """Train ``net``; return (history rows, best state_dict, best step, best validation AUC).

    ``store`` (a ``CheckpointStore``, given only when ``settings.checkpoint_every`` is set): resume from its
    checkpoint if it holds one, and save one every ``settings.checkpoint_every`` steps."""
    device = next(net.parameters()).device
    level = augment_level(settings.augment)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    images = data.train.images
    labels = torch.from_numpy(data.train.labels)
    batches = BatchOrder(len(labels), settings.batch_size, generator)
    history, losses = [], []
    best = (-1.0, -math.inf, 0, None)
    done = 0
    state = store.load() if store is not None else None
    if state is not None:
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        batches.load_state_dict(state["batches"])
        history, losses = state["history"], [torch.tensor(v, device=device) for v in state["losses"]]
        best, done = (state["best_auc"], state["best_neg_loss"], state["best_step"], state["best_state"]), state["step"]
        log.info("resuming from the checkpoint at step %d (%s)", done, store.state_path)
        if tracker is not None:  # each MLflow run is complete: the rows of the first attempt too
            for row in history:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
    net.train()
    for step in progress(range(done + 1, settings.steps + 1), total=settings.steps, initial=done,
                         desc="train-classifier"):
        idx = batches.next()
        x = images[idx].to(device).float() / 255.0
        if level == "mild":
            x = augment(x, generator)
        elif level == "paper":
            x = augment_paper(x, generator)
        loss = F.cross_entropy(net(standardise(x)), labels[idx].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.detach())
        if step % settings.eval_every == 0 or step == settings.steps:
            train_loss = float(torch.stack(losses).mean())
            if not math.isfinite(train_loss):
                raise TrainingError(f"classifier: the training loss is {train_loss} at step {step} "
                                    f"(lower classifier.lr, now {settings.lr})")
            losses = []
            val_auc, val_loss, _ = _evaluate(net, data.val)
            history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc})
            if tracker is not None:
                tracker.log_metrics({"train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc}, step=step)
            if (val_auc, -val_loss) > best[:2]:  # the best AUROC; among equal ones, the lowest loss
                best = (val_auc, -val_loss, step, {k: v.detach().clone() for k, v in net.state_dict().items()})
        if store is not None and step % settings.checkpoint_every == 0 and step < settings.steps:
            store.save({"step": step, "net": net.state_dict(), "optimiser": optimiser.state_dict(),
                        "generator": generator.get_state(), "batches": batches.state_dict(), "history": history,
                        "losses": [float(v) for v in losses], "best_auc": best[0], "best_neg_loss": best[1],
                        "best_step": best[2], "best_state": best[3]})
    return history, best[3], best[2], best[0]


# -- API -----------------------------------------------------------------------------------------------------

def train_classifier(real_manifest: PathLike, out: PathLike, *, settings: ClassifierSettings | None = None,
                     synthetic_manifest: PathLike | None = None,
                     real_count: int | None = None, synthetic_count: int | None = 0, seed: int = 0,
                     modality: str | None = None, classes: list[str] | None = None, condition: str | None = None,
                     params: dict | None = None, threads: int | None = None,
                     checkpoint_dir: PathLike | None = None, variant: str | None = None,
                     keep_finished: bool = False) -> ClassifierResult:
    """Train one classifier and write its folder ``out``; see the module docstring for the protocol.

    ``real_count``/``synthetic_count``: None for all, or a count (a class-stratified random subset).
    ``params`` is used for tracking (MLflow run in the project's store) and to find the project root, under
    which checkpoints go unless ``checkpoint_dir`` is given. ``variant``: the embedding variant the synthetic
    images come from (recorded in metrics.json and the tracked run). ``keep_finished``: a finished ``out`` trained
    from the same settings, images, seed and device type is kept as it is (a resumed job of several seeds).
    """
    settings = (settings or ClassifierSettings()).validate()
    out = Path(out)
    sweep_stale_temporaries(out.parent, name=out.name)
    if threads:
        torch.set_num_threads(int(threads))
    setting = f"params.yaml: classifier.conditions.{condition}" if condition else "train-classifier"
    check_pretrained(settings.arch, settings.width, settings.pretrained)  # a missing weights file: before any work
    data = load_experiment(real_manifest, synthetic_manifest, real_count=real_count, synthetic_count=synthetic_count,
                           modality=modality, classes=classes, size=settings.size, seed=seed, setting=setting)
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    spec = NetworkSpec(arch=settings.arch, num_classes=len(data.classes), width=settings.width, size=settings.size,
                       classes=tuple(data.classes))
    name = "/".join(str(p) for p in (modality, condition, f"seed{seed}") if p is not None)
    run_key = _run_key(settings, spec, data, seed, device)
    if keep_finished and (finished := _finished(out, run_key)) is not None:
        log.info("%s: already trained with these settings and images (test AUC %.3f); kept", name,
                 finished["test_auc"])
        return ClassifierResult(out=out, metrics=finished)
    net = place(build_network(spec, pretrained=settings.pretrained), device)
    variant = variant if data.n_synthetic else None
    tags = {"modality": modality, "condition": condition, "seed": seed, "variant": variant}
    inputs = {"real": real_manifest, "synthetic": synthetic_manifest if data.n_synthetic else None}
    store = None
    if 0 < settings.checkpoint_every < settings.steps:
        store = CheckpointStore(checkpoint_dir or checkpoint_dir_for(out, params, "classifier", modality, condition,
                                                                     f"seed{seed}", kind="classifier-"),
                                run_key)
    lock = store.lock() if store is not None else None
    try:
        with track(params, "train-classifier", run_name=name, tags=tags, inputs=inputs) as tracker:
            tracker.log_params({"classifier": settings.to_dict(), "condition": condition, "seed": seed,
                                "modality": modality, "classes": ",".join(data.classes), "n_real": data.n_real,
                                "n_synthetic": data.n_synthetic, "variant": variant})
            started = time.perf_counter()
            history, state, best_step, best_val = fit(net, data, settings, seed, tracker, store)
            seconds = time.perf_counter() - started
            metrics, probs, title = _test(net, state, data, settings, best_step, best_val, seed, name)
            metrics["variant"] = variant
            with atomic_dir(out) as tmp:
                write_outputs(tmp, state, spec, settings, data, history, metrics, probs, title, run_key=run_key)
            tracker.log_metrics({"test_auc": metrics["test_auc"], "best_val_auc": best_val, "best_step": best_step,
                                 "test_accuracy": metrics["test_accuracy"], "train_seconds": seconds})
            for artifact in ("roc.png", "confusion.png", "confusion.csv", "curves.png", "metrics.json", "history.csv"):
                tracker.log_artifact(out / artifact)
        if store is not None:
            store.remove()  # the outputs are in place
    finally:
        if lock is not None:
            lock.release()
    log.info("%s: test AUC %.3f (best validation AUC %.3f at step %d; %d steps in %.1f s)", title,
             metrics["test_auc"], best_val, best_step, settings.steps, seconds)
    return ClassifierResult(out=out, metrics=metrics)


def _finished(out: Path, run_key: str) -> dict | None:
    """metrics.json of ``out`` when it is a finished run of ``run_key``, else None."""
    try:
        recorded = json.loads((out / "model.json").read_text()).get("run_key")
        if recorded == run_key and (out / "model.pt").is_file() and (out / "predictions.csv").is_file():
            return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def _run_key(settings: ClassifierSettings, spec, data, seed: int, device) -> str:
    """What a checkpoint must match to be resumed: the settings that shape the weights, the network, the exact
    training and validation images and labels, the seed and the device type."""
    digest = sha256_of(np.ascontiguousarray(array).tobytes()
                       for split in (data.train, data.val) for array in (split.images.numpy(), split.labels))
    shaping = {k: v for k, v in settings.to_dict().items() if k not in ("checkpoint_every", "device")}
    return fingerprint(shaping, spec.to_dict(), digest, seed, device.type)


def _test(net, state, data, settings, best_step: int, best_val: float, seed: int, name: str):
    """(metrics, test probabilities, title) of the best weights on the held-out test split."""
    net.load_state_dict(state)
    probs = predict(net, data.test.images).numpy()
    metrics = {
        "test_auc": auc(data.test.labels, probs), "best_val_auc": best_val, "best_step": best_step,
        "test_accuracy": float(np.mean(probs.argmax(axis=1) == data.test.labels)),
        "n_real": data.n_real, "n_synthetic": data.n_synthetic, "n_train": len(data.train),
        "n_val": len(data.val), "n_test": len(data.test), "seed": seed, "steps": settings.steps,
    }
    return metrics, probs, name or "classifier"


def train_from_params(params: dict, modality: str, condition: str, seed: int, real_manifest: PathLike,
                      synthetic_manifest: PathLike | None, out: PathLike, threads: int | None = None,
                      checkpoint_dir: PathLike | None = None, keep_finished: bool = False,
                      **overrides) -> ClassifierResult:
    """The pipeline form: settings and the condition's counts from params.yaml (``overrides`` on top).
    ``synthetic_manifest``: a synthetic set's manifest, or the folder of a modality's sets, one per embedding
    variant (``<variant>/manifest.csv``), of which the condition's variant is used."""
    classes = modality_of(params, modality)["classes"]
    real_count, synthetic_count = condition_counts(params, condition)
    variant = condition_variant(params, condition)
    if synthetic_count == 0:
        synthetic_manifest = None  # a real-only condition reads no synthetic set
    elif synthetic_manifest is not None and Path(synthetic_manifest).is_dir():
        synthetic_manifest = Path(synthetic_manifest) / variant / "manifest.csv"
    settings = ClassifierSettings.from_section(stage(params, "classifier", modality), **overrides)
    weights = settings.pretrained
    if isinstance(weights, str) and weights != "imagenet" and not Path(weights).expanduser().is_absolute():
        settings = dataclasses.replace(settings, pretrained=str(project_root(params) / weights))  # params.yaml's folder
    return train_classifier(real_manifest, out, settings=settings, synthetic_manifest=synthetic_manifest,
                            real_count=real_count, synthetic_count=synthetic_count, seed=seed, modality=modality,
                            classes=classes, condition=condition, params=params, threads=threads,
                            checkpoint_dir=checkpoint_dir, variant=variant, keep_finished=keep_finished)


def train_condition(params: dict, modality: str, condition: str, seeds: list[int], real_manifest: PathLike,
                    synthetic_manifest: PathLike | None, out: PathLike, threads: int | None = None,
                    checkpoint_dir: PathLike | None = None, **overrides) -> list[ClassifierResult]:
    """Every seed of one condition in one job: ``out/seed<S>`` for each of ``seeds``, as :func:`train_from_params`
    trains them one by one. One process for all seeds spares each seed the start-up (torch, MLflow: about half of a
    small classifier's job on a CPU). The seeds are trained in a staging folder beside ``out``
    (``<parent>/.medti-partial/<name>``, outside what a workflow manager deletes) and ``out`` appears whole at the
    end; a killed job run again keeps the seeds it finished (same settings and images) and resumes the one it was
    training from its checkpoint."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {','.join(map(str, seeds)) or '(none)'}: give one or more different seeds")
    out = Path(os.path.abspath(out))
    staging = open_staging(staging_dir(out), "unfinished classifier jobs")
    for extra in staging.iterdir():  # seeds of an earlier job with other seeds
        if extra.is_dir() and extra.name not in {f"seed{s}" for s in seeds} and not extra.name.startswith("."):
            shutil.rmtree(extra)
    results = []
    for seed in seeds:
        ckpt = Path(checkpoint_dir) / f"seed{seed}" if checkpoint_dir is not None else None
        results.append(train_from_params(params, modality, condition, seed, real_manifest, synthetic_manifest,
                                         staging / f"seed{seed}", threads=threads, checkpoint_dir=ckpt,
                                         keep_finished=True, **overrides))
    with atomic_dir(out) as tmp:
        for seed in seeds:
            os.replace(staging / f"seed{seed}", tmp / f"seed{seed}")
    shutil.rmtree(staging, ignore_errors=True)
    tidy_staging(staging.parent)
    return [ClassifierResult(out=out / f"seed{s}", metrics=r.metrics) for r, s in zip(results, seeds)]


def load_classifier(folder: PathLike, device: str = "cpu") -> tuple[torch.nn.Module, NetworkSpec]:
    """(network in eval mode, NetworkSpec) of a trained classifier folder; weights read with weights_only."""
    folder = Path(folder)
    for name in ("model.pt", "model.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not a trained classifier ({name} is missing)")
    spec = NetworkSpec.from_dict(json.loads((folder / "model.json").read_text())["network"])
    net = build_network(spec)
    net.load_state_dict(legacy_keys(torch.load(folder / "model.pt", map_location="cpu", weights_only=True)))
    return place(net, device).eval(), spec


