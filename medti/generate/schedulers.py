"""Sampling schedulers by name, built from the base model's own scheduler config.

Building from the model's config keeps its noise schedule and ``prediction_type`` (SD 2.x 768 models
predict v), whichever scheduler the checkpoint shipped with. Only what the model's config file itself sets
is carried over: medti loads a checkpoint's scheduler as a ``DDPMScheduler`` (for training), which fills in
DDPM's defaults for every key the file lacks, e.g. ``timestep_spacing: "leading"``. Those filled-in values
(diffusers lists them in ``_use_default_values``) are dropped, so each sampling class uses its own default
for them, as ``<Class>.from_config(pipe.scheduler.config)`` does on the checkpoint in diffusers: on the SD
1.5 and SD 2.0 configs Euler a and DPM-Solver++ start from t=999 (``linspace``), DDIM and PNDM from t=951
at 20 steps (``leading`` with the config's ``steps_offset: 1``).
"""

from __future__ import annotations

import json

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


def model_scheduler_config(base_config) -> dict:
    """The keys the model's scheduler config sets itself: private keys (``_class_name`` ...) and the defaults
    the loading class filled in (``_use_default_values``) left out."""
    config = dict(base_config)
    filled = set(config.get("_use_default_values") or ())
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in filled}


def make_scheduler(name: str, base_config):
    """A fresh scheduler ``name`` (see SCHEDULERS) on the base model's noise schedule; the settings the
    model's config leaves open take the class's own defaults (see the module docstring)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler '{name}': choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    config = model_scheduler_config(base_config)
    config.update(extra)
    return getattr(diffusers, cls_name).from_config(config)


def describe_sampler(name: str, base_config, steps: int) -> dict:
    """What a run samples with: the diffusers class, its whole config and the timesteps of ``steps`` steps
    (recorded in ``generate.json``)."""
    sched = make_scheduler(name, base_config)
    sched.set_timesteps(int(steps), device="cpu")
    config = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
    config = json.loads(json.dumps(config, default=_plain))
    return {"name": name, "class": type(sched).__name__, "config": config,
            "timesteps": [_number(t) for t in sched.timesteps.tolist()]}


def _number(t) -> int | float:
    t = float(t)
    return int(t) if t.is_integer() else round(t, 4)


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
