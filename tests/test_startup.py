"""Start-up cost: what `import noetl_dagster` and a python-only `noetl-dagster run` load, and the
sub-playbook catalog scan (only for playbooks that call one, never inside hidden folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pyarrow", "numpy", "duckdb", "clickhouse_connect", "chdb", "qdrant_client", "onnxruntime", "pandas")
ONE_STEP = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: one, path: one}
workflow:
  - step: start
    tool: {kind: python, code: "result = {'x': 1}"}
"""


def _python(code: str, *args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return folder


def test_import_loads_no_heavy_module(tmp_path: Path, home: Path) -> None:
    done = _python("import sys, noetl_dagster\n"
                   "print('dagster' in sys.modules)\n"
                   "import noetl_dagster.ai, noetl_dagster.export.sensors\n"
                   f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n", cwd=tmp_path, home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "[]"], done.stdout


def test_python_only_run_loads_no_heavy_module(tmp_path: Path, home: Path) -> None:
    (tmp_path / "one.yaml").write_text(ONE_STEP)
    code = ("import runpy, sys\n"
            "sys.argv = ['noetl-dagster', 'run', 'one.yaml', '--json']\n"
            "try:\n    runpy.run_module('noetl_dagster.cli', run_name='__main__')\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = _python(code, cwd=tmp_path, home=home)
    assert done.returncode == 0, done.stderr
    report, heavy = done.stdout.strip().splitlines()
    assert json.loads(report)["steps"]["start"] == {"status": "success", "result": {"x": 1}, "runs": 1}
    assert heavy == "[]"


def test_public_names_resolve_lazily() -> None:
    import noetl_dagster
    import noetl_dagster.ai as ai

    for module in (noetl_dagster, ai):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
        assert set(module.__all__) <= set(dir(module))
        with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
            getattr(module, "nothing_here")
    import noetl_dagster.ai.recommend  # noqa: F401 - the submodule must not shadow the function

    assert callable(ai.recommend) and ai.recommend.__name__ == "recommend"
    from noetl_dagster.planner import plan

    assert noetl_dagster.plan is plan


def test_find_playbooks_skips_hidden_folders_and_follows_links_once(tmp_path: Path) -> None:
    from noetl_dagster.playbook.folder import find_playbooks

    (tmp_path / "risk").mkdir()
    (tmp_path / "risk" / "a.yaml").write_text(ONE_STEP)
    (tmp_path / "b.yml").write_text(ONE_STEP)
    (tmp_path / ".hidden.yaml").write_text(ONE_STEP)
    venv = tmp_path / ".venv" / "lib" / "site-packages" / "pkg"
    venv.mkdir(parents=True)
    (venv / "config.yaml").write_text("x: 1\n")
    (tmp_path / "risk" / "loop").symlink_to(tmp_path, target_is_directory=True)  # a cycle
    linked = tmp_path.parent / f"{tmp_path.name}-shared"
    linked.mkdir()
    (linked / "c.yaml").write_text(ONE_STEP)
    (tmp_path / "shared").symlink_to(linked, target_is_directory=True)
    found = [p.relative_to(tmp_path).as_posix() for p in find_playbooks(tmp_path)]
    assert found == ["b.yml", "risk/a.yaml", "shared/c.yaml"]


def test_catalog_is_read_only_for_playbooks_calling_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import noetl_dagster.translator.definitions as definitions
    from noetl_dagster import run_playbook

    (tmp_path / "one.yaml").write_text(ONE_STEP)
    (tmp_path / "child.yaml").write_text(ONE_STEP.replace("name: one, path: one", "name: child, path: child"))
    (tmp_path / "parent.yaml").write_text(ONE_STEP.replace("name: one, path: one", "name: parent, path: parent")
                                          .replace('{kind: python, code: "result = {\'x\': 1}"}',
                                                   "{kind: playbook, path: child, return_result: true}"))
    import noetl_dagster.playbook.catalog as catalog

    scanned: list[str] = []
    real, read = definitions.load_playbooks, catalog._load
    monkeypatch.setattr(definitions, "load_playbooks", lambda paths, **kw: scanned.append(str(paths)) or real(paths, **kw))
    monkeypatch.setattr(catalog, "_load", lambda file: scanned.append(str(file)) or read(file))
    assert run_playbook(tmp_path / "one.yaml", log_level="ERROR").status == "success"
    assert scanned == []
    report = run_playbook(tmp_path / "parent.yaml", log_level="ERROR")
    assert report.status == "success", report
    assert report.steps["start"].result == {"x": 1}
    assert scanned == [str(tmp_path.resolve() / "child.yaml")]  # the named file only, no folder scan
