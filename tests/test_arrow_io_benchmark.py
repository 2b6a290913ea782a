"""benchmarks/io_manager.py runs end to end at a tiny size, in this process (no timing asserted)."""

import importlib
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_io_manager_benchmark_variants_and_report(tmp_path, monkeypatch):
    pytest.importorskip("numpy")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # the child imports the script as ``io_manager``: Dagster reconstructs its jobs from there
    bench = importlib.import_module("io_manager")
    keys = ("NOETL_BENCH_KIND", "NOETL_BENCH_SIZE_MB", "NOETL_BENCH_WORKDIR", "NOETL_BENCH_FORWARD_MB")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        results = {}
        for v in [v for v in bench.VARIANTS if v != "mp:arrow"]:  # the report's ratios need the others
            kind, workdir = v.split(":")[-1], str(tmp_path / v.replace(":", "_"))
            if v.startswith("raw:"):
                results[v] = [bench.raw_variant(kind, 0.5, workdir)]
            elif v.startswith("mp:"):  # its own process, as in the benchmark (a forkserver keeps its first env)
                results[v] = [bench.run_child(v, 0.5, str(tmp_path))]
            else:
                results[v] = [bench.dagster_variant(kind, 0.5, workdir)]
        forwards = {size: bench.forward_variant(size, str(tmp_path / f"fwd{size}"))
                    for size in (bench.FORWARD_SMALL_MB, 0.5)}
    finally:  # the variants set these for their job factories
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.modules.pop("io_manager", None)
    assert forwards[0.5]["forwarded"] == "ArrowRef"
    assert all(r[0]["rows"] == results["pickle"][0]["rows"] for r in results.values())
    text = bench.report(results, forwards, 0.5)
    for needle in ("in process: handoff, pickle / default", "across processes: IO, pickle / shared_memory",
                   "forward a ref"):
        assert needle in text, text
