"""``medti train-embedding``: one Textual Inversion embedding, in the pipeline or standalone.

Pipeline: ``--params params.yaml --modality M --class C`` reads the prepared manifest
(``<prepare.out>/M/manifest.csv``, or ``--manifest``) and trains every embedding variant of the class
(``train_embedding.variants``; ``--variant V`` for some), writing ``<train_embedding.out>/M/C/<variant>.safetensors``
(or into ``--out DIR``) with reports in ``<train_embedding.reports>/M/C/<variant>`` (or under ``--report-dir``).
Standalone (to compare with other tools on the same data): ``--base-model M --images DIR --token '<t>'
--init WORD --num-vectors N --resolution R --batch-size B --steps S --lr LR --seed X --out OUT.safetensors``.
Command-line values override params.yaml; params.yaml overrides the schema's defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medti.cliutils import add_common, add_pipeline, params_folder, pick, pipeline_mode
from medti.config import schema_default
from medti.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-embedding", help="train a Textual Inversion embedding (one modality and class, or a folder of images)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    add_pipeline(p, what="the modality (its templates and init words come from params.yaml)")
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--class", dest="class_name", metavar="CLASS", help="pipeline: the class to learn")
    io.add_argument("--manifest", help="pipeline: the prepared manifest (train split, ti_subset rows are used; "
                                       "default: <prepare.out>/<modality>/manifest.csv)")
    io.add_argument("--images", metavar="DIR", help="standalone: a folder of training images (searched recursively)")
    io.add_argument("--token", help="standalone: the placeholder token, e.g. '<my-concept>'")
    io.add_argument("--out", metavar="OUT", help="standalone: the embedding file to write (.safetensors); pipeline: "
                                                 "the class's folder, one <variant>.safetensors each (default: "
                                                 "<train_embedding.out>/<modality>/<class>)")
    io.add_argument("--variant", action="append", default=[], metavar="NAME",
                    help="pipeline: train only this embedding variant (repeatable; default: every one in "
                         "train_embedding.variants)")
    io.add_argument("--report-dir", metavar="DIR",
                    help="metrics.csv, loss.png, validation grids, summary.json (pipeline: one folder per variant "
                         "under <train_embedding.reports>/<modality>/<class>; standalone: <OUT>_report)")
    io.add_argument("--checkpoint-dir", metavar="DIR",
                    help="where checkpoints go (default: .medti/checkpoints/... under the project root); "
                         "a rerun of the same command resumes from it")
    io.add_argument("--base-model", help="tiny | random:<arch> | a local diffusers folder | a hub id (default: tiny)")
    io.add_argument("--allow-download", action="store_true", help="let a hub id be fetched (default: local cache only)")

    m = p.add_argument_group("method")
    m.add_argument("--init", dest="init_words", metavar="WORD", help="word or phrase the vectors start from")
    m.add_argument("--init-method", choices=["word", "zeros", "random"], help="how the vectors start (default: word)")
    m.add_argument("--init-embedding", metavar="FILE", help="start from an existing embedding file instead")
    m.add_argument("--num-vectors", type=int, help="vectors per token (1 to what the context leaves room for)")
    m.add_argument("--template", dest="templates", action="append", metavar="TEXT",
                   help="prompt template with {} for the token (repeatable; default: the modality's, "
                        "or 'a photo of {}')")
    m.add_argument("--resolution", type=int, help="training size in pixels (default: the base model's)")
    m.add_argument("--batch-size", type=int)
    m.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    m.add_argument("--steps", type=int, help="optimiser steps")
    m.add_argument("--lr", type=float, help="learning rate")
    m.add_argument("--lr-scheduler", choices=["constant", "constant_with_warmup", "linear", "cosine"])
    m.add_argument("--warmup-steps", type=int)
    m.add_argument("--max-grad-norm", type=float, help="gradient clipping (0: off)")
    m.add_argument("--min-snr-gamma", type=float, help="min-SNR loss weighting (0: off)")
    m.add_argument("--weight-decay", type=float)
    m.add_argument("--seed", type=int)
    a = p.add_argument_group("augmentation (off by default: anatomy is lateralised)")
    a.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None)
    a.add_argument("--vflip", action=argparse.BooleanOptionalAction, default=None)
    a.add_argument("--rotate-degrees", type=float)
    a.add_argument("--scale", type=float, nargs=2, metavar=("LOW", "HIGH"))
    a.add_argument("--brightness", type=float)
    a.add_argument("--augment-views", type=int, help="augmented views per image, each encoded once")
    r = p.add_argument_group("run")
    r.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: none)")
    r.add_argument("--validation-every", type=int, help="steps between validation grids (0: only at the end)")
    r.add_argument("--validation-images", type=int, help="images per validation grid (0: no grids)")
    r.add_argument("--validation-steps", type=int, help="sampler steps for validation images")
    r.add_argument("--validation-guidance", type=float)
    r.add_argument("--log-every", type=int, help="steps between fetching losses from the device")
    r.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the UNet")
    r.add_argument("--compile-memory-budget", type=float, metavar="FRACTION",
                   help="with --compile: fraction of the activations to keep for the backward pass, the rest "
                        "recomputed (1: all, the default; e.g. 0.3 for much less memory at some speed)")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    p.set_defaults(func=run)


def _overrides(args) -> dict:
    """Method settings given on the command line (None: not given)."""
    return dict(
        init=args.init_method, init_words=args.init_words, num_vectors=args.num_vectors, templates=args.templates,
        resolution=args.resolution, batch_size=args.batch_size, grad_accum=args.grad_accum, steps=args.steps,
        lr=args.lr, lr_scheduler=args.lr_scheduler, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, seed=args.seed, checkpoint_every=args.checkpoint_every,
        validation_every=args.validation_every, validation_images=args.validation_images,
        validation_steps=args.validation_steps, validation_guidance=args.validation_guidance,
        log_every=args.log_every, gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
        compile_memory_budget=args.compile_memory_budget,
        device=args.device, precision=args.precision,
    )


def build_settings(args, params: dict | None, variant: str | None = None):
    """TrainSettings from params.yaml (pipeline mode; a variant's over the section's) or the schema's defaults,
    with the command line on top."""
    from medti.textual_inversion.settings import Augment, TrainSettings

    pipeline = params is not None
    if pipeline:
        base = TrainSettings.from_params(params, args.modality, args.class_name, variant)
    else:
        base = TrainSettings(token=args.token)
    values = base.to_dict()
    values.update({k: v for k, v in _overrides(args).items() if v is not None})
    for name in ("max_grad_norm", "min_snr_gamma"):  # 0 switches clipping / min-SNR weighting off
        if getattr(args, name) is not None:
            values[name] = getattr(args, name) or None
    a = base.augment
    values["augment"] = Augment(
        hflip=pick(args.hflip, a.hflip), vflip=pick(args.vflip, a.vflip),
        rotate_degrees=pick(args.rotate_degrees, a.rotate_degrees), scale=tuple(pick(args.scale, a.scale)),
        brightness=pick(args.brightness, a.brightness), views=pick(args.augment_views, a.views),
    )
    if not pipeline and values["init"] == "word" and not values["init_words"] and not args.init_embedding:
        raise ConfigError("train-embedding: --init WORD is needed "
                          "(or --init-method zeros|random, or --init-embedding FILE)")
    flags = {key: "--" + key.replace("_", "-") for key in values if key != "augment"} | {"init": "--init-method"}
    flags |= {f"augment.{key}": "--" + key.replace("_", "-") for key in ("hflip", "vflip", "rotate_degrees", "scale",
                                                                           "brightness")}
    flags["augment.views"] = "--augment-views"
    return TrainSettings(**values).validate(source="medti train-embedding", names=flags)


def run(args) -> int:
    import json

    from medti.config import variants
    from medti.textual_inversion.job import train_class, train_embedding

    ctx = pipeline_mode(args, "train-embedding")
    params = ctx[0] if ctx else None
    if ctx:
        if not args.class_name:
            raise ConfigError("medti train-embedding: pipeline mode also needs --class (a class of the modality)")
        if args.images or args.token:
            raise ConfigError("medti train-embedding: --images/--token are for standalone use; in pipeline mode the "
                              "images come from the prepared manifest")
        m, c = args.modality, args.class_name
        args.manifest = args.manifest or str(params_folder(params, "prepare.out") / m / "manifest.csv")
        args.out = args.out or str(params_folder(params, "train_embedding.out") / m / c)
        args.report_dir = args.report_dir or str(params_folder(params, "train_embedding.reports") / m / c)
        if Path(args.out).suffix:
            raise ConfigError(f"--out {args.out}: in pipeline mode this is the class's folder (one "
                              "<variant>.safetensors per embedding variant), not a file")
        unknown = [v for v in args.variant if v not in variants(params)]
        if unknown:
            raise ConfigError(f"--variant {unknown[0]}: not one of train_embedding.variants "
                              f"({', '.join(variants(params))})")
    else:
        if args.variant:
            raise ConfigError("medti train-embedding: --variant is for pipeline mode (with --params and --modality)")
        if not (args.images and args.token and args.out):
            raise ConfigError("medti train-embedding: give --params P --modality M --class C (pipeline) "
                              "or --images DIR --token TOKEN --out FILE (standalone)")
        if args.manifest or args.class_name:
            raise ConfigError("medti train-embedding: --manifest/--class are for pipeline mode "
                              "(with --params and --modality)")
    if not ctx and Path(args.out).suffix != ".safetensors":
        raise ConfigError(f"--out {args.out}: the embedding is written as .safetensors "
                          "(convert it afterwards with `medti embedding convert`)")
    names = (args.variant or list(variants(params))) if ctx else [None]
    settings = {v: build_settings(args, params, v) for v in names}  # every variant's checked before any trains
    bm = (params or {}).get("base_model", {})
    common = dict(base_model=pick(args.base_model, bm.get("id"), schema_default("base_model.id")),
                  checkpoint_dir=args.checkpoint_dir,
                  init_embedding=args.init_embedding,
                  local_files_only=not args.allow_download and bm.get("local_files_only", True),
                  revision=bm.get("revision"))
    keys = ("token", "images", "steps", "loss_first", "loss_last", "train_seconds", "embedding_checksum")
    if ctx:
        results = train_class(params, args.modality, args.class_name, args.manifest, args.out, args.report_dir,
                              variant_names=names, settings_for=settings.get, **common)
        print(json.dumps({v: {k: r.stats.get(k) for k in keys} for v, r in results.items()}, indent=2))
    else:
        out = Path(args.out)
        result = train_embedding(args.images, settings[None], output=out, params=params,
                                 report_dir=args.report_dir or out.with_name(f"{out.stem}_report"), **common)
        print(json.dumps({k: result.stats.get(k) for k in keys}, indent=2))
    return 0
