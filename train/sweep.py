"""A sweep: one recipe's rows, one training run (workdir) each, and a table of their results.

A recipe with rows (a module-level ``ROWS``, e.g. ``train/configs/malaria_zoo.py``) is run
row by row as ordinary training commands, ``<train> --config <recipe>:<row> --workdir
<out>/<row> [--config.KEY=VALUE ...]``, each in its own process (a failure or the memory of
one row does not touch the others). The sweep is resumable: ``<out>/sweep.json`` records
each row's command, state, attempts and wall time; a finished row with the same command is
skipped, an interrupted or failed one is run again (training resumes from its newest
checkpoint). After every row it writes ``<out>/sweep.csv`` and ``<out>/sweep.md``: model,
init, policy, px, epochs, wall time, img/s, held-out accuracy, sensitivity, specificity,
ROC AUC and the command.

The training command is a parameter (``scripts/sweep.py`` passes ``python -m
scripts.train``), so this module depends on nothing above ``train``.
"""

from __future__ import annotations

import collections
import csv
import difflib
import importlib
import io
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from train import configs, logs
from train import workdir as W
from train.errors import UserError

log = logging.getLogger(__name__)

STATE = "sweep.json"
COLUMNS = ("row", "model", "init", "policy", "px", "epochs", "wall_s", "img_per_s",
           "accuracy", "sensitivity", "specificity", "roc_auc", "status", "command")
TAIL = 40  # stderr lines of a row kept to name its failure


class SweepError(UserError):
    """A sweep that cannot start (unknown rows, a recipe without rows, a bad override)."""


