"""Diagnostic classifiers trained on real, real + synthetic or synthetic images (``medti train-classifier``).

The protocol follows the paper: a fixed number of Adam steps (lr 1e-4, batch 32) with augmentation, the
validation AUROC every ``eval_every`` steps, the weights of the best validation AUROC kept, and the test AUC
measured once, on the held-out real test split only. ``classifier.augment``: ``mild`` (or true, the default)
is a small scheme of medti's own (rotations +-10 degrees, scaling, shifts, brightness and contrast; no flips),
not the paper's; ``paper`` is the paper's heavy augmentation (horizontal flips, rotation +-45 degrees, scale
+-20 %, optical or elastic distortion, gamma, Gaussian noise, channel dropout; in torch, no torchvision);
``none`` (or false) none. ``classifier.pretrained: imagenet`` starts from ImageNet weights read offline from
the torch hub cache (:mod:`~medti.classifier.networks` says where to place the file). Everything random
(initial weights, the subset drawn for a count, batches, augmentation) follows the seed, so a run on the CPU is
reproducible. A checkpoint every ``checkpoint_every`` steps (``.medti/checkpoints/classifier/...``) lets a
killed run, started again with the same command, resume and end with the same weights as an uninterrupted
one.

A run's folder (it appears whole or not at all): model.pt (the best weights, a plain state_dict), model.json
(how to rebuild the network), metrics.json, predictions.csv (test images: id, label, class probabilities),
history.csv and curves.png (training loss and validation AUROC), roc.png, confusion.png and confusion.csv
(test set).

Python API (imported lazily, so ``import medti.classifier`` loads no torch)::

    from medti.classifier import (ClassifierSettings, load_classifier, train_classifier, train_condition,
                                  train_from_params)

    result = train_classifier("data/prepared/chest_xray/manifest.csv", "runs/real/seed0",
                              settings=ClassifierSettings(steps=500), seed=0)        # all real images
    result.metrics["test_auc"]
    train_from_params(params, "chest_xray", "real_synthetic", 0, real, synthetic, out)  # one seed
    train_condition(params, "chest_xray", "real", [0, 1, 2], real, None, "runs/real")  # as the pipeline does
    net, spec = load_classifier("runs/real/seed0")

Parts: :mod:`~medti.classifier.settings` (ClassifierSettings), :mod:`~medti.classifier.data` (the images of
an experiment), :mod:`~medti.classifier.networks` (ResNet and DenseNet in torchvision's layout, prediction),
:mod:`~medti.classifier.training` (fit, train_classifier), :mod:`~medti.classifier.outputs` (the run's files
and figures), :mod:`~medti.classifier.cli` (the command).
"""

from medti.lazy import lazy_exports

__all__ = [
    "BatchOrder",
    "augment_paper",
    "ClassifierResult",
    "ClassifierSettings",
    "ExperimentData",
    "NetworkSpec",
    "Split",
    "build_network",
    "check_same_labels",
    "condition_counts",
    "confusion",
    "fit",
    "load_classifier",
    "load_experiment",
    "parse_count",
    "predict",
    "read_rows",
    "task_classes",
    "train_classifier",
    "train_from_params",
    "train_condition",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["ClassifierSettings"], "settings"),
    **dict.fromkeys(["BatchOrder", "ClassifierResult", "augment_paper", "fit", "load_classifier", "train_classifier",
                     "train_from_params", "train_condition"], "training"),
    **dict.fromkeys(["ExperimentData", "Split", "check_same_labels", "condition_counts", "load_experiment",
                     "parse_count", "read_rows", "task_classes"], "data"),
    **dict.fromkeys(["NetworkSpec", "build_network", "predict"], "networks"),
    **dict.fromkeys(["confusion"], "outputs"),
})
