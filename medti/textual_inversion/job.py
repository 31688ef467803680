"""One embedding-training job: inputs in, embedding file and report out, resumable, tracked.

``train_embedding`` is the Python API behind both forms of ``medti train-embedding``: the pipeline form
(params.yaml + a prepared manifest) and the standalone form (a folder of images). It checkpoints every
``checkpoint_every`` steps and resumes a killed run from its last checkpoint; outputs appear atomically
only when training has finished, and the checkpoint is then removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medti.checkpoint import CheckpointStore, checkpoint_dir_for, fingerprint
from medti.config import schema_default
from medti.embeddings import Embedding, save_embedding
from medti.errors import TrainingError
from medti.textual_inversion import run_outputs
from medti.textual_inversion.settings import TrainSettings

if TYPE_CHECKING:
    from medti.models.loading import BaseModel

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    embedding: Embedding
    stats: dict = field(default_factory=dict)
    output: Path | None = None
    report_dir: Path | None = None
    checkpoint: object | None = None  # the CheckpointStore kept with keep_checkpoint (the caller removes it)


def default_checkpoint_dir(output: str | os.PathLike, params: dict | None = None, modality: str | None = None,
                           class_name: str | None = None, variant: str | None = None) -> Path:
    """``.medti/checkpoints/<modality>/<class>[/<variant>]`` (pipeline) or
    ``.medti/checkpoints/standalone/<name>-<hash>`` under the project root: outside the declared outputs, so a
    failed job's checkpoint survives its retry."""
    names = (modality, class_name) + ((variant,) if variant else ())
    return checkpoint_dir_for(output, params, *names)


def _model_label(model) -> str:
    """The base model as recorded in files: a hub id or spec as given, a local folder by its name only."""
    spec = str(model.model_id)
    return Path(spec).name if os.sep in spec or spec.startswith((".", "~")) else spec


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from medti.resources import peak_rss_mb

    return peak_rss_mb()


