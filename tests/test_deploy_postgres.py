"""Production configuration against a real PostgreSQL 15: ``deploy/dagster.yaml`` as shipped.

* ``dagster job launch -c workload.yaml`` with the ``DefaultRunCoordinator``: the run executes at
  once, succeeds, and its run, events and the workload's effect are in Postgres;
* the shipped ``QueuedRunCoordinator``: ``dagster job launch`` only enqueues, ``dagster-daemon run``
  launches it; a schedule (a playbook job merged into an existing ``Definitions``) started with
  ``dagster schedule start`` is stored in Postgres too.

Every process is a subprocess on 127.0.0.1, stopped by its PID (process group) at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from pg import SUPERUSER, SUPERUSER_PASSWORD, PgServer, pg_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOB = "risk__score_application"
#: overrides with visible effects: no fraud screening (3000 < 5000), a decline (any score < 900)
WORKLOAD = {"application_id": "APP-PG-0042", "requested_amount": 3000, "product": "small_loan",
            "review_score": 900}


def _connect(pg: PgServer, database: str, superuser: bool = False):  # type: ignore[no-untyped-def]
    import psycopg

    if superuser:
        return psycopg.connect(host=pg.host, port=pg.port, user=SUPERUSER, password=SUPERUSER_PASSWORD,
                               dbname=database, autocommit=True)
    return psycopg.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=database,
                           autocommit=True)


class Deployment:
    """A DAGSTER_HOME holding deploy/dagster.yaml (optionally edited) on a fresh database."""

    def __init__(self, tmp: Path, pg: PgServer, coordinator: dict[str, Any] | None = None) -> None:
        self.pg = pg
        self.database = f"dagster_{uuid.uuid4().hex[:10]}"
        with _connect(pg, "postgres", superuser=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}" OWNER "{pg.user}"')
        self.home = tmp / "dagster_home"
        self.home.mkdir()
        config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
        if coordinator is not None:
            config["run_coordinator"] = coordinator
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "DAGSTER_PG_HOST": pg.host,
                    "DAGSTER_PG_PORT": str(pg.port), "DAGSTER_PG_USER": pg.user,
                    "DAGSTER_PG_PASSWORD": pg.password, "DAGSTER_PG_DB": self.database,
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        # an existing Definitions (a schedule) merged with the playbook jobs, as the README shows
        self.defs = tmp / "defs.py"
        self.defs.write_text(textwrap.dedent(f"""\
            import dagster as dg
            from noetl_dagster import load_playbook_definitions

            def existing_definitions() -> dg.Definitions:
                return dg.Definitions(schedules=[dg.ScheduleDefinition(
                    name="risk_nightly", job_name="{JOB}", cron_schedule="0 2 * * *",
                            run_config={json.dumps(workload_config({"application_id": "NIGHTLY"}))})])

            defs = dg.Definitions.merge(existing_definitions(), load_playbook_definitions({str(ROOT / "playbooks")!r}))
            """))
        self.workload_file = tmp / "workload.yaml"
        self.workload_file.write_text(yaml.safe_dump(workload_config(WORKLOAD)))

    def dagster(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "dagster"), *args], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"dagster {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    def sql(self, query: str, *params: Any) -> list[tuple]:
        with _connect(self.pg, self.database) as conn:
            return conn.execute(query, params).fetchall()

    def runs(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.sql("SELECT run_id, status FROM runs ORDER BY create_timestamp")]

    def wait_for_run(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            (status,) = self.sql("SELECT status FROM runs WHERE run_id = %s", run_id)[0]
            if status in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
                return status
            time.sleep(1)

    def check_run(self, run_id: str) -> None:
        """The run's events are in Postgres and the workload override decided the route."""
        events = self.sql("SELECT dagster_event_type, step_key FROM event_logs WHERE run_id = %s", run_id)
        succeeded = step_names(step for kind, step in events if kind == "STEP_SUCCESS")
        assert {"start", "compute_affordability", "aggregate_features", "record_decision", "end"} <= succeeded
        assert "fraud_screening" not in succeeded  # requested_amount 3000 < fraud_check_min_amount 5000
        assert "decline" in succeeded and not {"auto_approve", "manual_review"} & succeeded
        assert ("PIPELINE_SUCCESS", None) in events
        (tags,) = self.sql("SELECT count(*) FROM run_tags WHERE run_id = %s AND key = 'noetl/domain' "
                           "AND value = 'risk'", run_id)[0]
        assert tags == 1
        outcome = decision_record(self.home, run_id)
        assert outcome["application_id"] == "APP-PG-0042" and outcome["decision"] == "declined"
        assert outcome.get("requested_amount", 3000) == 3000


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Long-running processes a test starts; stopped by PID (their process group) at teardown."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_job_launch_with_default_run_coordinator(tmp_path: Path, pg_server: PgServer) -> None:  # noqa: F811
    deploy = Deployment(tmp_path, pg_server, coordinator={
        "module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"})
    deploy.dagster("job", "launch", "-f", str(deploy.defs), "-j", JOB, "-c", str(deploy.workload_file))
    ((run_id, _),) = deploy.runs()
    assert deploy.wait_for_run(run_id) == "SUCCESS"
    deploy.check_run(run_id)
    tables = {r[0] for r in deploy.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "event_logs", "run_tags", "jobs", "job_ticks", "instance_info"} <= tables


