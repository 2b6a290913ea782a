"""NoETL's template dialect on MiniJinja: typing, undefined, truthiness, sandbox."""

from __future__ import annotations

import pytest

from noetl_dagster.runtime.context import Context
from noetl_dagster.core.templates import TemplateFailure, check_syntax, condition, is_true, render_value


def scope(**workload):
    return Context.initial(workload).with_result("fetch", {"rows": [{"id": 7}], "n": 2}).scope("run-1")


def test_lone_expression_keeps_type_and_text_makes_string():
    s = scope(items=[1, 2], limit=7, ratio=0.5, flag=True, cfg={"a": 1})
    assert render_value("{{ workload.items }}", s) == [1, 2]
    assert render_value("{{ limit }}", s) == 7
    assert render_value("{{ ratio }}", s) == 0.5
    assert render_value("{{ flag }}", s) is True
    assert render_value("{{ cfg }}", s) == {"a": 1}
    assert render_value("n={{ limit }}", s) == "n=7"
    assert render_value("{{ limit }}{{ limit }}", s) == "77"
    assert render_value({"a": ["{{ limit * 2 }}"]}, s) == {"a": [14]}


def test_mapping_attribute_is_the_key_not_the_dict_method():
    s = scope(items=[3, 1], keys="K")
    assert render_value("{{ workload.items }}", s) == [3, 1]
    assert render_value("{{ workload.keys }}", s) == "K"


def test_undefined_is_chainable_and_empty():
    s = scope(name="x")
    assert render_value("a={{ ghost.b.c }}", s) == "a="
    assert render_value("{{ ghost.b }}", s) is None
    assert render_value("{{ ghost | default('d') }}", s) == "d"
    assert render_value("{{ ghost is defined }}", s) is False


def test_step_results_have_a_data_alias():
    s = scope()
    assert render_value("{{ fetch.rows[0].id }}", s) == 7
    assert render_value("{{ fetch.data.n }}", s) == 2


@pytest.mark.parametrize("text,expected", [
    ("", False), ("false", False), ("0", False), ("no", False), ("None", False), ("null", False),
    ("off", False), ("{}", False), ("[]", False), ("yes", True), ("1", True), ("anything", True),
])
def test_rendered_text_truthiness(text, expected):
    assert is_true(text) is expected
    assert condition("{{ v }}", {"v": text}) is expected


def test_condition_values():
    s = scope(n=5)
    assert condition("{{ n > 3 }}", s) is True
    assert condition("n > 30", s) is False  # bare expression is wrapped
    assert condition(None, s) is True
    assert condition("{{ ghost }}", s) is False


def test_sandbox_blocks_mutation_and_dunders():
    workload = {"d": {"a": 1}, "l": [1]}
    s = Context.initial(workload).scope("r")
    with pytest.raises(TemplateFailure):
        render_value("{{ d.pop('a') }}", s)
    with pytest.raises(TemplateFailure):
        render_value("{{ l.append(2) }}", s)
    assert workload == {"d": {"a": 1}, "l": [1]}
    assert render_value("x{{ d.__class__ }}", s) == "x"


def test_errors_do_not_echo_values():
    s = Context.initial({"password": "s3cr3t-value"}).scope("r")
    with pytest.raises(TemplateFailure) as err:
        render_value("{{ password | nosuchfilter }}", s)
    assert "s3cr3t-value" not in str(err.value)


def test_runaway_loop_stops():
    with pytest.raises(TemplateFailure, match="fuel"):
        render_value("{% for i in range(100000) %}{% for j in range(100) %}x{% endfor %}{% endfor %}", {})


def test_noetl_filters():
    s = scope(js='{"a": [1, 2]}')
    assert render_value("{{ (js | fromjson).a[1] }}", s) == 2
    assert render_value("{{ 'user:pw' | b64encode }}", s) == "dXNlcjpwdw=="
    assert render_value("{{ 'dXNlcjpwdw==' | b64decode }}", s) == "user:pw"
    assert render_value("{{ fetch.rows | tojson }}", s) == '[{"id": 7}]'
    assert render_value("{{ fetch.rows | len }}", s) == 1


def test_syntax_check():
    assert check_syntax("{{ a + }}") is not None
    assert check_syntax("{{ a + 1 }}") is None


def test_floats_stay_floats_and_paths_keep_objects():
    s = Context.initial({"r": 2.0, "rows": [{"v": 1.0}], "when": {"d": object}}).scope("r")
    assert render_value("{{ r }}", s) == 2.0 and isinstance(render_value("{{ r }}", s), float)
    assert isinstance(render_value("{{ r * 1 }}", s), float)
    assert isinstance(render_value("{{ rows[0].v }}", s), float)
    assert isinstance(render_value("{{ rows[0]['v'] }}", s), float)
    assert render_value("{{ workload.when.d }}", s) is object
    assert render_value("{{ rows[5].v }}", s) is None


def test_literals_are_not_variables():
    assert render_value("{{ true }}", {}) is True
    assert render_value("{{ none }}", {}) is None
    assert render_value("{{ False }}", {}) is False
