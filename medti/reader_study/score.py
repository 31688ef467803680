"""``medti reader-study score``: the readers' answer files read with the key, and the study's statistics.

Checks first, each a one-line error naming the file: an answers file of another study (its study id), of a
reader the study does not know, a reader with two files, an image answered twice, an item or an answer the
study does not have, and missing answers (``allow_incomplete`` scores what was answered and says how much is
missing).

Then, per task, for every reader and pooled over readers (a pooled figure treats each reading as independent):

- ``real-or-synthetic``: accuracy, sensitivity (synthetic images called synthetic) and specificity (real images
  called real), overall and per class, against chance 0.5;
- ``which-class``: accuracy on the synthetic and on the real images against chance 1/K (K classes), their
  difference (Fisher's exact test), sensitivity (against 1/K) and specificity (against 1 - 1/K) per class, and
  the confusion matrices;
- ``which-better``: the share of pairs in which the first set's image was preferred, against 0.5 (the paper's
  36 of 50: p = 0.0026), per class, and the share of left-hand choices (a side bias).

Every share carries its exact (Clopper-Pearson) interval and its exact two-sided binomial p-value
(:mod:`medti.reader_study.stats`). A reader's first look at a case counts; the second look at a repeated case
counts only for that reader's consistency (the share answered the same way, and Cohen's kappa between the two
looks). Agreement between readers: Cohen's kappa for two, Fleiss' for more (and Cohen's for every pair), over
the cases every reader answered, with a percentile bootstrap interval over cases.

Outputs (``out``): summary.md and summary.html (tables and figures), figures/*.png, metrics.json (numbers only,
for ``dvc metrics``), results.json (every statistic) and responses.csv (every reading with its truth: the
unblinded record). With params (pipeline mode) the figures, metrics and summary also go to MLflow.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from itertools import combinations
from pathlib import Path

from medti.errors import InputError
from medti.reader_study.make import KEY_FORMAT
from medti.reader_study.page import ANSWERS_FORMAT
from medti.reader_study.stats import (
    CI_METHOD,
    KAPPA_CI_METHOD,
    consistency,
    fisher_difference,
    kappa_with_interval,
    proportion,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
DEFAULT_BOOTSTRAP = 2000


# -- inputs ----------------------------------------------------------------------------------------------------

def load_key(path: PathLike) -> dict:
    """The key of a study: its key folder or ``key.json``."""
    path = Path(path)
    file = path / "key.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{path}: no answer key (key.json) here; it is the folder medti reader-study make wrote "
                         "beside the study (<study>-key)")
    try:
        key = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: cannot read the key ({exc})") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        if isinstance(key, dict) and key.get("format") == ANSWERS_FORMAT:
            raise InputError(f"{file}: this is an answers file, not the key; give the key folder with --key")
        what = key.get("format") if isinstance(key, dict) else None
        raise InputError(f"{file}: not a reader-study key (format {what!r})")
    return key


def answer_files(paths: Iterable[PathLike]) -> list[Path]:
    """Answer files from files and folders (a folder: its ``*.json``)."""
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.glob("*.json") if f.is_file())
            if not found:
                raise InputError(f"{p}: no answers files (*.json) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such answers file or folder")
    if not files:
        raise InputError("no answers files given")
    return files


def read_answers(path: PathLike, key: dict, allow_incomplete: bool = False) -> dict:
    """One reader's answers file, checked against the key: ``{"reader", "path", "answers": {item: record},
    "missing": [items]}``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable answers file ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != ANSWERS_FORMAT:
        what = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{path}: not a reader-study answers file (format {what!r}); export it from the study page")
    study, title = key["study_id"], key.get("title", "")
    if doc.get("study_id") != study:
        raise InputError(f"{path}: answers for study {doc.get('study_id')!r} ({doc.get('title', '?')}), not for "
                         f"this study {study} ({title}): a file of another study, or the wrong key")
    reader = doc.get("reader")
    if reader not in key["readers"]:
        raise InputError(f"{path}: reader {reader!r} is not one of this study's readers ({', '.join(key['readers'])})")
    records = doc.get("answers")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "item" in r and "answer" in r
                                                for r in records):
        raise InputError(f"{path}: 'answers' must be a list of {{item, answer}} records")
    answers: dict[str, dict] = {}
    for rec in records:
        item = rec["item"]
        if item in answers:
            n = sum(r["item"] == item for r in records)
            raise InputError(f"{path}: reader {reader} answered item {item} {n} times; the page exports one answer "
                             "per image (was the file edited or merged?)")
        if item not in key["items"]:
            raise InputError(f"{path}: item {item!r} is not in study {study}")
        case = key["cases"][key["items"][item]["case"]]
        valid = _valid_answers(key, case)
        if rec["answer"] not in valid:
            raise InputError(f"{path}: item {item} ({case['task']}): answer {rec['answer']!r} is not one of "
                             f"{', '.join(map(str, valid))}")
        answers[item] = rec
    expected = [o[0] for o in key["orders"][reader]]
    missing = [i for i in expected if i not in answers]
    if missing and not allow_incomplete:
        raise InputError(f"{path}: reader {reader} answered {len(expected) - len(missing)} of {len(expected)} "
                         f"images ({len(missing)} missing, e.g. {', '.join(missing[:3])}); finish in the page and "
                         "export again, or score with --allow-incomplete")
    if missing:
        log.warning("%s: reader %s left %d of %d images unanswered; scoring the answered ones", path, reader,
                    len(missing), len(expected))
    return {"reader": reader, "path": str(path), "answers": answers, "missing": missing,
            "exported": doc.get("exported"), "user_agent": doc.get("user_agent")}


