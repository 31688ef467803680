"""``medti embedding info FILE`` and ``medti embedding convert IN --out OUT [--format F] [--token T]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medti.cliutils import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("embedding", help="inspect or convert embedding files (medti, diffusers, A1111, kohya)")
    esub = p.add_subparsers(dest="embedding_command", metavar="<action>", required=True)
    info = add_common(esub.add_parser("info", help="print an embedding's token, shape, checksum and metadata"))
    info.add_argument("path", metavar="FILE")
    info.set_defaults(func=run_info)
    conv = add_common(esub.add_parser(
        "convert", help="convert between medti, diffusers, A1111 (.pt) and kohya files",
        description="Read any supported embedding (pickles only with torch.load(weights_only=True)) and write "
                    "it in another tool's format. The format defaults to the one OUT's suffix suggests "
                    "(.pt: a1111, .bin: diffusers, .safetensors: medti)."))
    conv.add_argument("src", metavar="IN", help="the embedding file to read (any supported format)")
    conv.add_argument("--out", required=True, metavar="OUT", help="the file to write")
    conv.add_argument("--format", metavar="FORMAT",
                      help="the output format: medti, diffusers, a1111 or kohya (default: from OUT's suffix)")
    conv.add_argument("--token", help="rename the token (A1111 names it after the file anyway)")
    conv.set_defaults(func=run_convert)


def run_info(args: argparse.Namespace) -> int:
    from medti.embeddings import load_embedding

    emb = load_embedding(args.path)
    print(json.dumps({"token": emb.token, "num_vectors": emb.num_vectors, "dim": emb.dim,
                      "checksum": emb.checksum(), "bytes": Path(args.path).stat().st_size,
                      "metadata": emb.metadata}, indent=2))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from medti.embeddings import convert_embedding, infer_format

    fmt = args.format or infer_format(args.out)
    emb = convert_embedding(args.src, args.out, fmt, token=args.token)
    print(json.dumps({"token": emb.token, "num_vectors": emb.num_vectors, "dim": emb.dim, "format": fmt,
                      "checksum": emb.checksum(), "out": str(args.out)}, indent=2))
    return 0
