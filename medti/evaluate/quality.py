"""Image quality of a synthetic set: Fréchet distance (FID) and kernel distance (KID) to the real images.

Both distances are computed in two feature spaces:

- Inception-v3 (the standard FID/KID), when torch-fidelity is installed (it brings torchvision) and its
  weights can be read (downloaded once into the torch hub cache). Otherwise it is skipped, and the reason
  says what is missing.
- Always, the penultimate layer of a classifier trained on the real images (no download needed). These
  numbers are not comparable with published FIDs, but they compare conditions and runs of one project, and
  they come with a yardstick: the same distances between the real training and the real test images.

FD: ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. KID: the unbiased MMD^2 with the cubic
polynomial kernel ``(x.y / d + 1)^3``, averaged over random subsets (mean and standard deviation), as in
Binkowski et al. 2018.

:func:`image_quality` measures a synthetic set both ways; :func:`classifier_features` are the classifier's.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medti.classifier.networks import predict
from medti.evaluate.settings import EvaluateSettings
from medti.imageset import to_tensor

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


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("the kernel distance needs at least two samples per set")
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
    return {"fd": frechet_distance(a, b), "kid": kid, "kid_std": kid_std, "n_a": len(a), "n_b": len(b)}


def inception_features(images, batch_size: int = 64) -> np.ndarray:
    """2048-d Inception-v3 pool features (torch-fidelity's TF-compatible network) of uint8 ``N x 3 x H x W``.

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
    net.eval()
    with torch.no_grad():
        feats = [net(images[i:i + batch_size])[0].cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(feats).numpy().astype(np.float64)


def quality_report(real_train: np.ndarray, real_test: np.ndarray, synthetic: np.ndarray, real_labels: np.ndarray,
                   synthetic_labels: np.ndarray, classes: list[str], subsets: int, subset_size: int,
                   seed: int = 0) -> dict:
    """Distances of the synthetic set (overall and per class) to the real training set, and the real
    test set's distance to the real training set as the yardstick. Inputs are feature matrices."""
    out = {"synthetic_vs_real_train": distances(synthetic, real_train, subsets, subset_size, seed),
           "real_test_vs_real_train": distances(real_test, real_train, subsets, subset_size, seed),
           "per_class": {}}
    for k, name in enumerate(classes):
        s, r = synthetic[synthetic_labels == k], real_train[real_labels == k]
        if len(s) >= 2 and len(r) >= 2:
            out["per_class"][name] = distances(s, r, subsets, subset_size, seed)
    return out


def classifier_features(net, images: np.ndarray) -> np.ndarray:
    """Penultimate-layer features of ``N x H x W x 3`` uint8 images."""
    return predict(net, to_tensor(images), features=True)[1].numpy().astype(np.float64)


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


def image_quality(real_train: np.ndarray, real_train_labels, real_test: np.ndarray, synthetic: np.ndarray,
                  synthetic_labels, classes: list[str], features: dict[str, np.ndarray],
                  settings: EvaluateSettings) -> dict:
    """FD/KID in the classifier's feature space (``features``: real_train, real_test, synthetic) and, when
    available, Inception's. At most ``max_images`` images of each set (a seeded random subset)."""
    rng = np.random.default_rng(settings.seed)
    pick = {"real_train": _subsample(len(real_train), settings.max_images, rng),
            "real_test": _subsample(len(real_test), settings.max_images, rng),
            "synthetic": _subsample(len(synthetic), settings.max_images, rng)}
    real_labels = np.asarray(real_train_labels)[pick["real_train"]]
    syn_labels = np.asarray(synthetic_labels)[pick["synthetic"]]
    kid = dict(subsets=settings.kid_subsets, subset_size=settings.kid_subset_size, seed=settings.seed)
    out = {"classifier": quality_report(features["real_train"][pick["real_train"]],
                                        features["real_test"][pick["real_test"]],
                                        features["synthetic"][pick["synthetic"]], real_labels, syn_labels, classes,
                                        **kid)}
    if settings.inception == "off":
        out["inception"] = {"skipped": "Inception FID/KID skipped: evaluate.quality.inception is off"}
    else:
        try:
            images = {name: torch.from_numpy(np.ascontiguousarray(arr[pick[name]].transpose(0, 3, 1, 2)))
                      for name, arr in (("real_train", real_train), ("real_test", real_test), ("synthetic", synthetic))}
            inc = {name: inception_features(x) for name, x in images.items()}
            out["inception"] = quality_report(inc["real_train"], inc["real_test"], inc["synthetic"], real_labels,
                                              syn_labels, classes, **kid)
        except FeaturesUnavailable as exc:
            out["inception"] = {"skipped": str(exc)}
            log.warning("%s", exc)
    return out
