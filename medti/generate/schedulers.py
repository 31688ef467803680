"""Sampling schedulers by name, built from the base model's own scheduler config.

Building from the model's config keeps its noise schedule and ``prediction_type`` (SD 2.x 768 models
predict v), whichever scheduler the checkpoint shipped with.
"""

from __future__ import annotations

from medti.errors import ConfigError

# name -> (diffusers class, extra config)
SCHEDULERS = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),  # the paper's A1111 runs
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddpm": ("DDPMScheduler", {}),
}
# Schedulers that draw fresh noise at every step (they need each image's own generator to stay reproducible).
STOCHASTIC = frozenset({"euler_a", "ddpm"})


def make_scheduler(name: str, base_config):
    """A fresh scheduler ``name`` (see SCHEDULERS) on the base model's noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler '{name}': choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    config.update(extra)
    return getattr(diffusers, cls_name).from_config(config)
