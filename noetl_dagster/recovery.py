"""Crash recovery for ``noetl-dagster run``: persisted outputs, orphaned runs, ``--resume``.

* A CLI run stores every op output with the project's IO manager
  (:class:`~noetl_dagster.io.manager.ArrowRefIOManager` under ``$DAGSTER_HOME/noetl_data``)
  and is tagged with the process that runs it (``noetl/cli_pid``, ``noetl/cli_host``) and the
  playbook file (``noetl/file``).
* Each CLI start marks the runs of this host whose process is gone (``kill -9``, a lost machine)
  and that are still ``STARTED`` as failed: :func:`mark_orphaned_runs`.
* ``noetl-dagster run --resume RUN_ID`` re-executes a failed (or orphaned) run from its failure:
  steps that succeeded are not run again, their outputs are read back from the IO manager
  (Dagster's ``ReexecutionOptions.from_failure`` on a reconstructable job compiled from the same
  file): :func:`resume_run`.

Example::

    noetl-dagster run playbooks/mlops/train_model.yaml        # killed mid-run
    noetl-dagster run --resume 6a1f...                         # the rest of it, same outputs
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from noetl_dagster.contract import FAN_OUT_SUFFIX, parse_step_key
from noetl_dagster.errors import Issue, PlaybookError

PID_TAG = "noetl/cli_pid"
HOST_TAG = "noetl/cli_host"
FILE_TAG = "noetl/file"
RESUMED_TAG = "noetl/resumed_from"
_ACTIVE = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]


def cli_tags(playbook_file: str | Path) -> dict[str, str]:
    """Tags of a CLI run: its process, host and playbook file (what recovery needs)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(),
            FILE_TAG: str(Path(playbook_file).resolve())}


#: tool kinds whose results are plain data (no Arrow tables from the tool itself)
LIGHT_KINDS = frozenset({"python", "noop", "http", "shell", "playbook"})


def persistent_resources(instance: dg.DagsterInstance, playbook: Any) -> dict[str, Any]:
    """The IO manager of a CLI run of ``playbook``: op outputs stored under the instance's folder.

    The project's :class:`~noetl_dagster.io.manager.ArrowRefIOManager` (Arrow tables once,
    by reference) for playbooks whose tools make tables; Dagster's pickling
    ``FilesystemIOManager`` under ``noetl_data/cli_outputs`` for plain-data playbooks (python,
    noop, http, shell, playbook), which keeps their start-up free of pyarrow; nothing for
    playbooks with products (``run_playbook`` already stores those runs) or without a
    persistent instance.
    """
    root = getattr(instance, "root_directory", None)
    return _io_manager(playbook, str(root)) if root else {}


