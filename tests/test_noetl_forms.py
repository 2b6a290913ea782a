"""Forms NoETL's engine accepts that this package used to reject (issue 12), each with its outcome.

Playbooks here are our own; NoETL's behaviour is from noetl/tools ``task_sequence.rs`` (policy
forms), ``python.rs`` (script sources), noetl/worker ``auth_alias.rs`` (``credential:``) and
noetl/server orchestrate-core (cursor loops).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py)

from noetl_dagster.errors import PlaybookError, StepFailed
from noetl_dagster.playbook.catalog import PlaybookCatalog
from noetl_dagster.playbook.loader import load_playbook, parse_text
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.runtime.context import Context
from noetl_dagster.runtime.step import RunInfo, run_cursor_loop, run_step
from noetl_dagster.playbook.kinds import check_tool_config
from noetl_dagster.runtime.tools import ToolContext, ToolError
from noetl_dagster.runtime.tools.python_script import load_script_source
from noetl_dagster.planner import plan

HEAD = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: p}\nworkflow:\n  - {step: start, tool: {kind: noop}}\n"


def step(body: str, file: str = "p.yaml"):
    return parse_text(HEAD + body, file).workflow[1]


def run(s, workload=None, sleeps=None, resources=None):
    info = RunInfo("run-1", sleep=(sleeps.append if sleeps is not None else (lambda _: None)),
                   resources=resources or {})
    return run_step(s, Context.initial(workload or {}), info)


def issues(text: str) -> list[str]:
    with pytest.raises(PlaybookError) as caught:
        parse_text(HEAD + text, "p.yaml")
    return [str(i) for i in caught.value.issues]


# ------------------------------------------------------------------------------- policy forms

RETRY = """  - step: s
    tool:
      - name: t
        kind: python
        input: {n: "{{ tries | default(0) }}"}
        code: |
          if n < 2:
              raise RuntimeError("flaky " + str(n))
          result = {"ok": n}
        spec:
          policy:
            rules:
              - when: "{{ output.status == 'error' }}"
                then: {do: retry, attempts: 3, backoff: BACKOFF, delay: 2, set: {tries: "{{ _attempt }}"}}
"""


@pytest.mark.parametrize("backoff", ["fixed", "constant", "none"])
def test_any_other_backoff_is_a_constant_delay(backoff: str) -> None:
    sleeps: list[float] = []
    outcome = run(step(RETRY.replace("BACKOFF", backoff)), sleeps=sleeps)
    assert outcome.result == {"t": {"ok": 2}, "ok": 2}
    assert sleeps == [2, 2]


def test_empty_backoff_is_still_an_error() -> None:
    found = issues(RETRY.replace("BACKOFF", '""'))
    assert any("then.backoff" in i for i in found), found


PIPELINE = """  - step: s
    tool:
      - name: t
        kind: python
        input: {fail: "{{ workload.fail }}"}
        code: |
          if fail:
              raise RuntimeError("boom")
          result = {"v": 1}
        spec:
          policy:
            rules:
RULES
      - name: after
        kind: noop
        result: {reached: true}
"""
ELSE_NO_THEN = """              - when: "{{ output.status == 'never' }}"
                then: {do: fail}
              - else:
                  do: continue
                  set: {ctx.flag: set}
              - when: "{{ true }}"
                then: {do: break}
"""


def _outcome(s, fail: bool):
    try:
        out = run(s, {"fail": fail})
        return ("completed", out.result, out.context.ctx.get("flag"))
    except StepFailed as exc:
        return ("failed", exc.reason)


@pytest.mark.parametrize("fail", [False, True])
def test_else_without_then_matches_and_does_nothing(fail: bool) -> None:
    """NoETL: the `else` rule matches (so later rules are never reached) and applies no action or
    set: the task's outcome decides, exactly as if the task had no rules at all."""
    playbook = parse_text(HEAD + PIPELINE.replace("RULES", ELSE_NO_THEN), "p.yaml")
    with_else = playbook.workflow[1]
    without_rules = step(PIPELINE.replace("        spec:\n          policy:\n            rules:\nRULES\n", ""))
    got = _outcome(with_else, fail)
    assert got == _outcome(without_rules, fail)
    if not fail:
        assert got[1]["after"] == {"reached": True} and got[2] is None  # no break, no set
    (warning,) = [str(w) for w in playbook.warnings]
    assert "p.yaml:" in warning and "tool[0].spec.policy.rules[1]" in warning
    assert "`do:`, `set:` are ignored" in warning and "1 rule(s) after it are never reached" in warning


