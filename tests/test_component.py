"""``PlaybookComponent``: playbooks as the definitions of a ``dg`` project.

* in a defs-folder sandbox (``dagster.components.testing``): scaffold (example playbook or a given
  path), load, run; ``{{ workload.x }}`` reaches NoETL's renderer at run time, never dg's;
  dg's own templates (``{{ env(...) }}``) still work in the attributes; translator, tags, strict;
* a real ``dg`` project in a temp dir, with the CLI: ``dg scaffold defs``, ``dg list components``,
  ``dg check defs``, ``dg list defs`` and ``dagster definitions validate`` (subprocesses);
* the ``dagster_dg_cli.registry_modules`` entry point, once the package metadata declares it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from noetl_dagster import PlaybookError, PlaybookTranslator, load_playbook, plan
from noetl_dagster.components import PlaybookComponent, PlaybookScaffolder
from noetl_dagster.components.component import JobTagsTranslator, SharedResources
from noetl_dagster.translator.emit import workload_run_config

testing = pytest.importorskip("dagster.components.testing")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TYPE = "noetl_dagster.components.PlaybookComponent"

TEMPLATED = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: templated, path: comp/templated, description: "NoETL templates stay NoETL's"}
workload: {who: world, n: 2}
workflow:
  - step: start
    desc: "Render {{ workload.who }} at run time"
    tool:
      kind: python
      input: {who: "{{ workload.who }}", n: "{{ workload.n }}", run: "{{ execution_id > 0 }}"}
      code: |
        result = {"text": "hello " + who, "n": n * 2, "run": run}
"""


def _run(job: dg.JobDefinition, path: Path, workload: dict[str, Any]) -> dg.ExecuteInProcessResult:
    playbook = load_playbook(path)
    run_config = workload_run_config(playbook, plan(playbook), None, workload)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, run_config=run_config)
    assert result.success
    return result


def test_scaffold_example_loads_and_runs() -> None:
    with testing.create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(PlaybookComponent, defs_path="greetings")
        declared = yaml.safe_load((defs_path / "defs.yaml").read_text())
        assert declared["type"] in (TYPE, "noetl_dagster.components.component.PlaybookComponent")
        assert declared["attributes"] == {"path": "playbooks"}
        example = defs_path / "playbooks" / "hello.yaml"
        assert "{{ workload.greeting }}" in example.read_text()
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (component, defs):
            pass
        assert isinstance(component, PlaybookComponent)
        job = defs.resolve_job_def("greetings__hello")
        assert job.tags["noetl/domain"] == "greetings"
        result = _run(job, example, {"greeting": "hi"})
        assert result.output_for_node("start") == ["hi, ada", "hi, grace"]
        assert result.output_for_node("end") == {"count": 2, "first": "hi, ada"}


def test_scaffold_with_a_path_points_at_existing_playbooks() -> None:
    with testing.create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(PlaybookComponent, defs_path="examples",
                                               scaffold_params={"path": str(ROOT / "playbooks")})
        assert not (defs_path / "playbooks").exists()
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, defs):
            pass
        expected = {PlaybookTranslator().get_job_name(load_playbook(p)) for p in (ROOT / "playbooks").rglob("*.yaml")}
        assert {job.name for job in defs.jobs or []} >= expected
        assert dg.Definitions.validate_loadable(defs) is None


def test_workload_templates_are_not_resolved_by_dg(monkeypatch: pytest.MonkeyPatch) -> None:
    """dg renders {{ }} in defs.yaml attributes (env() works in `path`); the playbook files next to
    it, and any defs.yaml inside the playbook folder, are read by our loader only."""
    with testing.create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(PlaybookComponent, defs_path="templated")
        folder = defs_path / "noetl"
        folder.mkdir()
        playbook = folder / "templated.yaml"
        playbook.write_text(TEMPLATED)
        (folder / "defs.yml").write_text("not: a playbook\n")  # never taken for a playbook
        monkeypatch.setenv("NOETL_PLAYBOOK_DIR", "noetl")
        (defs_path / "defs.yaml").write_text(f"type: {TYPE}\nattributes:\n  path: \"{{{{ env('NOETL_PLAYBOOK_DIR') }}}}\"\n"
                                             "  tags: {team: platform}\n")
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (component, defs):
            pass
        assert component.path == "noetl"  # dg's env() resolved in the attribute
        job = defs.resolve_job_def("comp__templated")
        assert job.tags["team"] == "platform" and job.tags["noetl/playbook"] == "comp/templated"
        assert job.graph.node_named("start").definition.description.startswith(
            "Render {{ workload.who }} at run time")
        result = _run(job, playbook, {"who": "dg"})
        assert result.output_for_node("start") == {"text": "hello dg", "n": 4, "run": True}
        assert (defs.jobs and len(defs.jobs)) == 1


