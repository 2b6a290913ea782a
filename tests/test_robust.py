"""Robustness: one playbook never takes down a folder, the sub-playbook catalog stays bounded,
sub-playbook recursion ends, and documents are bounded before anything expands them."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from noetl_dagster import PlaybookTranslator, load_playbook_definitions
from noetl_dagster.cli import main
from noetl_dagster.errors import PlaybookError
from noetl_dagster.playbook import catalog as catalog_module
from noetl_dagster.playbook import source
from noetl_dagster.playbook.catalog import FolderCatalog, catalog_root
from noetl_dagster.playbook.loader import load_playbook, parse_text
from noetl_dagster.run import catalog_around, run_playbook
from noetl_dagster.core import limits

HERE = Path(__file__).parent
HOSTILE = sorted((HERE / "hostile").glob("*.yaml"))


def _playbook(path: str, body: str = "    tool: {kind: noop, result: 1}\n") -> str:
    name = path.rsplit("/", 1)[-1]
    return (f"apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {{name: {name}, path: {path}}}\n"
            f"workflow:\n  - step: start\n{body}")


def _chain(path: str, steps: int) -> str:
    lines = ["apiVersion: noetl.io/v2", "kind: Playbook", f"metadata: {{name: chain, path: {path}}}", "workflow:"]
    names = ["start"] + [f"s{i}" for i in range(1, steps)]
    for i, name in enumerate(names):
        lines += [f"  - step: {name}", "    tool: {kind: noop}"]
        if i + 1 < steps:
            lines.append(f"    next: {names[i + 1]}")
    return "\n".join(lines) + "\n"


class _Exploding(PlaybookTranslator):
    """A translator override that fails for one playbook (as a user's subclass might)."""

    def get_op_tags(self, playbook, step):  # type: ignore[no-untyped-def]
        if playbook.metadata.name == "explodes":
            raise ValueError("tag service unavailable")
        return super().get_op_tags(playbook, step)


class _Recursing(PlaybookTranslator):
    def get_op_description(self, playbook, step):  # type: ignore[no-untyped-def]
        if playbook.metadata.name == "recurses":
            return self.get_op_description(playbook, step)
        return super().get_op_description(playbook, step)


def test_every_hostile_playbook_beside_good_ones_leaves_the_good_ones_loaded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "playbooks"
    (folder / "good").mkdir(parents=True)
    for path in HOSTILE:
        shutil.copy(path, folder / path.name)
    (folder / "good" / "one.yaml").write_text(_playbook("good/one"))
    (folder / "good" / "two.yaml").write_text(_playbook("good/two"))
    (folder / "good" / "explodes.yaml").write_text(_playbook("good/explodes"))
    (folder / "good" / "recurses.yaml").write_text(_playbook("good/recurses"))
    (folder / "good" / "chain.yaml").write_text(_chain("good/chain", 1500))  # deeper than Python's default limit
    with caplog.at_level(logging.WARNING, logger="noetl_dagster"):
        defs = load_playbook_definitions(folder, translator=_Exploding())
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"good__one", "good__two", "good__chain"} <= jobs
    assert "good__explodes" not in jobs
    skipped = "\n".join(r.getMessage() for r in caplog.records)
    assert "explodes.yaml:1:1: workflow: cannot be compiled into Dagster definitions: ValueError: tag service " \
           "unavailable" in skipped
    assert "Traceback" not in skipped
    for path in HOSTILE:  # each hostile file is reported by name, the ones that only fail at run time load
        assert path.name in skipped or any(path.name[:3] in job for job in jobs) or "expect-run" in path.read_text()
    recursing = load_playbook_definitions(folder / "good", translator=_Recursing())
    assert "good__recurses" not in {job.name for job in recursing.resolve_all_job_defs()}
    with pytest.raises(PlaybookError, match=r"recurses.yaml:1:1: workflow: the workflow is too deep to compile"):
        load_playbook_definitions(folder / "good" / "recurses.yaml", translator=_Recursing(), strict=True)


def test_a_chain_longer_than_the_recursion_limit_compiles(tmp_path: Path) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(_chain("t/chain", 2500))  # Dagster walks the graph recursively: 1000 frames are not enough
    defs = load_playbook_definitions(path, strict=True)
    assert len(defs.resolve_job_def("t__chain").nodes) == 2500


