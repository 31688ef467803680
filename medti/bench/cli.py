"""``medti bench ingest|train|generate``: the parsers, and thin runs that call :mod:`medti.bench`'s modules.

A setting has the flag it has in the stage commands (``--batch-size``, ``--compile/--no-compile``...);
``--json FILE`` also writes the printed figures as JSON. Nothing heavy is imported until a benchmark runs.
"""

from __future__ import annotations

import argparse

from medti.cliutils import add_common
from medti.config import schema_default

TRAIN_ARCHS = ("tiny", "small", "sd15", "sd2")
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: ingestion, embedding training, generation (prints figures)")
    bsub = p.add_subparsers(dest="bench_command", metavar="<benchmark>", required=True)
    _add_ingest(bsub)
    _add_train(bsub)
    _add_generate(bsub)


def _add_ingest(bsub) -> None:
    p = add_common(bsub.add_parser(
        "ingest", help="files/s and peak memory of ingesting many small DICOMs",
        description="files/s and peak memory of ingestion (medti prepare, run as its own process) on many small "
                    "DICOMs written to a temporary folder."))
    p.add_argument("--files", type=int, default=10_000, help="DICOM files to write and ingest (default 10000)")
    p.add_argument("--dicom-size", type=int, default=64, help="rows and columns of each DICOM (default 64)")
    p.add_argument("--size", type=int, default=schema_default("prepare.size"),
                   help="output PNG size, as prepare.size (default: prepare.size, %(default)s)")
    p.add_argument("--per-subject", type=int, default=4, help="images per subject (default 4)")
    p.add_argument("--workers", type=int, default=None, help="ingestion worker processes (default: all cores)")
    p.add_argument("--dir", default=None, help="folder for the temporary data (default: the system's temp)")
    p.add_argument("--keep", action="store_true", help="keep the generated DICOMs and the prepared output")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run_ingest)


def _add_train(bsub) -> None:
    p = add_common(bsub.add_parser(
        "train", help="embedding training: medti vs a diffusers-example baseline (steps/s, memory)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="steps/s, images/s and peak memory of embedding training, medti against a baseline that "
                    "does what\ndiffusers' examples/textual_inversion/textual_inversion.py does (the whole "
                    "embedding matrix trained\nand restored each step, the VAE encoder run on every batch), or "
                    "against that script itself\n(--diffusers-script). Each (model, method) runs in a fresh "
                    "subprocess. Models are random-weight\narchitectures built from their configs (no download): "
                    "tiny (64 px), small (256 px), sd15 and sd2\n(512 px; opt-in on a CPU, where e.g. "
                    "--resolution 256 --steps 3 keeps them to minutes)."))
    p.add_argument("--models", nargs="+", choices=TRAIN_ARCHS, metavar="ARCH",
                   help=f"architectures ({', '.join(TRAIN_ARCHS)}; default: tiny small on a CPU, all on a GPU)")
    p.add_argument("--resolution", type=int, help="training size in px (default: each model's own: 64/256/512/512)")
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch-size", type=int, default=schema_default("train_embedding.batch_size"),
                   help="default: train_embedding.batch_size, %(default)s")
    p.add_argument("--num-vectors", type=int, default=schema_default("train_embedding.num_vectors"),
                   help="default: train_embedding.num_vectors, %(default)s")
    p.add_argument("--num-images", type=int, default=16, help="training images (default 16)")
    p.add_argument("--repeats", type=int, default=1, help="runs per model and method, alternating; the best counts")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the baseline (--no-baseline: medti only)")
    p.add_argument("--diffusers-script", metavar="PATH",
                   help="run diffusers' examples/textual_inversion/textual_inversion.py as the baseline (needs "
                        "accelerate: pip install medti[bench]; it runs unchanged, its UNet passes timed after the "
                        "warm-up; where torchvision is missing its one transform is stood in for)")
    p.add_argument("--script-args", default="", help="extra arguments for --diffusers-script, as one string")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   default=schema_default("train_embedding.gradient_checkpointing"), help="for medti")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   default=schema_default("train_embedding.compile"),
                   help="for medti: torch.compile the UNet (warm-up steps compile)")
    p.add_argument("--compile-memory-budget", type=float, metavar="FRACTION",
                   default=schema_default("train_embedding.compile_memory_budget"),
                   help="for medti with --compile: fraction of activations kept for the backward pass "
                        "(default %(default)s)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="for medti: UNet in channels-last memory format")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    p.set_defaults(func=run_train)


def _add_generate(bsub) -> None:
    p = add_common(bsub.add_parser(
        "generate", help="images/s and peak memory: medti's batched sampling vs diffusers one image at a time",
        description="images/s and peak memory of medti's batched sampling against diffusers' "
                    "StableDiffusionPipeline called one image at a time with its defaults, on the same model and "
                    "steps."))
    p.add_argument("--base-model", default="tiny",
                   help="tiny, random:<small|sd15|sd2>, a local folder or a cached hub id")
    p.add_argument("--n", type=int, default=8, help="images each side draws (after one warm-up image)")
    p.add_argument("--steps", type=int, default=schema_default("generate.steps"),
                   help="default: generate.steps, %(default)s")
    p.add_argument("--guidance", type=float, default=7.5, help="medti's guidance (diffusers' default is 7.5)")
    p.add_argument("--scheduler", default=schema_default("generate.scheduler"),
                   help="both sides use this scheduler (default: generate.scheduler, %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="medti's images per UNet call")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="medti's precision (auto: bf16/fp16 on GPU, fp32 on CPU); diffusers keeps its fp32 default")
    p.add_argument("--diffusers-precision", default="fp32", choices=PRECISIONS[1:],
                   help="diffusers' weights (default fp32, its own default; fp16 gives a stricter comparison on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in both processes")
    p.add_argument("--only", choices=["medti", "diffusers"], help="run one side only")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run_generate)


def _write_json(path: str | None, figures: dict) -> None:
    if path:
        from medti.atomic import write_json

        write_json(path, figures)


def run_ingest(args: argparse.Namespace) -> int:
    from medti.bench.ingest import bench_ingest, report

    summary = bench_ingest(files=args.files, dicom_size=args.dicom_size, size=args.size, per_subject=args.per_subject,
                           workers=args.workers, folder=args.dir, keep=args.keep)
    print(report(summary))
    _write_json(args.json, summary)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from medti.bench.train import bench_train

    figures = bench_train(models=args.models, resolution=args.resolution, steps=args.steps, warmup=args.warmup,
                          batch_size=args.batch_size, num_vectors=args.num_vectors, num_images=args.num_images,
                          repeats=args.repeats, baseline=args.baseline, diffusers_script=args.diffusers_script,
                          script_args=args.script_args, gradient_checkpointing=args.gradient_checkpointing,
                          compile=args.compile, compile_memory_budget=args.compile_memory_budget,
                          channels_last=args.channels_last, device=args.device, precision=args.precision,
                          threads=args.threads)
    _write_json(args.json, figures)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from medti.bench.generate import bench_generate, report

    summary = bench_generate(base_model=args.base_model, n=args.n, steps=args.steps, guidance=args.guidance,
                             scheduler=args.scheduler, batch_size=args.batch_size, resolution=args.resolution,
                             device=args.device, precision=args.precision,
                             diffusers_precision=args.diffusers_precision, threads=args.threads, only=args.only)
    print(report(summary))
    _write_json(args.json, summary)
    return 0