class LoudTranslator(PlaybookTranslator):
    def get_job_name(self, playbook):  # type: ignore[no-untyped-def]
        return "loud__" + super().get_job_name(playbook)


def test_translator_attribute_and_strict(tmp_path: Path) -> None:
    with testing.create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(PlaybookComponent, defs_path="custom")
        (defs_path / "playbooks" / "broken.yaml").write_text("apiVersion: noetl.io/v2\nkind: Playbook\n")
        (defs_path / "defs.yaml").write_text(
            f"type: {TYPE}\nattributes:\n  path: playbooks\n  translator: test_component:LoudTranslator\n")
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, defs):
            pass
        assert [job.name for job in defs.jobs or []] == ["loud__custom__hello"]  # broken.yaml skipped

        (defs_path / "defs.yaml").write_text(f"type: {TYPE}\nattributes:\n  path: playbooks\n  strict: true\n")
        with pytest.raises(Exception) as info:
            with sandbox.load_component_and_build_defs(defs_path=defs_path):
                pass
        (error,) = [e for e in _chain(info.value) if isinstance(e, PlaybookError)]
        assert "broken.yaml" in str(error) and "workflow" in str(error)


def test_component_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="not a PlaybookTranslator"):
        PlaybookComponent(path=".", translator="json:JSONDecoder").get_translator()
    with testing.create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(PlaybookComponent, defs_path="missing",
                                               scaffold_params={"path": "nowhere"})
        with pytest.raises(Exception) as info:
            with sandbox.load_component_and_build_defs(defs_path=defs_path):
                pass
        assert any("path 'nowhere' does not exist" in str(e) for e in _chain(info.value))
    assert PlaybookScaffolder.get_scaffold_params().model_fields.keys() == {"path"}


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and its causes (dg wraps a component's load error)."""
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


# --------------------------------------------------------------------------------------------
# a real dg project and the CLI

def _dg(project: Path, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1",
           "COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(project / "src"), str(ROOT)]),
           "DAGSTER_HOME": str(project / ".home")}  # ROOT: this checkout's package, not an installed one
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=project, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _dg_json(project: Path, *args: str, pythonpath: str | None = None) -> Any:
    paths = [str(project / "src"), str(ROOT)] + ([pythonpath] if pythonpath else [])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join(paths), "DAGSTER_HOME": str(project / ".home")}
    proc = subprocess.run([str(BIN / "dg"), *args, "--json"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture
def dg_project(tmp_path: Path) -> Path:
    """The layout `create-dagster project` writes (src/<pkg>/definitions.py + defs/), offline."""
    if not (BIN / "dg").exists():
        pytest.skip("the dg CLI is not installed (pip install dagster-dg-cli==1.13.27)")
    project = tmp_path / "noetl-proj"
    package = project / "src" / "noetl_proj"
    (package / "defs").mkdir(parents=True)
    (project / ".home").mkdir()
    (project / ".home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "noetl-proj"
        version = "0.1.0"
        requires-python = ">=3.11"
        dependencies = ["noetl-dagster"]

        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "noetl_proj"
        code_location_name = "noetl_proj.definitions"
        registry_modules = ["noetl_dagster.components"]
        """))
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        import dagster as dg


        @dg.definitions
        def defs():
            return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
        """))
    return project


def test_dg_cli_scaffolds_checks_and_validates(dg_project: Path) -> None:
    listed = _dg_json(dg_project, "list", "components")
    assert TYPE in {c["key"] for c in listed["items"]}

    _dg(dg_project, "dg", "scaffold", "defs", TYPE, "hello_domain")
    _dg(dg_project, "dg", "scaffold", "defs", TYPE, "examples", "--path", str(ROOT / "playbooks"))
    defs_dir = dg_project / "src" / "noetl_proj" / "defs"
    assert (defs_dir / "hello_domain" / "playbooks" / "hello.yaml").exists()
    assert yaml.safe_load((defs_dir / "examples" / "defs.yaml").read_text())["attributes"] == {
        "path": str(ROOT / "playbooks")}

    assert "All definitions loaded successfully" in _dg(dg_project, "dg", "check", "defs")
    jobs = {j["name"]: j for j in _dg_json(dg_project, "list", "defs")["jobs"]}
    assert "hello_domain__hello" in jobs and "risk__score_application" in jobs
    assert jobs["hello_domain__hello"]["source"].endswith("hello_domain/playbooks/hello.yaml:1")
    validated = _dg(dg_project, "dagster", "definitions", "validate")
    assert "All code locations passed validation" in validated


ENTRY_POINTS = """\
[dagster_dg_cli.registry_modules]
noetl_dagster = noetl_dagster.components
"""


def test_entry_point_lines_register_the_component(dg_project: Path, tmp_path: Path) -> None:
    """The pyproject lines the package declares, as installed metadata (a dist-info on PYTHONPATH):
    `dg list components` then finds PlaybookComponent in a project that does not name our module."""
    pyproject = dg_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('registry_modules = ["noetl_dagster.components"]\n', ""))
    without = _dg_json(dg_project, "list", "components")
    assert TYPE not in {c["key"] for c in without["items"]} or _installed_entry_point()
    site = tmp_path / "site"
    dist = site / "noetl_dagster_entry_points-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: noetl-dagster-entry-points\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    listed = _dg_json(dg_project, "list", "components", pythonpath=str(site))
    assert TYPE in {c["key"] for c in listed["items"]}


