"""The Dagster UI as a user sees it: ``dagster dev`` on the example playbooks, driven by Chromium.

``dagster dev`` is started as ``make dev`` starts it (``tests/devserver.py``, one per session):
no target flags, so the code location comes from ``[tool.dagster]`` in pyproject.toml
(``definitions.py``, location ``noetl_playbooks``), on 127.0.0.1 with a temporary ``DAGSTER_HOME``. Headless Debian Chromium (``/usr/bin/chromium``,
driven by Playwright; no downloaded browser) then:

* skips the community modal, finds every example job on the Jobs page;
* opens ``observability__ingest_traces`` (an op job): the job's tags and code reference to its
  playbook, a step's ``desc`` with its ``file:line`` (both read from the playbook file);
* launches a run from the Launchpad with a workload override (two services instead of five),
  follows it to the run page and waits for "Success"; the run's step panel lists the succeeded
  steps, among them one mapped loop step per service of the override;
* shows the products (assets) grouped by domain on the Lineage page;
* saves screenshots under the test's tmp dir (``job.png``, ``step.png``, ``run.png``, ``lineage.png``).

Skips with the reason when Chromium or Playwright is missing. Takes ~1-2 min (mostly the
``dagster dev`` start).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("NOETL_TEST_CHROMIUM", "/usr/bin/chromium")
if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"Chromium not found at {CHROMIUM} (CI: `apt-get install -y chromium`)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from devserver import DagsterDev, group_pids  # noqa: E402
from noetl_dagster import PlaybookTranslator, load_playbook  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the launch flow uses an op job (a playbook without products): steps are nodes of its graph
PLAYBOOK = ROOT / "playbooks" / "observability" / "ingest_traces.yaml"
JOB, DOMAIN, STEP = "observability__ingest_traces", "observability", "detect_anomalies"
#: a workload override with a visible effect: two services instead of five (one mapped step each)
WORKLOAD = {"services": ["checkout", "payments"], "spans_per_service": 500}
EXAMPLE_JOBS = sorted(PlaybookTranslator().get_job_name(load_playbook(p))
                      for p in (ROOT / "playbooks").rglob("*.yaml"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
RUN_TIMEOUT = 240


def _job_link(page: Any, job: str) -> Any:
    """A job's row link on the Jobs page (its accessible name is "job <name> info")."""
    return page.get_by_role("link", name=re.compile(rf"(^|\s){re.escape(job)}(\s|$)")).first


def _skip_community_modal(page: Any) -> None:
    """The "Join the Dagster community" modal of a fresh instance: press Skip if it shows."""
    try:
        page.get_by_role("button", name="Skip").click(timeout=15000)
    except sync_api.TimeoutError:
        pass


