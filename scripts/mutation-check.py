#!/usr/bin/env python3
"""Mutation check (issue 19): plant known bugs one at a time in copies of the repository and see whether the tests
meant to catch each one fail.

For every mutation below: the repository's files (``git ls-files --cached --others --exclude-standard``: what is
tracked plus new files not ignored, as they are in the working tree) are copied into a temporary folder (the
repository itself is only read), one exact text replacement is applied there (it must match exactly once, or the
mutation is reported as *stale*: the code moved and the mutation needs updating), and the covering tests run with
pytest in that copy, with this interpreter, ``PYTHONPATH`` set to the copy (checked: ``import medti`` must load the
copy's package, not the installed editable one).

First the covering tests run once on an unmutated copy (the baseline). A test that does not pass there (fails, or is
skipped, e.g. a GPU test on a CPU machine) cannot tell anything and is left out, and the table says so. A mutation
is *caught* when at least one of its baseline-passing tests fails with the mutation planted; the table counts how
many of them failed.

Prints a Markdown table (bug, covering tests, caught, time) and exits 1 unless every mutation was caught. It is slow
(a few minutes on two CPU cores) and is not part of the test suite or CI: run it after changing the tests or the code
they cover, ``python scripts/mutation-check.py`` (``--only KEY`` for some, ``--list`` to see them, ``--keep`` to
keep the copies and logs, ``--mended`` to add bugs that only the tests mended in issue 19 are asked to catch).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutation:
    key: str
    bug: str
    file: str
    old: str
    new: str
    tests: list[str] = field(default_factory=list)  # pytest node ids or files
    mended: bool = False  # a check of a test mended in issue 19 (run with --mended), not one of the nine bugs


MUTATIONS = [
    # -- the four the suite let through before issue 19 --------------------------------------------------------
    Mutation(
        "labels", "synthetic labels reversed on their way to the classifier", "medti/classifier/data.py",
        "        n_synthetic = len(syn)\n",
        "        syn = syn.assign(label=len(classes) - 1 - syn[\"label\"])  # MUTANT\n        n_synthetic = len(syn)\n",
        ["tests/test_bite_labels.py"],
    ),
    Mutation(
        "first-vector", "generation uses only the first vector of a multi-vector embedding",
        "medti/generate/sampling.py",
        "            full = expand_prompt(text, known)\n",
        "            full = expand_prompt(text, {t: 1 for t in known})  # MUTANT\n",
        ["tests/test_bite_encoding.py",
         "tests/test_generate.py::test_standalone_cli_loads_diffusers_and_a1111_embeddings",
         "tests/test_generate.py::test_pipeline_mode_generates_every_class_with_its_templates_and_tracks"],
    ),
    Mutation(
        "one-sided-p", "bootstrap p-value one-sided (halved)", "medti/evaluate/statistics.py",
        "    return float(min(1.0, 2.0 * min(below, above)))\n",
        "    return float(min(1.0, min(below, above)))  # MUTANT\n",
        ["tests/test_bite_stats.py"],
    ),
    Mutation(
        "90-as-95", "a 90 % interval reported as 95 %", "medti/evaluate/statistics.py",
        "    alpha = (1.0 - confidence) / 2.0\n",
        "    alpha = 1.0 - confidence  # MUTANT\n",
        ["tests/test_bite_stats.py"],
    ),
    # -- the five the suite caught already ---------------------------------------------------------------------
    Mutation(
        "gradient", "the gradient path: GEGLU's gate gradient dropped in the lean backward pass",
        "medti/models/lean_backward.py",
        "        grad_gate = torch.ops.aten.gelu_backward(grad * h, gate)\n",
        "        grad_gate = torch.zeros_like(gate)  # MUTANT\n",
        ["tests/test_lean_backward.py::test_same_gradient_with_a_quarter_fewer_kept_activations",
         "tests/test_lean_backward.py::test_conv_and_geglu_gradients_under_autocast"],
    ),
    Mutation(
        "dropped-token", "a dropped placeholder token: the first sub-token of a multi-vector placeholder left out",
        "medti/models/token_embedding.py",
        "\" \".join(vector_tokens(token, n)), prompt)",
        "\" \".join(vector_tokens(token, n)[1:]), prompt)  # MUTANT",
        ["tests/test_embeddings.py::test_diffusers_loads_medti_file_as_it_is_and_encodes_like_medti",
         "tests/test_textual_inversion.py::test_training_starts_from_the_init_and_moves_only_the_new_vectors",
         "tests/test_bite_encoding.py"],
    ),
    Mutation(
        "unpaired", "unpaired bootstrap resamples (each condition its own)", "medti/evaluate/statistics.py",
        "        w = stratified_weights(labels, stop - start, rng)\n        for name, sets in score_sets.items():\n",
        "        for name, sets in score_sets.items():\n            w = stratified_weights(labels, stop - start, rng)"
        "  # MUTANT\n",
        ["tests/test_stats.py", "tests/test_bite_stats.py"],
    ),
    Mutation(
        "redaction", "redaction switched off", "medti/deid.py",
        "    low = text.lower()\n",
        "    return text  # MUTANT\n    low = text.lower()\n",
        ["tests/test_deid.py::test_redaction_of_messages_and_paths",
         "tests/test_deid.py::test_no_planted_value_reaches_any_output",
         "tests/test_preprocess_phi.py::test_no_name_date_or_mrn_of_a_folder_reaches_anything_written"],
    ),
    Mutation(
        "raw-ids", "raw patient ids written as subject ids", "medti/preprocess/records.py",
        "self.deid.subject(subject_key)",
        "subject_key",
        ["tests/test_preprocess_phi.py::test_two_salts_give_the_same_split_subset_and_image_names",
         "tests/test_deid.py::test_subject_ids_are_salted_hashes_with_the_salt_in_an_untracked_file",
         "tests/test_deid.py::test_no_planted_value_reaches_any_output"],
    ),
]


# -- the tests mended in issue 19, each on its own (--mended): bugs they could not see before ---------------------
MENDED = [
    Mutation(
        "zero-embeddings", "embeddings installed as zeros (files read, vectors ignored)",
        "medti/generate/embedding_install.py",
        "add_placeholder(model.tokenizer, model.text_encoder, emb.token, emb.vectors)",
        "add_placeholder(model.tokenizer, model.text_encoder, emb.token, torch.zeros_like(emb.vectors))  # MUTANT",
        ["tests/test_generate.py::test_blends_interpolate_the_learned_vectors",
         "tests/test_generate.py::test_standalone_cli_loads_diffusers_and_a1111_embeddings",
         "tests/test_generate.py::test_pipeline_mode_generates_every_class_with_its_templates_and_tracks"],
        mended=True,
    ),
    Mutation(
        "no-training", "Textual Inversion takes no optimiser step (with or without checkpointing)",
        "medti/textual_inversion/trainer.py",
        "        else:\n            self.optimizer.step()\n",
        "        else:\n            pass  # MUTANT\n",
        ["tests/test_textual_inversion.py::test_gradient_checkpointing_gives_the_same_vectors"],
        mended=True,
    ),
]


# -- copies ------------------------------------------------------------------------------------------------------

def repository_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def make_copy(files: list[str], dest: Path) -> Path:
    """The repository's files under ``dest``, made a git repository of its own (some tests ask git whether a
    path is ignored); nothing in the original is written."""
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def apply(mutation: Mutation, copy: Path) -> str | None:
    """Plant ``mutation`` in ``copy``; None, or why it is stale."""
    path = copy / mutation.file
    if not path.is_file():
        return f"{mutation.file} does not exist"
    text = path.read_text()
    n = text.count(mutation.old)
    if n != 1:
        return f"the text to replace occurs {n} times in {mutation.file} (needs exactly 1)"
    path.write_text(text.replace(mutation.old, mutation.new))
    return None


def environment(copy: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDTI_PROJECT_ROOT", "MEDTI_SALT_FILE")}
    env["PYTHONPATH"] = str(copy)
    env["MEDTI_TEST_CACHE"] = str(cache)  # the tiny model is built once, for every copy
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_copy(copy: Path, env: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", "import medti; print(medti.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True)
    where = Path(probe.stdout.strip()).resolve()
    if copy.resolve() not in where.parents:
        raise SystemExit(f"mutation-check: the copy's tests would import {where}, not the copy under {copy}")


def pytest(copy: Path, env: dict[str, str], selectors: list[str], log: Path, timeout: int) -> tuple[int, str]:
    """Run pytest on ``selectors`` in ``copy``; (exit status, output). The output is also written to ``log``."""
    cmd = [sys.executable, "-m", "pytest", *selectors, "-q", "-rA", "-p", "no:cacheprovider", "-m", "not slow",
           "--color=no"]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = -1, f"timed out after {timeout} s\n{exc.stdout or ''}"
    log.write_text(output)
    return rc, output


def outcomes(output: str) -> dict[str, str]:
    """node id -> PASSED / FAILED / ERROR, from pytest's ``-rA`` summary."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (\S+)", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def selected(node: str, selectors: list[str]) -> bool:
    return any(node == s or node.startswith(s + "::") or node.startswith(s + "[") for s in selectors)


