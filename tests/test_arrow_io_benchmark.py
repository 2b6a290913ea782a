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
        results = {v: (bench.dagster_variant(v.split(":")[1], 0.5, str(tmp_path / v.replace(":", "_")))
                       if not v.startswith("raw:") else
                       bench.raw_variant(v.split(":")[1], 0.5, str(tmp_path / v.replace(":", "_"))))
                   for v in bench.VARIANTS if v != "pickle"}
        results["pickle"] = bench.dagster_variant("pickle", 0.5, str(tmp_path / "pickle"))
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
    assert all(r["rows"] == results["pickle"]["rows"] for r in results.values())
    text = bench.report(results, forwards, 0.5)
    assert "ArrowRefIOManager arrow ipc" in text and "forward a ref" in text
