"""medti train-classifier: it learns the toy set (and not shuffled labels), binary and multi-class, keeps the
weights of the best validation AUROC, tests on the real test split only, and refuses bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from classifier_support import fast_settings, one_line_error, toy_params

from medti.classifier import load_classifier, train_classifier
from medti.cli import main
from medti.config import load_params
from medti.errors import ConfigError, InputError
from medti.evaluate.statistics import auc
from medti.toydata import write_real_set, write_synthetic_set


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    real = write_real_set(root / "real", size=32, seed=0)
    synthetic = write_synthetic_set(root / "synthetic", n_per_class=12, size=32, seed=5)
    return root, real, synthetic


@pytest.fixture(scope="module")
def mixed_run(toy):
    """Real + synthetic training images; the run the output checks look at."""
    root, real, synthetic = toy
    return train_classifier(real, root / "runs" / "mixed", settings=fast_settings(), synthetic_manifest=synthetic,
                            real_count=None, synthetic_count=None, seed=0)


def test_learns_the_toy_set_but_not_shuffled_labels(toy, tmp_path, mixed_run):
    root, real, _ = toy
    shuffled = write_real_set(tmp_path / "shuffled", size=32, seed=0, shuffle_labels=True)  # same images
    learned = mixed_run.metrics["test_auc"]
    chance = train_classifier(shuffled, tmp_path / "run", settings=fast_settings(), seed=0).metrics["test_auc"]
    assert learned > 0.95
    assert chance < 0.85 and learned - chance > 0.15


def test_outputs_model_selection_and_real_test_only(toy, mixed_run):
    _, real, _ = toy
    out = mixed_run.out
    for name in ("model.pt", "model.json", "metrics.json", "predictions.csv", "history.csv", "curves.png", "roc.png",
                 "confusion.png", "confusion.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_real"] == 48 and metrics["n_synthetic"] == 24 and metrics["n_train"] == 72
    # Tested on the real test split only: exactly its images, with their labels.
    manifest = pd.read_csv(real)
    test = manifest[manifest["split"] == "test"]
    pred = pd.read_csv(out / "predictions.csv")
    assert sorted(pred["id"]) == sorted(test["path"]) and metrics["n_test"] == len(test)
    assert dict(zip(pred["id"], pred["label"])) == dict(zip(test["path"], test["label"]))
    probs = pred[["p_normal", "p_lesion"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert metrics["test_auc"] == pytest.approx(auc(pred["label"], probs), abs=1e-4)
    # The kept weights are those of the best validation AUROC (ties: the lower validation loss).
    history = pd.read_csv(out / "history.csv")
    best = history.sort_values(["val_auc", "val_loss"], ascending=[False, True]).iloc[0]
    assert metrics["best_step"] == best["step"] and metrics["best_val_auc"] == pytest.approx(best["val_auc"], abs=1e-5)
    # ... and model.pt holds them: reloaded, it gives the written test predictions.
    from medti.classifier.networks import build_network, predict
    from medti.imageset import read_manifest_images, to_tensor

    net, spec = load_classifier(out)
    images = to_tensor(read_manifest_images([str(real.parent / p) for p in pred["id"]], size=spec.size))
    np.testing.assert_allclose(predict(net, images).numpy(), probs, atol=1e-5)
    # On the CPU the network runs channels-last (oneDNN's fast path); the file does not depend on that layout: a
    # network in the plain layout (as on a GPU) reads model.pt and gives the same predictions.
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.conv1.weight.is_contiguous()
    plain = build_network(spec)
    plain.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert plain.conv1.weight.is_contiguous()
    np.testing.assert_allclose(predict(plain, images).numpy(), probs, atol=1e-5)


def test_multiclass(tmp_path):
    real = write_real_set(tmp_path / "three", classes=("none", "one", "two"), size=32, seed=1,
                          per_split={"train": 16, "val": 8, "test": 8})
    result = train_classifier(real, tmp_path / "run", settings=fast_settings(), seed=0)
    pred = pd.read_csv(result.out / "predictions.csv")
    assert [c for c in pred.columns if c.startswith("p_")] == ["p_none", "p_one", "p_two"]
    assert result.metrics["test_auc"] > 0.6  # one-vs-rest macro AUC; chance is 0.5
    confusion = pd.read_csv(result.out / "confusion.csv", index_col=0)
    assert confusion.shape == (3, 3) and confusion.to_numpy().sum() == 24


def test_pipeline_form_reads_the_condition_and_paths_from_params(tmp_path):
    """--params --modality --condition --seed: counts, settings, input and output from params.yaml."""
    params = toy_params(tmp_path)
    write_real_set(tmp_path / "data" / "prepared" / "toy", size=32, seed=0)  # <prepare.out>/<modality>/
    rc = main(["train-classifier", "--params", str(params), "--modality", "toy", "--condition", "real", "--seed", "1",
               "-q"])
    assert rc == 0
    out = tmp_path / "results" / "classifier" / "toy" / "real" / "seed1"  # <classifier.out>/<modality>/<K>/seed<S>
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_synthetic"] == 0 and metrics["n_real"] == 48 and metrics["steps"] == 30 and metrics["seed"] == 1


def test_one_job_trains_every_seed_of_a_condition_as_single_runs_would(tmp_path):
    """--seeds all: params.yaml's seeds one after the other in one process, into <out>/seed<S>, each the run a
    --seed S call makes (same test predictions), and the folder appears whole at the end."""
    params = toy_params(tmp_path)
    seeds = yaml.safe_load(params.read_text())["classifier"]["seeds"]
    write_real_set(tmp_path / "data" / "prepared" / "toy", size=32, seed=0)
    assert main(["train-classifier", "--params", str(params), "--modality", "toy", "--condition", "real",
                 "--seeds", "all", "-q"]) == 0
    out = tmp_path / "results" / "classifier" / "toy" / "real"
    assert sorted(p.name for p in out.iterdir()) == [f"seed{s}" for s in seeds]
    assert not (out.parent / ".medti-partial").exists()  # the staging folder is gone
    single = tmp_path / "single"
    assert main(["train-classifier", "--params", str(params), "--modality", "toy", "--condition", "real",
                 "--seed", str(seeds[-1]), "--out", str(single), "-q"]) == 0
    together = pd.read_csv(out / f"seed{seeds[-1]}" / "predictions.csv")
    alone = pd.read_csv(single / "predictions.csv")
    assert np.allclose(together.filter(like="p_").to_numpy(), alone.filter(like="p_").to_numpy(), atol=1e-5)
    seed_aucs = {s: json.loads((out / f"seed{s}" / "metrics.json").read_text())["seed"] for s in seeds}
    assert seed_aucs == {s: s for s in seeds}


def test_a_killed_job_of_several_seeds_keeps_the_seeds_it_finished(tmp_path, monkeypatch):
    """A job that dies in its second seed leaves no output folder (nothing half-written where the workflow looks);
    run again, it keeps the finished seed as it is and trains only the rest."""
    import medti.classifier.training as training

    params_file = toy_params(tmp_path)
    write_real_set(tmp_path / "data" / "prepared" / "toy", size=32, seed=0)
    params = load_params(params_file)
    real = tmp_path / "data" / "prepared" / "toy" / "manifest.csv"
    out = tmp_path / "results" / "classifier" / "toy" / "real"
    original = training.train_from_params

    def dies_in_seed_1(*args, **kwargs):
        if args[3] == 1:
            raise KeyboardInterrupt  # the job is killed while training seed 1
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train_from_params", dies_in_seed_1)
    with pytest.raises(KeyboardInterrupt):
        training.train_condition(params, "toy", "real", [0, 1], real, None, out)
    assert not out.exists()
    staged = out.parent / ".medti-partial" / "real" / "seed0" / "model.pt"
    before = staged.stat().st_mtime_ns
    monkeypatch.setattr(training, "train_from_params", original)
    results = training.train_condition(params, "toy", "real", [0, 1], real, None, out)
    assert [r.out for r in results] == [out / "seed0", out / "seed1"]
    assert (out / "seed0" / "model.pt").stat().st_mtime_ns == before  # kept, not trained again
    assert json.loads((out / "seed1" / "metrics.json").read_text())["seed"] == 1
    # other settings: the finished seed is not kept
    changed = {**params, "classifier": {**params["classifier"], "steps": 20}}
    monkeypatch.setattr(training, "train_from_params", dies_in_seed_1)
    with pytest.raises(KeyboardInterrupt):
        training.train_condition(changed, "toy", "real", [0, 1], real, None, tmp_path / "other")
    monkeypatch.setattr(training, "train_from_params", original)
    training.train_condition(params, "toy", "real", [0], real, None, tmp_path / "other")
    assert json.loads((tmp_path / "other" / "seed0" / "metrics.json").read_text())["steps"] == 30


@pytest.mark.parametrize("argv, message", [
    (["--condition", "real", "--seeds", "0,1", "--seed", "1"], "--seed and --seeds"),
    (["--condition", "real", "--seeds", "1,1"], "--seeds 1,1: give one or more different seeds"),
    (["--condition", "real", "--seeds", "a"], "--seeds a: 'all' or integers"),
])
def test_bad_seeds_are_one_line_errors(tmp_path, argv, message, capsys):
    params = toy_params(tmp_path)
    assert main(["train-classifier", "--params", str(params), "--modality", "toy", *argv]) != 0
    assert message in capsys.readouterr().err


def _captured_settings(monkeypatch, argv: list[str]) -> dict:
    """What ``medti train-classifier argv`` hands to train_classifier (nothing is trained)."""
    import medti.classifier.training as training

    seen = {}

    def capture(real_manifest, out, **kw):
        seen.update(kw, real_manifest=str(real_manifest), out=str(out))

    monkeypatch.setattr(training, "train_classifier", capture)
    assert main(argv) == 0
    return seen


def test_a_condition_trains_on_its_variants_synthetic_set(tmp_path, monkeypatch):
    params_path = toy_params(tmp_path, conditions={"real": (None, 0), "synthetic": (0, None),
                                                   "synthetic_few": (0, None, "few")},
                             variants={"full": {}, "few": {"images": 2}})
    sets = tmp_path / "data" / "synthetic" / "toy"
    sets.mkdir(parents=True)
    seen = {c: _captured_settings(monkeypatch, ["train-classifier", "--params", str(params_path), "--modality", "toy",
                                                "--condition", c, "--synthetic", str(sets)])
            for c in ("real", "synthetic", "synthetic_few")}
    assert seen["real"]["synthetic_manifest"] is None  # a real-only condition reads no synthetic set
    assert seen["synthetic"]["synthetic_manifest"] == sets / "full" / "manifest.csv"
    assert seen["synthetic_few"]["synthetic_manifest"] == sets / "few" / "manifest.csv"
    assert [seen[c]["variant"] for c in seen] == ["full", "full", "few"]


def test_standalone_and_pipeline_forms_give_the_same_settings(tmp_path, monkeypatch):
    import yaml

    from medti.classifier import ClassifierSettings

    params_path = toy_params(tmp_path)
    params = yaml.safe_load(params_path.read_text())
    values = {"arch": "resnet34", "width": 0.5, "pretrained": False, "size": 48, "steps": 7, "lr": 3e-4,
              "batch_size": 5, "eval_every": 3, "checkpoint_every": 0, "augment": False, "device": "cpu"}
    params["classifier"].update(values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "data" / "synthetic" / "toy").mkdir(parents=True)  # the modality's sets, a folder per variant
    pipeline = _captured_settings(monkeypatch, ["train-classifier", "--params", str(params_path), "--modality", "toy",
                                                "--condition", "real_synthetic", "--seed", "2"])
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    standalone = _captured_settings(monkeypatch, ["train-classifier", "--real", "r.csv", "--synthetic", "s.csv",
                                                  "--out", "o", "--seed", "2", *flags])
    assert pipeline["settings"] == standalone["settings"] == ClassifierSettings(**values)
    assert (pipeline["real_count"], pipeline["synthetic_count"]) == (standalone["real_count"],
                                                                     standalone["synthetic_count"]) == (None, None)
    assert pipeline["seed"] == standalone["seed"] == 2
    # the pipeline's paths are params.yaml's
    assert pipeline["real_manifest"] == str(tmp_path / "data" / "prepared" / "toy" / "manifest.csv")
    assert str(pipeline["synthetic_manifest"]) == str(tmp_path / "data" / "synthetic" / "toy" / "full" / "manifest.csv")
    assert pipeline["variant"] == "full"  # no variant named: the first (the schema's default, full)
    assert pipeline["out"] == str(tmp_path / "results" / "classifier" / "toy" / "real_synthetic" / "seed2")
    # a flag wins over params.yaml in pipeline mode
    again = _captured_settings(monkeypatch, ["train-classifier", "--params", str(params_path), "--modality", "toy",
                                             "--condition", "real", "--steps", "11", "--out", str(tmp_path / "x")])
    assert again["settings"].steps == 11 and again["settings"].arch == "resnet34"
    assert again["out"] == str(tmp_path / "x")


def test_command_line_mistakes_are_one_clear_line(tmp_path, capsys):
    params = str(toy_params(tmp_path))
    err = one_line_error(capsys, ["train-classifier", "--real", "r.csv", "--out", "o", "--condition", "real"])
    assert "--condition needs pipeline mode" in err
    err = one_line_error(capsys, ["train-classifier", "--params", params, "--modality", "toy"])
    assert "pipeline mode needs --condition" in err and "real_synthetic" in err
    err = one_line_error(capsys, ["train-classifier", "--params", params, "--modality", "toy", "--condition", "real",
                                  "--real-count", "3"])
    assert "--real-count: standalone only" in err
    err = one_line_error(capsys, ["train-classifier", "--params", params, "--condition", "real"])
    assert "--params needs --modality" in err
    err = one_line_error(capsys, ["train-classifier", "--out", "o"])
    assert "standalone needs --real" in err
    # bounds are the schema's, named by their flag
    err = one_line_error(capsys, ["train-classifier", "--real", "r.csv", "--out", "o", "--steps", "0"])
    assert "--steps" in err and "minimum" in err
    err = one_line_error(capsys, ["train-classifier", "--real", "r.csv", "--out", "o", "--arch", "vgg"])
    assert "--arch" in err and "'vgg'" in err
    err = one_line_error(capsys, ["train-classifier", "--real", "r.csv", "--out", "o", "--size", "16"])
    assert "--size" in err


def test_bad_input_is_one_clear_line(toy, tmp_path, capsys):
    _, real, synthetic = toy
    manifest = pd.read_csv(real)
    # A split with one class: no AUC.
    one_class = real.parent / "one_class.csv"
    manifest[~((manifest["split"] == "test") & (manifest["label"] == 1))].to_csv(one_class, index=False)
    err = one_line_error(capsys, ["train-classifier", "--real", str(one_class), "--out", str(tmp_path / "a")])
    assert "test split" in err and "labels [1] have no images" in err
    # Synthetic classes that differ from the real ones.
    other = pd.read_csv(synthetic)
    other["class"] = other["class"].replace({"lesion": "tumour"})
    relabelled = synthetic.parent / "relabelled.csv"
    other.to_csv(relabelled, index=False)
    err = one_line_error(capsys, ["train-classifier", "--real", str(real), "--synthetic", str(relabelled),
                                   "--out", str(tmp_path / "b")])
    assert "relabelled.csv" in err and "label set" in err and "tumour" in err
    # Counts the data cannot meet.
    err = one_line_error(capsys, ["train-classifier", "--real", str(real), "--real-count", "500", "--out",
                                   str(tmp_path / "c")])
    assert "asks for 500 images, only 48 are available" in err
    with pytest.raises(ConfigError, match="no training images"):
        train_classifier(real, tmp_path / "d", settings=fast_settings(), real_count=0, synthetic_count=0)
    with pytest.raises(ConfigError, match="no condition 'nope'"):
        from medti.classifier.data import condition_counts

        condition_counts({"classifier": {"conditions": {"real": {"real": "all", "synthetic": 0}}}}, "nope")
    with pytest.raises(InputError, match="manifest not found"):
        train_classifier(tmp_path / "missing.csv", tmp_path / "e", settings=fast_settings())
    assert not any((tmp_path / n).exists() for n in "abcde")  # nothing half-written


# -- checkpoints -----------------------------------------------------------------------------------------------

KILLED_CHILD = """
import sys, time
import medti.classifier.training as clf
augment = clf.augment
def slow(x, generator):  # slowed down, so that the kill lands between checkpoints
    time.sleep(0.2)
    return augment(x, generator)
