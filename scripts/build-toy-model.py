#!/usr/bin/env python
"""Build the `toy` base model (medti/models/toy/) from scratch: seeded, offline, CPU is enough.

    python scripts/build-toy-model.py [--out medti/models/toy] [--work .toy-build]

Generates pre-training phantoms from their own seed (never the default data set's), prepares them with
`medti prepare`, trains the autoencoder, then the UNet on captions in visual words (medti.phantoms.looks).
`--work` keeps the phantoms and the trained autoencoder, so an interrupted build resumes after it. The build's
time and machine are recorded in the model's medti_model.json and in docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medti.models.toy import TOY_FOLDER, ToySettings, build_toy_model


def main(argv: list[str] | None = None) -> int:
    defaults = ToySettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=TOY_FOLDER, help="the diffusers folder to write (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path(".toy-build"), help="scratch folder kept for resuming")
    for name in ("subjects_per_class", "vae_steps", "unet_steps", "unet_batch_size", "seed", "workers"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = ToySettings(**{k: getattr(args, k) for k in ("subjects_per_class", "vae_steps", "unet_steps",
                                                          "unet_batch_size", "seed", "workers")})
    build_toy_model(args.out, settings, work=args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
