"""``noetl-dagster``: validate and run playbooks from the shell.

    noetl-dagster validate playbooks/
    noetl-dagster run playbooks/risk/score_application.yaml --workload '{"threshold": 0.8}' --json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from noetl_dagster.errors import PlaybookError

#: how much of the last step's result `run` prints
RESULT_CHARS = 400


def _workload(text: str | None, source: str = "--workload") -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(f"noetl-dagster: cannot read workload file {source}: {exc.strerror}")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"noetl-dagster: {source} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"noetl-dagster: {source} must be a JSON object")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    """Check playbooks with the DSL alone (no Dagster import); ``--compile`` also builds their Dagster definitions."""
    from noetl_dagster.playbook.catalog import catalog_for
    from noetl_dagster.playbook.folder import find_playbooks, load_playbooks

    files = find_playbooks(args.paths)
    if not files:
        print(f"noetl-dagster: no playbooks (*.yaml, *.yml) under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    loaded = load_playbooks(files)
    catalog = catalog_for(*loaded.playbooks)
    loaded.issues.extend(i for p in loaded.playbooks for i in catalog.missing_references(p))
    if args.compile:
        from noetl_dagster.translator.guard import compile_issues

        loaded.issues.extend(compile_issues(loaded.playbooks))  # valid YAML that Dagster still refuses
    for issue in loaded.issues:
        print(issue, file=sys.stderr)
    from noetl_dagster.playbook.references import undefined_references

    warnings = [w for p in loaded.playbooks for w in [*p.warnings, *undefined_references(p)]]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if loaded.issues:
        bad = len({i.file for i in loaded.issues})
        print(f"{len(loaded.issues)} problem(s) in {bad} of {len(files)} playbook(s)", file=sys.stderr)
        return 1
    print(f"{len(files)} playbook(s) valid" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from noetl_dagster.playbook.loader import load_playbook
    from noetl_dagster.progress import new_run_id, step_progress
    from noetl_dagster.recovery import cli_tags, mark_orphaned_runs, persistent_resources, resume_run
    from noetl_dagster.storage import default_instance
    from noetl_dagster.run import run_playbook

    workload = _workload(args.workload)
    if bool(args.playbook) == bool(args.resume):
        print("noetl-dagster: give a playbook file, or --resume RUN_ID", file=sys.stderr)
        return 2
    instance = default_instance()
    mark_orphaned_runs(instance)  # runs whose `noetl-dagster run` process died (kill -9) become failed
    try:
        tags = {str(k): str(v) for k, v in (_workload(args.tags, "--tags") if args.tags else {}).items()}
        if args.resume:
            report = resume_run(args.resume, instance, tags)
        else:
            playbook = load_playbook(args.playbook)
            run_id = args.run_id or new_run_id()
            with step_progress(instance, run_id, enabled=not args.json and sys.stderr.isatty(), title=args.playbook):
                report = run_playbook(playbook, workload, instance=instance, log_level=args.log_level,
                                      tags={**tags, **cli_tags(args.playbook)}, run_id=run_id,
                                      partition_key=args.partition, on_error=args.on_error,
                                      resources=persistent_resources(instance, playbook))
    except PlaybookError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(report.to_json())
    else:
        print(f"run {report.run_id}: {report.status}")
        for name, step in report.steps.items():
            line = f"  {step.status:<8} {name}"
            if step.runs > 1:
                line += f" (runs: {step.runs})"
            if step.error:
                line += f": {step.error}"
            print(line)
        last = next((n for n, s in reversed(report.steps.items()) if s.status == "success"), None)
        if last is not None and report.steps[last].result is not None:
            if sys.stdout.isatty():  # a terminal: indented, at most RESULT_LINES lines
                from noetl_dagster.progress import pretty_result

                print(f"result of {last}:\n{pretty_result(report.steps[last].result)}")
            else:
                text = json.dumps(report.steps[last].result, default=str)
                print(f"result of {last}: {text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + '...'}")
        if report.error_steps:
            print(f"completed with error results in {len(report.error_steps)} step(s): "
                  f"{', '.join(report.error_steps)}" + ("" if args.fail_on_error else
                                                       " (exit 0; --fail-on-error makes this exit 1)"))
    if report.status != "success":
        return 1
    return 1 if args.fail_on_error and report.error_steps else 0


def console() -> None:
    """The ``noetl-dagster`` console script: `noetl-dagster run ... | head` ends quietly."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())


def _command(argv: Sequence[str] | None) -> str | None:
    """The subcommand ``argv`` names (its first argument that is not an option), if any."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="noetl-dagster", description="Run NoETL playbooks on Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check playbooks; print every problem")
    validate.add_argument("paths", nargs="+", help="playbook files or folders (searched recursively)")
    validate.add_argument("--compile", action="store_true",
                          help="also build each playbook's Dagster definitions (imports Dagster; catches what only "
                               "Dagster refuses, e.g. a bad metadata.dagster.k8s config)")
    validate.set_defaults(func=cmd_validate)
    run = sub.add_parser("run", help="run a playbook through Dagster, in process")
    run.add_argument("playbook", nargs="?")
    run.add_argument("--resume", metavar="RUN_ID",
                     help="re-execute a failed or killed run from its failure (succeeded steps are not run again)")
    run.add_argument("--workload", help="JSON object, or @file.json, merged over the playbook's workload")
    run.add_argument("--json", action="store_true", help="print the machine-readable report")
    run.add_argument("--tags", help="JSON object of extra run tags")
    run.add_argument("--run-id", help="use this run id (sub-playbook launches set it)")
    run.add_argument("--partition", help="partition key (YYYY-MM-DD) of a partitioned playbook; default: the last")
    run.add_argument("--fail-on-error", action="store_true",
                     help="exit 1 when a step completed with an error result (the run itself succeeded)")
    run.add_argument("--on-error", choices=("complete", "fail"),
                     help="error results complete the step (NoETL, default) or fail it (strict); "
                          "overrides metadata.dagster.on_error")
    run.add_argument("--log-level", default="CRITICAL",
                     help="Dagster console log level on stderr (default CRITICAL: the report says what failed)")
    run.set_defaults(func=cmd_run)
    if _command(argv) != "validate":  # their modules import Dagster; `validate` stays without it
        from noetl_dagster.ai.cli import add_commands as add_tune_commands
        from noetl_dagster.export.cli import add_commands
        from noetl_dagster.recovery import add_commands as add_recovery_commands

        add_commands(sub)
        add_tune_commands(sub)
        add_recovery_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    console()