def _valid_answers(key: dict, case: dict) -> list:
    if case["task"] == "real-or-synthetic":
        return ["real", "synthetic"]
    if case["task"] == "which-class":
        return list(key["classes"])
    return list(case["images"])


def responses(key: dict, readers: list[dict]) -> list[dict]:
    """Every reading with its truth, in each reader's order: reader, position, item, case, task, class, look (1:
    the reader's first look at the case, 2: the repeat), source, truth, answer, correct; which-better: the set
    preferred (``preferred``), ``chose_a`` and the side."""
    rows = []
    for r in readers:
        seen: dict[str, int] = {}
        for position, (item, _swap) in enumerate(key["orders"][r["reader"]], start=1):
            rec = r["answers"].get(item)
            case_id = key["items"][item]["case"]
            case = key["cases"][case_id]
            look = seen.get(case_id, 0) + 1
            seen[case_id] = look
            if rec is None:
                continue
            row = {"reader": r["reader"], "position": position, "item": item, "case": case_id,
                   "task": case["task"], "class": case["class"], "look": look, "answer": rec["answer"],
                   "ms": rec.get("ms"), "changes": rec.get("changes", 0)}
            if case["task"] == "which-better":
                chose_a = rec["answer"] == case["a"]
                row.update(source=None, truth=None, correct=None, chose_a=chose_a, side=rec.get("side"),
                           preferred=case["a_source"] if chose_a else case["b_source"])
            else:
                row.update(source=case["source"], truth=case["truth"], correct=rec["answer"] == case["truth"],
                           chose_a=None, side=None, preferred=None)
            rows.append(row)
    return rows


# -- statistics ------------------------------------------------------------------------------------------------

def _count(rows, pred) -> int:
    return sum(1 for r in rows if pred(r))


def realism_stats(rows: list[dict], classes: list[str], confidence: float) -> dict:
    def block(rs):
        syn = [r for r in rs if r["truth"] == "synthetic"]
        real = [r for r in rs if r["truth"] == "real"]
        return {"accuracy": proportion(_count(rs, lambda r: r["correct"]), len(rs), 0.5, confidence),
                "sensitivity": proportion(_count(syn, lambda r: r["answer"] == "synthetic"), len(syn), 0.5,
                                          confidence),
                "specificity": proportion(_count(real, lambda r: r["answer"] == "real"), len(real), 0.5, confidence)}

    out = block(rows)
    out["classes"] = {c: block([r for r in rows if r["class"] == c]) for c in classes}
    return out


def which_class_stats(rows: list[dict], classes: list[str], confidence: float) -> dict:
    k = len(classes)
    out = {}
    for source in ("synthetic", "real"):
        rs = [r for r in rows if r["source"] == source]
        per_class = {}
        for c in classes:
            pos = [r for r in rs if r["truth"] == c]
            neg = [r for r in rs if r["truth"] != c]
            per_class[c] = {
                "sensitivity": proportion(_count(pos, lambda r, c=c: r["answer"] == c), len(pos), 1 / k, confidence),
                "specificity": proportion(_count(neg, lambda r, c=c: r["answer"] != c), len(neg), 1 - 1 / k,
                                          confidence)}
        out[source] = {"accuracy": proportion(_count(rs, lambda r: r["correct"]), len(rs), 1 / k, confidence),
                       "classes": per_class,
                       "confusion": [[_count(rs, lambda r, t=t, a=a: r["truth"] == t and r["answer"] == a)
                                      for a in classes] for t in classes]}
    s, r = out["synthetic"]["accuracy"], out["real"]["accuracy"]
    out["synthetic_minus_real"] = fisher_difference(s["k"], s["n"], r["k"], r["n"])
    return out