def test_job_page_launchpad_and_run_in_chromium(dagster_dev: DagsterDev, tmp_path: Path) -> None:
    started = time.monotonic()
    expect = sync_api.expect
    playbook = load_playbook(PLAYBOOK)
    step = playbook.steps[STEP]
    op_job = dagster_dev.graphql("""query($sel: PipelineSelector!) { pipelineOrError(params: $sel) {
        ... on Pipeline { isAssetJob } } }""", {"sel": {"repositoryLocationName": "noetl_playbooks",
                                                      "repositoryName": "__repository__", "pipelineName": JOB}})
    assert op_job["pipelineOrError"] == {"isAssetJob": False}, f"{JOB} must stay an op job (no products) here"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60000)

            # Jobs page: every example playbook is a job
            page.goto(f"{dagster_dev.url}/jobs", wait_until="domcontentloaded")
            _skip_community_modal(page)
            for job in EXAMPLE_JOBS:
                expect(_job_link(page, job)).to_be_visible()

            # the job page: its graph, tags and the code reference to the playbook file
            _job_link(page, JOB).click()
            page.wait_for_url(re.compile(rf".*/jobs/{JOB}$"))
            expect(page.get_by_text(f"noetl/domain: {DOMAIN}").first).to_be_visible()
            expect(page.get_by_text(playbook.metadata.description[:60]).first).to_be_visible()
            page.get_by_text("Show Code References").click()
            link = page.get_by_role("link", name=re.compile(r"Open .*in editor"))
            expect(link).to_be_visible()
            assert (link.get_attribute("href") or "").endswith(f"{PLAYBOOK}:1")  # vscode://file/<path>:<line>
            page.screenshot(path=str(tmp_path / "job.png"))
            page.get_by_role("button", name="Close").click()

            # a step: its NoETL `desc` and the playbook line it comes from
            page.get_by_text(STEP, exact=True).first.click()
            page.wait_for_url(re.compile(rf".*/{STEP}$"))
            expect(page.get_by_text(step.description[:60]).first).to_be_visible()
            expect(page.get_by_text(f"{playbook.metadata.catalog_path} · {PLAYBOOK.name}:{step.line}")).to_be_visible()
            page.screenshot(path=str(tmp_path / "step.png"))

            # Launchpad: a workload override as run config, then Launch Run
            page.get_by_text("Launchpad", exact=True).first.click()
            editor = page.locator(".CodeMirror").first
            expect(editor).to_be_visible()
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.press("Delete")
            page.keyboard.insert_text(json.dumps(workload_config(PLAYBOOK, WORKLOAD)))  # JSON is YAML
            expect(page.get_by_text("No errors")).to_be_visible()
            page.get_by_role("button", name="Launch Run").click()
            page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}"))
            run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)  # type: ignore[union-attr]

            # the run page: "Success", and the per-step status panel
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT * 1000)
            succeeded = page.get_by_text(re.compile(r"^Succeeded \(\d+\)$"))
            expect(succeeded).to_be_visible()
            count = int(re.search(r"\d+", succeeded.inner_text()).group())  # type: ignore[union-attr]
            header = succeeded.locator("xpath=..")  # the collapsible header bar of the section
            if header.get_attribute("aria-expanded") == "false":
                header.click()
            expect(header).to_have_attribute("aria-expanded", "true")
            panel = succeeded.locator("xpath=../..")  # the "Succeeded" section: header and step rows
            expect(panel.get_by_text(re.compile(r"^(.*\.)?end$"))).to_be_visible()
            shown = {line for line in panel.inner_text().splitlines()[1:] if not re.fullmatch(r"[\d:.]+", line)}
            page.set_viewport_size({"width": 1600, "height": 1700})  # room for the step list
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "run.png"))
        finally:
            browser.close()

    # what the page showed matches the run's record, and shows the workload's effect
    data = dagster_dev.graphql("""query($id: ID!) { runOrError(runId: $id) { ... on Run {
        status jobName stepStats { stepKey status } } } }""", {"id": run_id})["runOrError"]
    assert data["status"] == "SUCCESS" and data["jobName"] == JOB
    statuses = {s["stepKey"]: s["status"] for s in data["stepStats"]}
    assert shown == {k for k, v in statuses.items() if v == "SUCCESS"} and len(shown) == count
    names = step_names(shown)
    assert {"start", STEP, "slo_rollup", "close_window", "end"} <= names
    # the workload's two services, not the playbook's five: one mapped loop step per service
    assert sorted(k for k in names if k.startswith("ingest_service_spans[")) == [
        "ingest_service_spans[i00000]", "ingest_service_spans[i00001]"]
    for name in ("job.png", "step.png", "run.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    print(f"UI test: {time.monotonic() - started:.1f}s in the browser; screenshots in {tmp_path}")


def test_asset_graph_grouped_by_domain_in_chromium(dagster_dev: DagsterDev, tmp_path: Path) -> None:
    """Products are assets grouped by domain: the Lineage page shows one group per domain."""
    nodes = dagster_dev.graphql("{ assetNodes { groupName assetKey { path } } }")["assetNodes"]
    if not nodes:
        pytest.skip("the example playbooks publish no products (assets) yet")
    domains = {p.parent.name for p in (ROOT / "playbooks").rglob("*.yaml")}
    groups = {n["groupName"] for n in nodes}
    assert groups <= domains, groups
    for node in nodes:  # product keys are [domain, name...]: the group is the key's domain
        assert node["assetKey"]["path"][0] == node["groupName"], node
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60000)
            page.goto(f"{dagster_dev.url}/asset-groups", wait_until="domcontentloaded")
            _skip_community_modal(page)
            for group in sorted(groups):
                expect(page.get_by_text(group, exact=True).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "lineage.png"))
        finally:
            browser.close()


