"""Malformed playbooks: every problem is reported at once, at the right line, step and field.

Each ``tests/bad_playbooks/NN_name.yaml`` states what it must produce in header comments::

    # expect: 12:9 step=fetch field=next.arcs[1].step message="arc to unknown step 'fecth'" hint="did you mean"

``LINE:COL`` (or just ``LINE``), then ``key=value`` pairs (shell quoting). ``step`` and ``field``
must match exactly and are expected to be absent (None) when omitted; ``message`` and ``hint``
are fragments the issue's text must contain. A file lists one ``# expect:`` line per problem,
and the validator must report exactly those problems, all in one pass.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from noetl_dagster.cli import main
from noetl_dagster.errors import Issue, PlaybookError
from noetl_dagster.playbook.loader import load_playbook, parse_text, validate_file
from noetl_dagster.runtime.tools import supported_kinds

HERE = Path(__file__).parent
ROOT = HERE.parent
BAD = sorted((HERE / "bad_playbooks").glob("*.yaml"))
VALID = sorted((HERE / "conformance" / "cases").glob("*/playbook.yaml"))
POSITION = re.compile(r"^(?P<line>\d+)(?::(?P<col>\d+))?$")


@dataclass(frozen=True)
class Expected:
    line: int
    col: int | None
    step: str | None
    field: str | None
    message: str
    hint: str | None

    def matches(self, issue: Issue) -> bool:
        return (issue.line == self.line and (self.col is None or issue.col == self.col)
                and issue.step == self.step and issue.field == self.field
                and self.message in issue.message
                and (self.hint is None or (issue.hint is not None and self.hint in issue.hint)))

    def __str__(self) -> str:
        where = f"{self.line}" + (f":{self.col}" if self.col is not None else "")
        return (f"{where} step={self.step!r} field={self.field!r} message~{self.message!r}"
                + (f" hint~{self.hint!r}" if self.hint else ""))


def expectations(path: Path) -> list[Expected]:
    """The ``# expect:`` header lines of a bad playbook."""
    found = []
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.startswith("# expect:"):
            continue
        position, *pairs = shlex.split(text.removeprefix("# expect:"))
        match = POSITION.match(position)
        assert match, f"{path.name}: bad position {position!r} in {text!r}"
        values = dict(pair.split("=", 1) for pair in pairs)
        unknown = set(values) - {"step", "field", "message", "hint"}
        assert not unknown and "message" in values, f"{path.name}: bad expectation {text!r}"
        found.append(Expected(int(match["line"]), int(match["col"]) if match["col"] else None,
                              values.get("step"), values.get("field"), values["message"], values.get("hint")))
    return found


def issues_of(path: Path) -> list[Issue]:
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    return caught.value.issues


def test_suite_is_large_enough() -> None:
    assert len(BAD) >= 35
    assert len({p.name[:2] for p in BAD}) == len(BAD), "case numbers must be unique"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_playbook(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no `# expect:` header"
    issues = issues_of(path)
    report = "\n".join(str(i) for i in issues)
    unmatched = list(issues)
    for want in expected:
        hit = next((i for i in unmatched if want.matches(i)), None)
        assert hit is not None, f"{path.name}: expected {want}\nreported:\n{report}"
        unmatched.remove(hit)
    assert not unmatched, f"{path.name}: unexpected issue(s):\n" + "\n".join(str(i) for i in unmatched)
    assert [(i.line, i.col) for i in issues] == sorted((i.line, i.col) for i in issues), "issues in file order"
    for issue in issues:
        assert issue.file == str(path)
        assert str(issue).startswith(f"{path}:{issue.line}:{issue.col}: ")
        assert issue.message in str(issue)
        if issue.step is not None:
            assert f"step '{issue.step}':" in str(issue)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_validate_file_and_parse_text_agree(path: Path) -> None:
    issues = validate_file(path)
    assert issues == issues_of(path)
    with pytest.raises(PlaybookError) as caught:
        parse_text(path.read_text(encoding="utf-8"), str(path))
    assert caught.value.issues == issues


@pytest.mark.parametrize("name", ["13_unknown_tool_kind", "14_noetl_kind_not_run"])
def test_unsupported_kind_lists_every_supported_kind(name: str) -> None:
    (issue,) = issues_of(HERE / "bad_playbooks" / f"{name}.yaml")
    assert issue.hint == "supported kinds: " + ", ".join(supported_kinds())


def test_no_message_is_a_traceback() -> None:
    for path in BAD:
        text = str(PlaybookError(issues_of(path)))
        assert "Traceback" not in text and "internal error" not in text, path.name
        assert "Input should be" not in text, f"{path.name}: raw pydantic wording: {text}"


def _mutants(text: str):
    """Every prefix of the file and the file without each one of its lines."""
    lines = text.splitlines(keepends=True)
    for n in range(len(lines)):
        yield "".join(lines[:n])
        yield "".join(lines[:n] + lines[n + 1:])


@pytest.mark.parametrize("path", VALID, ids=[p.parent.name for p in VALID])
def test_damaged_valid_playbooks_never_crash(path: Path) -> None:
    """A truncated or line-deleted playbook is valid or a PlaybookError: never another exception."""
    for text in _mutants(path.read_text(encoding="utf-8")):
        try:
            parse_text(text, "mutant.yaml")
        except PlaybookError as exc:
            assert exc.issues and all(i.line >= 1 and i.col >= 1 for i in exc.issues)
            assert "internal error" not in str(exc), f"{exc}\n--- input ---\n{text}"


def test_cli_reports_every_issue_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    path = HERE / "bad_playbooks" / "46_multiple_errors.yaml"
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(expectations(path)) + 1
    for text, want in zip(err, expectations(path)):
        assert text.startswith(f"{path}:{want.line}:{want.col}: "), text
        assert want.message in text
    assert err[-1] == f"{len(err) - 1} problem(s) in 1 of 1 playbook(s)"


def test_cli_validates_a_whole_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(HERE / "bad_playbooks")]) == 1
    err = capsys.readouterr().err
    for path in BAD:
        assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: ", err, re.MULTILINE), path.name
    assert "Traceback" not in err


def test_cli_accepts_a_valid_playbook(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(VALID[0])]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "1 playbook(s) valid"
    assert out.err == ""


def test_cli_subprocess() -> None:
    bad = HERE / "bad_playbooks" / "16_dangling_next_string.yaml"
    run = subprocess.run([sys.executable, "-m", "noetl_dagster.cli", "validate", str(bad), str(VALID[0])],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert f"{bad}:11:5: step 'start': next.arcs[0].step: arc to unknown step 'fecth'" in run.stderr
    assert "1 problem(s) in 1 of 2 playbook(s)" in run.stderr
