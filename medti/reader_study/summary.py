"""The scored study as people read it: summary.md and summary.html (one self-contained page, figures inlined)
with the figures in figures/ (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medti.report.document import Document, Figure, Table, fmt, fmt_p, render_html, render_markdown

FIGURES = {"real-or-synthetic": "real_or_synthetic.png", "which-class": "which_class.png",
           "which-better": "which_better.png", "agreement": "agreement.png"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _ci(p: dict | None) -> str:
    if not p or p.get("rate") is None:
        return "–"
    return f"{fmt(p['rate'], 2)} [{fmt(p['ci_low'], 2)}, {fmt(p['ci_high'], 2)}]"


def _kn(p: dict | None) -> str:
    return "–" if not p else f"{p['k']}/{p['n']}"


def _kappa(k: dict | None) -> str:
    if not k or k.get("kappa") is None:
        return "–" if not k else "undefined"
    ci = f" [{fmt(k['ci_low'], 2)}, {fmt(k['ci_high'], 2)}]" if k.get("ci_low") is not None else ""
    return f"{fmt(k['kappa'], 2)}{ci}"


# -- figures ---------------------------------------------------------------------------------------------------

def _intervals(ax, labels: list[str], series: dict[str, list[dict]], chance: float | None, ylabel: str,
               title: str) -> None:
    """Shares with their intervals, one group per label, one marker per series."""
    x = np.arange(len(labels), dtype=float)
    width = 0.7 / max(1, len(series))
    series = {k: v for k, v in series.items() if any(p and p.get("rate") is not None for p in v)}
    for i, (name, props) in enumerate(series.items()):
        xs = x - 0.35 + width * (i + 0.5)
        rate = np.array([p["rate"] if p and p["rate"] is not None else np.nan for p in props], dtype=float)
        lo = np.array([p["ci_low"] if p and p["rate"] is not None else np.nan for p in props], dtype=float)
        hi = np.array([p["ci_high"] if p and p["rate"] is not None else np.nan for p in props], dtype=float)
        ax.errorbar(xs, rate, yerr=[rate - lo, hi - rate], fmt="o", capsize=3, color=f"C{i}", label=name)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")


def realism_figure(block: dict, readers: list[str], classes: list[str], path: Path) -> None:
    from medti.atomic import save_figure

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [*readers, "pooled"]
    blocks = [*(block["readers"][r] for r in readers), block["pooled"]]
    _intervals(a1, labels, {m: [b[m] for b in blocks] for m in ("accuracy", "sensitivity", "specificity")}, 0.5,
               "share", "Real or synthetic, per reader")
    cls = [block["pooled"]["classes"][c] for c in classes]
    _intervals(a2, classes, {m: [b[m] for b in cls] for m in ("accuracy", "sensitivity", "specificity")}, 0.5,
               "share", "Per class, pooled (sensitivity: synthetic found)")
    fig.tight_layout()
    save_figure(fig, path)


def which_class_figure(block: dict, readers: list[str], classes: list[str], path: Path) -> None:
    from medti.atomic import save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    labels = [*readers, "pooled"]
    blocks = [*(block["readers"][r] for r in readers), block["pooled"]]
    _intervals(axes[0], labels, {s: [b[s]["accuracy"] for b in blocks] for s in ("synthetic", "real")},
               1 / len(classes), "accuracy", "Which class: accuracy")
    for ax, source in zip(axes[1:], ("synthetic", "real")):
        m = np.array(block["pooled"][source]["confusion"], dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=8)
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)))
        ax.set_yticklabels(classes, fontsize=8)
        ax.set_xlabel("answered")
        ax.set_ylabel("shown")
        ax.set_title(f"{source} images, pooled", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def preference_figure(block: dict, readers: list[str], classes: list[str], path: Path) -> None:
    from medti.atomic import save_figure

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [*readers, "pooled"]
    blocks = [*(block["readers"][r] for r in readers), block["pooled"]]
    _intervals(a1, labels, {f"prefers {block['a']}": [b["preference_a"] for b in blocks],
                            "left side chosen": [b["left"] for b in blocks]}, 0.5, "share",
               f"Which is better: {block['a']} vs {block['b']}")
    _intervals(a2, classes, {f"prefers {block['a']}": [block["pooled"]["classes"][c]["preference_a"]
                                                        for c in classes]}, 0.5, "share", "Per class, pooled")
    fig.tight_layout()
    save_figure(fig, path)


def agreement_figure(results: dict, path: Path) -> bool:
    from medti.atomic import save_figure

    tasks = results["tasks"]
    kappas = {t: b["agreement"] for t, b in tasks.items() if b["agreement"] and b["agreement"]["kappa"] is not None}
    consist = {(r, t): c for t, b in tasks.items() for r, c in b["consistency"]["readers"].items()}
    if not kappas and not consist:
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(kappas)
    k = np.array([kappas[t]["kappa"] for t in names], dtype=float)
    lo = np.array([kappas[t]["ci_low"] if kappas[t]["ci_low"] is not None else np.nan for t in names], dtype=float)
    hi = np.array([kappas[t]["ci_high"] if kappas[t]["ci_high"] is not None else np.nan for t in names], dtype=float)
    if names:
        a1.errorbar(range(len(names)), k, yerr=[k - lo, hi - k], fmt="o", capsize=3)
        a1.set_xticks(range(len(names)))
        a1.set_xticklabels(names, fontsize=8)
    a1.axhline(0, color="grey", linestyle="--", linewidth=1)
    a1.set_ylim(-1.02, 1.02)
    a1.set_ylabel("kappa")
    a1.set_title("Agreement between readers" if names else "Agreement between readers (needs two readers)",
                 fontsize=10)
    readers = results["readers"]
    series = {t: [consist.get((r, t), {}).get("agreement") for r in readers] for t in tasks}
    series = {t: v for t, v in series.items() if any(v)}
    if series:
        _intervals(a2, readers, series, None, "same answer at both looks", "Consistency on repeated cases")
    else:
        a2.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)
    return True


# -- the document ----------------------------------------------------------------------------------------------

def build_summary(out: Path, key: dict, results: dict) -> list[str]:
    """Write figures/, summary.md and summary.html into ``out``; returns the figure file names."""
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    readers, classes, tasks = results["readers"], list(key["classes"]), results["tasks"]
    doc = Document(f"Reader study: {results['title']}")
    doc.heading(1, f"{results['title']}")
    done = ", ".join(f"{r} {v['answered']}/{v['items']}" for r, v in results["complete"].items())
    doc.para(f"Study {results['study_id']}; readers (images answered): {done}; classes: {', '.join(classes)}"
             + (f"; which-better compares {results['compare'][0]} (A) with {results['compare'][1]} (B)"
                if results.get("compare") else "") + f". Scored {results['scored']}.")
    incomplete = [r for r, v in results["complete"].items() if v["answered"] < v["items"]]
    if incomplete:
        doc.warning(f"Incomplete answers from {', '.join(incomplete)}: their figures rest on the images answered.")
    if results["readers_without_answers"]:
        doc.warning(f"No answers from {', '.join(results['readers_without_answers'])}.")
    level = f"{results['confidence']:.0%}"
    written = []
    for task, block in tasks.items():
        path = figures / FIGURES[task]
        if task == "real-or-synthetic":
            _realism_section(doc, block, readers, classes, level)
            realism_figure(block, readers, classes, path)
            caption = "Accuracy, sensitivity (synthetic called synthetic) and specificity (real called real) with " \
                      f"exact {level} intervals; chance is 0.5."
        elif task == "which-class":
            _which_class_section(doc, block, readers, classes)
            which_class_figure(block, readers, classes, path)
            caption = "Which-class accuracy on synthetic and real images (exact intervals; chance 1/K) and the " \
                      "pooled confusion matrices (counts; colour: share of the row)."
        else:
            _preference_section(doc, block, readers, classes, level)
            preference_figure(block, readers, classes, path)
            caption = f"Share of pairs in which {block['a']}'s image was preferred, and of left-hand choices " \
                      "(a side bias), with exact intervals; chance is 0.5."
        doc.add(Figure(path, caption))
        written.append(path.name)
    doc.heading(2, "Agreement between readers and consistency")
    _agreement_section(doc, results, level)
    path = figures / FIGURES["agreement"]
    if agreement_figure(results, path):
        doc.add(Figure(path, "Kappa between readers per task (bootstrap interval over cases) and each reader's "
                             "share of repeated cases answered the same way (exact interval)."))
        written.append(path.name)
    doc.heading(2, "Methods")
    for name, text in results["methods"].items():
        doc.para(f"{name.capitalize()}: {text}.")
    (out / "summary.md").write_text(render_markdown(doc, out), encoding="utf-8")
    (out / "summary.html").write_text(render_html(doc), encoding="utf-8")
    return written


def _realism_section(doc: Document, block: dict, readers: list[str], classes: list[str], level: str) -> None:
    doc.heading(2, "Real or synthetic")
    pooled = block["pooled"]
    acc, sens = pooled["accuracy"], pooled["sensitivity"]
    if acc["rate"] is not None:
        taken = 1 - sens["rate"] if sens["rate"] is not None else None
        doc.para(f"Pooled, the readers told real from synthetic in {acc['k']} of {acc['n']} images ({_ci(acc)}, "
                 f"p = {fmt_p(acc['p_value'])} against chance 0.5)"
                 + (f"; {fmt(taken, 2)} of the synthetic images were taken for real" if taken is not None else "")
                 + ". Accuracy near 0.5 means the synthetic images could not be told apart.")
    rows = [[r, _kn(b["accuracy"]), _ci(b["accuracy"]), fmt_p(b["accuracy"]["p_value"]), _ci(b["sensitivity"]),
             fmt_p(b["sensitivity"]["p_value"]), _ci(b["specificity"]), fmt_p(b["specificity"]["p_value"])]
            for r, b in [*((r, block["readers"][r]) for r in readers), ("pooled", pooled)]]
    doc.add(Table(["reader", "correct", f"accuracy [{level} CI]", "p", "sensitivity", "p", "specificity", "p"], rows,
                  "Sensitivity: synthetic images called synthetic; specificity: real images called real."))
    rows = [[c, _kn(b["accuracy"]), _ci(b["accuracy"]), fmt_p(b["accuracy"]["p_value"]), _ci(b["sensitivity"]),
             _ci(b["specificity"])] for c, b in pooled["classes"].items()]
    doc.add(Table(["class", "correct", "accuracy", "p", "sensitivity", "specificity"], rows, "Per class, pooled."))


def _which_class_section(doc: Document, block: dict, readers: list[str], classes: list[str]) -> None:
    doc.heading(2, "Which class")
    pooled = block["pooled"]
    rows = []
    for r, b in [*((r, block["readers"][r]) for r in readers), ("pooled", pooled)]:
        d = b["synthetic_minus_real"]
        rows.append([r, _kn(b["synthetic"]["accuracy"]), _ci(b["synthetic"]["accuracy"]),
                     fmt_p(b["synthetic"]["accuracy"]["p_value"]), _kn(b["real"]["accuracy"]),
                     _ci(b["real"]["accuracy"]), fmt_p(b["real"]["accuracy"]["p_value"]),
                     fmt(d["difference"], 2), fmt_p(d["p_value"])])
    doc.add(Table(["reader", "synthetic correct", "accuracy", "p", "real correct", "accuracy", "p",
                   "synthetic − real", "p (Fisher)"], rows,
                  f"Accuracy against chance 1/{len(classes)}; the real images are the reference."))
    rows = []
    for c in classes:
        for s in ("synthetic", "real"):
            b = pooled[s]["classes"][c]
            rows.append([c, s, _ci(b["sensitivity"]), fmt_p(b["sensitivity"]["p_value"]), _ci(b["specificity"]),
                         fmt_p(b["specificity"]["p_value"])])
    doc.add(Table(["class", "images", "sensitivity", "p", "specificity", "p"], rows,
                  f"Per class, pooled; chance: sensitivity 1/{len(classes)}, specificity 1 − 1/{len(classes)}."))


def _preference_section(doc: Document, block: dict, readers: list[str], classes: list[str], level: str) -> None:
    doc.heading(2, f"Which is better: {block['a']} or {block['b']}")
    pooled = block["pooled"]
    p = pooled["preference_a"]
    if p["rate"] is not None:
        doc.para(f"Pooled, {block['a']}'s image was preferred in {p['k']} of {p['n']} pairs ({_ci(p)}, "
                 f"p = {fmt_p(p['p_value'])}, two-sided binomial test against 0.5).")
    rows = [[r, _kn(b["preference_a"]), _ci(b["preference_a"]), fmt_p(b["preference_a"]["p_value"]),
             _ci(b["left"]), fmt_p(b["left"]["p_value"])]
            for r, b in [*((r, block["readers"][r]) for r in readers), ("pooled", pooled)]]
    doc.add(Table(["reader", f"prefers {block['a']}", f"share [{level} CI]", "p", "left side chosen", "p"], rows))
    rows = [[c, _kn(b["preference_a"]), _ci(b["preference_a"]), fmt_p(b["preference_a"]["p_value"])]
            for c, b in pooled["classes"].items()]
    doc.add(Table(["class", f"prefers {block['a']}", "share", "p"], rows, "Per class, pooled."))


def _agreement_section(doc: Document, results: dict, level: str) -> None:
    rows = []
    for task, block in results["tasks"].items():
        ag = block["agreement"]
        if ag is None:
            continue
        rows.append([task, "Cohen" if ag["statistic"] == "cohen" else "Fleiss", _kappa(ag),
                     fmt(ag["observed_agreement"], 2), str(ag["n_cases"]), str(ag["n_readers"])])
        for pair, k in (ag.get("pairs") or {}).items():
            rows.append([task, f"Cohen {pair.replace('|', ' vs ')}", _kappa(k), fmt(k["observed_agreement"], 2),
                         str(k["n_cases"]), "2"])
    if rows:
        doc.add(Table(["task", "statistic", f"kappa [{level} CI]", "observed agreement", "cases", "readers"], rows,
                      "Interval: percentile bootstrap over cases."))
    else:
        doc.para("One reader: no agreement between readers to measure.")
    rows = []
    for task, block in results["tasks"].items():
        cons = block["consistency"]
        for r, c in [*cons["readers"].items(), *([("pooled", cons["pooled"])] if cons["pooled"] else [])]:
            rows.append([task, r, _kn(c["agreement"]), _ci(c["agreement"]), _kappa(c["kappa"])])
    if rows:
        doc.add(Table(["task", "reader", "same answer", f"share [{level} CI]", "kappa between looks"], rows,
                      "Consistency: each repeated case answered at two looks."))