clf.augment = slow
sys.path.insert(0, {tests!r})
from classifier_support import fast_settings
clf.train_classifier({real!r}, {out!r}, settings=fast_settings(steps=40, checkpoint_every=25), seed=3,
                     checkpoint_dir={ckpt!r})
"""


def weights(folder):
    import torch

    return torch.load(folder / "model.pt", weights_only=True)


def test_a_sigkilled_classifier_resumes_to_the_same_weights(toy, tmp_path, caplog):
    """Killed with SIGKILL after a checkpoint and started again with the same call, the run resumes there and ends
    with the weights, history and metrics of an uninterrupted run (bit for bit on the CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import torch

    _, real, _ = toy
    settings = fast_settings(steps=40, checkpoint_every=25)  # between evaluations (every 10): losses pending
    reference = train_classifier(real, tmp_path / "reference", settings=settings, seed=3,
                                 checkpoint_dir=tmp_path / "ck-reference")
    assert not (tmp_path / "ck-reference").exists()  # removed once the outputs are written

    out, ckpt = tmp_path / "killed", tmp_path / "ck"
    child = KILLED_CHILD.format(tests=str(Path(__file__).parent), real=str(real), out=str(out), ckpt=str(ckpt))
    # the same torch thread count as this process: another would sum in another order, off by rounding
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (ckpt / "state.pt").is_file():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    time.sleep(0.5)  # a few steps past the checkpoint: their work is lost and redone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt / "state.pt", weights_only=True)
    assert saved["step"] == 25 and len(saved["losses"]) == 5 and not out.exists()

    with caplog.at_level("INFO", logger="medti.classifier"):
        resumed = train_classifier(real, out, settings=settings, seed=3, checkpoint_dir=ckpt)
    assert f"resuming from the checkpoint at step {saved['step']}" in caplog.text
    assert resumed.metrics == reference.metrics
    assert (out / "history.csv").read_text() == (reference.out / "history.csv").read_text()
    ref, got = weights(reference.out), weights(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert not ckpt.exists()


def test_a_checkpoint_of_other_settings_is_not_resumed(toy, tmp_path, caplog):
    _, real, _ = toy
    from medti.checkpoint import CheckpointStore

    ckpt = tmp_path / "ck"
    CheckpointStore(ckpt, "another run").save({"step": 10})  # what a killed run of other settings leaves
    with caplog.at_level("WARNING"):
        result = train_classifier(real, tmp_path / "b", settings=fast_settings(steps=20, checkpoint_every=10, lr=1e-3),
                                  seed=0, checkpoint_dir=ckpt)
    assert "other settings" in caplog.text and result.metrics["steps"] == 20
    assert len(open(result.out / "history.csv").read().splitlines()) == 1 + 2  # both evaluations ran here


def test_a_named_checkpoint_folder_keeps_what_else_it_holds(toy, tmp_path):
    _, real, _ = toy
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not medti's")
    train_classifier(real, tmp_path / "run", settings=fast_settings(steps=20, checkpoint_every=10), seed=0,
                     checkpoint_dir=folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


# -- the paper's augmentation --------------------------------------------------------------------------------

OFF = {k: 0.0 for k in ("hflip", "affine", "distort", "gamma", "noise", "channel_dropout")}


def test_paper_augmentation_is_seeded_in_range_and_does_what_it_says():
    import torch

    from medti.classifier.training import augment, augment_paper

    x = torch.rand(64, 3, 32, 32)
    a = augment_paper(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment_paper(x, torch.Generator().manual_seed(1)))  # the run's seed decides
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x, atol=0.05)
    g = torch.Generator().manual_seed(2)
    assert torch.allclose(augment_paper(x, g, OFF), x, atol=1e-4)  # nothing drawn: the images as they were
    assert torch.allclose(augment_paper(x, g, {**OFF, "hflip": 1.0}), x.flip(-1), atol=1e-4)
    dropped = augment_paper(x, g, {**OFF, "channel_dropout": 1.0})
    zero = dropped.abs().sum(dim=(2, 3)) == 0
    assert (zero.sum(dim=1) == 1).all()  # exactly one channel of each image set to 0, the others untouched
    assert torch.allclose(dropped[~zero], x[~zero])
    noisy = augment_paper(torch.full((8, 3, 64, 64), 0.5), g, {**OFF, "noise": 1.0})
    assert 0.01 < float(noisy.std(dim=(1, 2, 3)).min()) and float(noisy.std(dim=(1, 2, 3)).max()) < 0.03
    gamma = augment_paper(torch.full((256, 3, 4, 4), 0.5), g, {**OFF, "gamma": 1.0})[:, 0, 0, 0]
    assert 0.5 ** 1.2 - 1e-6 <= float(gamma.min()) < 0.5 < float(gamma.max()) <= 0.5 ** 0.8 + 1e-6
    # Heavy, not mild: rotations up to 45 degrees move a smooth image much more than medti's mild scheme does.
    ramp = torch.linspace(0, 1, 48).view(1, 1, 1, 48).expand(64, 3, 48, 48).contiguous()
    heavy = (augment_paper(ramp, g, {**OFF, "affine": 1.0}) - ramp).abs().mean()
    mild = (augment(ramp, g) - ramp).abs().mean()
    assert heavy > 1.5 * mild  # (the mild one also shifts brightness and contrast)
    for distortion in ({"distort": 1.0},):  # optical or elastic warps: the grid moves, nothing else changes
        warped = augment_paper(ramp, g, {**OFF, **distortion})
        assert warped.min() >= 0 and warped.max() <= 1 and not torch.allclose(warped, ramp, atol=1e-3)


def test_augment_levels_train_and_are_checked(toy, tmp_path):
    _, real, _ = toy
    result = train_classifier(real, tmp_path / "paper", settings=fast_settings(steps=4, eval_every=2, augment="paper"))
    assert np.isfinite(result.metrics["test_auc"])
    with pytest.raises(ConfigError, match="classifier.augment"):
        fast_settings(augment="heavy").validate()


def test_augment_and_pretrained_flags(tmp_path, monkeypatch):
    base = ["train-classifier", "--real", "r.csv", "--out", "o"]
    assert _captured_settings(monkeypatch, [*base, "--augment", "paper"])["settings"].augment == "paper"
    assert _captured_settings(monkeypatch, [*base, "--augment"])["settings"].augment is True
    assert _captured_settings(monkeypatch, [*base, "--no-augment"])["settings"].augment is False
    assert _captured_settings(monkeypatch, [*base, "--pretrained", "imagenet"])["settings"].pretrained == "imagenet"
    assert _captured_settings(monkeypatch, [*base, "--no-pretrained"])["settings"].pretrained is False


# -- ImageNet weights, offline ---------------------------------------------------------------------------------

def torchvision_resnet18_state(seed: int = 0) -> dict:
    """A random state dict with torchvision's resnet18 key names and shapes, written out here (no torchvision):
    the stem, four stages of two basic blocks (a 1x1 downsample in the first block of stages 2-4), the
    1000-class head; no ``num_batches_tracked`` (as in the release file)."""
    import torch

    def bn(prefix, c):
        return [(f"{prefix}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")]

    keys = [("conv1.weight", (64, 3, 7, 7)), *bn("bn1", 64)]
    for stage, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)], start=1):
        for block in (0, 1):
            p, first = f"layer{stage}.{block}", (cin if block == 0 else cout)
            keys += [(f"{p}.conv1.weight", (cout, first, 3, 3)), *bn(f"{p}.bn1", cout),
                     (f"{p}.conv2.weight", (cout, cout, 3, 3)), *bn(f"{p}.bn2", cout)]
            if block == 0 and stage > 1:
                keys += [(f"{p}.downsample.0.weight", (cout, cin, 1, 1)), *bn(f"{p}.downsample.1", cout)]
    keys += [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(shape, generator=g) + 0.5 for k, shape in keys}  # positive: running_var must be