def test_queued_run_launched_by_the_daemon_and_schedule_state(tmp_path: Path, pg_server: PgServer,  # noqa: F811
                                                             started: list[subprocess.Popen]) -> None:
    deploy = Deployment(tmp_path, pg_server)  # deploy/dagster.yaml verbatim: QueuedRunCoordinator
    deploy.dagster("job", "launch", "-f", str(deploy.defs), "-j", JOB, "-c", str(deploy.workload_file))
    ((run_id, status),) = deploy.runs()
    assert status == "QUEUED"

    deploy.dagster("schedule", "start", "risk_nightly", "-f", str(deploy.defs))
    schedules = deploy.sql("SELECT job_type, status FROM jobs")
    assert schedules == [("SCHEDULE", "RUNNING")]

    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-f", str(deploy.defs)], env=deploy.env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    started.append(daemon)
    status = deploy.wait_for_run(run_id, timeout=300)
    assert status == "SUCCESS", (tmp_path / "daemon.log").read_text()[-3000:]
    deploy.check_run(run_id)
    stop_process(daemon)
    assert daemon.returncode is not None


def decision_record(home: Path, run_id: str) -> dict[str, Any]:
    """What ``risk/score_application`` decided in run ``run_id`` (DAGSTER_HOME ``home``), wherever the
    job keeps it: the ``end`` step's result (an op job; ArrowRefIOManager or Dagster's pickling IO
    manager) or the row it published as its ``risk/application_scores`` product (an asset job)."""
    from noetl_dagster.io.manager import ArrowRefIOManager

    io = ArrowRefIOManager(base_uri=str(home / "noetl_data"))
    runs = Path(io.run_uri(run_id))
    for folder in sorted(runs.glob("*/result")) if runs.exists() else []:
        if folder.parent.name.split(".")[-1] == "end":
            return dict(io.load(str(folder)))
    pickled = home / "storage" / run_id / "end" / "result"
    if pickled.exists():
        with open(pickled, "rb") as f:
            return dict(pickle.load(f))
    import pyarrow.parquet as pq

    ref = io.load_asset("risk/application_scores")
    (row,) = pq.read_table(ref.uri).to_pylist()
    return row


def step_names(step_keys: Any) -> set[str]:
    """Step keys without the graph prefix of an asset job (``risk__score_application__playbook.x``)."""
    return {key.split(".")[-1] for key in step_keys if key}


def workload_config(workload: dict[str, Any]) -> dict[str, Any]:
    """Run config passing ``workload`` to risk/score_application, in the shape its job takes."""
    from noetl_dagster import load_playbook, plan
    from noetl_dagster.translator.emit import workload_run_config

    playbook = load_playbook(ROOT / "playbooks" / "risk" / "score_application.yaml")
    return workload_run_config(playbook, plan(playbook), None, workload)
