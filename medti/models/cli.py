"""``medti model``: build a random-weight SD architecture offline, or describe a base model."""

from __future__ import annotations

import json

from medti.cliutils import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("model", help="build or inspect base models (tiny, small, sd15, sd2 architectures)")
    msub = p.add_subparsers(dest="model_command", metavar="<action>", required=True)

    b = add_common(msub.add_parser("build", help="build a random-weight Stable Diffusion folder from configs, offline"))
    b.add_argument("--arch", default="tiny", choices=["tiny", "small", "sd15", "sd2"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    b.add_argument("--out", required=True, help="folder to write (a diffusers StableDiffusionPipeline folder)")
    b.set_defaults(func=_build)

    i = add_common(msub.add_parser("info", help="print a base model's architecture summary as JSON"))
    i.add_argument("--base-model", required=True, help="tiny, random:<arch>, a local diffusers folder or a hub id")
    i.add_argument("--allow-download", action="store_true", help="allow fetching a hub id (default: local cache only)")
    i.set_defaults(func=_info)


def _build(args) -> int:
    from medti.models.loading import build_model_folder

    out = build_model_folder(args.out, arch=args.arch, seed=args.seed, prediction_type=args.prediction_type)
    print(out)
    return 0


def _info(args) -> int:
    from medti.models.loading import load_base_model

    m = load_base_model(args.base_model, local_files_only=not args.allow_download)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    print(json.dumps({
        "model_id": m.model_id,
        "random_weights": m.random_weights,
        "resolution": m.resolution,
        "embedding_dim": m.embedding_dim,
        "vocab_size": len(m.tokenizer),
        "prediction_type": m.prediction_type,
        "text_encoder_hash": m.text_encoder_hash(),
        "parameters": {"unet": count(m.unet), "vae": count(m.vae), "text_encoder": count(m.text_encoder)},
    }, indent=2))
    return 0
