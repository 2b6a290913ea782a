#!/usr/bin/env python3
"""Validate (and optionally run) NoETL's own e2e corpus with this package.

    git -C <mirror of github noetl/e2e> archive HEAD | tar -x -C /tmp/e2e     # never committed here
    .venv/bin/python scripts/upstream_corpus.py /tmp/e2e                       # validate
    .venv/bin/python scripts/upstream_corpus.py /tmp/e2e --run                 # + run the service-free ones

PATH is a work tree of github ``noetl/e2e`` (its ``fixtures/playbooks`` is read) or any folder of
playbooks. Every playbook is validated in process (parse + validate + sub-playbook references
against the whole corpus, as ``noetl-dagster validate PATH`` does), bounded per file.

Playbooks NoETL itself rejects are classified from their YAML and counted apart:

* parse-time (``noetl/server`` ``parser.rs``/``orchestrate-core`` ``playbook.rs``): not a v2
  ``kind: Playbook``, no ``start`` step, the docs-only ``tool: {kind, spec: {code|url|...}}``
  shape, Python-era duckdb ``commands:``, loop numbers given as templates (``LoopSpec``/
  ``FrameSpec`` are typed numbers), quarantined ``spike/``, NoETL's negative ``broken_playbooks/``;
* run-time (the YAML parses, the worker or renderer then fails every run): a postgres/duckdb tool
  without ``query``/``command`` (``PostgresConfig.query`` is required), a tool template that
  MiniJinja (NoETL's renderer) cannot parse.

The validate % is over the NoETL-valid rest. ``--run`` then runs every NoETL-valid playbook that
validates and uses no service (tool kinds python, noop, duckdb, playbook, workbook only; all kinds
with ``--services``) with ``noetl-dagster run --json`` in a subprocess under ``--run-timeout``,
and prints the run status and each step's status. ``--json`` prints the whole table as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: tool kinds a run needs no outside service for
SERVICE_FREE_KINDS = frozenset({"python", "noop", "duckdb", "playbook", "workbook"})
#: loop fields NoETL's serde types read as numbers (a template there fails NoETL's parser)
LOOP_NUMBERS = ("max_in_flight",)
FRAME_NUMBERS = ("max_rows", "max_seconds", "max_bytes", "lease_seconds", "heartbeat_seconds", "row_concurrency")
#: keys of the docs-only `tool.spec:` shape (tool fields nested under `spec:`, not read by NoETL)
SPEC_TOOL_KEYS = frozenset({"code", "url", "endpoint", "method", "query", "command", "commands", "input",
                            "args", "params", "headers", "auth", "path", "script"})

REJECTED = "rejected by NoETL"
FAILS_ON_NOETL = "fails on NoETL at run time"
VALID = "NoETL-valid"


@dataclass
class Row:
    file: str
    group: str                      # VALID, REJECTED or FAILS_ON_NOETL
    reason: str = ""                # why NoETL rejects it
    validate_ok: bool = False
    error: str = ""                 # our first validation error
    errors: int = 0
    warnings: int = 0               # accepted forms the validator warns about
    kinds: list[str] = field(default_factory=list)
    run: str = ""                   # "", "skipped: ...", "success", "failure", "timeout", "error: ..."
    run_seconds: float | None = None
    steps: dict[str, str] = field(default_factory=dict)
    step_errors: dict[str, str] = field(default_factory=dict)  # when the --json report carries `error`


# ---------------------------------------------------------------- classification of NoETL's rejects

def _tasks(step: dict[str, Any]) -> Iterator[dict[str, Any]]:
    tool = step.get("tool")
    for item in tool if isinstance(tool, list) else [tool]:
        if isinstance(item, dict) and "kind" not in item and len(item) == 1:
            item = next(iter(item.values()))
        if isinstance(item, dict):
            yield item


def _is_template_number(value: Any) -> bool:
    return value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)))


def classify(rel: str, doc: Any) -> tuple[str, str]:
    """(group, reason) of a playbook from its YAML alone: does NoETL itself accept it?"""
    from noetl_dagster.playbook.loader import iter_strings
    from noetl_dagster.core.templates import check_syntax, is_template

    parts = Path(rel).parts
    if parts and parts[0] == "spike":
        return REJECTED, "quarantined (spike/)"
    if parts and parts[0] == "broken_playbooks":
        return REJECTED, "NoETL's negative fixture (broken_playbooks/)"
    if not isinstance(doc, dict) or doc.get("apiVersion") != "noetl.io/v2" or doc.get("kind") != "Playbook":
        return REJECTED, "not an apiVersion noetl.io/v2 kind: Playbook"
    workflow = doc.get("workflow") if isinstance(doc.get("workflow"), list) else []
    steps = [s for s in workflow if isinstance(s, dict)]
    if not any(s.get("step") == "start" for s in steps):
        return REJECTED, "no `start` step"
    for step in steps:
        for task in _tasks(step):
            spec = task.get("spec")
            if isinstance(spec, dict) and SPEC_TOOL_KEYS & set(spec):
                return REJECTED, "docs-only `tool.spec:` shape"
            if task.get("kind") == "duckdb" and "commands" in task:
                return REJECTED, "Python-era duckdb `commands:`"
        loop = step.get("loop")
        spec = loop.get("spec") if isinstance(loop, dict) else None
        if isinstance(spec, dict):
            frame = spec.get("frame") if isinstance(spec.get("frame"), dict) else {}
            if any(_is_template_number(spec.get(k)) for k in LOOP_NUMBERS) or \
                    any(_is_template_number(frame.get(k)) for k in FRAME_NUMBERS):
                return REJECTED, "loop numbers given as templates (typed numbers in NoETL's LoopSpec/FrameSpec)"
    for step in steps:
        for task in _tasks(step):
            if task.get("kind") in ("postgres", "duckdb") and not (task.get("query") or task.get("command")) \
                    and "commands" not in task:
                return FAILS_ON_NOETL, f"{task.get('kind')} tool without `query`/`command` (required by NoETL's worker)"
            config = {k: v for k, v in task.items() if k not in ("code", "spec", "set")}
            if any(is_template(s) and check_syntax(s) for s in iter_strings(config)):
                return FAILS_ON_NOETL, "a tool template MiniJinja (NoETL's renderer) cannot parse"
    return VALID, ""


def tool_kinds(doc: Any) -> list[str]:
    """Every tool kind a playbook uses (pipeline tasks, workbook entries, cursor claims included)."""
    kinds: set[str] = set()
    if not isinstance(doc, dict):
        return []
    for entry in doc.get("workbook") or []:
        if isinstance(entry, dict) and isinstance(entry.get("tool"), dict):
            kinds.add(str(entry["tool"].get("kind")))
    for step in doc.get("workflow") or []:
        if not isinstance(step, dict):
            continue
        kinds.update(str(t.get("kind")) for t in _tasks(step))
        loop = step.get("loop")
        if isinstance(loop, dict) and isinstance(loop.get("cursor"), dict):
            kinds.add(str(loop["cursor"].get("kind") or "postgres"))
    return sorted(kinds)


# ---------------------------------------------------------------------------------- validation

class _Timeout(Exception):
    pass


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise :class:`_Timeout` in the block after ``seconds`` (SIGALRM; main thread, Unix)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def playbook_root(path: Path) -> Path:
    inner = path / "fixtures" / "playbooks"
    return inner if inner.is_dir() else path


def validate_corpus(root: Path, timeout: float) -> list[Row]:
    import yaml

    from noetl_dagster.errors import PlaybookError
    from noetl_dagster.playbook.catalog import PlaybookCatalog
    from noetl_dagster.playbook.loader import load_playbook
    from noetl_dagster.playbook.folder import find_playbooks

    rows: list[Row] = []
    loaded = []
    paths: dict[str, Row] = {}  # catalog path -> row, to explain references to broken playbooks
    for path in find_playbooks(root):
        rel = str(path.relative_to(root))
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            doc = None
        group, reason = classify(rel, doc)
        row = Row(rel, group, reason, kinds=tool_kinds(doc))
        rows.append(row)
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("path") or meta.get("name"), str):
            paths[str(meta.get("path") or meta.get("name")).strip("/")] = row
        try:
            with bounded(timeout):
                playbook = load_playbook(path)
            loaded.append((row, playbook))
            row.validate_ok, row.warnings = True, len(playbook.warnings)
        except PlaybookError as exc:
            row.errors = len(exc.issues)
            first = exc.issues[0]
            row.error = f"{first.line}: " + (f"{first.field}: " if first.field else "") + first.message
        except _Timeout:
            row.error = f"validation took more than {timeout:g} s"
    catalog = PlaybookCatalog.of(p for _, p in loaded)
    for row, playbook in loaded:
        missing = catalog.missing_references(playbook)
        if missing:
            row.validate_ok, row.errors = False, len(missing)
            first = missing[0]
            target = paths.get(str(playbook.step(first.step).tool[0].config.get("path", "")).strip("/")) \
                if first.step else None
            why = f"the playbook at that path, {target.file}, does not validate here" if target else first.hint
            row.error = f"{first.line}: {first.field}: {first.message} ({why})"
    return rows


# ------------------------------------------------------------------------------------------ runs

def run_one(root: Path, row: Row, timeout: float, home: str) -> None:
    env = {**os.environ, "DAGSTER_HOME": home, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "noetl_dagster.cli", "run", str(root / row.file), "--json"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=home)
    except subprocess.TimeoutExpired:
        row.run, row.run_seconds = "timeout", timeout
        return
    row.run_seconds = round(time.monotonic() - started, 1)
    report = _report(done.stdout)
    if report is None:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        row.run = f"error: exit {done.returncode}: {last[:160]}"
        return
    row.run = str(report.get("status"))
    steps = report.get("steps") or {}
    row.steps = {name: str(step.get("status")) for name, step in steps.items()}
    row.step_errors = {name: str(step["error"])[:300] for name, step in steps.items() if step.get("error")}


def _report(stdout: str) -> dict[str, Any] | None:
    """The ``--json`` report: the last stdout line that is a JSON object with ``status``."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and "status" in value:
                return value
    return None


