"""scripts/upstream_corpus.py on a tiny tree of our own playbooks laid out like github noetl/e2e."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "upstream_corpus.py"

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {{name: {name}, path: t/{name}}}\nworkflow:\n"
PLAYBOOKS = {
    # NoETL-valid, service-free, validates and runs here
    "ok.yaml": "  - step: start\n    tool: {kind: python, code: 'result = {\"n\": 1}'}\n    next: end\n"
               "  - step: end\n    tool: {kind: noop}\n",
    # NoETL-valid, needs a service: validated, not run without --services
    "calls/api.yaml": "  - step: start\n    tool: {kind: http, url: 'http://127.0.0.1:9/x'}\n",
    # NoETL-valid, rejected here (a kind this package does not run)
    "drain.yaml": "  - step: start\n    tool: {kind: subscription, source: kafka}\n",
    # NoETL-valid: a sub-playbook of the corpus, and one that is not there
    "parent.yaml": "  - step: start\n    tool: {kind: playbook, path: t/ok}\n"
                   "  - step: other\n    tool: {kind: playbook, path: t/okk}\n",
    # rejected by NoETL itself
    "nostart.yaml": "  - step: begin\n    tool: {kind: noop}\n",
    "spike/agent.yaml": "  - step: start\n    tool: {kind: agent}\n",
    "docs_shape.yaml": "  - step: start\n    tool: {kind: python, spec: {code: 'result = 1'}}\n",
    "old_duckdb.yaml": "  - step: start\n    tool: {kind: duckdb, commands: 'SELECT 1'}\n",
    # NoETL parses it, its worker then fails it (PostgresConfig.query is required)
    "pg_script.yaml": "  - step: start\n    tool: {kind: postgres, script: {uri: a.sql, source: {type: file}}}\n",
}


def corpus(tmp_path: Path) -> Path:
    tree = tmp_path / "e2e"
    for rel, body in PLAYBOOKS.items():
        path = tree / "fixtures" / "playbooks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEAD.format(name=Path(rel).stem) + body)
    return tree


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_validates_classifies_and_runs_the_service_free_ones(tmp_path: Path) -> None:
    done = run_script(str(corpus(tmp_path)), "--run", "--json", "--run-timeout", "120")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = {r["file"]: r for r in report["rows"]}
    assert set(rows) == set(PLAYBOOKS)
    groups = {f: (r["group"], r["reason"]) for f, r in rows.items()}
    assert groups["nostart.yaml"] == ("rejected by NoETL", "no `start` step")
    assert groups["spike/agent.yaml"] == ("rejected by NoETL", "quarantined (spike/)")
    assert groups["docs_shape.yaml"] == ("rejected by NoETL", "docs-only `tool.spec:` shape")
    assert groups["old_duckdb.yaml"] == ("rejected by NoETL", "Python-era duckdb `commands:`")
    assert groups["pg_script.yaml"][0] == "fails on NoETL at run time"
    assert {f for f, (g, _) in groups.items() if g == "NoETL-valid"} == {"ok.yaml", "calls/api.yaml", "drain.yaml",
                                                                       "parent.yaml"}
    assert rows["ok.yaml"]["validate_ok"] and rows["calls/api.yaml"]["validate_ok"]
    assert "tool kind 'subscription'" in rows["drain.yaml"]["error"]
    assert not rows["parent.yaml"]["validate_ok"]
    assert rows["parent.yaml"]["error"].endswith(
        "sub-playbook 't/okk' is not among the loaded playbooks (known: t/api, t/ok, t/parent)")
    assert "NoETL-valid: 4; validate here: 2/4 = 50.0 %" in report["summary"]
    # --run: the service-free one ran (in a subprocess, `noetl-dagster run --json`), the http one did not
    assert rows["ok.yaml"]["run"] == "success"
    assert rows["ok.yaml"]["steps"] == {"start": "success", "end": "success"}
    assert rows["calls/api.yaml"]["run"] == "skipped: needs http"
    assert rows["drain.yaml"]["run"] == ""  # does not validate: not run


def test_table_output(tmp_path: Path) -> None:
    done = run_script(str(corpus(tmp_path)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok.yaml") and line.endswith("  ok") for line in lines)
    assert any(line.startswith("nostart.yaml") and "[rejected by NoETL: no `start` step]" in line for line in lines)
    assert "rejected by NoETL: 4" in lines and "fails on NoETL at run time: 1" in lines
    assert "NoETL-valid playbooks that do not validate, by cause:" in lines
    assert "run:" not in done.stdout  # no --run


def test_readme_commands_as_written(tmp_path: Path) -> None:
    """README "NoETL's own corpus": its two lines, run by bash as printed, with the mirror a git
    repository of our own tree, `/tmp/e2e` a folder of this test, and `[--run]` taken."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## NoETL's own corpus"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]
    mirror = corpus(tmp_path)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@example.org",
                                                    "commit", "-qm", "corpus"]):
        subprocess.run(["git", "-C", str(mirror), *command], check=True, capture_output=True)
    target = tmp_path / "work" / "e2e"
    script = (block.replace("<mirror of noetl/e2e>", str(mirror)).replace("/tmp/e2e", str(target))
              .replace("[--run]", "--run"))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (target / "fixtures" / "playbooks" / "ok.yaml").is_file()
    assert "NoETL-valid: 4; validate here: 2/4 = 50.0 %" in done.stdout
    assert re.search(r"run: success .*start=success end=success", done.stdout)
