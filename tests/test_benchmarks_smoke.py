"""The benchmark scripts run end to end at a tiny size (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, argv", [
    ("compile_scale", ["--playbooks", "3", "--steps", "22", "--reps", "1"]),
    ("step_overhead", ["--chain", "3", "--width", "2", "--runs", "1"]),
])
def test_benchmark_runs(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _load(name).main(argv) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio noetl/direct = "), out
    if name == "compile_scale":
        assert "noetl job success=True" in out and "direct job success=True" in out, out


def _wiring(job) -> dict:  # type: ignore[no-untyped-def]
    """node -> {input: [(upstream node, output), ...]} plus each node's output names."""
    structure = job.graph.dependency_structure
    out = {}
    for node in job.graph.nodes:
        ins = {}
        for node_input in node.inputs():
            deps = structure.get_deps_list(node_input) if structure.has_deps(node_input) else []
            ins[node_input.input_name] = sorted((d.node.name, d.output_def.name) for d in deps)
        out[node.name] = (ins, sorted(o.name for o in node.definition.output_defs))
    return out


def test_compile_scale_direct_job_has_the_noetl_shape() -> None:
    """The generated playbook and the hand-written job: same nodes, ins, outs and wiring."""
    from noetl_dagster import build_job
    from noetl_dagster.playbook.loader import parse_text

    cs = _load("compile_scale")
    shape = cs.make_shape(4, 30)
    noetl_job = build_job(parse_text(cs.to_yaml(shape), "/bench/pb.yaml"))
    assert _wiring(noetl_job) == _wiring(cs.build_direct(shape))
    assert _wiring(noetl_job) == _wiring(cs.build_direct(shape, meta=True))


def test_step_overhead_direct_jobs_have_the_noetl_shape() -> None:
    from noetl_dagster import build_job
    from noetl_dagster.playbook.loader import parse_text

    so = _load("step_overhead")
    for text, direct in [(so.linear_yaml(4, "python"), so.direct_job("l", so.linear_edges(4))),
                         (so.linear_yaml(4, "noop"), so.direct_job("n", so.linear_edges(4))),
                         (so.fanout_yaml(3), so.direct_job("f", so.fanout_edges(3)))]:
        assert _wiring(build_job(parse_text(text, "/bench/pb.yaml"))) == _wiring(direct)


def test_export_benchmark_runs() -> None:
    """benchmarks/export.py at 2,000 events, two rounds, in a subprocess (chdb: one folder per process):
    every path's table holds the exported rows (the script asserts the digests)."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCHMARKS / "export.py"), "--events", "2000", "--texts", "2",
                           "--repeat", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2,000 synthetic events" in done.stdout and "same digest" in done.stdout, done.stdout
    assert "targets: >= 100,000 events/s" in done.stdout and "texts/s" in done.stdout, done.stdout


def test_validate_startup_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("validate_startup").main(["--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("ratio validate/(import dagster + validate) = "), out
    assert "| validate " in out and "| import dagster + validate " in out, out