# ---------------------------------------------------------------------------------------- output

def summary(rows: list[Row]) -> list[str]:
    valid = [r for r in rows if r.group == VALID]
    ok = sum(r.validate_ok for r in valid)
    lines = [f"playbooks: {len(rows)}"]
    for group in (REJECTED, FAILS_ON_NOETL):
        members = [r for r in rows if r.group == group]
        lines.append(f"{group}: {len(members)}")
        for reason, count in Counter(r.reason for r in members).most_common():
            lines.append(f"  {count:4d}  {reason}")
    pct = 100.0 * ok / len(valid) if valid else 0.0
    lines.append(f"{VALID}: {len(valid)}; validate here: {ok}/{len(valid)} = {pct:.1f} %")
    both = [r for r in rows if r.group in (VALID, FAILS_ON_NOETL)]
    ok_both = sum(r.validate_ok for r in both)
    if len(both) != len(valid):
        lines.append(f"(counting the ones that fail on NoETL at run time as valid: {ok_both}/{len(both)} = "
                     f"{100.0 * ok_both / len(both):.1f} %)")
    warned = [r for r in rows if r.warnings]
    if warned:
        lines.append(f"validated with warnings: {len(warned)} playbook(s), {sum(r.warnings for r in warned)} "
                     "warning(s) (`noetl-dagster validate` prints them)")
    failing = Counter(_cause(r.error) for r in valid if not r.validate_ok)
    if failing:
        lines.append("NoETL-valid playbooks that do not validate, by cause:")
        lines.extend(f"  {count:4d}  {cause}" for cause, count in failing.most_common())
    ran = [r for r in rows if r.run and not r.run.startswith("skipped")]
    if ran:
        lines.append(f"runs: {len(ran)}; " + ", ".join(f"{k}: {v}" for k, v in
                                                      Counter(r.run.split(':')[0] for r in ran).most_common()))
    return lines


