"""Passing a large Arrow table between two ops: ArrowRefIOManager vs pickle vs raw pyarrow.

Variants (each in a fresh subprocess, so peak RSS is that variant's own), run in ``--repeat``
interleaved rounds (the order rotates each round); medians and bests are reported, ratios are
per round (paired) with their median and best:

* in process (``execute_job``, in-process executor, persistent SQLite instance in a temp folder),
  a job ``produce -> consume(t: pa.Table)``:
  ``arrow_io:arrow`` the default :class:`ArrowRefIOManager`: the consumer gets the table object
  itself while a background thread writes the Arrow IPC file (complete before the run ends);
  ``arrow_io:arrow-write`` with ``handoff="write"`` (the file first, then a memory map: what every
  other process sees); ``arrow_io:parquet`` Parquet intermediates; ``pickle`` Dagster's
  ``FilesystemIOManager``; ``raw:arrow`` / ``raw:parquet`` no Dagster: the same file written and
  read back with pyarrow (the floor of any store that writes before the consumer reads);
* across processes (multiprocess executor, forkserver): ``mp:arrow-shm`` with ``shared_memory``
  (IPC files in /dev/shm, memory-mapped by the consumer's process), ``mp:arrow`` (IPC on disk),
  ``mp:pickle``;
* ``forward``: ``produce -> forward -> sink`` where ``forward`` receives the ArrowRef and passes
  it on without reading: its IO cost (its load + its store + the sink's load, timed inside the IO
  manager) at 10 MB and at the full size.

The table (``--size-mb``, default 1024; ``--quick``: 50) has ~54 bytes per row: int64 id, two
random float64, two int32, a timestamp and a low-cardinality string. Times: ``handoff`` is from
``produce`` returning the table to ``consume`` holding it (store + Dagster bookkeeping + load;
across processes also the consumer process's start); ``IO manager`` is the IO manager's own
``handle_output`` + ``load_input``; ``total`` adds a full scan in ``consume`` (min/max of every
column, string lengths), so lazily memory-mapped data is paid for too. ``extra MB`` is the sampled
RSS peak during handoff+scan above the RSS when the table was ready; ``peak MB`` the process's
whole peak (ru_maxrss, including generating the table). Targets: handoff >= 10x faster than pickle
in process, IO >= 4x across processes, <= 0.5x pickle's peak memory.

Run: ``.venv/bin/python benchmarks/io_manager.py [--size-mb N | --quick] [--repeat N] [--variants a,b]``.
Never asserts.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_line, median, quiet_warnings, table  # noqa: E402

BYTES_PER_ROW = 54
FORWARD_SMALL_MB = 10


# --------------------------------------------------------------------------- measurement

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Samples RSS every few ms; ``mark()`` starts a window, ``window_peak()`` its maximum."""

    def __init__(self, interval: float = 0.003) -> None:
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_bytes()
            if value > self._peak:
                self._peak = value
            time.sleep(self._interval)

    def mark(self) -> int:
        now = rss_bytes()
        self._peak = now
        return now

    def window_peak(self) -> int:
        return max(self._peak, rss_bytes())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def make_table(size_mb: float) -> Any:
    import numpy as np
    import pyarrow as pa

    rows = max(1, int(size_mb * (1 << 20) / BYTES_PER_ROW))
    rng = np.random.default_rng(7)
    vocab = pa.array([f"item-{i:05d}" for i in range(1000)])
    return pa.table({
        "id": np.arange(rows, dtype=np.int64),
        "x": rng.random(rows),
        "y": rng.random(rows),
        "q": rng.integers(0, 100, rows, dtype=np.int32),
        "r": rng.integers(0, 1 << 30, rows, dtype=np.int32),
        "ts": pa.array(np.arange(rows, dtype=np.int64) * 1000 + 1_700_000_000_000_000, pa.timestamp("us")),
        "cat": pa.DictionaryArray.from_arrays(
            pa.array(rng.integers(0, 1000, rows, dtype=np.int32)), vocab).dictionary_decode(),
    })