def train_embedding(images: str | os.PathLike | Sequence[str | os.PathLike], settings: TrainSettings, *,
                    base_model: str | os.PathLike | BaseModel = schema_default("base_model.id"),
                    output: str | os.PathLike | None = None,
                    report_dir: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None,
                    params: dict | None = None, manifest: str | os.PathLike | None = None,
                    modality: str | None = None, class_name: str | None = None,
                    init_embedding: str | os.PathLike | None = None, local_files_only: bool = True,
                    revision: str | None = None, variant: str | None = None,
                    keep_checkpoint: bool = False) -> TrainResult:
    """Train a Textual Inversion embedding and return it with run statistics.

    ``images``: a folder or a list of image files. ``base_model``: a spec (``tiny``, ``random:<arch>``, a
    local diffusers folder, a hub id) or an already loaded ``BaseModel`` (which gains the placeholder and
    loses its VAE encoder). ``output`` (``.safetensors``) and ``report_dir`` are written atomically when
    given. ``checkpoint_dir`` defaults to one derived from ``output`` (no checkpoints without either).
    ``init_embedding``: start from an existing embedding file instead of ``settings.init``. ``variant``: the
    embedding variant's name (recorded; its own checkpoints). ``keep_checkpoint``: leave the final checkpoint for
    the caller to remove (``TrainResult.checkpoint``), so a job training several variants resumes the finished
    ones at once if a later one fails.
    """
    from medti import __version__
    from medti.embeddings import load_embedding
    from medti.logs import progress
    from medti.models.loading import RANDOM_WARNING, BaseModel, load_base_model, resolve_device, resolve_dtype
    from medti.textual_inversion.data import check_image_count, images_checksum, list_image_folder, load_images
    from medti.textual_inversion.trainer import EmbeddingTrainer, NonFiniteLoss
    from medti.tracking import track

    settings.validate()
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision, device)
    if isinstance(base_model, BaseModel):
        model = base_model
    else:
        model = load_base_model(str(base_model), device=device, dtype=dtype, local_files_only=local_files_only,
                                revision=revision)
    model.to(device, dtype)

    source = str(images) if isinstance(images, (str, os.PathLike)) else (str(manifest) if manifest else "images")
    paths = list_image_folder(images) if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
    check_image_count(paths, source)
    data_checksum = images_checksum(paths)
    resolution = settings.resolution or model.resolution
    pixels = load_images(paths, resolution)

    init_vectors, init_checksum = None, None
    if init_embedding is not None:
        start = load_embedding(init_embedding)
        if start.dim != model.embedding_dim:
            from medti.errors import ModelError

            raise ModelError(f"{init_embedding}: embedding width {start.dim} does not match base model "
                             f"'{model.model_id}' (text encoder width {model.embedding_dim}): it was trained "
                             "for another base model")
        settings = replace(settings, num_vectors=start.num_vectors)  # the caller's stay as given
        init_vectors, init_checksum = start.vectors, start.checksum()

    trainer = EmbeddingTrainer(model, settings, pixels, device, dtype, init_vectors=init_vectors)
    if model.random_weights:
        log.warning("training on a random base model: the embedding and its sample images carry no medical meaning")
    log.info("training %s: %d images x %d view(s) at %d px, %d vectors x %d, %d steps of batch %d on %s (%s)",
             settings.token, trainer.num_images, trainer.num_views, resolution, settings.num_vectors,
             model.embedding_dim, settings.steps, settings.batch_size, device, str(dtype).replace("torch.", ""))

    run_key = fingerprint(settings.result_key(), str(model.model_id), model.text_encoder_hash(),
                          model.unet.config.get("block_out_channels"), data_checksum, init_checksum,
                          device.type, str(dtype))
    if checkpoint_dir is None and output is not None:
        checkpoint_dir = default_checkpoint_dir(output, params, modality, class_name, variant)
    store = CheckpointStore(checkpoint_dir, run_key) if checkpoint_dir is not None else None
    lock = store.lock() if store is not None else None
    scratch = None
    try:
        resumed_from = 0
        if store is not None:
            state = store.load()
            if state is not None:
                trainer.load_state_dict(state)
                resumed_from = trainer.step
                log.info("resuming from the checkpoint at step %d (%s)", resumed_from, store.state_path)
            staging = store.staging
        else:
            staging = Path(scratch := tempfile.mkdtemp(prefix="medti-ti-"))
        staging.mkdir(parents=True, exist_ok=True)

        tags = {"modality": modality, "class": class_name, "base_model": _model_label(model),
                "token": settings.token, "random_base_model": model.random_weights}
        run_name = f"train-embedding {modality}/{class_name}" if modality else f"train-embedding {settings.token}"
        with track(params, "train-embedding", run_name=run_name, tags=tags,
                   inputs={"manifest": manifest} if manifest else None) as tracker:
            tracker.log_params({**settings.to_dict(), "base_model": _model_label(model), "images": len(paths),
                                "resolution": resolution, "device": str(device), "dtype": str(dtype),
                                "text_encoder_hash": model.text_encoder_hash()})
            if model.random_weights:
                tracker.set_tags({"note": RANDOM_WARNING.format(model.model_id)})
            real = pixels[: settings.validation_images]

            def validate(step: int, name: str) -> Path | None:
                if settings.validation_images == 0:
                    return None
                path = staging / name
                if not path.exists():  # a resumed run keeps the grids made before the interruption
                    samples = trainer.samples(settings.validation_images, settings.seed,
                                              settings.validation_steps, settings.validation_guidance)
                    run_outputs.validation_grid(real, samples, path, settings.templates[0].format(settings.token),
                                           step, model.random_weights)
                    tracker.log_artifact(path, "validation")
                return path

            bar = progress(total=settings.steps, initial=trainer.step, desc=f"train {settings.token}", unit="step")
            tracked = 0  # a resumed run logs the rows of its first attempt too: each MLflow run is complete

            def log_new_metrics() -> None:
                nonlocal tracked
                for row in trainer.metrics[tracked:]:
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
                if len(trainer.metrics) > tracked:
                    bar.set_postfix(loss=f"{trainer.metrics[-1]['loss']:.4f}", refresh=False)
                tracked = len(trainer.metrics)

            try:
                while trainer.step < settings.steps:
                    trainer.train_step()
                    step = trainer.step
                    bar.update(1)
                    if store is not None and settings.checkpoint_every and step % settings.checkpoint_every == 0 \
                            and step < settings.steps:
                        store.save(trainer.state_dict())
                    log_new_metrics()
                    if settings.validation_every and step % settings.validation_every == 0 and step < settings.steps:
                        validate(step, f"validation_step{step}.png")
                trainer.flush()
                log_new_metrics()
                vectors = trainer.learned_vectors()
                if keep_checkpoint and store is not None and resumed_from < settings.steps:
                    store.save(trainer.state_dict())
            except NonFiniteLoss as exc:
                last = store.saved_step() if store is not None else None
                kept = (f"the last good checkpoint (step {last}, {store.state_path}) is kept" if last is not None
                        else "no checkpoint was written before it")
                raise TrainingError(
                    f"{settings.token}: {exc}: training stopped and wrote nothing; {kept}. The same settings "
                    "fail the same way: lower lr or set max_grad_norm (changed settings start a new run)"
                ) from None
            finally:
                bar.close()
            validate(settings.steps, "validation_final.png")

            metadata = {
                "base_model": _model_label(model), "text_encoder_hash": model.text_encoder_hash(),
                "steps": str(settings.steps), "images": str(len(paths)), "images_checksum": data_checksum,
                "init": settings.init if init_embedding is None else "embedding",
                "init_words": settings.init_words if settings.init == "word" and init_embedding is None else "",
                "resolution": str(resolution), "seed": str(settings.seed), "lr": str(settings.lr),
                "batch_size": str(settings.batch_size), "random_base_model": str(model.random_weights).lower(),
                "medti_version": __version__,
            }
            # no manifest checksum: the manifest holds salted subject ids, so it differs between clones;
            # images_checksum (their contents) already says what the embedding learnt from
            if modality:
                metadata.update({"modality": modality, "class": class_name})
            if variant:
                metadata["variant"] = variant
            embedding = Embedding(token=settings.token, vectors=vectors, metadata=metadata)
            stats = {
                "token": settings.token, "modality": modality, "class": class_name, "variant": variant,
                "base_model": _model_label(model), "random_base_model": model.random_weights,
                "note": RANDOM_WARNING.format(model.model_id) if model.random_weights else None,
                "images": len(paths), "views": trainer.num_views, "resolution": resolution,
                "steps": settings.steps, "resumed_from_step": resumed_from,
                "train_seconds": round(trainer.elapsed_s, 3),
                "images_per_s": round(settings.steps * settings.batch_size * settings.grad_accum
                                      / max(trainer.elapsed_s, 1e-9), 3),
                **run_outputs.loss_summary(trainer.metrics),
                "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                "peak_memory_mb": round(_peak_memory_mb(device), 1),
                "latent_cache_mb": round(trainer.latents.nbytes / 2**20, 3),
                "embedding_checksum": embedding.checksum(), "medti_version": __version__,
                "settings": settings.to_dict(),
            }
            if output is not None:
                save_embedding(embedding, output)
                stats["embedding_bytes"] = Path(output).stat().st_size
                tracker.log_artifact(output, "embedding")
            if report_dir is not None:
                _write_report(Path(report_dir), trainer.metrics, staging, stats, settings, model.random_weights)
                tracker.log_artifact(report_dir)
            tracker.log_metrics({k: stats[k] for k in ("loss_first", "loss_last", "train_seconds") if k in stats},
                                step=settings.steps)
    finally:
        if lock is not None:
            lock.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if store is not None and not keep_checkpoint:
        store.remove()
    log.info("%s: loss %.4f -> %.4f over %d steps (%.1f s)%s", settings.token, stats.get("loss_first", float("nan")),
             stats.get("loss_last", float("nan")), settings.steps, trainer.elapsed_s,
             f"; wrote {output}" if output is not None else "")
    return TrainResult(embedding=embedding, stats=stats, output=Path(output) if output else None,
                       report_dir=Path(report_dir) if report_dir else None,
                       checkpoint=store if keep_checkpoint else None)


