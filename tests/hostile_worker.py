"""Runs hostile playbooks one at a time and prints one JSON line per playbook (used by test_hostile.py).

    python tests/hostile_worker.py FILE...

For each file: validate it (with the sub-playbook catalog of its folder, as ``noetl-dagster
validate`` does), compile it, and when it is valid run it in process on an ephemeral instance.
The line says what happened: ``{"file", "phase": validate|compile|run|ok, "issues": [...],
"run": {...}, "crash": "<traceback>"|null, "seconds"}``. Anything but a PlaybookError or a
finished run is a crash. The parent enforces the time and memory limits (this process is the
one that would hang or be killed).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _issue(issue: Any) -> dict[str, Any]:
    return {"line": issue.line, "col": issue.col, "step": issue.step, "field": issue.field,
            "message": issue.message, "hint": issue.hint, "text": str(issue)}


def check(file: str, instance: Any) -> dict[str, Any]:
    from noetl_dagster.errors import PlaybookError
    from noetl_dagster.run import catalog_around, run_playbook
    from noetl_dagster.playbook.folder import load_playbooks
    from noetl_dagster.translator.guard import compile_issues

    out: dict[str, Any] = {"file": file, "phase": "validate", "issues": [], "run": None, "crash": None}
    try:
        loaded = load_playbooks([file])
        catalog = catalog_around(*loaded.playbooks)
        issues = loaded.issues + [i for p in loaded.playbooks for i in catalog.missing_references(p)]
        if not issues:
            out["phase"] = "compile"
            issues = compile_issues(loaded.playbooks)
        out["issues"] = [_issue(i) for i in issues]
        if issues:
            return out
        out["phase"] = "run"
        (playbook,) = loaded.playbooks
        try:
            report = run_playbook(playbook, instance=instance, catalog=catalog, log_level="CRITICAL")
        except PlaybookError as exc:
            out["issues"] = [_issue(i) for i in exc.issues]
            return out
        out["run"] = {"status": report.status,
                      "steps": {n: {"status": s.status, "error": s.error} for n, s in report.steps.items()}}
        out["phase"] = "ok" if report.status == "success" else "run"
    except BaseException:  # noqa: BLE001 - exactly what the corpus must never produce
        out["crash"] = traceback.format_exc()
    return out


def main(files: list[str]) -> None:
    import logging

    import dagster as dg

    logging.disable(logging.WARNING)
    with dg.instance_for_test() as instance:  # one ephemeral instance for this worker's runs
        for file in files:
            print(json.dumps({"start": file}), flush=True)
            started = time.monotonic()
            result = check(file, instance)
            result["seconds"] = round(time.monotonic() - started, 3)
            print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(sys.argv[1:])
