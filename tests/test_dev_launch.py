"""`dagster job launch` exactly as deploy/README.md documents it, beside `dagster dev` as `make dev` starts it.

The command is read from the README's code block (so the test follows the documentation), run
from the project root with the same ``DAGSTER_HOME``; the run it submits is queued, launched by
the dev daemon in the code location ``noetl_playbooks`` and must succeed with the workload of
``deploy/workload.yaml`` (checked against the shape ``workload_run_config`` builds).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import yaml

from devserver import LOCATION, ROOT, DagsterDev, dev_env

README = ROOT / "deploy" / "README.md"


def documented_launch() -> list[str]:
    """The first `dagster job launch ...` line of deploy/README.md, as argv."""
    for line in README.read_text().splitlines():
        if line.strip().startswith(".venv/bin/dagster job launch") or line.strip().startswith("dagster job launch"):
            return shlex.split(line.split("#")[0])
    raise AssertionError("deploy/README.md documents no `dagster job launch`")


def test_workload_yaml_has_the_asset_job_shape() -> None:
    from noetl_dagster import load_playbook, plan
    from noetl_dagster.translator.emit import workload_run_config

    argv = documented_launch()
    config = yaml.safe_load((ROOT / argv[argv.index("-c") + 1]).read_text())
    job = argv[argv.index("-j") + 1]
    playbook = load_playbook(ROOT / "playbooks" / job.split("__")[0] / f"{job.split('__', 1)[1]}.yaml")
    workload = config["ops"][f"{job}__playbook"]["ops"]["start"]["config"]["workload"]
    assert config == workload_run_config(playbook, plan(playbook), None, workload)


def test_job_launch_as_documented_beside_make_dev(dagster_dev: DagsterDev) -> None:
    argv = documented_launch()
    binary = ROOT / ".venv" / "bin" / "dagster"
    if argv[0] == "dagster":  # the README runs it inside the activated virtualenv
        argv[0] = str(binary)
    else:
        argv[0] = str(ROOT / argv[0])
    before = time.time()
    done = subprocess.run(argv, cwd=ROOT, env=dev_env(dagster_dev.home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = dagster_dev.graphql("""{ runsOrError(filter: {pipelineName: "risk__score_application"}) {
        ... on Runs { results { runId creationTime repositoryOrigin { repositoryLocationName } } } } }""")
    fresh = [r for r in runs["runsOrError"]["results"] if r["creationTime"] >= before - 1]
    assert len(fresh) == 1, (runs, done.stdout, done.stderr)
    assert fresh[0]["repositoryOrigin"]["repositoryLocationName"] == LOCATION
    run = dagster_dev.wait_run(fresh[0]["runId"])
    assert run["status"] == "SUCCESS", (run, Path(dagster_dev.log).read_text()[-3000:])
    steps = {re.sub(r"^.*\.", "", s["stepKey"]): s["status"] for s in run["stepStats"]}
    assert steps.get("publish_scores") == "SUCCESS", steps