@pytest.mark.parametrize("when,reached", [("true", False), ("false", True)])
def test_rule_when_may_be_a_yaml_boolean(when: str, reached: bool) -> None:
    rules = f"              - when: {when}\n                then: {{do: break, set: {{ctx.hit: matched}}}}\n"
    out = run(step(PIPELINE.replace("RULES", rules)), {"fail": False})
    assert ("after" in out.result) is reached
    assert out.context.ctx.get("hit", (0, None))[1] == (None if reached else "matched")


def test_rule_without_when_or_else_never_matches() -> None:
    rules = ("              - then: {do: break, set: {ctx.hit: matched}}\n"
             "              - when: \"{{ output.status == 'success' }}\"\n"
             "                then: {do: continue, set: {ctx.second: matched}}\n")
    playbook = parse_text(HEAD + PIPELINE.replace("RULES", rules), "p.yaml")
    out = run(playbook.workflow[1], {"fail": False})
    assert "after" in out.result and "hit" not in out.context.ctx
    assert out.context.ctx["second"][1] == "matched"
    (warning,) = [str(w) for w in playbook.warnings]
    assert "tool[0].spec.policy.rules[0]: a rule with neither `when:` nor `else:` never matches" in warning


# ------------------------------------------------------------------- tool-level credential:

def test_tool_level_credential_is_the_auth_alias(pg_server: PgServer) -> None:  # noqa: F811
    s = step("""  - step: q
    tool:
      kind: postgres
      credential: warehouse
      query: SELECT 41 + 1 AS answer
""")
    assert s.tool[0].config["auth"] == "warehouse" and "credential" not in s.tool[0].config
    creds = CredentialsResource(use_env=False, credentials={"warehouse": {"type": "postgres", **pg_server.fields()}})
    out = run(s, resources={"credentials": creds})
    assert out.result["rows"] == [{"answer": 42}]


def test_auth_wins_over_credential() -> None:
    s = step("  - step: q\n    tool: {kind: postgres, auth: a, credential: b, query: SELECT 1}\n")
    assert s.tool[0].config["auth"] == "a"


# ------------------------------------------------------------------------- python script:

def _tool_ctx(scope=None) -> ToolContext:
    return ToolContext("s", "run-1", scope or {})


def test_inline_script_source_is_rendered_and_runs() -> None:
    s = step("""  - step: s
    tool:
      kind: python
      script:
        uri: inline
        source: {type: inline, code: "{{ workload.code }}"}
      input: {x: 20}
""")
    out = run(s, {"code": "result = {'doubled': x * 2}"})
    assert out.result == {"doubled": 40}


SCRIPTED = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: scripted}
workload: {script: URI}
workflow:
  - step: start
    tool:
      kind: python
      script: {uri: "{{ workload.script }}", source: {type: file}}
      input: {name: NoETL}
"""


def test_file_script_source_relative_to_the_playbook(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "hello.py").write_text("def main(name):\n    return {'greeting': 'hi ' + name}\n")
    path = tmp_path / "scripted.yaml"
    path.write_text(SCRIPTED.replace("URI", "scripts/hello.py"))
    playbook = load_playbook(path)
    out = run(playbook.workflow[0], playbook.workload)
    assert out.result == {"greeting": "hi NoETL"}
    # the same literal uri is checked when validating: a missing file is reported
    path.write_text(SCRIPTED.replace("{{ workload.script }}", "scripts/missing.py"))
    with pytest.raises(PlaybookError, match=r"script file 'scripts/missing.py' not found"):
        load_playbook(path)


@pytest.mark.parametrize("uri", ["../outside.py", "/etc/hostname", "scripts/../../outside.py"])
def test_file_script_cannot_leave_the_playbook_folder(tmp_path: Path, uri: str) -> None:
    (tmp_path / "outside.py").write_text("result = 'escaped'\n")
    folder = tmp_path / "pb"
    folder.mkdir()
    path = folder / "scripted.yaml"
    path.write_text(SCRIPTED.replace("{{ workload.script }}", uri))
    with pytest.raises(PlaybookError, match=r"outside the playbook's folder"):
        load_playbook(path)
    # a template uri is checked when the step runs
    path.write_text(SCRIPTED.replace("URI", uri))
    with pytest.raises(StepFailed, match=r"outside the playbook's folder"):
        playbook = load_playbook(path)
        run(playbook.workflow[0], playbook.workload)


def test_http_script_source(tmp_path: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"result = {'from': 'http', 'n': n}\n" if self.path == "/job.py" else b"nope"
            self.send_response(200 if self.path == "/job.py" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        s = step(f"""  - step: s
    tool:
      kind: python
      script: {{uri: job.py, source: {{type: http, endpoint: "{{{{ workload.base }}}}/job.py", timeout: 5}}}}
      input: {{n: 3}}