def preference_stats(rows: list[dict], classes: list[str], confidence: float) -> dict:
    def block(rs):
        return {"preference_a": proportion(_count(rs, lambda r: r["chose_a"]), len(rs), 0.5, confidence),
                "left": proportion(_count(rs, lambda r: r["side"] == "left"),
                                   _count(rs, lambda r: r["side"] in ("left", "right")), 0.5, confidence)}

    out = block(rows)
    out["classes"] = {c: block([r for r in rows if r["class"] == c]) for c in classes}
    return out


TASK_STATS = {"real-or-synthetic": realism_stats, "which-class": which_class_stats, "which-better": preference_stats}


def _category(row: dict):
    """What agreement compares: the answer, or for which-better the set preferred (not the side)."""
    return row["answer"] if row["task"] != "which-better" else ("a" if row["chose_a"] else "b")


def _categories(key: dict, task: str) -> list:
    return {"real-or-synthetic": ["real", "synthetic"], "which-class": list(key["classes"]),
            "which-better": ["a", "b"]}[task]


def agreement(rows: list[dict], readers: list[str], categories: list, confidence: float, n_boot: int,
              seed: int) -> dict | None:
    """Inter-reader agreement over the cases every reader answered (first looks): Cohen's kappa for two readers,
    Fleiss' for more (with every pair's Cohen's kappa); None with one reader."""
    if len(readers) < 2:
        return None
    first = {(r["reader"], r["case"]): _category(r) for r in rows if r["look"] == 1}
    cases = sorted({c for (_, c) in first})
    common = [c for c in cases if all((rd, c) in first for rd in readers)]
    ratings = [[first[(rd, c)] for c in common] for rd in readers]
    out = kappa_with_interval(ratings, categories, confidence, n_boot, seed)
    out["readers"] = list(readers)
    if len(readers) > 2:
        out["pairs"] = {f"{a}|{b}": kappa_with_interval([ratings[i], ratings[j]], categories, confidence, n_boot,
                                                        seed)
                        for (i, a), (j, b) in combinations(enumerate(readers), 2)}
    return out


def reader_consistency(rows: list[dict], categories: list, confidence: float, n_boot: int, seed: int) -> dict:
    """Per reader (and pooled) the repeats answered the same way at both looks."""
    looks: dict[tuple[str, str], dict[int, object]] = {}
    for r in rows:
        looks.setdefault((r["reader"], r["case"]), {})[r["look"]] = _category(r)
    pairs: dict[str, list[tuple]] = {}
    for (reader, _case), got in looks.items():
        if 1 in got and 2 in got:
            pairs.setdefault(reader, []).append((got[1], got[2]))
    out = {"readers": {}, "pooled": None}
    for reader, ps in pairs.items():
        out["readers"][reader] = consistency([a for a, _ in ps], [b for _, b in ps], categories, confidence, n_boot,
                                             seed)
    every = [p for ps in pairs.values() for p in ps]
    if every:
        out["pooled"] = consistency([a for a, _ in every], [b for _, b in every], categories, confidence, n_boot,
                                    seed)
    return out