def short(node: str) -> str:
    return node.removeprefix("tests/")


# -- main --------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="KEY", help="run only these mutations (repeatable)")
    parser.add_argument("--mended", action="store_true",
                        help="also plant bugs that only the tests mended in issue 19 are asked to catch")
    parser.add_argument("--list", action="store_true", help="list the mutations and their covering tests")
    parser.add_argument("--keep", action="store_true", help="keep the copies and pytest logs")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run (default 1200)")
    args = parser.parse_args(argv)

    known = MUTATIONS + MENDED
    pool = known if args.mended or args.only else MUTATIONS
    mutations = [m for m in pool if not args.only or m.key in args.only]
    unknown = sorted(set(args.only or []) - {m.key for m in known})
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)} (have: {', '.join(m.key for m in known)})")
    if args.list:
        for m in known:
            print(f"{m.key}{' (--mended)' if m.mended else ''}: {m.bug} ({m.file})\n  " + "\n  ".join(m.tests))
        return 0

    files = repository_files()
    work = Path(tempfile.mkdtemp(prefix="medti-mutation-"))
    cache = work / "cache"
    print(f"mutation-check: {len(files)} files copied per run, under {work}", file=sys.stderr)
    rows, failed = [], False
    try:
        # The baseline: every covering test on an unmutated copy.
        all_tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
        clean = make_copy(files, work / "baseline")
        env = environment(clean, cache)
        check_imports_copy(clean, env)
        started = time.perf_counter()
        _, output = pytest(clean, env, all_tests, work / "baseline.log", args.timeout)
        baseline = outcomes(output)
        passing = {n for n, o in baseline.items() if o == "PASSED"}
        print(f"mutation-check: baseline {len(passing)} of {len(baseline)} covering tests pass "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        for node, outcome in sorted(baseline.items()):
            if outcome != "PASSED":
                print(f"mutation-check: left out (not passing without a mutation): {outcome} {node}", file=sys.stderr)

        for m in mutations:
            started = time.perf_counter()
            tests = sorted(n for n in passing if selected(n, m.tests))
            left_out = sorted(n for n in baseline if selected(n, m.tests) and n not in passing)
            copy = make_copy(files, work / m.key)
            stale = apply(m, copy)
            by, note, count = "", "", f"0 of {len(tests)}"
            if stale:
                caught = "stale"
                note = stale
            elif not tests:
                caught = "no"
                note = "none of its tests passes without the mutation"
            else:
                env = environment(copy, cache)
                check_imports_copy(copy, env)
                rc, output = pytest(copy, env, tests, work / f"{m.key}.log", args.timeout)
                hits = [n for n, o in outcomes(output).items() if o in ("FAILED", "ERROR")]
                count = f"{len(hits)} of {len(tests)}"
                if rc == 1 and hits:
                    caught, by = "yes", short(hits[0])
                elif rc == 0:
                    caught = "no"
                else:
                    caught, note = "error", f"pytest exit status {rc} (see {work / (m.key + '.log')})"
            seconds = time.perf_counter() - started
            failed |= caught != "yes"
            covering = ", ".join(short(t) for t in m.tests)
            if left_out:
                note = (note + "; " if note else "") + "left out: " + ", ".join(short(n) for n in left_out)
            rows.append((m.bug, f"`{m.file}`", covering, caught, count, f"`{by}`" if by else "", f"{seconds:.0f} s",
                         note))
            print(f"mutation-check: {m.key}: caught {caught} ({seconds:.0f} s) {by}", file=sys.stderr)
            if caught == "yes" and not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
    finally:
        print("| bug | planted in | covering tests | caught | tests failing | first failing test | time | note |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        if args.keep or failed:
            print(f"\ncopies and logs kept under {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
