"""params.yaml: loading, validation against the schema, and per-modality views.

params.yaml is the one source of parameters for Snakemake, DVC and the CLI. The schema lives in the
package (``medti/schemas/params.schema.yaml``) so that the Snakefile's ``validate`` and ``medti`` use the
same file. Values are validated once, with a one-line error naming the setting.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medti.errors import ConfigError

SCHEMA_PATH = Path(str(resources.files("medti") / "schemas" / "params.schema.yaml"))


@lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def schema_section(section: str) -> dict:
    """The schema of one params.yaml section (e.g. ``"classifier"``, ``"evaluate.quality"``), as a standalone
    schema: its ``$ref``s resolve against the whole schema's definitions."""
    node = load_schema()
    for part in filter(None, section.split(".")):  # "": the top level (``seed``)
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"params schema has no section '{section}'") from None
    return {**node, "definitions": load_schema()["definitions"]}


def schema_default(setting: str) -> Any:
    """The schema's default of one setting, e.g. ``schema_default("train_embedding.warmup_steps")``: the one
    source of defaults for params.yaml, the settings classes and the command line."""
    section, _, key = setting.rpartition(".")
    props = schema_section(section)["properties"]
    if key not in props:
        raise KeyError(f"params schema has no setting '{setting}'")
    prop = props[key]
    if "default" not in prop:
        raise KeyError(f"params schema gives '{setting}' no default")
    return copy.deepcopy(prop["default"])


def section_defaults(section: str) -> dict[str, Any]:
    """Every default of a section, nested sections included (``{"augment": {"hflip": False, ...}, ...}``)."""
    out = {}
    for key, prop in schema_section(section)["properties"].items():
        if "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        elif prop.get("type") == "object" and "properties" in prop:
            out[key] = section_defaults(f"{section}.{key}")
    return out