def analyse(key: dict, rows: list[dict], readers: list[str], confidence: float = 0.95,
            n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """Every statistic of every task: ``{task: {"readers": {reader: ...}, "pooled": ..., "agreement": ...,
    "consistency": ...}}``."""
    classes = list(key["classes"])
    tasks = {}
    for task in key["tasks"]:
        rs = [r for r in rows if r["task"] == task]
        first = [r for r in rs if r["look"] == 1]
        stats = TASK_STATS[task]
        block = {"readers": {rd: stats([r for r in first if r["reader"] == rd], classes, confidence)
                             for rd in readers},
                 "pooled": stats(first, classes, confidence),
                 "agreement": agreement(rs, readers, _categories(key, task), confidence, n_boot, seed),
                 "consistency": reader_consistency(rs, _categories(key, task), confidence, n_boot, seed)}
        if task == "which-better":
            block["a"], block["b"] = key["compare"]
        tasks[task] = block
    return tasks


# -- metrics ---------------------------------------------------------------------------------------------------

def _share(out: dict, name: str, prop: dict | None, p_name: str | None = None) -> None:
    if not prop or prop.get("rate") is None:
        return
    out[name] = prop["rate"]
    out[f"{name}_ci_low"], out[f"{name}_ci_high"] = prop["ci_low"], prop["ci_high"]
    if prop.get("p_value") is not None:
        out[p_name or f"{name}_p"] = prop["p_value"]
    out[f"{name}_n"] = prop["n"]


def _kappa(out: dict, block: dict) -> None:
    ag = block.get("agreement")
    if ag and ag.get("kappa") is not None:
        out["kappa"] = ag["kappa"]
        if ag.get("ci_low") is not None:
            out["kappa_ci_low"], out["kappa_ci_high"] = ag["ci_low"], ag["ci_high"]
    pooled = (block.get("consistency") or {}).get("pooled")
    if pooled and pooled["agreement"]["rate"] is not None:
        out["consistency"] = pooled["agreement"]["rate"]
        out["consistency_n"] = pooled["agreement"]["n"]


def metrics_of(results: dict) -> dict:
    """The numbers a pipeline tracks (metrics.json, MLflow): pooled figures per task, kappa, consistency, and
    each reader's headline; numbers only, no None."""
    out: dict = {"readers": len(results["readers"]),
                 "answered": sum(v["answered"] for v in results["complete"].values())}
    per_reader: dict[str, dict] = {r: {} for r in results["readers"]}
    for task, block in results["tasks"].items():
        m: dict = {}
        pooled = block["pooled"]
        if task == "real-or-synthetic":
            _share(m, "accuracy", pooled["accuracy"])
            _share(m, "sensitivity", pooled["sensitivity"])
            _share(m, "specificity", pooled["specificity"])
            for r, b in block["readers"].items():
                if b["accuracy"]["rate"] is not None:
                    per_reader[r]["real_or_synthetic_accuracy"] = b["accuracy"]["rate"]
        elif task == "which-class":
            _share(m, "accuracy_synthetic", pooled["synthetic"]["accuracy"])
            _share(m, "accuracy_real", pooled["real"]["accuracy"])
            diff = pooled["synthetic_minus_real"]
            if diff["difference"] is not None:
                m["synthetic_minus_real"], m["synthetic_minus_real_p"] = diff["difference"], diff["p_value"]
            for r, b in block["readers"].items():
                for source in ("synthetic", "real"):
                    if b[source]["accuracy"]["rate"] is not None:
                        per_reader[r][f"which_class_accuracy_{source}"] = b[source]["accuracy"]["rate"]
        else:
            _share(m, "preference_a", pooled["preference_a"])
            _share(m, "left", pooled["left"])
            for r, b in block["readers"].items():
                if b["preference_a"]["rate"] is not None:
                    per_reader[r]["which_better_preference_a"] = b["preference_a"]["rate"]
        _kappa(m, block)
        out[task.replace("-", "_")] = m
    out["per_reader"] = {r: v for r, v in per_reader.items() if v}
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[f"{prefix}{k}"] = float(v)
    return flat


# -- API -------------------------------------------------------------------------------------------------------

def score_study(key: PathLike | dict, answers: PathLike | Sequence[PathLike], out: PathLike | None = None, *,
                allow_incomplete: bool = False, confidence: float = 0.95, bootstrap: int = DEFAULT_BOOTSTRAP,
                seed: int | None = None, params: dict | None = None, modality: str | None = None) -> dict:
    """Score a study: ``key`` (its key folder, key.json, or the loaded key), ``answers`` (answers files and
    folders of them). Returns the results (also results.json); with ``out`` writes the summary, figures, metrics
    and the responses there; with ``params`` also tracks the run in MLflow. ``seed`` (of the bootstrap) defaults
    to the study's."""
    if not 0 < confidence < 1:
        from medti.errors import ConfigError

        raise ConfigError(f"--confidence {confidence}: must lie between 0 and 1")
    key = key if isinstance(key, dict) else load_key(key)
    files = answer_files([answers] if isinstance(answers, (str, os.PathLike)) else answers)
    readers_read, by_reader = [], {}
    for f in files:
        r = read_answers(f, key, allow_incomplete)
        if r["reader"] in by_reader:
            raise InputError(f"{by_reader[r['reader']]['path']} and {f}: both hold reader {r['reader']}'s answers; "
                             "score one file per reader")
        by_reader[r["reader"]] = r
        readers_read.append(r)
    readers = [r for r in key["readers"] if r in by_reader]
    ordered = [by_reader[r] for r in readers]
    absent = [r for r in key["readers"] if r not in by_reader]
    if absent:
        log.warning("no answers from %s: scoring %s", ", ".join(absent), ", ".join(readers))
    rows = responses(key, ordered)
    seed = int(key.get("seed", 0) if seed is None else seed)
    results = {"study_id": key["study_id"], "title": key.get("title"), "readers": readers,
               "readers_without_answers": absent, "classes": key["classes"], "compare": key.get("compare"),
               "confidence": confidence, "bootstrap": int(bootstrap), "seed": seed,
               "scored": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "complete": {r["reader"]: {"answered": len(r["answers"]),
                                          "items": len(key["orders"][r["reader"]]), "file": Path(r["path"]).name}
                            for r in ordered},
               "methods": methods_text(confidence, int(bootstrap), seed),
               "tasks": analyse(key, rows, readers, confidence, int(bootstrap), seed)}
    results["metrics"] = metrics_of(results)
    if out is not None:
        write_outputs(Path(out), key, results, rows, params=params, modality=modality)
    return results


def methods_text(confidence: float, n_boot: int, seed: int) -> dict:
    return {"intervals": f"{CI_METHOD} {confidence:.0%} intervals for every share",
            "tests": "exact two-sided binomial tests (scipy.stats.binomtest) against chance: 0.5 for "
                     "real-or-synthetic and for the preference, 1/K for which-class accuracy and sensitivity, "
                     "1 - 1/K for which-class specificity (K classes); Fisher's exact test for synthetic vs real "
                     "which-class accuracy",
            "pooling": "pooled figures count every reading as independent, which overstates their precision when "
                       "readers differ; the per-reader figures do not",
            "looks": "each reader's first look at a case counts; the repeated look counts only for consistency",
            "kappa": f"Cohen's kappa (two readers) or Fleiss' kappa (more), over the cases every reader answered; "
                     f"{confidence:.0%} {KAPPA_CI_METHOD} ({n_boot} resamples, seed {seed}); which-better compares "
                     "the set preferred, not the side",
            "consistency": "share of repeated cases answered the same way at both looks (exact interval), and "
                           "Cohen's kappa between the looks"}


def write_outputs(out: Path, key: dict, results: dict, rows: list[dict], params: dict | None = None,
                  modality: str | None = None) -> None:
    from medti.atomic import atomic_dir, sweep_stale_temporaries, write_json
    from medti.reader_study.summary import build_summary
    from medti.tracking import track

    sweep_stale_temporaries(out.parent, name=out.name)
    tags = {"study_id": key["study_id"], "modality": modality, "readers": ",".join(results["readers"])}
    with track(params, "reader-study", run_name=f"reader-study/{modality or key['study_id']}", tags=tags) as tracker:
        with atomic_dir(out) as tmp:
            figures = build_summary(tmp, key, results)
            write_json(tmp / "results.json", results)
            write_json(tmp / "metrics.json", results["metrics"])
            (tmp / "responses.csv").write_text(_responses_csv(rows), encoding="utf-8")
        tracker.log_params({"reader_study": {"study_id": key["study_id"], "readers": ",".join(results["readers"]),
                                             "tasks": ",".join(key["tasks"]), "confidence": results["confidence"],
                                             "bootstrap": results["bootstrap"]}})
        tracker.log_metrics({f"reader_study.{k}": v for k, v in _flatten(results["metrics"]).items()})
        for name in figures:
            tracker.log_artifact(out / "figures" / name, "reader_study/figures")
        for name in ("summary.md", "summary.html", "metrics.json"):
            tracker.log_artifact(out / name, "reader_study")
    log.info("reader study %s scored: %s", key["study_id"], out / "summary.html")


RESPONSE_COLUMNS = ["reader", "position", "item", "case", "task", "class", "look", "source", "truth", "answer",
                    "correct", "preferred", "chose_a", "side", "ms", "changes"]


def _responses_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESPONSE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RESPONSE_COLUMNS})
    return buf.getvalue()

