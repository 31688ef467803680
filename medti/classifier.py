"""``medti train-classifier``: a diagnostic classifier trained on real, real + synthetic or synthetic images.

Pipeline: ``--params params.yaml --modality M --condition K --seed S --real data/prepared/M/manifest.csv
--synthetic data/synthetic/M/manifest.csv --out results/classifier/M/K/seedS``. The condition's counts come
from params.yaml ``classifier.conditions``. Standalone: leave out ``--params``/``--condition`` and give
``--real-count``/``--synthetic-count`` (defaults: all real images, and all synthetic ones when
``--synthetic`` is given).

The protocol follows the paper: a fixed number of Adam steps (lr 1e-4, batch 32) with augmentation (small
random rotations, scaling, shifts, brightness and contrast changes; no flips, anatomy is lateralised), the
validation AUROC every ``eval_every`` steps, the weights of the best validation AUROC kept, and the test AUC
measured once, on the held-out real test split only. Everything random (initial weights, the subset drawn
for a count, batches, augmentation) follows ``--seed``, so a run on the CPU is reproducible. A checkpoint every
``checkpoint_every`` steps (``.medti/checkpoints/classifier/...``) lets a killed run, started again with the
same command, resume and end with the same weights as an uninterrupted one.

Outputs (the folder appears whole or not at all): model.pt (the best weights, a plain state_dict),
model.json (how to rebuild the network), metrics.json, predictions.csv (test images: id, label, class
probabilities), history.csv and curves.png (training loss and validation AUROC), roc.png, confusion.png and
confusion.csv (test set).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.cliutils import add_common, load_params_arg
from medti.errors import ConfigError

log = logging.getLogger(__name__)

ARCH_CHOICES = ("resnet10", "resnet18", "resnet34", "densenet121")


@dataclass
class ClassifierSettings:
    """How a classifier is trained (params.yaml ``classifier``; the defaults are the schema's)."""

    arch: str = "resnet18"
    width: float = 1.0          # channel width multiplier (1.0: the standard network)
    pretrained: bool = False    # ImageNet weights (needs a network once)
    size: int = 64              # images are resized to size x size
    steps: int = 1000
    lr: float = 1.0e-4
    batch_size: int = 32
    eval_every: int = 50
    checkpoint_every: int = 250  # 0: no checkpoints
    augment: bool = True
    device: str = "auto"

    @classmethod
    def from_section(cls, section: dict, **overrides) -> "ClassifierSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in section.items() if k in names}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def validate(self, source: str = "classifier") -> "ClassifierSettings":
        if self.arch not in ARCH_CHOICES:
            raise ConfigError(f"{source}.arch: '{self.arch}' is not one of {', '.join(ARCH_CHOICES)}")
        for name in ("steps", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{source}.{name}: must be at least 1, got {getattr(self, name)}")
        if int(self.checkpoint_every) < 0:
            raise ConfigError(f"{source}.checkpoint_every: must be 0 (none) or more, got {self.checkpoint_every}")
        if self.size < 32:
            raise ConfigError(f"{source}.size: must be at least 32 px (the networks downsample 32-fold), got {self.size}")
        if not self.lr > 0 or not self.width > 0:
            raise ConfigError(f"{source}: lr and width must be positive (got lr {self.lr}, width {self.width})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ClassifierResult:
    out: Path
    metrics: dict


# -- training ------------------------------------------------------------------------------------------------

def _augment(x, generator):
    """Random rotation (+-10 degrees), scale (0.9-1.1), shift (+-5 %), brightness and contrast (+-10 %).

    ``x`` holds float images in [0, 1]; one affine warp per batch (grid_sample), so it costs little.
    """
    import torch
    import torch.nn.functional as F

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


class BatchOrder:
    """Endless shuffled batches of indices: a fresh permutation each epoch, its last partial batch dropped.

    Its position is part of a checkpoint, so a resumed run draws the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm, self.pos = None, 0

    def next(self):
        import torch

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
    from medti.cnn import predict
    from medti.stats import auc

    probs = predict(net, split.images).numpy()
    net.train()
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(probs)), split.labels], 1e-12, None))))
    return auc(split.labels, probs), nll, probs


def fit(net, data, settings: ClassifierSettings, seed: int, tracker=None, store=None):
    """Train ``net``; return (history rows, best state_dict, best step, best validation AUC).

    ``store`` (a ``CheckpointStore``, given only when ``settings.checkpoint_every`` is set): resume from its
    checkpoint if it holds one, and save one every ``settings.checkpoint_every`` steps."""
    import torch
    import torch.nn.functional as F

    from medti.cnn import standardise
    from medti.logs import progress

    device = next(net.parameters()).device
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
        if settings.augment:
            x = _augment(x, generator)
        loss = F.cross_entropy(net(standardise(x)), labels[idx].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.detach())
        if step % settings.eval_every == 0 or step == settings.steps:
            train_loss = float(torch.stack(losses).mean())
            if not math.isfinite(train_loss):
                from medti.errors import TrainingError

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


# -- outputs -------------------------------------------------------------------------------------------------

def _curves_figure(history: list[dict], path: Path, title: str) -> None:
    from medti.atomic import save_figure
    from medti.figures import _use_agg

    plt = _use_agg()
    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.plot(steps, [h["train_loss"] for h in history], marker="o", label="training")
    a.plot(steps, [h["val_loss"] for h in history], marker="o", label="validation")
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy")
    a.legend(fontsize=7)
    b.plot(steps, [h["val_auc"] for h in history], marker="o", color="C2")
    best = max(history, key=lambda h: (h["val_auc"], -h["val_loss"]))
    b.axvline(best["step"], color="grey", linestyle="--", linewidth=0.8)
    b.set_xlabel("step")
    b.set_ylabel("validation AUROC")
    b.set_ylim(0, 1.02)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def roc_figure(labels, probs, classes: list[str], path: Path, title: str) -> None:
    """Test ROC curve(s): the positive class for a binary task, one-vs-rest per class otherwise."""
    from medti.figures import curves
    from medti.stats import auc, roc_curve

    ks = [1] if len(classes) == 2 else range(len(classes))
    series = {}
    for k in ks:
        fpr, tpr = roc_curve(labels == k, probs[:, k])
        onevsrest = auc(labels == k, probs[:, k])
        series[f"{classes[k]} (AUC {onevsrest:.3f})"] = (fpr, tpr)
    curves(series, path, xlabel="false positive rate", ylabel="true positive rate", title=title, diagonal=True)


def confusion(labels, probs, k: int) -> np.ndarray:
    """Counts: rows true class, columns predicted class (the most probable)."""
    out = np.zeros((k, k), dtype=int)
    np.add.at(out, (labels, probs.argmax(axis=1)), 1)
    return out


def _write_outputs(folder: Path, state, spec, settings, data, history, metrics, probs, title) -> None:
    import pandas as pd
    import torch

    from medti.atomic import atomic_path, write_json, write_text
    from medti.figures import confusion_matrices

    with atomic_path(folder / "model.pt") as tmp:
        torch.save(state, tmp)
    write_json(folder / "model.json", {"network": spec.to_dict(), "settings": settings.to_dict()})
    write_json(folder / "metrics.json", metrics)
    pred = pd.DataFrame({"id": data.test.ids, "label": data.test.labels,
                         "class": [data.classes[k] for k in data.test.labels]})
    for k, name in enumerate(data.classes):
        pred[f"p_{name}"] = probs[:, k]
    write_text(folder / "predictions.csv", pred.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    write_text(folder / "history.csv", pd.DataFrame(history).to_csv(index=False, float_format="%.6g",
                                                                   lineterminator="\n"))
    matrix = confusion(data.test.labels, probs, len(data.classes))
    write_text(folder / "confusion.csv", pd.DataFrame(matrix, index=data.classes, columns=data.classes)
               .to_csv(index_label="true\\predicted", lineterminator="\n"))
    _curves_figure(history, folder / "curves.png", title)
    roc_figure(data.test.labels, probs, data.classes, folder / "roc.png", f"{title}: test ROC")
    confusion_matrices({f"{title}: test set": matrix}, data.classes, folder / "confusion.png")


# -- API -----------------------------------------------------------------------------------------------------

def train_classifier(real_manifest, out, *, settings: ClassifierSettings | None = None, synthetic_manifest=None,
                     real_count: int | None = None, synthetic_count: int | None = 0, seed: int = 0,
                     modality: str | None = None, classes: list[str] | None = None, condition: str | None = None,
                     params: dict | None = None, threads: int | None = None,
                     checkpoint_dir=None) -> ClassifierResult:
    """Train one classifier and write its folder ``out``; see the module docstring for the protocol.

    ``real_count``/``synthetic_count``: None for all, or a count (a class-stratified random subset).
    ``params`` is used for tracking (MLflow run in the project's store) and to find the project root, under
    which checkpoints go unless ``checkpoint_dir`` is given.
    """
    import torch

    from medti.atomic import atomic_dir, sweep_stale_temporaries
    from medti.checkpoint import CheckpointStore, checkpoint_dir_for
    from medti.classifier_data import load_experiment
    from medti.cnn import NetworkSpec, build_network
    from medti.models.loading import resolve_device
    from medti.tracking import track

    settings = (settings or ClassifierSettings()).validate()
    out = Path(out)
    sweep_stale_temporaries(out.parent, name=out.name)
    if threads:
        torch.set_num_threads(int(threads))
    setting = f"params.yaml: classifier.conditions.{condition}" if condition else "train-classifier"
    data = load_experiment(real_manifest, synthetic_manifest, real_count=real_count, synthetic_count=synthetic_count,
                           modality=modality, classes=classes, size=settings.size, seed=seed, setting=setting)
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    spec = NetworkSpec(arch=settings.arch, num_classes=len(data.classes), width=settings.width, size=settings.size,
                       classes=tuple(data.classes))
    net = build_network(spec, pretrained=settings.pretrained).to(device)
    name = "/".join(str(p) for p in (modality, condition, f"seed{seed}") if p is not None)
    tags = {"modality": modality, "condition": condition, "seed": seed}
    inputs = {"real": real_manifest, "synthetic": synthetic_manifest if data.n_synthetic else None}
    store = None
    if 0 < settings.checkpoint_every < settings.steps:
        store = CheckpointStore(checkpoint_dir or checkpoint_dir_for(out, params, "classifier", modality, condition,
                                                                     f"seed{seed}", kind="classifier-"),
                                _run_key(settings, spec, data, seed, device))
    lock = store.lock() if store is not None else None
    try:
        with track(params, "train-classifier", run_name=name, tags=tags, inputs=inputs) as tracker:
            tracker.log_params({"classifier": settings.to_dict(), "condition": condition, "seed": seed,
                                "modality": modality, "classes": ",".join(data.classes), "n_real": data.n_real,
                                "n_synthetic": data.n_synthetic})
            started = time.perf_counter()
            history, state, best_step, best_val = fit(net, data, settings, seed, tracker, store)
            seconds = time.perf_counter() - started
            metrics, probs, title = _test(net, state, data, settings, best_step, best_val, seed, name)
            with atomic_dir(out) as tmp:
                _write_outputs(tmp, state, spec, settings, data, history, metrics, probs, title)
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


def _run_key(settings: ClassifierSettings, spec, data, seed: int, device) -> str:
    """What a checkpoint must match to be resumed: the settings that shape the weights, the network, the exact
    training and validation images and labels, the seed and the device type."""
    import hashlib

    from medti.checkpoint import fingerprint

    digest = hashlib.sha256()
    for split in (data.train, data.val):
        digest.update(np.ascontiguousarray(split.images.numpy()).tobytes())
        digest.update(np.ascontiguousarray(split.labels).tobytes())
    shaping = {k: v for k, v in settings.to_dict().items() if k not in ("checkpoint_every", "device")}
    return fingerprint(shaping, spec.to_dict(), digest.hexdigest(), seed, device.type)


def _test(net, state, data, settings, best_step: int, best_val: float, seed: int, name: str):
    """(metrics, test probabilities, title) of the best weights on the held-out test split."""
    from medti.cnn import predict
    from medti.stats import auc

    net.load_state_dict(state)
    probs = predict(net, data.test.images).numpy()
    metrics = {
        "test_auc": auc(data.test.labels, probs), "best_val_auc": best_val, "best_step": best_step,
        "test_accuracy": float(np.mean(probs.argmax(axis=1) == data.test.labels)),
        "n_real": data.n_real, "n_synthetic": data.n_synthetic, "n_train": len(data.train),
        "n_val": len(data.val), "n_test": len(data.test), "seed": seed, "steps": settings.steps,
    }
    return metrics, probs, name or "classifier"


def train_from_params(params: dict, modality: str, condition: str, seed: int, real_manifest, synthetic_manifest,
                      out, threads: int | None = None, checkpoint_dir=None, **overrides) -> ClassifierResult:
    """The pipeline form: settings and the condition's counts from params.yaml (``overrides`` on top)."""
    from medti.classifier_data import condition_counts
    from medti.config import modality as modality_of, stage

    classes = modality_of(params, modality)["classes"]
    real_count, synthetic_count = condition_counts(params, condition)
    settings = ClassifierSettings.from_section(stage(params, "classifier", modality), **overrides)
    return train_classifier(real_manifest, out, settings=settings, synthetic_manifest=synthetic_manifest,
                            real_count=real_count, synthetic_count=synthetic_count, seed=seed, modality=modality,
                            classes=classes, condition=condition, params=params, threads=threads,
                            checkpoint_dir=checkpoint_dir)


def load_classifier(folder, device: str = "cpu"):
    """(network in eval mode, NetworkSpec) of a trained classifier folder; weights read with weights_only."""
    import json

    import torch

    from medti.cnn import NetworkSpec, build_network
    from medti.errors import InputError

    folder = Path(folder)
    for name in ("model.pt", "model.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not a trained classifier ({name} is missing)")
    spec = NetworkSpec.from_dict(json.loads((folder / "model.json").read_text())["network"])
    net = build_network(spec)
    net.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return net.to(device).eval(), spec


# -- CLI -----------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a diagnostic classifier (real / real+synthetic / synthetic)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--real", required=True, metavar="MANIFEST", help="the prepared (real) manifest: train/val/test")
    io.add_argument("--synthetic", metavar="MANIFEST", help="the synthetic manifest (medti generate)")
    io.add_argument("--out", required=True, metavar="DIR", help="the run's output folder")
    io.add_argument("--modality", help="the modality (its classes come from params.yaml)")
    io.add_argument("--condition", help="pipeline: a condition of params.yaml classifier.conditions")
    io.add_argument("--seed", type=int, default=0, help="seed of everything random in the run (default 0)")
    io.add_argument("--real-count", metavar="N|all", help="real training images to use (default: all)")
    io.add_argument("--synthetic-count", metavar="N|all",
                    help="synthetic images to add (default: all when --synthetic is given, else 0)")
    m = p.add_argument_group("training (default: params.yaml classifier, else the schema's defaults)")
    m.add_argument("--arch", choices=ARCH_CHOICES)
    m.add_argument("--width", type=float, help="channel width multiplier")
    m.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from ImageNet weights (downloaded once)")
    m.add_argument("--size", type=int, help="image size the network sees (pixels)")
    m.add_argument("--steps", type=int)
    m.add_argument("--lr", type=float)
    m.add_argument("--batch-size", type=int)
    m.add_argument("--eval-every", type=int, help="steps between validation AUROC measurements")
    m.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: none); a killed run started "
                                                         "again with the same command resumes from the last one")
    io.add_argument("--checkpoint-dir", metavar="DIR",
                    help="where checkpoints go (default: .medti/checkpoints/classifier/... under the project root)")
    m.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    m.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    m.add_argument("--threads", type=int, help="CPU threads (default: torch's, i.e. OMP_NUM_THREADS when set)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medti.classifier_data import parse_count
    from medti.config import stage

    params = load_params_arg(args)
    overrides = dict(arch=args.arch, width=args.width, pretrained=args.pretrained, size=args.size, steps=args.steps,
                     lr=args.lr, batch_size=args.batch_size, eval_every=args.eval_every,
                     checkpoint_every=args.checkpoint_every, augment=args.augment, device=args.device)
    if args.condition:
        if params is None or not args.modality:
            raise ConfigError("train-classifier: --condition needs --params and --modality (conditions live in "
                              "params.yaml)")
        if args.real_count is not None or args.synthetic_count is not None:
            raise ConfigError("train-classifier: --real-count/--synthetic-count replace a condition; "
                              "give them or --condition, not both")
        train_from_params(params, args.modality, args.condition, args.seed, args.real, args.synthetic, args.out,
                          threads=args.threads, checkpoint_dir=args.checkpoint_dir, **overrides)
        return 0
    section = stage(params, "classifier", args.modality) if params else {}
    classes = params["modalities"][args.modality]["classes"] if params and args.modality else None
    real_count = parse_count(args.real_count, "--real-count")
    default_synthetic = "all" if args.synthetic else 0
    synthetic_count = parse_count(args.synthetic_count if args.synthetic_count is not None else default_synthetic,
                                  "--synthetic-count")
    train_classifier(args.real, args.out, settings=ClassifierSettings.from_section(section, **overrides),
                     synthetic_manifest=args.synthetic, real_count=real_count, synthetic_count=synthetic_count,
                     seed=args.seed, modality=args.modality, classes=classes, params=params, threads=args.threads,
                     checkpoint_dir=args.checkpoint_dir)
    return 0