def _write_report(report_dir: Path, metrics: list[dict], staging: Path, stats: dict, settings: TrainSettings,
                  random_weights: bool) -> None:
    from medti.atomic import atomic_dir, write_json

    with atomic_dir(report_dir) as tmp:
        run_outputs.write_metrics_csv(metrics, tmp / "metrics.csv")
        title = f"{settings.token}: training loss" + (f"\n({run_outputs.RANDOM_NOTE})" if random_weights else "")
        run_outputs.loss_figure(metrics, tmp / "loss.png", title)
        for grid in sorted(staging.glob("validation_*.png")):
            shutil.copy2(grid, tmp / grid.name)
        write_json(tmp / "summary.json", stats)


def train_from_params(params: dict, modality: str, class_name: str, manifest: str | os.PathLike,
                      output: str | os.PathLike | None, report_dir: str | os.PathLike | None,
                      settings: TrainSettings | None = None, base_model: str | None = None,
                      variant: str | None = None, **kwargs) -> TrainResult:
    """The pipeline form for one embedding: settings from params.yaml (unless given; a ``variant``'s steps and
    vectors over the section's), images from the prepared manifest's TI subset (train split, ``ti_subset``
    true; a variant's ``images`` of them); ``kwargs`` go to ``train_embedding``."""
    from medti.config import variants
    from medti.errors import InputError
    from medti.textual_inversion.data import manifest_images

    settings = settings or TrainSettings.from_params(params, modality, class_name, variant)
    images = variants(params)[variant]["images"] if variant is not None else None
    paths = manifest_images(manifest, modality, class_name, images=images,
                            seed=int(params.get("seed", 0)) + zlib.crc32(f"{modality}/{class_name}".encode()))
    if not paths:
        raise InputError(f"{manifest}: no training images for {modality}/{class_name} "
                         "(rows with split=train and ti_subset=true): an embedding needs at least 2")
    if images is not None and len(paths) < images:
        log.warning("%s/%s: variant '%s' asks for %d images, the embedding subset holds %d: it trains on those "
                    "(prepare.ti_per_class sets the subset)", modality, class_name, variant, images, len(paths))
    bm = params["base_model"]
    kwargs.setdefault("local_files_only", bm["local_files_only"])
    kwargs.setdefault("revision", bm["revision"])
    return train_embedding(paths, settings, base_model=base_model or bm["id"], output=output,
                           report_dir=report_dir, params=params, manifest=manifest, modality=modality,
                           class_name=class_name, variant=variant, **kwargs)


