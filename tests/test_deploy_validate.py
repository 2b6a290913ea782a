"""The code location and the shipped deployment files load and validate.

* ``dagster definitions validate`` passes for the project (``[tool.dagster]`` in pyproject.toml)
  and for ``-f definitions.py``;
* ``deploy/dagster.yaml`` and ``deploy/dagster-k8s.yaml`` pass Dagster's instance schema and each
  configured class's own schema (dagster-postgres storage, run coordinator, K8sRunLauncher), and
  the K8sRunLauncher of ``dagster-k8s.yaml`` instantiates (with a kubeconfig instead of in-cluster);
* ``deploy/helm/values.yaml`` names the code location the way ``definitions.py`` is loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ENV = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "dagster",
          "DAGSTER_PG_PASSWORD": "secret", "DAGSTER_PG_DB": "dagster",
          "NOETL_DAGSTER_IMAGE": "registry.example.com/noetl-dagster:1.0.0"}


@pytest.mark.parametrize("target", [[], ["-f", "definitions.py"]], ids=["pyproject", "definitions.py"])
def test_dagster_definitions_validate(tmp_path: Path, target: list[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", *target], cwd=ROOT,
                          env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "All code locations passed validation" in output
    if not target:
        assert "noetl_playbooks" in output  # [tool.dagster] code_location_name


def _class_config_errors(entry: dict) -> list[str]:
    """Errors of a ``{module, class, config}`` entry against that class's own config schema."""
    import importlib

    from dagster._config import process_config
    from dagster._serdes.config_class import ConfigurableClassData

    module = ConfigurableClassData(entry["module"], entry["class"], "{}").module_name  # dagster.core -> _core
    cls = getattr(importlib.import_module(module), entry["class"])
    result = process_config(cls.config_type(), entry.get("config") or {})
    return [] if result.success else [e.message for e in result.errors]


@pytest.mark.parametrize("filename", ["dagster.yaml", "dagster-k8s.yaml"])
def test_instance_files_match_dagster_schemas(filename: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance.config import dagster_instance_config

    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)
    config, _ = dagster_instance_config(str(ROOT / "deploy"), filename)  # raises on schema errors
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert postgres["scheme"] == "postgresql+psycopg2"
    storage = {"module": "dagster_postgres", "class": "DagsterPostgresStorage", "config": config["storage"]["postgres"]}
    assert _class_config_errors(storage) == []
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert _class_config_errors(config["run_coordinator"]) == []
    if "run_launcher" in config:
        assert config["run_launcher"]["class"] == "K8sRunLauncher"
        assert _class_config_errors(config["run_launcher"]) == []


def test_k8s_run_launcher_instantiates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._serdes.config_class import ConfigurableClassData

    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n")
    entry = yaml.safe_load((ROOT / "deploy" / "dagster-k8s.yaml").read_text())["run_launcher"]
    entry["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    launcher = ConfigurableClassData(entry["module"], entry["class"], yaml.safe_dump(entry["config"])).rehydrate(
        as_type=object)
    assert type(launcher).__name__ == "K8sRunLauncher"
    assert launcher.job_image == PG_ENV["NOETL_DAGSTER_IMAGE"] and launcher.job_namespace == "dagster"
    assert launcher.postgres_password_secret == "dagster-postgresql-secret"


def test_helm_values_point_at_the_code_location() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "definitions"]
    assert (ROOT / "definitions.py").exists()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY definitions.py" in dockerfile and "COPY playbooks" in dockerfile