def recipe_rows(recipe: str) -> tuple[str, ...]:
    """The ``ROWS`` of a packaged recipe (by name) or a recipe file."""
    path = configs.resolve(recipe)
    if ":" in os.path.basename(path):
        raise SweepError(f"--config {recipe!r}: give the recipe alone; its rows are the "
                         "argument a sweep passes (--rows)")
    spec = importlib.util.spec_from_file_location(f"_sweep_recipe_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = getattr(module, "ROWS", None)
    if not rows:
        raise SweepError(f"recipe {recipe!r} has no ROWS to sweep (a module-level tuple of the "
                         "arguments its get_config takes, as in train/configs/malaria_zoo.py)")
    return tuple(rows)


def select(all_rows: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """``wanted`` (None or ``['all']``: every row) checked against ``all_rows``, in the order
    given."""
    if not wanted or list(wanted) == ["all"]:
        return list(all_rows)
    unknown = [r for r in wanted if r not in all_rows]
    if unknown:
        raise SweepError(f"unknown rows {', '.join(unknown)}; rows: {', '.join(all_rows)}")
    return list(dict.fromkeys(wanted))


def check_overrides(sets: Sequence[str]) -> list[str]:
    """``KEY=VALUE`` overrides for every row, keys checked against the config's keys
    (``train/configs/base.py``) before anything runs; returned as ``--config.KEY=VALUE``."""
    from train.configs import base

    known = set(W.flat(W.config_json(base.get_config())))
    out = []
    for s in sets:
        key, eq, _ = s.partition("=")
        if not eq:
            raise SweepError(f"--set {s!r}: use KEY=VALUE, e.g. data.source=folder:cells")
        if key not in known and not key.startswith("model."):
            close = difflib.get_close_matches(key, known, n=2)
            raise SweepError(f"--set {s!r}: no config key {key!r}"
                             + (f" (did you mean {' or '.join(close)}?)" if close else
                                "; train/configs/base.py lists the keys"))
        out.append(f"--config.{s}")
    return out


def row_command(train: Sequence[str], recipe: str, row: str, out: str,
                overrides: Sequence[str], overwrite: bool = False) -> list[str]:
    """The training command of one row."""
    return [*train, "--config", f"{recipe}:{row}", "--workdir", os.path.join(out, row),
            *overrides, *(["--overwrite"] if overwrite else [])]


def shown(command: Sequence[str], train: Sequence[str], name: str) -> str:
    """A command as a user types it: ``name`` in place of the training command."""
    return " ".join([name, *map(shlex.quote, command[len(train):])])


# --------------------------------------------------------------------------- state


def read_state(out: str) -> dict[str, Any]:
    path = os.path.join(out, STATE)
    if not os.path.exists(path):
        return {"rows": {}}
    return W.read_json(path, "sweep's record")


def finished(out: str, row: str, entry: dict | None, command: Sequence[str]) -> bool:
    """Whether ``row`` ran to its end with this command (``--overwrite`` aside: a row
    finished under it is the same run). With ``overwrite`` a sweep runs every row again:
    an unchanged finished one only re-evaluates, a changed one starts again."""
    def plain(c):
        return [a for a in c if a != "--overwrite"]

    return bool(entry and entry.get("status") == "done"
                and plain(entry.get("command", [])) == plain(command)
                and os.path.exists(os.path.join(out, row, "eval_test.json")))


def run(recipe: str, out: str, train: Sequence[str], *, rows: Sequence[str] | None = None,
        sets: Sequence[str] = (), overwrite: bool = False, keep_going: bool = True,
        name: str = "transfer-zoo train",
        echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        ) -> list[dict[str, Any]]:
    """Run the sweep (see the module docstring); the table's rows. ``train`` is the training
    command (argv prefix), ``name`` how the table shows it; ``echo`` gets each row's output
    lines. With ``keep_going`` a failed row is recorded and the next one runs."""
    names = select(recipe_rows(recipe), rows)
    overrides = check_overrides(sets)
    os.makedirs(out, exist_ok=True)
    with W.Lock(out):
        state = read_state(out)
        state["recipe"] = recipe
        for i, row in enumerate(names, 1):
            command = row_command(train, recipe, row, out, overrides, overwrite)
            entry = state["rows"].get(row)
            if not overwrite and finished(out, row, entry, command):
                log.info("sweep %d/%d %s: finished before, skipped", i, len(names), row)
                continue
            entry = {"command": list(command), "shown": shown(command, train, name),
                     "attempts": (entry or {}).get("attempts", 0) + 1,
                     # the row's time, over its attempts since it last started afresh
                     "wall_s": 0.0 if overwrite else (entry or {}).get("wall_s", 0.0),
                     "status": "running"}
            state["rows"][row] = entry
            W.write_json(os.path.join(out, STATE), state)
            log.info("sweep %d/%d %s: %s", i, len(names), row, entry["shown"])
            t0 = time.perf_counter()
            code, tail = _run_row(command, row, echo)
            entry["wall_s"] += time.perf_counter() - t0
            entry["status"] = "done" if code == 0 else "failed"
            entry["error"] = None if code == 0 else _last_error(tail, code)
            W.write_json(os.path.join(out, STATE), state)
            write_tables(out, state)
            if code != 0:
                log.warning("sweep %s failed (%s); its log: %s", row, entry["error"],
                            os.path.join(out, row, W.LOG_NAME))
                if not keep_going:
                    break
        write_tables(out, state)
    return table(out, state)


def _run_row(command: Sequence[str], row: str, echo: Callable[[str], None]
             ) -> tuple[int, list[str]]:
    """Run one row's command, its output lines passed to ``echo`` prefixed with the row; the
    exit status and the last lines of its output."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, errors="replace")
    try:
        for line in proc.stdout:
            for part in line.rstrip("\n").split("\r"):  # progress bars redraw with \r
                if part.strip():
                    tail.append(part)
                    echo(f"[{row}] {part}")
        return proc.wait(), list(tail)
    except BaseException:
        proc.terminate()  # interrupted: the row stops too (and resumes next time)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def _last_error(tail: Sequence[str], code: int) -> str:
    """The line that names a failed row's error (the one-line ``error: ...`` of the CLI)."""
    for line in reversed(tail):
        if line.startswith("error: ") or "Error" in line:
            return line.removeprefix("error: ")
    return f"exit status {code}"


# --------------------------------------------------------------------------- the table


def summarize(workdir: str) -> dict[str, Any]:
    """The table's columns for a finished run in ``workdir`` (empty where it has none)."""
    out: dict[str, Any] = {}
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        c = W.flat(W.read_json(config_path, "config of the run"))
        out.update(model=_model(c), init=c.get("init") or "random", policy=c.get("policy"),
                   px=c.get("data.image_size"), epochs=c.get("epochs"))
    stages_path = os.path.join(workdir, "stages.json")
    if os.path.exists(stages_path):  # a staged run: each stage's policy and epochs
        done = W.read_json(stages_path, "record of the stages")
        out["policy"] = " + ".join(str(s["policy"]) for s in done)
        out["epochs"] = " + ".join(str(s["epochs"]) for s in done)
    train = [r for r in logs.read_history(workdir)
             if r.get("split") == "train" and "images_per_s" in r]
    last = [r for r in train if r.get("stage", 0) == max(r.get("stage", 0) for r in train)]
    if last:  # the median epoch of the (last stage's) training: compilation is an outlier
        rates = sorted(r["images_per_s"] for r in last)
        out["img_per_s"] = rates[len(rates) // 2]
    result = os.path.join(workdir, "eval_test.json")
    if os.path.exists(result):
        r = W.read_json(result, "test result")
        out.update({k: r.get(k) for k in ("accuracy", "sensitivity", "specificity", "roc_auc")})
        if r.get("tta") and out.get("policy"):  # the test figures are test-time augmented
            out["policy"] = f"{out['policy']}, tta {r['tta']}"
    return out


def _model(c: dict[str, Any]) -> str:
    extra = [f"{k.split('.', 1)[1]} {v}" for k, v in sorted(c.items())
             if k.startswith("model.") and k != "model.name"]
    return " ".join([str(c.get("model.name")), *extra])


def table(out: str, state: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per row of the record, in its order: the columns of :data:`COLUMNS`."""
    rows = []
    for row, entry in state["rows"].items():
        status = entry.get("status")
        if status == "failed":
            status = f"failed: {entry.get('error')}"
        rows.append({"row": row, **summarize(os.path.join(out, row)),
                     "wall_s": round(entry.get("wall_s", 0.0), 1), "status": status,
                     "command": entry.get("shown")})
    return rows


def write_tables(out: str, state: dict[str, Any]) -> None:
    """``sweep.csv`` and ``sweep.md`` from the record and the rows' workdirs."""
    rows = table(out, state)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write(os.path.join(out, "sweep.csv"), buf.getvalue())
    _write(os.path.join(out, "sweep.md"), markdown(rows))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table in Markdown; accuracy in bold where it reaches 0.93."""
    head = ["row", "model", "init", "policy", "px", "epochs", "wall", "img/s", "test acc.",
            "sens.", "spec.", "ROC AUC", "status", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = r.get("accuracy")
        cells = [r["row"], r.get("model"), r.get("init"), r.get("policy"), r.get("px"),
                 r.get("epochs"), _duration(r.get("wall_s")), _num(r.get("img_per_s"), 1),
                 (f"**{acc:.4f}**" if acc is not None and acc >= 0.93 else _num(acc, 4)),
                 _num(r.get("sensitivity"), 4), _num(r.get("specificity"), 4),
                 _num(r.get("roc_auc"), 4), r.get("status"),
                 f"`{r['command']}`" if r.get("command") else ""]
        lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "\\|")
                                       for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x: Any, digits: int) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return ""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