def test_only_loopback_listeners(dagster_dev: DagsterDev) -> None:
    """dagster dev listens on 127.0.0.1 (code servers talk over unix sockets)."""
    if not shutil.which("ss"):
        pytest.skip("no `ss` to list sockets")
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    pids = group_pids(dagster_dev.proc.pid)  # type: ignore[union-attr]
    ours = [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert ours, out
    for line in ours:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line


def step_names(step_keys: Any) -> set[str]:
    """Step keys without the graph prefix of an asset job (``risk__score_application__playbook.x``)."""
    return {key.split(".")[-1] for key in step_keys if key}


def workload_config(path: Path, workload: dict[str, Any]) -> dict[str, Any]:
    """Run config passing ``workload`` to the playbook at ``path``, in the shape its job takes."""
    from noetl_dagster import plan
    from noetl_dagster.translator.emit import workload_run_config

    playbook = load_playbook(path)
    return workload_run_config(playbook, plan(playbook), None, workload)


def test_materialize_all_runs_in_process_and_checks_pass(dagster_dev: DagsterDev, tmp_path: Path) -> None:
    """"Materialize all" on the global lineage: Dagster's global asset job runs with the
    definitions' default executor, which must be ours (in process: seconds, not a process per
    step), and afterwards every product's checks show Passed for its latest materialization."""
    nodes = dagster_dev.graphql("{ assetNodes { assetKey { path } } }")["assetNodes"]
    if not nodes:
        pytest.skip("the example playbooks publish no products (assets) yet")
    before = {r["runId"] for r in _asset_job_runs(dagster_dev)}
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60000)
            page.goto(f"{dagster_dev.url}/asset-groups", wait_until="domcontentloaded")
            _skip_community_modal(page)
            button = page.get_by_role("button", name=re.compile(r"Materialize all$"))
            expect(button).to_be_enabled()
            button.click()
            deadline = time.monotonic() + 60
            while not (fresh := [r for r in _asset_job_runs(dagster_dev) if r["runId"] not in before]):
                assert time.monotonic() < deadline, "Materialize all launched no run"
                page.wait_for_timeout(1000)
            run_id = fresh[0]["runId"]
            run = dagster_dev.wait_run(run_id, timeout=RUN_TIMEOUT)
            page.goto(f"{dagster_dev.url}/runs/{run_id}", wait_until="domcontentloaded")
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "materialize_all.png"))
        finally:
            browser.close()
    assert run["status"] == "SUCCESS", run
    messages = _run_messages(dagster_dev, run_id)
    assert any(m.startswith("Executing steps in process") for m in messages), messages[:20]
    assert not any("multiprocess" in m for m in messages)
    checks = dagster_dev.graphql("""{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks {
        checks { name executionForLatestMaterialization { status runId } } } } } }""")["assetNodes"]
    statuses = {("/".join(n["assetKey"]["path"]), c["name"]): c["executionForLatestMaterialization"]
                for n in checks for c in (n["assetChecksOrError"] or {}).get("checks", [])}
    assert statuses
    for key, execution in statuses.items():  # None is what the UI shows as "Not evaluated"
        assert execution is not None and execution["status"] == "SUCCEEDED" and execution["runId"] == run_id, (
            key, execution)


def _asset_job_runs(dev: DagsterDev) -> list[dict[str, Any]]:
    return dev.graphql("""{ runsOrError(filter: {pipelineName: "__ASSET_JOB"}) {
        ... on Runs { results { runId status } } } }""")["runsOrError"]["results"]


def _run_messages(dev: DagsterDev, run_id: str) -> list[str]:
    data = dev.graphql("""query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
        ... on EventConnection { events { __typename ... on MessageEvent { message } } } } }""", {"id": run_id})
    return [e.get("message") or "" for e in data["logsForRun"]["events"]]


SENSOR = "noetl_export_clickhouse"
SENSOR_TICKS = """query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) { __typename ... on Sensor {
    sensorState { ticks(limit: 20) { tickId status skipReason originRunIds } } } } }"""


