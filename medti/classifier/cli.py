"""``medti train-classifier``: a diagnostic classifier trained on real, real + synthetic or synthetic images,
tested once on the held-out real test split (the protocol: ``help(medti.classifier)``).

Pipeline mode: ``--params params.yaml --modality M --condition K --seed S``: the settings are params.yaml's
``classifier`` (the modality's overrides merged in), the condition's counts its ``classifier.conditions.K``,
and the inputs and output default to the params paths: ``--real <prepare.out>/M/manifest.csv``,
``--synthetic <generate.out>/M`` (the modality's synthetic sets, one folder per embedding variant: the condition's
``variant`` is used), ``--out <classifier.out>/M/K/seedS``. ``--seeds all`` (params.yaml's ``classifier.seeds``) or
``--seeds 0,1,2`` trains every seed of the condition in one process (what the pipeline runs: the start-up is paid
once), into ``--out <classifier.out>/M/K`` (``seed<S>`` folders, all appearing at the end; a killed job run again
keeps the seeds it finished).

Standalone: ``--real MANIFEST [--synthetic MANIFEST] --out DIR [--real-count N|all] [--synthetic-count N|all]
[--classes a,b]`` (defaults: all real images, and all synthetic ones when ``--synthetic`` is given).

Training flags (``--steps``, ``--lr``, ...) are params.yaml's ``classifier`` keys; given, they win in either
mode; left out, they are params.yaml's (pipeline) or the schema's defaults (standalone).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medti.cliutils import add_common, add_pipeline, csv_list, params_folder, pipeline_mode
from medti.config import check_section, schema_section
from medti.errors import ConfigError

COMMAND = "train-classifier"
# settings flags: params.yaml classifier.<key> -> its flag
SETTINGS_FLAGS = {key: "--" + key.replace("_", "-") for key in (
    "arch", "width", "pretrained", "size", "steps", "lr", "batch_size", "eval_every", "checkpoint_every", "augment",
    "device")}


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="train a diagnostic classifier (real / real+synthetic / synthetic)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    add_pipeline(p, what="the modality (its classes, overrides and paths come from params.yaml)")
    pipe = p.add_argument_group("pipeline mode only")
    pipe.add_argument("--condition", metavar="K", help="a condition of params.yaml classifier.conditions (required "
                                                        "in pipeline mode): how many real and synthetic images")
    io = p.add_argument_group("inputs and outputs (pipeline mode: default from params.yaml's paths)")
    io.add_argument("--real", metavar="MANIFEST", help="the prepared (real) manifest: train/val/test")
    io.add_argument("--synthetic", metavar="MANIFEST|DIR",
                    help="the synthetic manifest (medti generate); pipeline mode also a folder of sets, one per "
                         "embedding variant, of which the condition's is used")
    io.add_argument("--out", metavar="DIR", help="the run's output folder")
    io.add_argument("--seed", type=int, default=None, help="seed of everything random in the run (default 0)")
    pipe.add_argument("--seeds", metavar="all|S,S", help="train these seeds of the condition, one after the other in "
                                                          "this process, into --out/seed<S> (all: params.yaml's "
                                                          "classifier.seeds)")
    io.add_argument("--checkpoint-dir", metavar="DIR",
                    help="where checkpoints go (default: .medti/checkpoints/classifier/... under the project root)")
    alone = p.add_argument_group("standalone only (pipeline mode: the condition and params.yaml say)")
    alone.add_argument("--real-count", metavar="N|all", help="real training images to use (default: all)")
    alone.add_argument("--synthetic-count", metavar="N|all",
                       help="synthetic images to add (default: all when --synthetic is given, else 0)")
    alone.add_argument("--classes", metavar="A,B", help="class names in label order (default: the manifest's)")
    m = p.add_argument_group("training (default: params.yaml classifier, else the schema's defaults)")
    archs = schema_section("classifier")["properties"]["arch"]["enum"]
    m.add_argument("--arch", metavar="NAME", help=" | ".join(archs))
    m.add_argument("--width", type=float, help="channel width multiplier")
    m.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="imagenet|FILE",
                   help="start from ImageNet weights: torchvision's file in $TORCH_HOME/hub/checkpoints (imagenet, "
                        "or no value) or FILE; read offline")
    m.add_argument("--no-pretrained", dest="pretrained", action="store_const", const=False,
                   help="train from scratch")
    m.add_argument("--size", type=int, help="image size the network sees (pixels)")
    m.add_argument("--steps", type=int, help="training steps")
    m.add_argument("--lr", type=float, help="learning rate (Adam)")
    m.add_argument("--batch-size", type=int, help="images per step")
    m.add_argument("--eval-every", type=int, help="steps between validation AUROC measurements")
    m.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: none); a killed run started "
                                                         "again with the same command resumes from the last one")
    m.add_argument("--augment", nargs="?", const=True, default=None, metavar="none|mild|paper",
                   help="mild (no value): small rotations, scaling, shifts, brightness and contrast; paper: the "
                        "paper's heavy augmentation; none")
    m.add_argument("--no-augment", dest="augment", action="store_const", const=False, help="no augmentation")
    m.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    m.add_argument("--threads", type=int, help="CPU threads (default: torch's, i.e. OMP_NUM_THREADS when set)")
    p.set_defaults(func=run)


def settings_overrides(args: argparse.Namespace) -> dict:
    """The training settings given on the command line (None: not given), checked against the schema."""
    values = {key: getattr(args, key) for key in SETTINGS_FLAGS}
    check_section("classifier", {k: v for k, v in values.items() if v is not None}, f"medti {COMMAND}",
                  names=SETTINGS_FLAGS)
    return values



def parse_seeds(value: str, params: dict) -> list[int]:
    """``--seeds``: ``all`` (params.yaml's classifier.seeds) or a comma-separated list of different integers."""
    if value.strip() == "all":
        return [int(s) for s in (params.get("classifier") or {}).get("seeds") or [0]]
    try:
        seeds = [int(s) for s in csv_list(value)]
    except ValueError:
        raise ConfigError(f"--seeds {value}: 'all' or integers separated by commas (e.g. 0,1,2)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {value}: give one or more different seeds")
    return seeds


def pipeline_paths(params: dict, modality: str, condition: str, seed: int) -> dict[str, Path]:
    """Where pipeline mode reads and writes when the flags leave it open (params.yaml's paths)."""
    return {"real": params_folder(params, "prepare.out") / modality / "manifest.csv",
            "synthetic": params_folder(params, "generate.out") / modality,
            "out": params_folder(params, "classifier.out") / modality / condition / f"seed{seed}"}


def run(args: argparse.Namespace) -> int:
    ctx = pipeline_mode(args, COMMAND)
    overrides = settings_overrides(args)
    if ctx is not None:
        params, modality = ctx
        if not args.condition:
            conditions = ", ".join((params.get("classifier") or {}).get("conditions") or {})
            raise ConfigError(f"medti {COMMAND}: pipeline mode needs --condition (one of params.yaml's "
                              f"classifier.conditions: {conditions})")
        given = [f for f, v in (("--real-count", args.real_count), ("--synthetic-count", args.synthetic_count),
                                ("--classes", args.classes)) if v is not None]
        if given:
            raise ConfigError(f"medti {COMMAND}: {', '.join(given)}: standalone only (in pipeline mode the condition "
                              "gives the counts and params.yaml the classes)")
        if args.seeds is not None:
            if args.seed is not None:
                raise ConfigError(f"medti {COMMAND}: --seed and --seeds: give one of them")
            from medti.classifier import train_condition

            seeds = parse_seeds(args.seeds, params)
            out = args.out or params_folder(params, "classifier.out") / modality / args.condition
            paths = pipeline_paths(params, modality, args.condition, seeds[0])
            train_condition(params, modality, args.condition, seeds, args.real or paths["real"],
                            args.synthetic or paths["synthetic"], out, threads=args.threads,
                            checkpoint_dir=args.checkpoint_dir, **overrides)
            return 0
        from medti.classifier import train_from_params

        seed = 0 if args.seed is None else args.seed
        paths = pipeline_paths(params, modality, args.condition, seed)
        train_from_params(params, modality, args.condition, seed, args.real or paths["real"],
                          args.synthetic or paths["synthetic"], args.out or paths["out"], threads=args.threads,
                          checkpoint_dir=args.checkpoint_dir, **overrides)
        return 0
    if args.seeds is not None:
        raise ConfigError(f"medti {COMMAND}: --seeds needs pipeline mode (--params P --modality M --condition K); "
                          "standalone, train one --seed per call")
    if args.condition:
        raise ConfigError(f"medti {COMMAND}: --condition needs pipeline mode (--params P --modality M): conditions "
                          "live in params.yaml; standalone, give --real-count/--synthetic-count")
    missing = [f for f, v in (("--real", args.real), ("--out", args.out)) if v is None]
    if missing:
        raise ConfigError(f"medti {COMMAND}: standalone needs {' and '.join(missing)} (or pipeline mode: --params P "
                          "--modality M --condition K)")
    from medti.classifier import ClassifierSettings, parse_count, train_classifier

    real_count = parse_count(args.real_count, "--real-count")
    default_synthetic = "all" if args.synthetic else 0
    synthetic_count = parse_count(args.synthetic_count if args.synthetic_count is not None else default_synthetic,
                                  "--synthetic-count")
    train_classifier(args.real, args.out, settings=ClassifierSettings.from_section({}, **overrides),
                     synthetic_manifest=args.synthetic, real_count=real_count, synthetic_count=synthetic_count,
                     seed=0 if args.seed is None else args.seed, classes=csv_list(args.classes), threads=args.threads,
                     checkpoint_dir=args.checkpoint_dir)
    return 0