def scan(t: Any) -> int:
    """Touch every column (so memory-mapped pages are really read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    checksum = 0
    for name in t.column_names:
        col = t.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            checksum += int(pc.sum(pc.binary_length(col)).as_py() or 0)
        elif pa.types.is_dictionary(col.type):
            checksum += int(pc.sum(pc.binary_length(col.dictionary_decode() if hasattr(col, "dictionary_decode")
                                                    else pc.cast(col, pa.string()))).as_py() or 0)
        else:
            pc.min_max(col)
    return checksum + t.num_rows


# ---------------------------------------------------------------------- variants (child)
#
# The Dagster variants run with ``dg.execute_job(dg.reconstructable(factory))`` and the in-process
# executor: ``job.execute_in_process`` keeps every output object alive until the run ends (its
# output capture), which would bill the producer's table to the consumer's memory.
# The job factories read their settings from the environment and share state through this module
# (the child imports it as ``io_manager``, which is also where Dagster reconstructs the job from).

STATE: dict[str, Any] = {}
TIMINGS: dict[tuple[str, str], float] = {}
SAMPLER: "RssSampler | None" = None
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _settings() -> tuple[str, float, str]:
    return (os.environ["NOETL_BENCH_KIND"], float(os.environ["NOETL_BENCH_SIZE_MB"]),
            os.environ["NOETL_BENCH_WORKDIR"])


def handoff_job() -> Any:
    """``produce -> consume(t: pa.Table)`` with the IO manager named by NOETL_BENCH_KIND."""
    import dagster as dg
    import pyarrow as pa

    from noetl_dagster.io.manager import ArrowRefIOManager

    kind, size_mb, workdir = _settings()
    multiprocess = os.environ.get("NOETL_BENCH_EXECUTOR") == "multiprocess"
    if kind == "pickle":  # what dg.FilesystemIOManager creates, timed
        from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

        pickled = timed_io(PickledObjectFilesystemIOManager)(base_dir=os.path.join(workdir, "pickle"))
        io: Any = dg.IOManagerDefinition.hardcoded_io_manager(pickled)
    else:
        fmt, _, mode = kind.partition("-")  # arrow | arrow-write | arrow-shm | parquet
        io = timed_io(ArrowRefIOManager)(base_uri=os.path.join(workdir, "arrow"), intermediate_format=fmt,
                                         handoff="write" if mode == "write" else "auto", shared_memory=mode == "shm")

    @dg.op
    def produce() -> pa.Table:
        t = make_table(size_mb)
        STATE["rows"] = t.num_rows
        STATE["nbytes"] = t.nbytes
        STATE["rss_ready"] = SAMPLER.mark() if SAMPLER else rss_bytes()
        STATE["t_ready"] = time.perf_counter()
        stamp(workdir, rows=t.num_rows, nbytes=t.nbytes, t_ready=time.time())
        return t

    @dg.op
    def consume(t: pa.Table) -> int:
        STATE["t_in"] = time.perf_counter()
        t_in = time.time()
        STATE["checksum"] = scan(t)
        STATE["t_done"] = time.perf_counter()
        STATE["extra_peak"] = (SAMPLER.window_peak() if SAMPLER else rss_bytes()) - STATE.get("rss_ready", 0)
        stamp(workdir, t_in=t_in, t_done=time.time())
        return t.num_rows

    executor = (dg.multiprocess_executor.configured({"start_method": {"forkserver": {}}}) if multiprocess
                else dg.in_process_executor)

    @dg.job(resource_defs={"io_manager": io}, executor_def=executor)
    def handoff():
        consume(produce())

    return handoff


def stamp(workdir: str, **values: float) -> None:
    """Figures of a step, for the parent of a multiprocess run (steps run in other processes)."""
    with open(os.path.join(workdir, "stamps.jsonl"), "a") as f:
        f.write(json.dumps(values) + "\n")


def stamps(workdir: str) -> dict[str, float]:
    out: dict[str, float] = {}
    path = os.path.join(workdir, "stamps.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                for key, value in json.loads(line).items():
                    out[key] = out.get(key, 0.0) + value if key.startswith("io_") else value
    return out


def timed_io(base: Any) -> Any:
    """``base`` with its store (handle_output) and load (load_input) seconds recorded."""

    class Timed(base):  # type: ignore[misc, valid-type]
        def handle_output(self, context, obj):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            super().handle_output(context, obj)
            if context.step_key == "produce":
                stamp(_settings()[2], io_store=time.perf_counter() - start)

        def load_input(self, context):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            value = super().load_input(context)
            stamp(_settings()[2], io_load=time.perf_counter() - start)
            return value

    Timed.__name__ = base.__name__
    return Timed


def forward_job() -> Any:
    """``produce -> forward(ref) -> sink(ref: ArrowRef)``, the IO manager timed per call."""
    import dagster as dg
    import pyarrow as pa

    from noetl_dagster.io.manager import ArrowRef, ArrowRefIOManager

    _, size_mb, workdir = _settings()

    class TimedIO(ArrowRefIOManager):
        def handle_output(self, context, obj):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            super().handle_output(context, obj)
            TIMINGS[(context.step_key, "store")] = time.perf_counter() - start

        def load_input(self, context):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            value = super().load_input(context)
            TIMINGS[(context.op_def.name, "load")] = time.perf_counter() - start
            return value

    @dg.op
    def produce() -> pa.Table:
        return make_table(float(os.environ.get("NOETL_BENCH_FORWARD_MB", size_mb)))

    @dg.op
    def forward(value):  # the stored structure: an ArrowRef, not the data
        STATE["forwarded"] = type(value).__name__
        return value

    @dg.op
    def sink(ref: ArrowRef) -> int:
        STATE["rows"] = ref.num_rows
        return ref.num_rows

    @dg.job(resource_defs={"io_manager": TimedIO(base_uri=os.path.join(workdir, "arrow"))},
            executor_def=dg.in_process_executor)
    def forwarding():
        sink(forward(produce()))

    return forwarding


def dagster_variant(kind: str, size_mb: float, workdir: str, executor: str = "in_process") -> dict[str, Any]:
    global SAMPLER
    quiet_warnings()
    import dagster as dg

    os.makedirs(workdir, exist_ok=True)
    os.environ.update(NOETL_BENCH_KIND=kind, NOETL_BENCH_SIZE_MB=str(size_mb), NOETL_BENCH_WORKDIR=workdir,
                      NOETL_BENCH_EXECUTOR=executor)
    instance = persistent_instance(workdir)
    if executor == "multiprocess":
        job = dg.build_reconstructable_job("io_manager", "handoff_job",
                                           reconstructor_working_directory=os.path.dirname(os.path.abspath(__file__)))
        with dg.execute_job(job, instance=instance, run_config=LOG_CONFIG) as result:
            assert result.success
        got = stamps(workdir)
        from noetl_dagster.io.manager import ArrowRefIOManager

        ArrowRefIOManager(base_uri=os.path.join(workdir, "arrow")).clean_run(result.run_id)  # /dev/shm too
        return {"rows": int(got["rows"]), "table_mb": got["nbytes"] / 2**20, "handoff": got["t_in"] - got["t_ready"],
                "total": got["t_done"] - got["t_ready"], "io": got.get("io_store", 0.0) + got.get("io_load", 0.0),
                "extra_mb": 0.0, "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "stored_mb": 0.0}
    SAMPLER = RssSampler()
    with dg.execute_job(dg.reconstructable(handoff_job), instance=instance, run_config=LOG_CONFIG) as result:
        assert result.success
    SAMPLER.stop()
    SAMPLER = None
    out = _report(workdir)
    got = stamps(workdir)
    out["io"] = got.get("io_store", 0.0) + got.get("io_load", 0.0)
    return out


def raw_variant(kind: str, size_mb: float, workdir: str) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noetl_dagster.io.arrow_ref import _dictionary_columns

    sampler = RssSampler()
    t = make_table(size_mb)
    STATE["rows"], STATE["nbytes"] = t.num_rows, t.nbytes
    os.makedirs(workdir, exist_ok=True)
    STATE["rss_ready"] = sampler.mark()
    STATE["t_ready"] = time.perf_counter()
    if kind == "parquet":  # the IO manager's options: snappy, dictionary for strings only
        path = os.path.join(workdir, "raw.parquet")
        pq.write_table(t, path, compression="snappy", use_dictionary=_dictionary_columns(t.schema))
        del t
        loaded = pq.read_table(path, memory_map=True)
    else:
        path = os.path.join(workdir, "raw.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, t.schema) as writer:
            writer.write_table(t)
        del t
        loaded = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    STATE["t_in"] = time.perf_counter()
    STATE["checksum"] = scan(loaded)
    STATE["t_done"] = time.perf_counter()
    STATE["extra_peak"] = sampler.window_peak() - STATE["rss_ready"]
    sampler.stop()
    out = _report(workdir)
    out["io"] = out["handoff"]
    return out


def forward_variant(size_mb: float, workdir: str) -> dict[str, Any]:
    quiet_warnings()
    import dagster as dg

    os.environ.update(NOETL_BENCH_KIND="parquet", NOETL_BENCH_SIZE_MB=str(size_mb), NOETL_BENCH_WORKDIR=workdir)
    instance = persistent_instance(workdir)
    # warm-up run with a one-row table (imports, first-run caches), then the measured run
    os.environ["NOETL_BENCH_FORWARD_MB"] = "0"
    with dg.execute_job(dg.reconstructable(forward_job), instance=instance, run_config=LOG_CONFIG) as warm:
        assert warm.success
    os.environ["NOETL_BENCH_FORWARD_MB"] = str(size_mb)
    TIMINGS.clear()
    with dg.execute_job(dg.reconstructable(forward_job), instance=instance, run_config=LOG_CONFIG) as result:
        assert result.success
        run_id = result.run_id
    stamps = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.step_key == "forward" and event.event_type_value in ("STEP_START", "STEP_SUCCESS"):
            stamps[event.event_type_value] = record.timestamp
    return {
        "forwarded": STATE["forwarded"],
        "rows": STATE["rows"],
        "io_seconds": TIMINGS[("forward", "load")] + TIMINGS[("forward", "store")] + TIMINGS[("sink", "load")],
        "step_seconds": stamps["STEP_SUCCESS"] - stamps["STEP_START"],
        "produce_store_seconds": TIMINGS[("produce", "store")],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def persistent_instance(workdir: str) -> Any:
    """A persistent (SQLite) Dagster instance in ``workdir/dagster_home``."""
    import dagster as dg

    home = os.path.join(workdir, "dagster_home")
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "dagster.yaml"), "w") as f:
        f.write("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.local_temp(tempdir=home)


def _report(workdir: str) -> dict[str, Any]:
    stored = 0
    for root, _, names in os.walk(workdir):
        if "dagster_home" in root:
            continue
        stored += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    return {
        "rows": STATE["rows"],
        "table_mb": STATE["nbytes"] / 2**20,
        "handoff": STATE["t_in"] - STATE["t_ready"],
        "total": STATE["t_done"] - STATE["t_ready"],
        "extra_mb": STATE["extra_peak"] / 2**20,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stored_mb": stored / 2**20,
    }


def child(args: argparse.Namespace) -> None:
    import io_manager as bench  # this file as an importable module: Dagster reconstructs jobs from it

    workdir = args.workdir
    if args.variant.startswith("arrow_io:"):
        out = bench.dagster_variant(args.variant.split(":", 1)[1], args.size_mb, workdir)
    elif args.variant == "pickle":
        out = bench.dagster_variant("pickle", args.size_mb, workdir)
    elif args.variant.startswith("mp:"):
        out = bench.dagster_variant(args.variant.split(":", 1)[1], args.size_mb, workdir, "multiprocess")
    elif args.variant.startswith("raw:"):
        out = bench.raw_variant(args.variant.split(":", 1)[1], args.size_mb, workdir)
    elif args.variant == "forward":
        out = bench.forward_variant(args.size_mb, workdir)
    else:
        raise SystemExit(f"unknown variant {args.variant}")
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent

def run_child(variant: str, size_mb: float, scratch: str) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix=variant.replace(":", "_") + "-", dir=scratch)
    os.sync()  # start each variant without the previous one's dirty pages still being flushed
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here),
                                                            *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--variant", variant, "--size-mb", str(size_mb),
             "--workdir", workdir], capture_output=True, text=True, timeout=900, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"variant {variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(line[len("RESULT "):])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every figure over the repeats."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = median([r[key] for r in runs])
    return out


#: in process (``execute_job`` with the in-process executor), then across processes (multiprocess)
VARIANTS = ["arrow_io:arrow", "arrow_io:arrow-write", "arrow_io:parquet", "pickle", "raw:arrow", "raw:parquet",
            "mp:arrow-shm", "mp:arrow", "mp:pickle"]
LABELS = {"arrow_io:arrow": "ArrowRefIOManager (default: object in process, IPC file in background)",
          "arrow_io:arrow-write": "ArrowRefIOManager handoff=write (IPC file, then memory map)",
          "arrow_io:parquet": "ArrowRefIOManager parquet", "pickle": "FilesystemIOManager (pickle)",
          "raw:arrow": "raw pyarrow arrow ipc (write + memory map)", "raw:parquet": "raw pyarrow parquet",
          "mp:arrow-shm": "multiprocess: ArrowRefIOManager shared_memory (/dev/shm IPC)",
          "mp:arrow": "multiprocess: ArrowRefIOManager (IPC file on disk)",
          "mp:pickle": "multiprocess: FilesystemIOManager (pickle)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024.0)
    parser.add_argument("--quick", action="store_true", help="a 50 MB table")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median and best reported)")
    parser.add_argument("--scratch", default=None, help="folder for the data (default: a temp folder)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        child(args)
        return 0
    size = 50.0 if args.quick else args.size_mb
    variants = [v for v in args.variants.split(",") if v]
    scratch = tempfile.mkdtemp(prefix="noetl-io-bench-", dir=args.scratch)
    started = time.perf_counter()
    print(environment_line())
    print(f"table: {size:.0f} MB target, each variant in a fresh subprocess, {args.repeat} interleaved rounds")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        for r in range(args.repeat):
            for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
                runs[variant].append(run_child(variant, size, scratch))
                last = runs[variant][-1]
                print(f"  round {r + 1} {variant:22s} handoff {last['handoff']:7.3f}s  io {last['io']:7.3f}s  "
                      f"total {last['total']:7.2f}s  peak {last['peak_mb']:7.0f} MB", flush=True)
        forwards = {}
        for fsize in (FORWARD_SMALL_MB, size):
            fruns = [run_child("forward", fsize, scratch) for _ in range(args.repeat)]
            forwards[fsize] = median_of(fruns)
            print(f"  forward@{fsize:.0f}MB      io {forwards[fsize]['io_seconds'] * 1000:7.1f} ms", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report(runs, forwards, size))
    print(f"wall time of the benchmark: {time.perf_counter() - started:.0f}s")
    return 0


def _ratio(runs: dict[str, list[dict[str, Any]]], slow: str, fast: str, key: str) -> tuple[float, float]:
    """(median, best) over rounds of ``slow[key] / fast[key]`` (rounds paired in order)."""
    pairs = [a[key] / b[key] for a, b in zip(runs[slow], runs[fast]) if b[key] > 0]
    if not pairs:
        return float("nan"), float("nan")
    return median(pairs), max(pairs)


def report(runs: dict[str, list[dict[str, Any]]], forwards: dict[float, dict[str, Any]], size: float) -> str:
    """The printed tables: per-variant figures (median and best of the rounds), then ratios."""
    out: list[str] = []
    first = next(iter(runs.values()))[0]
    out.append(f"\nrows {first['rows']:,}, in-memory table {first['table_mb']:.0f} MB\n")
    rows = []
    for v, rs in runs.items():
        med = median_of(rs)
        rows.append([LABELS.get(v, v), f"{med['handoff']:.3f} / {min(r['handoff'] for r in rs):.3f}",
                     f"{med['io']:.3f} / {min(r['io'] for r in rs):.3f}",
                     f"{med['total']:.2f} / {min(r['total'] for r in rs):.2f}", f"{med['extra_mb']:.0f}",
                     f"{med['peak_mb']:.0f}"])
    out.append(table(["variant", "handoff s (median / best)", "IO manager s", "total s", "extra MB", "peak MB"],
                     rows))
    out.append("handoff: produce returns -> consume holds the table (store + Dagster bookkeeping + load; across "
               "processes also the consumer's process start); IO manager: its handle_output + load_input only")

    def verdict(value: float, target: float) -> str:
        return "ok" if value >= target else "MISS"

    ratio_rows = []
    have = set(runs)
    if {"pickle", "arrow_io:arrow"} <= have:
        med, best = _ratio(runs, "pickle", "arrow_io:arrow", "handoff")
        ratio_rows.append(["in process: handoff, pickle / default", f"{med:.1f}x (best {best:.1f}x)", ">= 10x",
                           verdict(med, 10)])
        med, best = _ratio(runs, "pickle", "arrow_io:arrow", "total")
        ratio_rows.append(["in process: handoff + full scan, pickle / default", f"{med:.1f}x (best {best:.1f}x)",
                           "(info)", ""])
        mem = median_of(runs["arrow_io:arrow"])["peak_mb"] / median_of(runs["pickle"])["peak_mb"]
        ratio_rows.append(["in process: peak RSS, default / pickle", f"{mem:.2f}x", "<= 0.5x",
                           "ok" if mem <= 0.5 else "MISS"])
    if {"raw:arrow", "arrow_io:arrow"} <= have:
        med, best = _ratio(runs, "raw:arrow", "arrow_io:arrow", "handoff")
        ratio_rows.append(["in process: handoff, raw pyarrow IPC / default", f"{med:.1f}x (best {best:.1f}x)",
                           "(info)", "raw writes and maps the file first"])
    if {"pickle", "arrow_io:arrow-write"} <= have:
        med, best = _ratio(runs, "pickle", "arrow_io:arrow-write", "handoff")
        ratio_rows.append(["in process: handoff, pickle / handoff=write", f"{med:.1f}x (best {best:.1f}x)",
                           "(info)", ""])
    if {"mp:pickle", "mp:arrow-shm"} <= have:
        med, best = _ratio(runs, "mp:pickle", "mp:arrow-shm", "io")
        ratio_rows.append(["across processes: IO, pickle / shared_memory", f"{med:.1f}x (best {best:.1f}x)",
                           ">= 4x", verdict(med, 4)])
        med, best = _ratio(runs, "mp:pickle", "mp:arrow-shm", "handoff")
        ratio_rows.append(["across processes: handoff incl. process start, pickle / shared_memory",
                           f"{med:.1f}x (best {best:.1f}x)", "(info)", ""])
    if {"mp:pickle", "mp:arrow"} <= have:
        med, best = _ratio(runs, "mp:pickle", "mp:arrow", "io")
        ratio_rows.append(["across processes: IO, pickle / IPC on disk", f"{med:.1f}x (best {best:.1f}x)",
                           "(info)", ""])
    if forwards:
        small, large = forwards[FORWARD_SMALL_MB], forwards[size]
        fwd_ratio = large["io_seconds"] / small["io_seconds"]
        same_cost = abs(large["io_seconds"] - small["io_seconds"]) < 0.025 or 0.5 <= fwd_ratio <= 2.0
        ratio_rows.append([f"forward a ref: IO {FORWARD_SMALL_MB:.0f} MB -> {size:.0f} MB",
                           f"{small['io_seconds'] * 1000:.1f} -> {large['io_seconds'] * 1000:.1f} ms "
                           f"({fwd_ratio:.2f}x)", "same", "ok" if same_cost else "MISS"])
    out.append("")
    out.append(table(["comparison (per-round ratios)", "measured", "target", ""], ratio_rows, aligns="lrrl"))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
