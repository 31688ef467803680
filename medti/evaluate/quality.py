"""Image quality of a synthetic set: Fréchet distance (FID) and kernel distance (KID) to the real images.

The protocol (the paper's):

- The reference is the real images the embedding was trained on: the ``ti_subset`` rows of the train split
  (``evaluate.quality.reference: ti``, the default), or the whole train split (``train``).
- The yardstick is the real test images' distance to the same reference, measured on as many images as the
  synthetic set's (both draw ``n = min(synthetic, test, max_images)`` images, per class ``min`` of the class's
  counts): the Fréchet distance is biased upwards by small samples, so only equal sample sizes compare.
- Inception-v3 (the standard FID/KID) sees the images at their prepared size (the size they were prepared or
  generated at, not the classifier's; the network resizes to 299 px itself), when torch-fidelity is installed
  (it brings torchvision) and its weights can be read (downloaded once into the torch hub cache). Otherwise it
  is skipped, and the reason says what is missing.
- Always, the penultimate layer of a classifier trained on the real images (no download needed), on the
  images at that classifier's input size (what it was trained on). These numbers are not comparable with
  published FIDs, but they compare conditions and runs of one project, with the yardstick beside them.

FD: ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. KID: the unbiased MMD^2 with the cubic
polynomial kernel ``(x.y / d + 1)^3``, averaged over random subsets (mean and standard deviation), as in
Binkowski et al. 2018. A subset holds ``min(kid_subset_size, half the smaller set)`` images (at least 2): never
more than the set, and never the whole set, whose subsets would all be alike (a spread of ~0 by
construction); the size used is recorded beside each KID.

:func:`image_quality` measures a synthetic set both ways; :func:`classifier_features` are the classifier's.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from medti.classifier.networks import predict
from medti.errors import ConfigError, InputError
from medti.evaluate.settings import EvaluateSettings
from medti.imageset import read_manifest_images, to_tensor

log = logging.getLogger(__name__)


class FeaturesUnavailable(Exception):
    """A feature extractor cannot be used here; the message says what is missing."""


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (rows are samples)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two samples per set")
    mu = a.mean(axis=0) - b.mean(axis=0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr((Sa Sb)^1/2) = sum of the square roots of the eigenvalues of Sa^1/2 Sb Sa^1/2 (symmetric, PSD).
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ sb @ root_a)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0, None))))
    return float(max(0.0, mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * trace_sqrt))


def kid_subset_size(requested: int, n_a: int, n_b: int) -> int:
    """Images per KID subset: ``requested``, but at most half the smaller set (so the subsets differ) and at
    least 2."""
    return max(2, min(int(requested), min(n_a, n_b) // 2))


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets of
    :func:`kid_subset_size` images each."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the kernel distance needs at least two samples per set")
    m = kid_subset_size(subset_size, len(a), len(b))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        values[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2.0 * kxy.mean())
    return float(values.mean()), float(values.std(ddof=1) if subsets > 1 else 0.0)


def distances(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int = 0) -> dict:
    kid, kid_std = kernel_distance(a, b, subsets, subset_size, seed)
    return {"fd": frechet_distance(a, b), "kid": kid, "kid_std": kid_std,
            "kid_subset_size": kid_subset_size(subset_size, len(a), len(b)), "n_a": len(a), "n_b": len(b)}


def inception_network():
    """torch-fidelity's TF-compatible Inception-v3 (2048-d pool features), in eval mode.

    Raises FeaturesUnavailable naming what is missing: the package, or the weights (offline).
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise FeaturesUnavailable(
            f"Inception FID/KID skipped: torch-fidelity is not installed ({exc.name or exc} is missing; "
            "`pip install torch-fidelity` brings it and torchvision, and its Inception weights are downloaded "
            "once into the torch hub cache)") from None
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    except Exception as exc:  # noqa: BLE001 - download failures come as URLError, HTTPError, OSError...
        raise FeaturesUnavailable(f"Inception FID/KID skipped: the Inception weights could not be loaded "
                                  f"({type(exc).__name__}: {exc}); run once with a network to cache them") from None
    return net.eval()