""")
        assert run(s, {"base": url}).result == {"from": "http", "n": 3}
        with pytest.raises(StepFailed, match=r"answered HTTP 404"):
            run(s, {"base": url + "/missing"})
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a real HTTP S3 API), stopped by PID at the end."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto_server (moto[server]) is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_script_source(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.fs as pafs

    for name, value in {"AWS_ENDPOINT_URL": f"http://{s3_server}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test-Secr3t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    fs = pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", allow_bucket_creation=True)
    fs.create_dir("scripts-bucket")
    with fs.open_output_stream("scripts-bucket/jobs/triple.py") as out:
        out.write(b"result = {'tripled': n * 3}\n")
    s = step("""  - step: s
    tool:
      kind: python
      script: {uri: "s3://scripts-bucket/jobs/{{ workload.job }}.py", source: {type: s3}}
      input: {n: 5}
""")
    assert run(s, {"job": "triple"}).result == {"tripled": 15}
    with pytest.raises(StepFailed, match=r"s3 script s3://scripts-bucket/jobs/nope.py not found"):
        run(s, {"job": "nope"})


@pytest.mark.parametrize("script,message", [
    ("{uri: x.py, source: {type: ftp}}", "script source type 'ftp' is not one of inline, file, http, gcs, s3"),
    ("{uri: gs://bucket, source: {type: gcs}}", "a gcs script uri must be gs://<bucket>/<object>"),
    ("{source: {type: file}}", "a file script needs `script.uri`"),
    ("{source: {type: inline}}", "an inline script needs `script.source.code`"),
    ("{source: {type: inline, code: 'result = ('}}", "Python syntax error at script line 1"),
    ("{uri: ftp://x/a.py, source: {type: http}}", "must start with http:// or https://"),
    ("just-a-string", "`script` must be a mapping"),
])
def test_bad_script_sources(script: str, message: str) -> None:
    found = issues(f"  - step: s\n    tool: {{kind: python, script: {script}}}\n")
    assert any(message in i and "step 's': tool.script:" in i for i in found), found


def test_validate_cli_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from noetl_dagster.cli import main

    (tmp_path / "p.yaml").write_text(HEAD + PIPELINE.replace("RULES", ELSE_NO_THEN))
    assert main(["validate", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "1 playbook(s) valid" in captured.out
    assert captured.err.startswith("warning: ") and "`else:` without `then:`" in captured.err


def test_flat_code_wins_over_script() -> None:
    config = {"code": "result = 1", "script": {"source": {"type": "ftp"}}}
    assert check_tool_config("python", config) == []
    assert run(step("  - step: s\n    tool: {kind: python, code: 'result = 1', script: {source: {type: ftp}}}\n")).result == 1


def test_load_script_source_helper(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("result = 7\n")
    config = {"script": {"uri": "{{ name }}", "source": {"type": "file"}}}
    assert load_script_source(config, tmp_path, _tool_ctx({"name": "a.py"})) == "result = 7\n"
    with pytest.raises(ToolError, match="needs the playbook's folder"):
        load_script_source(config, None, _tool_ctx({"name": "a.py"}))


# ---------------------------------------------------------------------------- cursor loops

CURSOR = """  - step: drain
    loop:
      iterator: job
      cursor:
        kind: postgres
        auth: pg
        claim: |
          UPDATE cursor_jobs SET status = 'claimed'
          WHERE id IN (SELECT id FROM cursor_jobs WHERE status = 'pending'
                       ORDER BY id FOR UPDATE SKIP LOCKED LIMIT {{ __frame_max_rows }})
          RETURNING id, payload
      spec:
        mode: cursor
        frame: {max_rows: 2, row_concurrency: 1, lease_seconds: 60}
    tool:
      - name: work
        kind: python
        input: {job: "{{ iter.job }}", index: "{{ _index }}"}
        code: |
          result = {"id": job["id"], "doubled": job["payload"] * 2, "index": index}
        set: {iter.last: "{{ output.id }}"}
        spec:
          policy:
            rules:
              - else:
                  then: {do: continue, set: {ctx.last_done: "{{ output.data.id }}"}}
      - name: done
        kind: postgres
        auth: pg
        query: "UPDATE cursor_jobs SET status = 'done', result = {{ work.doubled }} WHERE id = {{ work.id }}"
    set: {ctx.outcome: "{{ output.cursor }}"}
    next:
      arcs:
        - {step: after, when: "{{ output.frames == 3 }}"}
  - step: after
    tool: {kind: noop}
