"""``medti generate``, ``medti merge-shards``, ``medti interpolate`` and ``medti inpaint``."""

from __future__ import annotations

import argparse

from medti.cliutils import add_common, add_pipeline, params_folder, pipeline_mode
from medti.errors import ConfigError
from medti.generate.schedulers import SCHEDULERS


def add_parser(sub) -> None:
    g = add_common(sub.add_parser(
        "generate", help="synthetic training sets from embeddings (pipeline or standalone)",
        description="Pipeline: --params P --modality M --embeddings DIR --out DIR draws n_per_class images of every "
                    "class of M. Standalone: --base-model B --embedding E [--embedding E2 ...] --prompt P --n N "
                    "--out DIR. Prompts may weight sub-prompts: 'healthy:0.3 AND diseased:0.7'. A killed run "
                    "resumes where it stopped; --shard K/N splits the work, merge-shards joins it."))
    add_pipeline(g, what="the modality whose classes to generate")
    g.add_argument("--embeddings", metavar="DIR", help="pipeline mode: the modality's embeddings, "
                                                       "<class>/<variant>.safetensors (default: "
                                                       "<train_embedding.out>/<modality>)")
    g.add_argument("--variant", metavar="NAME", help="pipeline mode: the embedding variant to draw with "
                                                     "(default: the first of train_embedding.variants)")
    g.add_argument("--embedding", action="append", default=[], metavar="[TOKEN=]FILE",
                   help="standalone: an embedding file (medti/diffusers .safetensors, .bin, A1111 .pt); repeatable")
    g.add_argument("--prompt", action="append", default=[], help="standalone: a prompt (one class each); repeatable")
    g.add_argument("--class", dest="class_name", action="append", default=[],
                   help="standalone: the class of each --prompt, in order (default: class0, class1, ...)")
    g.add_argument("--n", type=int, default=None, help="images per class (params: generate.n_per_class)")
    g.add_argument("--out", metavar="DIR", help="output folder: PNGs, manifest.csv, grid.png (pipeline default: "
                                                "<generate.out>/<modality>/<variant>)")
    g.add_argument("--shard", metavar="K/N", help="draw only shard K of N (1-based); join with merge-shards")
    g.add_argument("--contrast", type=float, metavar="C",
                   help="pipeline mode: draw each class away from the others: its prompt weighs 1+C, theirs "
                        "-C/(classes-1) (params: generate.contrast; 0: plain prompts, as the paper)")
    _add_sampling(g)
    g.set_defaults(func=_generate)

    m = add_common(sub.add_parser("merge-shards", help="join the shards of a synthetic set into one manifest"))
    m.add_argument("--out", required=True, metavar="DIR",
                   help="the set's folder (also where the shards ran, by default)")
    m.add_argument("shards", nargs="*", metavar="SHARD_DIR", help="folders the shards wrote to (default: --out)")
    m.set_defaults(func=_merge)

    i = add_common(sub.add_parser(
        "interpolate", help="sweep weights between two classes, or combine pathologies, into labelled grids",
        description="Pipeline: --params P --modality M --embeddings DIR sweeps from the first class to each other "
                    "class (and combines all disease classes when there are several). Standalone: --from PROMPT "
                    "--to PROMPT and/or --combine PROMPT --combine PROMPT with --base-model and --embedding."))
    add_pipeline(i, what="the modality whose classes to sweep")
    i.add_argument("--embeddings", metavar="DIR", help="pipeline mode: the modality's embeddings, the main "
                   "variant's <class>/<variant>.safetensors or a flat folder of <class>.safetensors (default: "
                   "<train_embedding.out>/<modality>)")
    i.add_argument("--embedding", action="append", default=[], metavar="[TOKEN=]FILE")
    i.add_argument("--from", dest="from_", metavar="PROMPT|CLASS", help="the sweep's start (weight 0)")
    i.add_argument("--to", metavar="PROMPT|CLASS", help="the sweep's end (weight 1)")
    i.add_argument("--combine", action="append", default=[], metavar="PROMPT|CLASS",
                   help="a pathology to combine with the others ('A AND B ...'); repeatable")
    i.add_argument("--weights", type=_floats,
                   help="weights of --to, e.g. 0,0.25,0.5,0.75,1 (params: interpolate.weights)")
    i.add_argument("--mode", choices=["noise", "linear", "slerp"],
                   help="how a sweep mixes --from and --to (params: interpolate.mode): noise = weighted noise "
                        "predictions (composable diffusion); linear/slerp = interpolated token embeddings. "
                        "Combinations always weight noise predictions")
    i.add_argument("--n", type=int, default=None, help="samples (seeds) per weight (params: interpolate.n)")
    i.add_argument("--out", metavar="DIR", help="output folder (pipeline default: <interpolate.out>/<modality>)")
    _add_sampling(i)
    i.set_defaults(func=_interpolate)

    p = add_common(sub.add_parser(
        "inpaint", help="repaint a masked region of an image with a disease prompt",
        description="The mask is a file (white = repaint) or a circle/box in pixel coordinates. With an inpainting "
                    "checkpoint (a UNet with 9 input channels) it is used; otherwise a standard checkpoint "
                    "repaints by latent blending."))
    p.add_argument("--image", required=True, help="the image to edit (PNG/JPEG; real or synthetic)")
    mask = p.add_mutually_exclusive_group(required=True)
    mask.add_argument("--mask", help="mask image of the same size (white or >= 50%% grey = repaint)")
    mask.add_argument("--circle", metavar="CX,CY,R", help="repaint a circle (pixels)")
    mask.add_argument("--box", metavar="X0,Y0,X1,Y1", help="repaint a box (pixels, x1/y1 exclusive)")
    p.add_argument("--prompt", help="what to paint (standalone); pipeline mode paints --class")
    add_pipeline(p, what="the modality of --class")
    p.add_argument("--embeddings", metavar="DIR", help="pipeline mode: the modality's embeddings, the main "
                   "variant's <class>/<variant>.safetensors or a flat folder of <class>.safetensors (default: "
                   "<train_embedding.out>/<modality>)")
    p.add_argument("--class", dest="class_name", help="pipeline mode: paint this class (its token and first template)")
    p.add_argument("--embedding", action="append", default=[], metavar="[TOKEN=]FILE")
    p.add_argument("--inpainting-model", metavar="SPEC",
                   help="an inpainting checkpoint (local folder or hub id) whose 9-channel UNet is used")
    p.add_argument("--strength", type=float, help="how much of the masked region is redrawn, 0-1 (paper: 0.9)")
    p.add_argument("--mask-blur", type=float, help="Gaussian blur of the mask edge in pixels (paper: 8)")
    p.add_argument("--n", type=int, default=None, help="results to draw (different seeds), default 1")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_sampling(p)
    p.set_defaults(func=_inpaint)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("sampling (defaults: params.yaml generate, else the schema's defaults)")
    s.add_argument("--base-model", help="tiny, random:<arch>, a local diffusers folder or a hub id")
    s.add_argument("--steps", type=int, help="denoising steps (params: generate.steps)")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (params: generate.guidance)")
    s.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help="dpmsolver++ (DPM-Solver++ multistep), euler_a (Euler ancestral, as the paper), "
                        "ddim, pndm, ddpm")
    s.add_argument("--negative-prompt", help="the unconditional branch's prompt (default: empty)")
    s.add_argument("--seed", type=int, help="base seed (image seeds derive from it, the class and the index)")
    s.add_argument("--resolution", type=int, help="pixels (default: the base model's)")
    s.add_argument("--batch-size", type=int, help="images per UNet call")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N (params: base_model.device)")
    s.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected comma-separated numbers") from None