def inception_features(images, batch_size: int = 64, net=None) -> np.ndarray:
    """2048-d Inception-v3 pool features of uint8 ``N x 3 x H x W`` (any H x W: the network resizes to 299).

    ``net``: from :func:`inception_network` (default: built here). Raises FeaturesUnavailable as it does.
    """
    net = net if net is not None else inception_network()
    with torch.no_grad():
        feats = [net(images[i:i + batch_size])[0].cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(feats).numpy().astype(np.float64)


def quality_report(features: dict[str, np.ndarray], picks: dict, classes: list[str], subsets: int,
                   subset_size: int, seed: int = 0) -> dict:
    """Distances of the synthetic set (overall and per class) to the reference, and the real test set's
    distance to the same reference as the yardstick, on the rows ``picks`` gives (:func:`quality_picks`).
    ``features``: a feature matrix per set (``reference``, ``real_test``, ``synthetic``; all rows)."""
    def dist(name: str, rows: np.ndarray, ref_rows: np.ndarray) -> dict | None:
        if len(rows) < 2 or len(ref_rows) < 2:
            return None
        return distances(features[name][rows], features["reference"][ref_rows], subsets, subset_size, seed)

    out = {"synthetic_vs_real_train": dist("synthetic", picks["synthetic"], picks["reference"]),
           "real_test_vs_real_train": dist("real_test", picks["real_test"], picks["reference"]),
           "per_class": {}, "per_class_real_test": {}}
    for name, p in picks["per_class"].items():
        syn, test = dist("synthetic", p["synthetic"], p["reference"]), dist("real_test", p["real_test"], p["reference"])
        if syn is not None:
            out["per_class"][name] = syn
        if test is not None:
            out["per_class_real_test"][name] = test
    return out


def classifier_features(net, images: np.ndarray) -> np.ndarray:
    """Penultimate-layer features of ``N x H x W x 3`` uint8 images."""
    return predict(net, to_tensor(images), features=True)[1].numpy().astype(np.float64)


def _subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.asarray(rows, dtype=int)
    return rows if len(rows) <= limit else np.sort(rng.choice(rows, limit, replace=False))


def is_ti_row(values) -> np.ndarray:
    """The manifest's ``ti_subset`` column as booleans (True/true/1 are a TI training image)."""
    v = pd.Series(values)
    if v.dtype == bool:
        return v.to_numpy()
    return v.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes")).to_numpy()


def reference_mask(train: pd.DataFrame, reference: str, classes: list[str], source: str) -> np.ndarray:
    """The train-split rows that are the FID/KID reference: the embeddings' training images (``ti``: the
    ``ti_subset`` rows) or every one (``train``). InputError when a class has no TI image."""
    if reference == "train":
        return np.ones(len(train), bool)
    if reference != "ti":
        raise ConfigError(f"evaluate.quality.reference: '{reference}' is neither ti nor train")
    mask = is_ti_row(train["ti_subset"]) if "ti_subset" in train else np.zeros(len(train), bool)
    labels = train["label"].to_numpy(dtype=int)
    empty = [c for k, c in enumerate(classes) if not (mask & (labels == k)).any()]
    if empty:
        raise InputError(f"{source}: evaluate.quality.reference is ti, but no training image of class(es) "
                         f"{', '.join(empty)} is marked ti_subset (the embeddings' training images); prepare the "
                         "data again or set evaluate.quality.reference: train")
    return mask


def quality_picks(labels: dict[str, np.ndarray], reference: np.ndarray, classes: list[str], max_images: int,
                  seed: int) -> dict:
    """The rows each distance uses (seeded): at most ``max_images`` reference rows (of ``real_train``, where
    ``reference`` is True), and as many synthetic as real test rows, ``min(synthetic, test, max_images)``;
    per class the same within the class."""
    rng = np.random.default_rng(seed)
    syn, test, train = labels["synthetic"], labels["real_test"], labels["real_train"]
    ref_rows = _subsample(np.flatnonzero(reference), max_images, rng)
    n = min(len(syn), len(test), max_images)
    out = {"reference": ref_rows, "synthetic": _subsample(np.arange(len(syn)), n, rng),
           "real_test": _subsample(np.arange(len(test)), n, rng), "per_class": {}}
    for k, name in enumerate(classes):
        s_rows, t_rows = np.flatnonzero(syn == k), np.flatnonzero(test == k)
        n_k = min(len(s_rows), len(t_rows), max_images)
        out["per_class"][name] = {"reference": _subsample(np.flatnonzero(reference & (train == k)), max_images, rng),
                                  "synthetic": _subsample(s_rows, n_k, rng), "real_test": _subsample(t_rows, n_k, rng)}
    return out


def _rows_used(picks: dict, name: str) -> np.ndarray:
    key = "reference" if name == "real_train" else name
    parts = [picks[key]] + [p[key] for p in picks["per_class"].values()]
    return np.unique(np.concatenate(parts)).astype(int)


def _inception_at_prepared_size(paths: dict[str, list[str]], picks: dict, chunk: int = 64) -> dict[str, np.ndarray]:
    """Inception features of the rows the distances use, read at their own (prepared) size in chunks; other
    rows NaN. Keys: reference (the real_train rows), real_test, synthetic."""
    net = inception_network()
    out = {}
    for name in ("real_train", "real_test", "synthetic"):
        rows = _rows_used(picks, name)
        feats = None
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            images = read_manifest_images([paths[name][i] for i in part])  # no resize: the prepared size
            f = inception_features(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), net=net)
            if feats is None:
                feats = np.full((len(paths[name]), f.shape[1]), np.nan)
            feats[part] = f
        out["reference" if name == "real_train" else name] = feats if feats is not None else np.zeros((0, 1))
    return out


def image_quality(frames: dict[str, pd.DataFrame], features: dict[str, np.ndarray], classes: list[str],
                  settings: EvaluateSettings, source: str = "the real manifest") -> dict:
    """FD/KID in the classifier's feature space (``features``: real_train, real_test, synthetic, one row per
    frame row) and, when available, Inception's (the images read at their prepared size from the frames'
    ``path``), against the reference ``settings.quality_reference`` (see the module docstring)."""
    labels = {name: frames[name]["label"].to_numpy(dtype=int) for name in ("real_train", "real_test", "synthetic")}
    ref = reference_mask(frames["real_train"], settings.quality_reference, classes, source)
    picks = quality_picks(labels, ref, classes, settings.max_images, settings.seed)
    kid = dict(subsets=settings.kid_subsets, subset_size=settings.kid_subset_size, seed=settings.seed)
    about = {"reference": settings.quality_reference, "n_reference": int(len(picks["reference"])),
             "n_compared": int(len(picks["synthetic"]))}
    out = {"classifier": {**about, **quality_report({"reference": features["real_train"],
                                                     "real_test": features["real_test"],
                                                     "synthetic": features["synthetic"]}, picks, classes, **kid)}}
    if settings.inception == "off":
        out["inception"] = {"skipped": "Inception FID/KID skipped: evaluate.quality.inception is off"}
    else:
        try:
            inc = _inception_at_prepared_size({n: list(frames[n]["path"]) for n in labels}, picks)
            out["inception"] = {**about, "image_size": "prepared", **quality_report(inc, picks, classes, **kid)}
        except FeaturesUnavailable as exc:
            out["inception"] = {"skipped": str(exc)}
            log.warning("%s", exc)
    return out