def test_export_sensor_tick_shows_success_and_counts(dagster_dev: DagsterDev, tmp_path: Path) -> None:
    """A run finishes; the next export tick that exported it is "Success" (not "Skipped"), targets
    that run, and its counts are visible: in the tick's logs and as an observation of the asset
    observability/noetl_events."""
    import subprocess

    from devserver import ROOT as PROJECT, dev_env

    env = {**dev_env(dagster_dev.home), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([str(PROJECT / ".venv" / "bin" / "noetl-dagster"), "run", "tests/observe/route.yaml",
                           "--json"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = json.loads(done.stdout)["run_id"]
    selector = {"repositoryLocationName": "noetl_playbooks", "repositoryName": "__repository__", "sensorName": SENSOR}
    deadline = time.monotonic() + 240  # a tick every 30 s; the daemon is slow under load
    while True:
        ticks = dagster_dev.graphql(SENSOR_TICKS, {"sel": selector})["sensorOrError"]["sensorState"]["ticks"]
        tick = next((t for t in ticks if run_id in (t["originRunIds"] or [])), None)
        if tick is not None:
            break
        assert time.monotonic() < deadline, ticks
        time.sleep(3)
    assert tick["status"] == "SUCCESS", tick
    observed = dagster_dev.graphql("""{ assetOrError(assetKey: {path: ["observability", "noetl_events"]}) {
        ... on Asset { assetObservations(limit: 50) { metadataEntries { label
        ... on IntMetadataEntry { intValue } } } } } }""")["assetOrError"]["assetObservations"]
    counts = [{e["label"]: e.get("intValue") for e in o["metadataEntries"]} for o in observed]
    assert any(c.get("events", 0) > 0 and c.get("runs", 0) >= 1 for c in counts), counts
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60000)
            page.goto(f"{dagster_dev.url}/locations/noetl_playbooks/sensors/{SENSOR}", wait_until="domcontentloaded")
            _skip_community_modal(page)
            row = page.locator("tr", has=page.get_by_text(run_id[:8], exact=True)).first
            expect(row).to_be_visible()
            assert "Skipped" not in row.inner_text()
            page.screenshot(path=str(tmp_path / "sensor.png"))
            row.get_by_role("button", name="View logs").click()
            expect(page.get_by_text(re.compile(r"clickhouse: exported [1-9]\d* events")).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "sensor_logs.png"))
            page.keyboard.press("Escape")
            page.goto(f"{dagster_dev.url}/assets/observability/noetl_events?view=events", wait_until="domcontentloaded")
            expect(page.get_by_text("step_runs", exact=True).first).to_be_visible()  # the observation's counts
            page.screenshot(path=str(tmp_path / "noetl_events.png"))
        finally:
            browser.close()


ERRORED = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: ui_error_result, path: tests/ui_error_result}
workflow:
  - step: start
    tool: {kind: noop}
    next: divide
  - step: divide
    tool: {kind: python, input: {d: 0}, code: "result = {'q': 1 / d}"}
    next:
      arcs:
        - {step: recover, when: "{{ divide.stderr is defined }}"}
        - {step: end}
  - step: recover
    tool: {kind: noop, result: {recovered: true}}
  - step: end
    tool: {kind: noop}
"""


def test_errored_step_is_visible_on_the_run_page(dagster_dev: DagsterDev, tmp_path: Path) -> None:
    """A step that completed with an error result (NoETL's semantics: the run succeeds) shows on the
    run page: the run's `noetl/outcome` tag, the ERROR line naming the step and its message, and
    the step's `noetl/status: error` output metadata."""
    from devserver import ROOT as PROJECT, dev_env

    playbook = tmp_path / "ui_error_result.yaml"
    playbook.write_text(ERRORED)
    env = {**dev_env(dagster_dev.home), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([str(PROJECT / ".venv" / "bin" / "noetl-dagster"), "run", str(playbook), "--json"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["status"] == "success" and report["steps"]["divide"]["status"] == "error"
    run_id = report["run_id"]
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(60000)
            page.goto(f"{dagster_dev.url}/runs/{run_id}", wait_until="domcontentloaded")
            _skip_community_modal(page)
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            expect(page.get_by_text("noetl/outcome: completed_with_errors").first).to_be_visible()
            expect(page.get_by_text("noetl/error_steps: divide").first).to_be_visible()
            expect(page.get_by_text(re.compile(r"step 'divide' completed with an error result: "
                                               r"ZeroDivisionError: division by zero")).first).to_be_visible()
            expect(page.get_by_text("noetl/status").first).to_be_visible()  # the step's output metadata
            page.screenshot(path=str(tmp_path / "errored_run.png"))
        finally:
            browser.close()
    assert (tmp_path / "errored_run.png").stat().st_size > 10_000