def test_validate_reports_playbooks_dagster_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(_playbook("t/bad").replace("metadata: {name: bad, path: t/bad}",
                                              "metadata:\n  name: bad\n  path: t/bad\n  dagster: {executor: k8s, "
                                              "k8s: {max_concurrent: lots}}"))
    (tmp_path / "good.yaml").write_text(_playbook("t/good"))
    assert main(["validate", "--compile", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:6:1: metadata.dagster.k8s: Invalid scalar at path root:max_concurrent" in err
    assert "1 problem(s) in 1 of 2 playbook(s)" in err and "Traceback" not in err


def test_the_catalog_root_is_never_guessed_above_the_playbooks_folders(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    odd = tmp_path / "x" / "p.yaml"
    odd.write_text(_playbook("a/b/c"))  # a path deeper than the folders it lies in: used to scan from /
    assert catalog_root(load_playbook(odd)) == (tmp_path / "x").resolve()
    (tmp_path / "risk").mkdir()
    laid_out = tmp_path / "risk" / "score.yaml"
    laid_out.write_text(_playbook("risk/score"))
    assert catalog_root(load_playbook(laid_out)) == tmp_path.resolve()


def test_the_catalog_reads_the_named_file_first_and_scans_once_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dom").mkdir()
    (tmp_path / "dom" / "child.yaml").write_text(_playbook("dom/child"))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "hidden.yaml").write_text(_playbook("dom/hidden"))
    for i in range(30):
        (tmp_path / "dom" / f"other{i:02d}.yaml").write_text(_playbook(f"dom/renamed{i:02d}"))
    catalog = FolderCatalog(tmp_path)
    assert catalog.get("dom/child").metadata.name == "child"
    assert not catalog.scanned and set(catalog.playbooks) == {"dom/child"}
    assert catalog.get("../../etc/passwd") is None
    monkeypatch.setattr(catalog_module, "MAX_CATALOG_FILES", 10)
    catalog = FolderCatalog(tmp_path)
    assert catalog.get("dom/hidden") is None and catalog.scanned  # hidden folders are never entered
    assert len(catalog.playbooks) == 10  # the scan stopped at the limit
    assert catalog.get("dom/renamed00") is not None and catalog.get("dom/renamed29") is None


def test_a_hostile_sibling_does_not_stall_validation_of_a_good_playbook(tmp_path: Path) -> None:
    (tmp_path / "dom").mkdir()
    shutil.copy(HERE / "hostile" / "001_yaml_alias_bomb_workload.yaml", tmp_path / "dom" / "bomb.yaml")
    shutil.copy(HERE / "hostile" / "006_yaml_deep_nesting.yaml", tmp_path / "dom" / "deep.yaml")
    (tmp_path / "dom" / "child.yaml").write_text(_playbook("dom/other_name"))
    parent = tmp_path / "dom" / "parent.yaml"
    parent.write_text(_playbook("dom/parent", "    tool: {kind: playbook, path: dom/other_name}\n"))
    started = time.monotonic()
    catalog = catalog_around(load_playbook(parent))
    assert catalog.missing_references(load_playbook(parent)) == []
    assert time.monotonic() - started < 10


def test_a_detached_self_calling_playbook_stops_at_the_depth_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fire-and-forget self-recursion: each child is a new process; the chain ends at the limit and
    every child is tagged with its parent run (and the parent lists it)."""
    monkeypatch.setenv("NOETL_MAX_SUBPLAYBOOK_DEPTH", "2")
    monkeypatch.setattr(limits, "MAX_SUBPLAYBOOK_DEPTH", 2)
    (tmp_path / "dom").mkdir()
    path = tmp_path / "dom" / "again.yaml"
    path.write_text(_playbook("dom/again", "    tool: {kind: playbook, path: \"{{ 'dom/' ~ 'again' }}\"}\n"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        top = run_playbook(path, instance=instance, log_level="CRITICAL")
        assert top.status == "success"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = instance.get_runs()
            finished = [r for r in runs if r.is_finished]
            if len(finished) >= 3:
                break
            time.sleep(0.5)
        runs = {r.run_id: r for r in instance.get_runs()}
        assert len(runs) == 3, "the chain continued past the depth limit"
        by_depth = {r.tags.get("noetl/call_depth", "0"): r for r in runs.values()}
        assert by_depth["1"].tags["noetl/parent_run_id"] == top.run_id
        assert by_depth["2"].tags["noetl/parent_run_id"] == by_depth["1"].run_id
        assert by_depth["2"].tags["noetl/call_chain"] == "dom/again>dom/again>dom/again"
        assert by_depth["2"].status == dg.DagsterRunStatus.FAILURE  # its own call would be depth 3
        assert f"noetl/detached/{by_depth['1'].run_id}" in runs[top.run_id].tags


def test_documents_are_bounded_before_anything_expands_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "MAX_DOCUMENT_CHARS", 1000)
    with pytest.raises(PlaybookError, match=r"big.yaml:1:1: the file has 1,.* characters, more than the limit"):
        parse_text(_playbook("t/big") + "# " + "x" * 1000 + "\n", "big.yaml")
    monkeypatch.setattr(source, "MAX_DOCUMENT_CHARS", 4_000_000)
    monkeypatch.setattr(source, "MAX_EXPANDED_VALUES", 50)
    text = _playbook("t/many").replace("workflow:", "workload:\n  a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
                                       "  b: [*a, *a, *a, *a, *a]\nworkflow:")
    with pytest.raises(PlaybookError, match="expands to more than 50 values"):
        parse_text(text, "many.yaml")
    # an unquoted template still reads as one (its small mapping key keeps its text)
    with pytest.raises(PlaybookError, match="unquoted template"):
        parse_text(_playbook("t/q", "    tool: {kind: noop}\n    when: {{ workload.x }}\n"), "q.yaml")


def test_playbooks_whose_definitions_collide_do_not_take_the_folder_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Same domain and name under two paths: both would define the run-outcome asset; Dagster would
    refuse the whole location, so the second one is left out with an issue."""
    (tmp_path / "risk").mkdir()
    for variant in ("x", "y"):
        (tmp_path / "risk" / f"{variant}.yaml").write_text(
            _playbook(f"risk/{variant}/score", f"    tool: {{kind: noop, result: [{{a: 1}}]}}\n"
                      f"    product: {{name: p_{variant}}}\n    next: tail\n  - step: tail\n    tool: {{kind: noop}}\n")
            .replace("name: score,", "name: score,"))
    (tmp_path / "risk" / "good.yaml").write_text(_playbook("risk/good"))
    with caplog.at_level(logging.WARNING, logger="noetl_dagster"):
        defs = load_playbook_definitions(tmp_path)
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"risk__good", "risk__x__score"} <= jobs and "risk__y__score" not in jobs
    assert "y.yaml:3:1: metadata.name: asset risk/score__outcome is already defined by playbook 'risk/x/score'" \
        in "\n".join(r.getMessage() for r in caplog.records)