def train_class(params: dict, modality: str, class_name: str, manifest: str | os.PathLike,
                out_dir: str | os.PathLike, report_dir: str | os.PathLike, variant_names: list[str] | None = None,
                settings_for=None, **kwargs) -> dict[str, TrainResult]:
    """The pipeline job: every embedding variant of one class, ``<out_dir>/<variant>.safetensors`` with its
    report in ``<report_dir>/<variant>``. ``settings_for(variant)`` gives each variant's settings (None: from
    params). Each finished variant keeps its final checkpoint until all are done, so a rerun after a failure
    resumes the finished ones at once; one class per job because DVC's templating cannot cross the classes
    mapping with the variants (README, "Embedding variants")."""
    from medti.config import variants

    names = variant_names or list(variants(params))
    checkpoints = kwargs.pop("checkpoint_dir", None)
    results: dict[str, TrainResult] = {}
    for name in names:
        settings = settings_for(name) if settings_for is not None else None
        results[name] = train_from_params(
            params, modality, class_name, manifest, Path(out_dir) / f"{name}.safetensors", Path(report_dir) / name,
            settings=settings, variant=name, keep_checkpoint=True,
            checkpoint_dir=Path(checkpoints) / name if checkpoints else None, **kwargs)
    for result in results.values():
        if result.checkpoint is not None:
            result.checkpoint.remove()
    return results