def _io_manager(playbook: Any, home: str) -> dict[str, Any]:
    from noetl_dagster.translator.emit import has_products

    if has_products(playbook):
        return {}
    if all(task.kind in LIGHT_KINDS for step in playbook.workflow for task in step.tool):
        return {"io_manager": dg.FilesystemIOManager(base_dir=os.path.join(home, "noetl_data", "cli_outputs"))}
    from noetl_dagster.io.manager import ArrowRefIOManager

    return {"io_manager": ArrowRefIOManager(base_uri=os.path.join(home, "noetl_data"))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the CLI runs of this host still ``STARTED`` whose process is gone; their ids."""
    host = socket.gethostname()
    marked = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE), limit=1000):
        pid = run.tags.get(PID_TAG)
        if not pid or not pid.isdigit() or run.tags.get(HOST_TAG) != host or int(pid) == os.getpid():
            continue
        if not _alive(int(pid)):
            instance.report_run_failed(run, message=f"the process running it (pid {pid} on {host}) is gone; "
                                                    f"`noetl-dagster run --resume {run.run_id}` continues it")
            marked.append(run.run_id)
    return marked


def resumable_job(file: str, home: str) -> dg.JobDefinition:
    """The job of ``file`` compiled as a CLI run compiles it (reconstructed by ``--resume``)."""
    from noetl_dagster.playbook.loader import load_playbook
    from noetl_dagster.run import compile_run_job

    playbook = load_playbook(file)
    return compile_run_job(playbook, home, resources=_io_manager(playbook, home))[1]


def resume_run(run_id: str, instance: dg.DagsterInstance, tags: Mapping[str, str] | None = None) -> Any:
    """Re-execute run ``run_id`` from its failure; the :class:`~noetl_dagster.report.RunReport`.

    Steps that succeeded in the earlier run are reported as ``success`` with ``runs: 0`` (their
    results stay in that run). Raises :class:`PlaybookError` when the run cannot be resumed.
    """
    from noetl_dagster.playbook.loader import load_playbook
    from noetl_dagster.report import build_report
    from noetl_dagster.planner import plan

    mark_orphaned_runs(instance)
    parent = instance.get_run_by_id(run_id)
    if parent is None:
        raise _cannot(run_id, "no such run in this instance (check DAGSTER_HOME)")
    file = parent.tags.get(FILE_TAG)
    if not file:
        raise _cannot(run_id, "it was not started by `noetl-dagster run` (no noetl/file tag)")
    if parent.status == dg.DagsterRunStatus.SUCCESS:
        raise _cannot(run_id, "it succeeded; there is nothing to resume")
    if parent.status in _ACTIVE:
        raise _cannot(run_id, f"it is still running (pid {parent.tags.get(PID_TAG)})")
    home = getattr(instance, "root_directory", None)
    if not home:
        raise _cannot(run_id, "resuming needs a persistent Dagster instance (set DAGSTER_HOME)")
    net = plan(load_playbook(file))
    job = dg.build_reconstructable_job("noetl_dagster.recovery", "resumable_job",
                                       reconstructable_args=(file, str(home)))  # type: ignore[arg-type]
    options = dg.ReexecutionOptions.from_failure(run_id, instance)
    run_tags = {**(tags or {}), **cli_tags(file), RESUMED_TAG: run_id}
    with dg.execute_job(job, instance, run_config=parent.run_config, tags=run_tags,
                        reexecution_options=options, raise_on_error=False) as result:
        report = build_report(net, result)
    done = _succeeded_steps(instance, run_id, net)
    for name, step in report.steps.items():
        if step.status == "skipped" and name in done:
            step.status = "success"
    return report


def _succeeded_steps(instance: dg.DagsterInstance, run_id: str, net: Any) -> set[str]:
    """Playbook steps whose op succeeded in run ``run_id``."""
    names = set()
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
        key = parse_step_key(record.step_key or "")
        node = next((n for n in net.nodes if n.name == key.step), None)
        if node is not None and not key.node.endswith(FAN_OUT_SUFFIX):
            names.update(node.steps)
    return names


def _cannot(run_id: str, why: str) -> PlaybookError:
    return PlaybookError([Issue(run_id, 1, 1, f"run {run_id} cannot be resumed: {why}", field="--resume")])


DETACHED_PREFIX = "noetl/detached/"


def _is_our_process(pid: int, run: Any) -> bool:
    """Whether ``pid`` is still the ``noetl-dagster run`` process of ``run`` (pids are reused): its
    command line names this package and the run id (a detached child) or the playbook file."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [part.decode("utf-8", "replace") for part in cmdline]
    if not any("noetl_dagster" in part or "noetl-dagster" in part for part in text):
        return False
    file = run.tags.get(FILE_TAG, "")
    return run.run_id in text or any(part and Path(part).name == Path(file).name for part in text if file)


def cancel_run(run_id: str, instance: dg.DagsterInstance) -> list[str]:
    """Cancel run ``run_id`` and, recursively, the detached sub-playbook runs it started.

    A run still going in a ``noetl-dagster run`` process of this host is ended (SIGTERM to the
    pid its tags name, checked to still be that run's process) and marked canceled; finished
    runs are left as they are, their detached children are still followed. Returns the ids
    marked canceled.
    """
    import signal

    canceled: list[str] = []
    seen: set[str] = set()
    pending = [run_id]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        run = instance.get_run_by_id(current)
        if run is None:
            continue
        pending.extend(key[len(DETACHED_PREFIX):] for key in run.tags if key.startswith(DETACHED_PREFIX))
        if run.status not in (*_ACTIVE, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED):
            continue
        pid = run.tags.get(PID_TAG, "")
        if pid.isdigit() and run.tags.get(HOST_TAG) == socket.gethostname() and int(pid) != os.getpid() \
                and _is_our_process(int(pid), run):
            # Dagster's protocol: a run interrupted while CANCELING reports itself canceled (not failed)
            instance.report_run_canceling(run, message="canceling by `noetl-dagster cancel`")
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
            run = _until_finished(instance, current, CANCEL_WAIT_SECONDS) or run
        if not run.is_finished:
            instance.report_run_canceled(run, message="canceled by `noetl-dagster cancel`")
        canceled.append(current)
    return canceled


#: how long ``cancel`` waits for an interrupted run to report itself canceled
CANCEL_WAIT_SECONDS = 15.0


def _until_finished(instance: dg.DagsterInstance, run_id: str, seconds: float) -> Any:
    """The run once it finished, or as it is after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished or time.monotonic() >= deadline:
            return run
        time.sleep(0.2)


def cmd_cancel(args: Any) -> int:
    from noetl_dagster.storage import default_instance

    instance = default_instance()
    if instance.get_run_by_id(args.run_id) is None:
        print(f"noetl-dagster: no run {args.run_id} in this instance (check DAGSTER_HOME)")
        return 1
    canceled = cancel_run(args.run_id, instance)
    print(f"canceled {len(canceled)} run(s)" + (": " + ", ".join(canceled) if canceled else ""))
    return 0


def add_commands(subparsers: Any) -> None:
    """``noetl-dagster cancel RUN_ID``: the run and the detached sub-playbook runs it started."""
    cancel = subparsers.add_parser("cancel", help="cancel a run and the fire-and-forget sub-playbook runs it started")
    cancel.add_argument("run_id")
    cancel.set_defaults(func=cmd_cancel)