def check_section(section: str, values: dict, source: str, names: dict[str, str] | None = None) -> None:
    """Check ``values`` (a stage's settings, from any entry point) against the schema's bounds for
    ``section``; raise ConfigError naming the first bad one as ``names[key]`` (e.g. its command-line flag) or
    ``section.key``. The schema is the one source of bounds, so the CLI and params.yaml agree."""
    import jsonschema

    schema = {k: v for k, v in schema_section(section).items() if k != "required"}  # a part of a section is fine
    validator = _strict(jsonschema.validators.validator_for(schema))(schema)
    present = {k: v for k, v in values.items() if k in schema.get("properties", {})}
    errors = sorted(validator.iter_errors(present), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        err = errors[0]
        path = [str(p) for p in err.absolute_path]
        named = (names or {}).get
        where = next((named(".".join(path[:n])) for n in range(len(path), 0, -1) if named(".".join(path[:n]))),
                     ".".join([section, *path]))
        raise ConfigError(f"{source}: {where}: {err.message}")


def _path_of(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def validate(params: dict, source: str = "params.yaml", evaluation: bool = True) -> dict:
    """Validate ``params`` in place, filling schema defaults; raise ConfigError on the first problem.

    ``evaluation=False`` (a standalone ``prepare``): no evaluation follows, so the test split's size is not
    checked against ``evaluate.min_test_per_class``.

    Also derives, per modality, ``classes`` (label order) and ``init_words`` from the ``classes`` section, so
    code reads ``params["modalities"][m]["classes"]``. Validating an already validated dict is a no-op.
    """
    import jsonschema

    if params.get("_meta", {}).get("validated"):
        return params
    schema = load_schema()
    validator_cls = _strict(jsonschema.validators.validator_for(schema))
    validator = _with_defaults(validator_cls)(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        err = errors[0]
        raise ConfigError(f"{source}: {_path_of(err)}: {err.message}")
    _derive_classes(params, source)
    _check_cross_references(params, source)
    _check_overrides(params, source)
    _check_variants(params, source)
    _check_splits(params, source, evaluation)
    params.setdefault("_meta", {})["validated"] = True
    return params


def _derive_classes(params: dict, source: str) -> None:
    modalities = params["modalities"]
    for mod in modalities.values():
        mod["classes"], mod["init_words"] = [], {}
    for key, entry in params["classes"].items():
        name, cls = entry["modality"], entry["class"]
        if name not in modalities:
            raise ConfigError(f"{source}: classes.{key}.modality: '{name}' is not one of the modalities "
                              f"({', '.join(modalities)})")
        if key != f"{name}-{cls}":
            raise ConfigError(f"{source}: classes.{key}: the key must be '{name}-{cls}' (<modality>-<class>)")
        modalities[name]["classes"].append(cls)
        if entry.get("init"):
            modalities[name]["init_words"][cls] = entry["init"]
    for name, mod in modalities.items():
        if len(mod["classes"]) < 2:
            raise ConfigError(f"{source}: classes: modality '{name}' needs at least two classes, has {mod['classes']}")


def _strict(validator_cls):
    """``validator_cls`` with JSON Schema's "integer" made strict: 12.0 is not an integer setting (jsonschema
    accepts any float with a zero fraction, and a YAML ``12.0`` is a float that later code would trip on)."""
    import jsonschema

    def is_integer(checker, instance):
        return isinstance(instance, int) and not isinstance(instance, bool)

    checker = validator_cls.TYPE_CHECKER.redefine("integer", is_integer)
    return jsonschema.validators.extend(validator_cls, type_checker=checker)


def _with_defaults(validator_cls):
    """A validator that also fills in ``default`` values from the schema (as Snakemake's validate does)."""
    import jsonschema

    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _check_cross_references(params: dict, source: str) -> None:
    modalities = params.get("modalities", {})
    for name in (params.get("phantoms") or {}).get("modalities", []):
        if name not in modalities:
            raise ConfigError(f"{source}: phantoms.modalities: '{name}' is not one of the modalities "
                              f"({', '.join(modalities)})")


def _check_overrides(params: dict, source: str) -> None:
    """A modality's ``overrides.<section>`` merged over the section, checked against that section's schema, so a
    bad override fails here (and ``snakemake -n`` with it), not when its stage runs."""
    import jsonschema

    for name, mod in params["modalities"].items():
        for section, override in (mod.get("overrides") or {}).items():
            if not override:
                continue
            schema = schema_section(section)
            validator = _strict(jsonschema.validators.validator_for(schema))(schema)
            merged = stage(params, section, name)
            errors = sorted(validator.iter_errors(merged), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
            if errors:
                err = errors[0]
                where = ".".join(str(p) for p in err.absolute_path)
                raise ConfigError(f"{source}: modalities.{name}.overrides.{section}"
                                  f"{'.' + where if where else ''}: {err.message}")


def _check_variants(params: dict, source: str) -> None:
    """Variants are the same for every modality (the DAG has one variant dimension), and every classifier
    condition names one of them. (A variant asking for more images than a class's embedding subset holds trains
    on all of them, with a warning: train-embedding knows the subset, params do not.)"""
    names = list(variants(params))
    for name, mod in params["modalities"].items():
        if "variants" in ((mod.get("overrides") or {}).get("train_embedding") or {}):
            raise ConfigError(f"{source}: modalities.{name}.overrides.train_embedding.variants: the variants are "
                              "the same for every modality; set them in train_embedding.variants")
    for condition, spec in ((params.get("classifier") or {}).get("conditions") or {}).items():
        v = (spec or {}).get("variant")
        if v is not None and v not in names:
            raise ConfigError(f"{source}: classifier.conditions.{condition}.variant: '{v}' is not one of "
                              f"train_embedding.variants ({', '.join(names)})")


# -- embedding variants --------------------------------------------------------------------------------------

def variants(params: dict) -> dict[str, dict]:
    """The embedding variants in order, each as ``{images, steps, num_vectors}`` (None: the section's value or,
    for images, the whole embedding subset). The first is the main one."""
    section = (params.get("train_embedding") or {}).get("variants") or {"full": {}}
    return {name: {k: (spec or {}).get(k) for k in ("images", "steps", "num_vectors")}
            for name, spec in section.items()}


def main_variant(params: dict) -> str:
    """The first variant: the one interpolation, the report's figures and conditions without a variant use."""
    return next(iter(variants(params)))


def condition_variant(params: dict, condition: str) -> str:
    """The variant whose synthetic images classifier condition ``condition`` trains on."""
    spec = ((params.get("classifier") or {}).get("conditions") or {}).get(condition) or {}
    return spec.get("variant") or main_variant(params)


def embedding_file(folder: str | os.PathLike, class_name: str, variant: str | None = None) -> Path:
    """Where a class's embedding lies: ``<folder>/<class>/<variant>.safetensors`` (the pipeline's layout, one
    folder per class holding a file per variant), or ``<folder>/<class>.safetensors`` (a flat folder of shared
    embeddings) when no variant is named."""
    folder = Path(folder)
    return folder / f"{class_name}.safetensors" if variant is None else folder / class_name / f"{variant}.safetensors"


def split_kind(split: dict, where: str = "prepare.split") -> str:
    """'fractions' or 'counts' for a ``prepare.split`` setting; ConfigError (naming ``where``) when the fractions
    add up to more than 1, a value is neither a fraction nor a whole count, or the two are mixed."""
    values = {k: split[k] for k in ("train", "val", "test")}
    nonzero = {k: v for k, v in values.items() if v}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in nonzero.values()):
        return "counts"
    if all(isinstance(v, float) and v <= 1 for v in nonzero.values()):
        total = sum(values.values())
        if total > 1 + 1e-9:
            raise ConfigError(f"{where}: the fractions add up to {total:g}, more than 1 (train + val + test is the "
                              "share of each class's subjects used)")
        return "fractions"
    odd = next((f"{k}: {v!r}" for k, v in nonzero.items() if isinstance(v, float) and v > 1), None)
    raise ConfigError(f"{where}: give fractions (0.5, 0.25, ...) or whole subject counts per class (100, 50, ...), "
                      f"not a mix{f' ({odd} is neither)' if odd else ''}")


def split_counts(n: int, split: dict) -> dict[str, int]:
    """Subjects per split of a class of ``n`` subjects under fractions: every requested split gets at least one;
    used by ``prepare`` (medti.preprocess.splitting) and by params validation alike."""
    import math

    names = ("train", "val", "test")
    wanted = [s for s in names if split[s]]
    if n < len(wanted):  # too few subjects to split at all (prepare stops with its own error)
        return {s: 0 for s in names}
    total = max(int(round(sum(split[s] for s in names) * n)), len(wanted))
    raw = {s: split[s] * n for s in names}
    out = {s: int(math.floor(raw[s])) for s in names}
    for s in sorted(wanted, key=lambda s: raw[s] - out[s], reverse=True):
        if sum(out.values()) >= total:
            break
        out[s] += 1
    for s in wanted:
        if out[s] == 0:
            donor = max(wanted, key=lambda d: out[d])
            out[donor] -= 1
            out[s] += 1
    return out


def _check_splits(params: dict, source: str, evaluation: bool = True) -> None:
    """Every modality's split is well formed, and its test split can hold ``evaluate.min_test_per_class``
    subjects per class where that is known before the data is read: subject counts directly, fractions of
    the phantom subjects (``phantoms.subjects_per_class``) for phantom modalities. MedMNIST keeps its
    official splits. A test split of fewer subjects than that would fail evaluation after every classifier
    has trained."""
    default_split = schema_default("prepare.split")
    default_min = schema_default("evaluate.min_test_per_class")
    phantoms = params.get("phantoms") or {}
    phantom_modalities = set(phantoms.get("modalities") or [])
    n_phantom = int(phantoms.get("subjects_per_class", schema_default("phantoms.subjects_per_class")))
    split_kind(params.get("prepare", {}).get("split", default_split), f"{source}: prepare.split")
    for name, mod in params["modalities"].items():
        override = ((mod.get("overrides") or {}).get("prepare") or {}).get("split")
        where = f"modalities.{name}.overrides.prepare.split" if override else "prepare.split"
        split = stage(params, "prepare", name).get("split", default_split)
        kind = split_kind(split, f"{source}: {where}")
        if mod["source"]["type"] == "medmnist" or not evaluation:
            continue  # MedMNIST has its own splits; a standalone prepare has no evaluation to fail
        minimum = int(stage(params, "evaluate", name).get("min_test_per_class", default_min))
        phantom = name in phantom_modalities
        if kind == "counts":
            test = int(split["test"])
            asked = sum(int(split[s]) for s in ("train", "val", "test"))
            if phantom and asked > n_phantom:
                raise ConfigError(f"{source}: {where}: asks for {asked} subjects per class of {name}, but "
                                  f"phantoms.subjects_per_class makes {n_phantom}")
            how = f"{where}.test is {test} subjects per class"
        elif phantom:
            test = split_counts(n_phantom, split)["test"]
            how = (f"{where}.test ({split['test']:g}) of phantoms.subjects_per_class ({n_phantom}) gives "
                   f"{test} test subject{'s' if test != 1 else ''} per class of {name}")
        else:
            continue  # fractions of a data set not read yet: checked when prepare has counted the subjects
        if test < minimum:
            ov = ((mod.get("overrides") or {}).get("evaluate") or {}).get("min_test_per_class")
            setting = "evaluate.min_test_per_class"
            setting = f"modalities.{name}.overrides.{setting}" if ov else setting
            raise ConfigError(f"{source}: {how}, fewer than {setting} ({minimum}): evaluation would fail after every "
                              "classifier has trained; make the test split larger or lower that setting")


def load_params(path: str | os.PathLike = "params.yaml", overrides: dict | None = None) -> dict:
    """Read, merge ``overrides`` (a nested dict) and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            params = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    if overrides:
        params = deep_merge(params, overrides)
    params = validate(params, source=str(path))
    params.setdefault("_meta", {})["root"] = str(path.resolve().parent)
    return params


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def project_root(params: dict | None = None) -> Path:
    """The folder that holds params.yaml (or MEDTI_PROJECT_ROOT, or the working directory)."""
    if params and "_meta" in params:
        return Path(params["_meta"]["root"])
    env = os.environ.get("MEDTI_PROJECT_ROOT")
    return Path(env).resolve() if env else Path.cwd().resolve()


def modality(params: dict, name: str) -> dict:
    """One modality's settings, with its stage overrides merged over the global stage sections."""
    mods = params.get("modalities", {})
    if name not in mods:
        raise ConfigError(f"params.yaml: modalities.{name}: no such modality (have: {', '.join(mods) or 'none'})")
    return mods[name]


def stage(params: dict, section: str, modality_name: str | None = None) -> dict[str, Any]:
    """A stage section (e.g. ``train_embedding``), with the modality's override of it merged in."""
    base = copy.deepcopy(params.get(section, {}))
    if modality_name is not None:
        override = (modality(params, modality_name).get("overrides") or {}).get(section) or {}
        base = deep_merge(base, override)
    return base


def class_token(modality_name: str, class_name: str) -> str:
    """The placeholder token of one modality and class, e.g. ``<chest_xray-opacity>``."""
    return f"<{modality_name}-{class_name}>"