def _cause(error: str) -> str:
    text = re.sub(r"^\d+: ", "", error)
    text = re.sub(r"^[\w\[\].]+: ", "", text)          # the field
    if "does not validate here" in text:
        return "sub-playbook path of a playbook that does not validate here"
    text = text.split(" (")[0]
    return text if text.startswith("tool kind") else re.sub(r"'[^']*'", "'…'", text)[:100]


def table(rows: list[Row], with_runs: bool) -> list[str]:
    width = max((len(r.file) for r in rows), default=4)
    lines = []
    for row in rows:
        if row.group != VALID:
            verdict = f"[{row.group}: {row.reason}] " + ("validates" if row.validate_ok else row.error)
        else:
            verdict = "ok" if row.validate_ok else row.error
        line = f"{row.file:<{width}}  {verdict}"
        if with_runs and row.run:
            line += f"\n{'':<{width}}  run: {row.run}" + (f" ({row.run_seconds} s)" if row.run_seconds else "")
            if row.steps:
                line += " " + " ".join(f"{name}={status}" for name, status in row.steps.items())
            for name, error in list(row.step_errors.items())[:1]:
                line += f"\n{'':<{width}}  {name}: {error}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a work tree of github noetl/e2e (or a folder of playbooks)")
    parser.add_argument("--run", action="store_true", help="also run the service-free NoETL-valid playbooks")
    parser.add_argument("--services", action="store_true", help="with --run: run every kind, services included")
    parser.add_argument("--only", help="with --run: run only files whose path contains this text")
    parser.add_argument("--validate-timeout", type=float, default=20.0, help="seconds per file (default 20)")
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds per run (default 120)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    root = playbook_root(args.path)
    if not root.is_dir():
        parser.error(f"{args.path} is not a folder")
    rows = validate_corpus(root, args.validate_timeout)
    if not rows:
        parser.error(f"no playbooks (*.yaml, *.yml) under {root}")
    if args.run:
        with tempfile.TemporaryDirectory(prefix="noetl-corpus-") as home:
            for row in rows:
                if row.group != VALID or not row.validate_ok:
                    continue
                if args.only and args.only not in row.file:
                    continue
                needs = sorted(set(row.kinds) - SERVICE_FREE_KINDS)
                if needs and not args.services:
                    row.run = "skipped: needs " + ", ".join(needs)
                    continue
                run_one(root, row, args.run_timeout, home)
    if args.json:
        print(json.dumps({"summary": summary(rows), "rows": [asdict(r) for r in rows]}, indent=1))
    else:
        print("\n".join(table(rows, args.run)))
        print()
        print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
