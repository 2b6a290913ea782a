"""The typed extension models (``metadata.dagster``, ``hardware:``, ``product:`` and its checks).

For every field of every extension model (and an unknown key in each block): a playbook with a
bad value there is reported by ``validate`` at the bad key's file:line with its field, and a
folder holding it beside a good playbook still loads the good one (the bad one is logged as
skipped, as the loader does for any broken playbook). The table of bad values must cover every
field: a field added to a model without a bad example here fails ``test_every_field_has_a_case``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from noetl_dagster import load_playbook_definitions
from noetl_dagster.errors import PlaybookError
from noetl_dagster.playbook.extension_models import DagsterMetadata, Hardware, known_keys
from noetl_dagster.playbook.loader import load_playbook, validate_file
from noetl_dagster.playbook.models import Product, ProductCheck

GOOD = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: good
  path: t/good
  dagster: {executor: in_process, max_iterations: 50, automation: eager, tags: {team: ml}, on_error: fail}
workflow:
  - step: start
    tool: {kind: python, code: "result = [{'a': 1}]"}
    hardware: {cpu: 500m, memory: 1Gi, gpu: 1, cpu_limit: "1", memory_limit: 2Gi,
               node_selector: {pool: gpu}, tolerations: [{key: gpu, operator: Exists}]}
    product:
      name: things
      owners: [ml@example.com, "team:ml"]
      checks: [{not_null: a, name: a_present, blocking: true}]
"""

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata:\n  name: bad\n  path: t/bad\n"
STEP = "workflow:\n  - step: start\n    tool: {kind: python, code: \"result = [{'a': 1}]\"}\n"

#: (block, key) -> (bad YAML value, text the issue's message contains)
BAD = {
    ("dagster", "executor"): ("kubernetes-ish", "unknown executor 'kubernetes-ish'"),
    ("dagster", "max_concurrent"): ("0", "must be a whole number of at least 1, got 0"),
    ("dagster", "max_iterations"): ("lots", "must be a whole number of at least 1, got 'lots'"),
    ("dagster", "automation"): ("eagerly", "unknown automation 'eagerly'"),
    ("dagster", "tags"): ("[a, b]", "must be a mapping of tag: value, got a list"),
    ("dagster", "on_error"): ("explode", "on_error 'explode' is not `complete` or `fail`"),
    ("dagster", "k8s"): ("[etl]", "`k8s` must be a mapping of k8s_job_executor settings"),
    ("dagster", "max_iteration"): ("5", "unknown key 'max_iteration'"),
    ("hardware", "cpu"): ("lots", "cpu must be a Kubernetes quantity, got 'lots'"),
    ("hardware", "memory"): ("[1]", "memory must be a Kubernetes quantity, got a list"),
    ("hardware", "gpu"): ("0", "gpu must be a whole number of at least 1, got 0"),
    ("hardware", "cpu_limit"): ("2 cores", "cpu_limit must be a Kubernetes quantity, got '2 cores'"),
    ("hardware", "memory_limit"): ("true", "memory_limit must be a Kubernetes quantity, got True"),
    ("hardware", "node_selector"): ("[pool]", "node_selector must be a mapping of label: value, got a list"),
    ("hardware", "tolerations"): ("3", "tolerations must be a list of mappings, got 3"),
    ("hardware", "cpus"): ("2", "unknown key 'cpus'"),
    ("product", "name"): ("../p", "product name '../p' must be a plain name"),
    ("product", "kind"): ("blob", "'blob' is not valid; expected 'table', 'file', 'features' or 'embeddings'"),
    ("product", "description"): ("[a]", "must be a string, got a list"),
    ("product", "owners"): ("[x y]", "owner 'x y' must be an email address or `team:<name>`"),
    ("product", "checks"): ("5", "must be a list, got 5"),
    ("product", "owner"): ("ml@example.com", "unknown key 'owner'"),
    ("checks", "columns"): ("[a]", "must be a mapping, got a list"),
    ("checks", "not_null"): ("{a: 1}", "got a mapping"),
    ("checks", "unique"): ("5", "got 5"),
    ("checks", "row_count"): ("5", "must be a mapping, got 5"),
    ("checks", "sql"): ("[1]", "must be a string, got a list"),
    ("checks", "name"): ("[1]", "must be a string, got a list"),
    ("checks", "description"): ("{a: 1}", "must be a string, got a mapping"),
    ("checks", "blocking"): ("maybe", "must be true or false, got 'maybe'"),
    ("checks", "not_nul"): ("a", "unknown key 'not_nul'"),
}
#: fields that take any value, so no value of theirs is bad
ANY_VALUE = {("checks", "expect")}
MODELS = {"dagster": DagsterMetadata, "hardware": Hardware, "product": Product, "checks": ProductCheck}
HINTS = {("dagster", "max_iteration"): "did you mean 'max_iterations'?", ("hardware", "cpus"): "did you mean 'cpu'?",
         ("product", "owner"): "did you mean 'owners'?", ("checks", "not_nul"): "did you mean 'not_null'?",
         ("dagster", "automation"): "use `automation: eager`"}


