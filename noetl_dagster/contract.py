"""Every name this package writes into Dagster and reads back, in one place.

The emitter names ops, outputs, tags and metadata with these; the run report, the event export,
tuning, the CLI progress and the benchmarks read them back with the same constants and with
:func:`parse_step_key`. Nothing here imports Dagster, so every layer may use it.

Examples:
    >>> parse_step_key("risk__score__playbook.price[i00003]")
    StepKey(step='price', op='risk__score__playbook.price', node='price', mapping_key='i00003', graph='risk__score__playbook')
    >>> loop_items_of("price[i00000_i00007]")
    8
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# -- ops and outputs ------------------------------------------------------------------------
#: every step op's output carrying the step's result
RESULT_OUTPUT = "result"
#: the output of the arc to step ``x`` is ``to_x`` (made unique per op by the planner)
ARC_OUTPUT_PREFIX = "to_"
#: a parallel loop ``s`` is ``s__fan_out`` -> ``s`` (mapped) -> ``s__collect``
FAN_OUT_SUFFIX = "__fan_out"
COLLECT_SUFFIX = "__collect"
GENERATED_SUFFIXES = (FAN_OUT_SUFFIX, COLLECT_SUFFIX)
#: a fan-out's outputs: the loop's input context and one dynamic output per item (or chunk)
LOOP_CONTEXT_OUTPUT = "loop_context"
LOOP_ITEMS_OUTPUT = "items"
#: a product playbook's graph-backed multi-asset is ``<job>__playbook`` (its ops nest under it)
ASSET_GRAPH_SUFFIX = "__playbook"
#: the op (and output) of an asset graph collecting its final non-product steps' results
RUN_OUTCOME = "outcome__"

# -- tags -------------------------------------------------------------------------------------
#: job/run tags
PLAYBOOK_TAG = "noetl/playbook"
DOMAIN_TAG = "noetl/domain"
#: run tags: ``completed_with_errors`` when a step completed with an error result, and which
OUTCOME_TAG = "noetl/outcome"
COMPLETED_WITH_ERRORS = "completed_with_errors"
ERROR_STEPS_TAG = "noetl/error_steps"
#: run tag: NoETL's numeric ``execution_id`` of the run
EXECUTION_ID_TAG = "noetl/execution_id"
#: run tags of a sub-playbook run
PARENT_RUN_TAG = "noetl/parent_run_id"
PARENT_STEP_TAG = "noetl/parent_step"
#: op tags
STEP_TAG = "noetl/step"          # the playbook step an op runs (a region's op: its entry step)
TOOL_TAG = "noetl/tool"          # the step's tool kinds, ``+``-joined
LOOP_TAG = "noetl/loop"          # a loop step's mode
LOOP_STEP_TAG = "noetl/loop_step"  # a parallel loop's body ops: executors limit concurrency by it
REGION_TAG = "noetl/region"      # a cycle's op: its steps, comma-joined
TIMEOUT_TAG = "noetl/timeout_seconds"  # an op's time limit (PlaybookTranslator.get_op_timeout), shown
ROLE_TAG = "noetl/role"          # loop-fan-out | loop-collect | outcome

# -- metadata -------------------------------------------------------------------------------
#: ``{step: {status, runs, error?}}`` on a step op's result output (or its first token)
STEPS_KEY = "noetl/steps"
#: a step that completed with an error result: ``error`` and its message
STATUS_KEY = "noetl/status"
ERROR_KEY = "noetl/error"
#: a failure's step and tool kind
FAILED_STEP_KEY = "noetl/failed_step"
TOOL_KEY = "noetl/tool"
#: usage of an op
CPU_SECONDS_KEY = "noetl/cpu_seconds"
PEAK_RSS_KEY = "noetl/peak_rss_mb"
LOOP_ITEMS_KEY = "noetl/loop_items"

_MAPPED = re.compile(r"\[([^\]]*)\]$")
_CHUNK = re.compile(r"^i(\d+)_i(\d+)$")


@dataclass(frozen=True)
class StepKey:
    """A Dagster step key read back: ``graph.op[mapping_key]``.

    ``step`` is the NoETL step, ``op`` the node path without the mapping key (with the graph
    prefix), ``node`` the op's own name in its graph, ``mapping_key`` a loop item or chunk
    (``i00003``, ``i00000_i00007``) and ``graph`` the asset graph's name (empty for op jobs).
    """

    step: str
    op: str
    node: str
    mapping_key: str
    graph: str


@lru_cache(maxsize=65536)
def parse_step_key(step_key: str) -> StepKey:
    """Read a step key back (cached: keys repeat across a run's events)."""
    if not step_key:
        return StepKey("", "", "", "", "")
    match = _MAPPED.search(step_key)
    op = step_key[: match.start()] if match else step_key
    graph, _, node = op.rpartition(".")
    step = node
    for suffix in GENERATED_SUFFIXES:
        if step.endswith(suffix):
            step = step[: -len(suffix)]
            break
    return StepKey(step, op, node, match.group(1) if match else "", graph)


def loop_items_of(step_key: str) -> int:
    """How many loop items a body op ran, from its step key: ``price[i00003]`` -> 1,
    ``price[i00000_i00007]`` -> 8 (a chunk of ``loop.chunk_size`` items)."""
    chunk = _CHUNK.match(parse_step_key(step_key).mapping_key)
    return int(chunk.group(2)) - int(chunk.group(1)) + 1 if chunk else 1


def asset_graph_name(job_name: str) -> str:
    """The graph-backed multi-asset of a playbook (its asset job keeps the plain job name)."""
    return f"{job_name}{ASSET_GRAPH_SUFFIX}"


def arc_output_name(target: str) -> str:
    """The output an arc to ``target`` leaves by (before the planner makes it unique)."""
    return ARC_OUTPUT_PREFIX + target