def test_imagenet_weights_of_torchvisions_layout_load_offline(tmp_path, monkeypatch):
    import torch

    from medti.classifier.networks import NetworkSpec, build_network, imagenet_file

    state = torchvision_resnet18_state()
    assert len(state) == 102  # 20 convolutions, 20 batch norms x 4, the head's 2
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = imagenet_file("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    spec = NetworkSpec(arch="resnet18", num_classes=2)
    torch.manual_seed(0)
    scratch = build_network(spec).state_dict()
    for pretrained in ("imagenet", True, str(path)):
        torch.manual_seed(0)
        own = build_network(spec, pretrained=pretrained).state_dict()
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            assert torch.equal(own[key], value), key
            assert not torch.equal(scratch[key], value), key  # the weights changed
        assert own["fc.weight"].shape == (2, 512) and torch.equal(own["fc.weight"], scratch["fc.weight"])  # new head


def test_densenet_imagenet_file_with_torchvisions_release_names_loads(tmp_path):
    """torchvision's densenet121 release file names its layers the old way (``denselayer1.norm.1.weight``)."""
    import re

    import torch

    from medti.classifier.networks import NetworkSpec, build_network, legacy_keys

    spec = NetworkSpec(arch="densenet121", num_classes=1000)
    g = torch.Generator().manual_seed(3)
    release = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): torch.rand(v.shape, generator=g)
               + 0.5 for k, v in build_network(spec).state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in release and len(release) == 606
    torch.save(release, tmp_path / "densenet121-a639ec97.pth")
    own = build_network(NetworkSpec(arch="densenet121", num_classes=2),
                        pretrained=tmp_path / "densenet121-a639ec97.pth")
    state = own.state_dict()
    assert torch.equal(state["features.denseblock4.denselayer16.conv2.weight"],
                       release["features.denseblock4.denselayer16.conv.2.weight"])
    assert torch.equal(state["features.norm5.running_var"], release["features.norm5.running_var"])
    assert state["classifier.weight"].shape == (2, 1024)  # a new head
    # a classifier saved with MONAI's DenseNet names (earlier medti) still loads
    monai_names = {re.sub(r"(denselayer\d+)\.", r"\1.layers.", k).replace("classifier.", "class_layers.out."): v
                   for k, v in state.items()}
    fresh = build_network(NetworkSpec(arch="densenet121", num_classes=2))
    fresh.load_state_dict(legacy_keys(monai_names))
    assert torch.equal(fresh.state_dict()["classifier.weight"], state["classifier.weight"])


def test_missing_or_foreign_imagenet_weights_are_one_clear_line(toy, tmp_path, monkeypatch, capsys):
    import torch

    from medti.classifier.networks import NetworkSpec, build_network
    from medti.errors import ModelError

    _, real, _ = toy
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    err = one_line_error(capsys, ["train-classifier", "--real", str(real), "--out", str(tmp_path / "run"),
                                  "--arch", "resnet18", "--width", "1", "--size", "32", "--steps", "2",
                                  "--pretrained", "imagenet"])
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"the ImageNet weights for resnet18 are not at {expected}" in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth and place it there" in err
    assert not (tmp_path / "run").exists()
    foreign = {k: v for k, v in torchvision_resnet18_state().items() if not k.startswith("layer4")}
    torch.save(foreign, tmp_path / "foreign.pth")
    with pytest.raises(ModelError, match="foreign.pth: the weights do not fit resnet18"):
        build_network(NetworkSpec(arch="resnet18", num_classes=2), pretrained=str(tmp_path / "foreign.pth"))
    with pytest.raises(ConfigError, match="classifier.width"):
        build_network(NetworkSpec(arch="resnet18", num_classes=2, width=0.5), pretrained="imagenet")