def bad_playbook(block: str, key: str, value: str) -> tuple[str, int, str, str | None]:
    """(text, line of the bad key, its field, its step) of a playbook with ``block.key: value``."""
    if block == "dagster":
        text = HEAD + f"  dagster:\n    {key}: {value}\n" + STEP
        return text, 7, f"metadata.dagster.{key}", None
    if block == "hardware":
        return HEAD + STEP + f"    hardware:\n      {key}: {value}\n", 10, f"hardware.{key}", "start"
    if block == "product":
        lines = [f"      {key}: {value}"] + (["      name: things"] if key != "name" else [])
        return HEAD + STEP + "    product:\n" + "\n".join(lines) + "\n", 10, f"product.{key}", "start"
    other = "unique: a" if key == "not_null" else "not_null: a"
    text = HEAD + STEP + f"    product:\n      name: things\n      checks:\n        - {key}: {value}\n          {other}\n"
    return text, 12, f"product.checks[0].{key}", "start"


def test_every_field_has_a_case() -> None:
    covered = {case for case in BAD if case[1] in known_keys(MODELS[case[0]])} | ANY_VALUE
    fields = {(block, name) for block, model in MODELS.items() for name in known_keys(model)}
    assert covered == fields
    assert {block for block, key in BAD if key not in known_keys(MODELS[block])} == set(MODELS)  # unknown keys


def test_the_good_playbook_reads_typed_values(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    playbook = load_playbook(path)
    dagster = playbook.metadata.dagster
    assert (dagster.executor, dagster.max_iterations, dagster.automation, dagster.tags, dagster.on_error) == \
        ("in_process", 50, "eager", {"team": "ml"}, "fail")
    hardware = playbook.step("start").hardware
    assert hardware is not None and hardware.declared() == {
        "cpu": "500m", "memory": "1Gi", "gpu": 1, "cpu_limit": "1", "memory_limit": "2Gi",
        "node_selector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    assert playbook.step("start").product.owners == ["ml@example.com", "team:ml"]  # type: ignore[union-attr]


@pytest.mark.parametrize("case", sorted(BAD), ids=lambda c: f"{c[0]}.{c[1]}")
def test_a_bad_value_is_an_issue_and_never_sinks_the_folder(
        case: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    block, key = case
    value, message = BAD[case]
    text, line, field, step = bad_playbook(block, key, value)
    folder = tmp_path / "playbooks"
    folder.mkdir()
    bad = folder / "bad.yaml"
    bad.write_text(text)
    (folder / "good.yaml").write_text(GOOD)

    issues = validate_file(bad)
    assert issues, text
    assert {(i.file, i.line, i.field, i.step) for i in issues} == {(str(bad), line, field, step)}, issues
    assert any(message in i.message for i in issues), issues
    if case in HINTS:
        assert any(i.hint and HINTS[case] in i.hint for i in issues), issues

    with caplog.at_level(logging.WARNING, logger="noetl_dagster"):
        defs = load_playbook_definitions(folder)
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"t__good"}
    assert "t__bad" not in {job.name for job in defs.resolve_all_job_defs()}
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("playbook skipped:")]
    assert any(f"{bad}:{line}:" in m and field in m and message in m for m in skipped), skipped
    with pytest.raises(PlaybookError, match=f"bad.yaml:{line}:"):
        load_playbook_definitions(folder, strict=True)


@pytest.mark.parametrize("line, message", [
    ("max_iterations: lots", "metadata.dagster.max_iterations: must be a whole number of at least 1, got 'lots'"),
    ("automation: eagerly", "metadata.dagster.automation: unknown automation 'eagerly'"),
    ("tags: [a, b]", "metadata.dagster.tags: must be a mapping of tag: value, got a list"),
])
def test_the_issue_examples(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + f"  dagster:\n    {line}\n" + STEP)
    (issue,) = validate_file(path)
    assert str(issue).startswith(f"{path}:7:5: {message}")


def test_every_unknown_key_and_bad_value_of_a_block_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "  dagster:\n    max_iterations: lots\n    automation: eagerly\n    executer: k8s\n" + STEP)
    issues = validate_file(path)
    assert [(i.line, i.field) for i in issues] == [
        (7, "metadata.dagster.max_iterations"), (8, "metadata.dagster.automation"), (9, "metadata.dagster.executer")]
    assert issues[2].message == "unknown key 'executer'" and issues[2].hint.startswith("did you mean 'executor'?")