"""


def test_cursor_loop_parses_and_plans_as_one_op() -> None:
    playbook = parse_text(HEAD.replace("kind: noop}}", "kind: noop}, next: drain}") + CURSOR, "p.yaml")
    loop = playbook.step("drain").loop
    assert loop.mode == "cursor" and loop.in_ is None
    assert loop.cursor.kind == "postgres" and loop.cursor.auth == "pg" and "RETURNING" in loop.cursor.claim
    assert loop.frame.max_rows == 2 and loop.frame.lease_seconds == 60
    net = plan(playbook)
    assert net.node(net.node_of_step["drain"]).kind == "step"  # claims and rows run inside one op


@pytest.mark.parametrize("change,message", [
    (("        kind: postgres\n        auth: pg\n", "        kind: http\n"), "a cursor claim runs on a SQL tool"),
    (("      spec:\n        mode: cursor\n", "      in: [1]\n      spec:\n        mode: sequential\n"), None),
    (("RETURNING id, payload", "RETURNING {{ id "), "template syntax error"),
    (("max_rows: 2", "max_rows: '{{ workload.n }}'"), "must be a whole number"),
])
def test_cursor_loop_validation(change: tuple[str, str], message: str | None) -> None:
    text = CURSOR.replace(*change)
    if message is None:  # a `cursor:` block on another mode is ignored (as in NoETL), with a warning
        warnings = [str(w) for w in parse_text(HEAD + text, "p.yaml").warnings]
        assert len(warnings) == 1 and "step 'drain': loop.cursor: `loop.cursor` is ignored" in warnings[0]
        return
    found = issues(text)
    assert any(message in i and "step 'drain'" in i for i in found), found


def fresh_cursor_jobs(pg_server: PgServer) -> None:  # noqa: F811
    """A queue of five pending jobs (each cursor test starts from its own, in any order or worker)."""
    import psycopg

    with psycopg.connect(pg_server.dsn(), autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS cursor_jobs")
        con.execute("CREATE TABLE cursor_jobs (id int PRIMARY KEY, payload int, status text DEFAULT 'pending', "
                    "result int)")
        con.execute("INSERT INTO cursor_jobs (id, payload) SELECT g, g * 10 FROM generate_series(1, 5) g")


def test_cursor_loop_claims_frames_until_drained(pg_server: PgServer) -> None:  # noqa: F811
    import psycopg

    fresh_cursor_jobs(pg_server)
    playbook = parse_text(HEAD + CURSOR, "p.yaml")
    creds = CredentialsResource(use_env=False, credentials={"pg": {"type": "postgres", **pg_server.fields()}})
    info = RunInfo("run-1", resources={"credentials": creds})
    outcome = run_cursor_loop(playbook.step("drain"), Context.initial({}), info)
    assert outcome.result == {"cursor": "drained", "frames": 3}  # 2 + 2 + 1 rows, then an empty claim
    assert outcome.runs == 5
    assert outcome.context.ctx["outcome"][1] == "drained"
    assert outcome.context.ctx["last_done"][1] == 5
    assert [arc.step for _, arc, _ in outcome.fired] == ["after"]
    with psycopg.connect(pg_server.dsn()) as con:
        rows = con.execute("SELECT id, status, result FROM cursor_jobs ORDER BY id").fetchall()
    assert rows == [(i, "done", i * 20) for i in range(1, 6)]
    # an empty queue drains at once: zero frames, the arcs still evaluated
    again = run_cursor_loop(playbook.step("drain"), Context.initial({}), info)
    assert again.result == {"cursor": "drained", "frames": 0} and again.fired == []


def test_cursor_loop_that_never_drains_is_bounded(pg_server: PgServer) -> None:  # noqa: F811
    fresh_cursor_jobs(pg_server)
    text = CURSOR.replace("UPDATE cursor_jobs SET status = 'claimed'", "UPDATE cursor_jobs SET status = status")
    text = text.replace("WHERE status = 'pending'", "WHERE true")
    playbook = parse_text(HEAD + text.replace("SET status = 'done', ", "SET "), "p.yaml")
    creds = CredentialsResource(use_env=False, credentials={"pg": {"type": "postgres", **pg_server.fields()}})
    with pytest.raises(StepFailed, match=r"more than 3 frames without draining"):
        run_cursor_loop(playbook.step("drain"), Context.initial({}), RunInfo("r", resources={"credentials": creds}),
                        max_frames=3)


def test_cursor_claim_without_rows_is_an_error(pg_server: PgServer) -> None:  # noqa: F811
    fresh_cursor_jobs(pg_server)
    text = CURSOR.replace("RETURNING id, payload", "")
    playbook = parse_text(HEAD + text, "p.yaml")
    creds = CredentialsResource(use_env=False, credentials={"pg": {"type": "postgres", **pg_server.fields()}})
    with pytest.raises(StepFailed, match=r"loop.cursor.claim must return rows"):
        run_cursor_loop(playbook.step("drain"), Context.initial({}), RunInfo("r", resources={"credentials": creds}))


# ----------------------------------------------------------------- closest sub-playbook paths

def test_unknown_subplaybook_lists_the_closest_paths_only() -> None:
    def child(path: str):
        return parse_text(f"apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {{name: c, path: {path}}}\n"
                          "workflow:\n  - {step: start, tool: {kind: noop}}\n", f"{path}.yaml")

    paths = [f"domain{i}/job{j}" for i in range(10) for j in range(15)] + ["billing/invoices_daily"]
    catalog = PlaybookCatalog.of(child(p) for p in paths)
    parent = parse_text(HEAD + "  - step: call\n    tool: {kind: playbook, path: billing/invoice_daily}\n",
                        "parent.yaml")
    (issue,) = catalog.missing_references(parent)
    assert issue.hint == "closest of 151 loaded: billing/invoices_daily"
    moved = parse_text(HEAD + "  - step: call\n    tool: {kind: playbook, path: old/job7}\n", "parent.yaml")
    hint = catalog.missing_references(moved)[0].hint
    listed = hint.removeprefix("closest of 151 loaded: ").split(", ")
    assert hint.startswith("closest of 151 loaded: ") and len(listed) == 5  # the playbook moved folders
    assert all(p.endswith("/job7") for p in listed)
    nothing = parse_text(HEAD + "  - step: call\n    tool: {kind: playbook, path: zzz/qqq}\n", "parent.yaml")
    assert catalog.missing_references(nothing)[0].hint == "none of the 151 loaded playbooks has a similar path"
    small = PlaybookCatalog.of([child("a/b"), child("a/c")])
    assert small.missing_references(nothing)[0].hint == "known: a/b, a/c"


def test_underscore_keys_and_a_product_iterator_are_valid_noetl(tmp_path: Path) -> None:
    """NoETL reserves neither: `{{ start._ref is defined }}` reads a result key (undefined here), and
    a loop may call its item `product`. Dunder attributes stay refused."""
    from noetl_dagster import run_playbook
    from noetl_dagster.playbook.loader import validate_file

    path = tmp_path / "forms.yaml"
    path.write_text("""apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: forms, path: tests/forms}
workflow:
  - step: start
    tool: {kind: noop, result: {count: 2}}
    next: each
  - step: each
    loop: {in: "{{ ['a', 'b'] }}", iterator: product}
    tool: {kind: noop, result: {item: "{{ product }}", ref: "{{ start._ref is defined }}"}}
""")
    assert validate_file(path) == []
    report = run_playbook(path)
    assert report.steps["each"].result == [{"item": "a", "ref": False}, {"item": "b", "ref": False}]
    path.write_text(path.read_text().replace("start._ref", "start.__class__"))
    assert any("dunder attribute" in str(i) for i in validate_file(path))