def _installed_entry_point() -> str | None:
    points = {ep.name: ep.value for ep in metadata.entry_points(group="dagster_dg_cli.registry_modules")}
    return points.get("noetl_dagster")


def test_registry_entry_point_is_installed() -> None:
    """Once pyproject.toml declares the entry point (and the package is reinstalled)."""
    if _installed_entry_point() is None:
        pytest.skip("entry point not in the installed metadata yet (pyproject.toml, then reinstall)")
    assert _installed_entry_point() == "noetl_dagster.components"


def test_components_of_one_project_share_resources_and_loads_do_not() -> None:
    """Two PlaybookComponents in one project load hand Dagster the same resource objects (so
    their definitions merge) and one catalog holding both folders' playbooks; another load of the
    project gets its own: nothing is kept in module state."""
    with testing.create_defs_folder_sandbox() as sandbox:
        first = sandbox.scaffold_component(PlaybookComponent, defs_path="one")
        second = sandbox.scaffold_component(PlaybookComponent, defs_path="two")
        with sandbox.build_component_tree() as tree:  # one load of the whole project
            defs = tree.build_defs()
            shared = vars(tree)[SharedResources.KEY]
        with sandbox.build_all_defs() as again:
            pass
    assert {job.name for job in defs.jobs or []} == {"one__hello", "two__hello"}
    assert (first.name, second.name) == ("one", "two")
    assert set(shared.catalog.playbooks) == {"one/hello", "two/hello"}
    assert all(defs.resources[key] is value for key, value in shared.resources.items())  # type: ignore[index]
    assert all(again.resources[key] is not defs.resources[key] for key in shared.resources)  # type: ignore[index]


def test_job_tags_wrap_the_translator_without_subclassing_it() -> None:
    playbook = load_playbook(ROOT / "playbooks" / "risk" / "score_application.yaml")
    loud = LoudTranslator()
    tagged = PlaybookComponent(path=".", translator="test_component:LoudTranslator",
                               tags={"team": "risk"}).get_translator()
    assert isinstance(tagged, JobTagsTranslator) and type(tagged) is JobTagsTranslator
    assert isinstance(tagged.translator, LoudTranslator)
    assert tagged.get_job_tags(playbook) == {**loud.get_job_tags(playbook), "team": "risk"}
    assert tagged.get_job_name(playbook) == loud.get_job_name(playbook) == "loud__risk__score_application"
    step = playbook.workflow[0]
    assert tagged.get_op_tags(playbook, step) == loud.get_op_tags(playbook, step)