def _sampling_args(args) -> dict:
    return {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler,
            "negative_prompt": args.negative_prompt, "seed": args.seed, "resolution": args.resolution,
            "batch_size": args.batch_size}


def _runtime(args, params):
    from medti.generate.jobs import Runtime

    return Runtime.from_params(params, base_model=args.base_model, device=args.device, precision=args.precision)


def _mode(args, command: str, standalone_flags: dict[str, str], out_section: str | None) -> dict | None:
    """params.yaml in pipeline mode (with --embeddings and --out filled from it when left out), None standalone;
    a flag of the other mode is an error. ``standalone_flags`` maps flags to their dest."""
    ctx = pipeline_mode(args, command)
    if ctx is None:
        if args.embeddings:
            raise ConfigError(f"medti {command}: --embeddings is for pipeline mode (with --params and --modality); "
                              "standalone, give --embedding FILE")
        if not args.out:
            raise ConfigError(f"medti {command}: --out is required (standalone)")
        return None
    params, modality = ctx
    given = [flag for flag, dest in standalone_flags.items() if getattr(args, dest, None)]
    if given:
        raise ConfigError(f"medti {command}: {given[0]} is for standalone use; in pipeline mode prompts come from "
                          "params.yaml")
    if not args.embeddings:
        args.embeddings = str(params_folder(params, "train_embedding.out") / modality)
    if not args.out and out_section:
        args.out = str(params_folder(params, f"{out_section}.out") / modality)
    return params


def _generate(args) -> int:
    from medti.config import main_variant, variants
    from medti.generate.jobs import generate_modality, generate_standalone

    params = _mode(args, "generate", {"--prompt": "prompt", "--embedding": "embedding", "--class": "class_name"},
                   None)
    runtime = _runtime(args, params)
    if params is not None:
        if args.variant is not None and args.variant not in variants(params):
            raise ConfigError(f"--variant {args.variant}: not one of train_embedding.variants "
                              f"({', '.join(variants(params))})")
        args.out = args.out or str(params_folder(params, "generate.out") / args.modality
                                   / (args.variant or main_variant(params)))
        generate_modality(params, args.modality, args.embeddings, args.out, shard=args.shard, runtime=runtime,
                          variant=args.variant, n_per_class=args.n, contrast=args.contrast, **_sampling_args(args))
        return 0
    if args.variant:
        raise ConfigError("medti generate: --variant is for pipeline mode (with --params and --modality)")
    if not args.prompt:
        raise ConfigError("medti generate: give --prompt (standalone) or --params P --modality M (pipeline)")
    generate_standalone(args.out, args.prompt, args.n, embeddings=args.embedding, class_names=args.class_name,
                        shard=args.shard, params=params, runtime=runtime, contrast=args.contrast,
                        **_sampling_args(args))
    return 0


def _merge(args) -> int:
    from medti.generate.synthetic import merge_shards

    print(merge_shards(args.out, args.shards or None))
    return 0


def _interpolate(args) -> int:
    from medti.generate.interpolate import interpolate_modality, interpolate_standalone

    params = _mode(args, "interpolate", {"--embedding": "embedding"}, "interpolate")
    runtime = _runtime(args, params)
    options = dict(weights=args.weights, mode=args.mode, n=args.n, **_sampling_args(args))
    if params is not None:
        interpolate_modality(params, args.modality, args.embeddings, args.out, runtime=runtime,
                             start=args.from_, end=args.to, combine=args.combine, **options)
    else:
        interpolate_standalone(args.out, start=args.from_, end=args.to, combine=args.combine,
                               embeddings=args.embedding, params=params, runtime=runtime, **options)
    return 0


def _inpaint(args) -> int:
    from medti.generate.inpaint import inpaint_job, mask_spec

    params = _mode(args, "inpaint", {"--prompt": "prompt", "--embedding": "embedding"}, None)
    runtime = _runtime(args, params)
    pipeline = params is not None
    inpaint_job(args.image, mask_spec(args.mask, args.circle, args.box), args.out, params=params, runtime=runtime,
                prompt=args.prompt, embeddings=args.embedding,
                pipeline=(args.modality, args.embeddings, args.class_name) if pipeline else None,
                inpainting_model=args.inpainting_model, strength=args.strength, mask_blur=args.mask_blur,
                n=args.n, **_sampling_args(args))
    return 0
