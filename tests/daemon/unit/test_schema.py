"""The TOML schema checker: each parameter type, ranges, unknown and missing keys, paths."""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core import schema
from l2bridge.core.schema import (
    REQUIRED,
    Checker,
    Param,
    SchemaError,
    Unexpected,
    child,
    describe_value,
    format_number,
    quote,
    show,
)


class DemoError(SchemaError):
    """The caller's own error type: the checker raises it, nothing else."""


def check(value: Any, param: Param, key: str = "k") -> Any:
    return Checker(DemoError, "f.toml").value(value, key, param)


def error(value: Any, param: Param, key: str = "k") -> str:
    """The message for ``value`` at ``key``, or ``KEY: message`` when it names another key."""
    with pytest.raises(DemoError) as info:
        check(value, param, key)
    assert str(info.value) == f"f.toml: {info.value.key}: {info.value.message}"
    assert "\n" not in str(info.value)
    if info.value.key != key:
        return f"{info.value.key}: {info.value.message}"
    return info.value.message


def table_error(value: Any, keys: dict[str, Param]) -> tuple[str, str]:
    with pytest.raises(DemoError) as info:
        Checker(DemoError, "f.toml").table(value, "", keys)
    assert "\n" not in str(info.value)
    return info.value.key, info.value.message


# ---------------------------------------------------------------- scalars


def test_string() -> None:
    assert check("x", schema.string()) == "x"
    assert error(3, schema.string()) == "expected a string, found an integer (3)"
    assert error(True, schema.string("a path")) == "expected a path, found a boolean (true)"


def test_name_pattern_and_length() -> None:
    param = schema.name(re.compile(r"[a-z]+"), 5, "a-z")
    assert check("abcde", param) == "abcde"
    assert error("abcdef", param) == (
        'expected a name of 1 to 5 characters from a-z, found "abcdef" (6 characters)'
    )
    assert error("a b", param) == 'expected a name of 1 to 5 characters from a-z, found "a b"'
    assert error("", param) == 'expected a name of 1 to 5 characters from a-z, found ""'
    assert error("ab\n", param).endswith('found "ab\\n"')  # fullmatch: no trailing newline
    assert error(7, param) == "expected a name of 1 to 5 characters from a-z, found an integer (7)"


def test_boolean_is_exact() -> None:
    assert check(False, schema.boolean()) is False
    assert error(1, schema.boolean()) == "expected true or false, found an integer (1)"
    assert error("true", schema.boolean()) == 'expected true or false, found a string ("true")'


@pytest.mark.parametrize("value", [1, 5, 10])
def test_integer_range_includes_both_ends(value: int) -> None:
    assert check(value, schema.integer(1, 10)) == value


@pytest.mark.parametrize(("value", "found"), [
    (0, "0"), (11, "11"), (True, "a boolean (true)"), (5.0, "a float (5.0)"),
    ("5", 'a string ("5")'), ([5], "an array"), ({}, "a table"),
    (datetime.date(1979, 5, 27), "a date/time (1979-05-27)"),
])
def test_integer_refuses_out_of_range_and_other_types(value: Any, found: str) -> None:
    assert error(value, schema.integer(1, 10)) == f"expected an integer from 1 to 10, found {found}"


def test_number_takes_integers_and_keeps_floats() -> None:
    param = schema.number(0.1, 60, unit="seconds")
    assert check(3, param) == 3.0 and isinstance(check(3, param), float)
    assert check(0.1, param) == 0.1
    for value, found in ((0.05, "0.05"), (61, "61"), (math.nan, "nan"), (math.inf, "inf"),
                         (False, "a boolean (false)")):
        assert error(value, param) == (
            f"expected a number of seconds from 0.1 to 60, found {found}"
        )
    assert error(101.0, schema.number(0, 100)) == "expected a number from 0 to 100, found 101"


def test_choice_hints_the_closest_option() -> None:
    param = schema.choice(("ping", "mtu"))
    assert check("mtu", param) == "mtu"
    assert error("pign", param) == (
        'expected one of "ping", "mtu", found "pign" (did you mean "ping"?)'
    )
    assert error("zzz", param) == 'expected one of "ping", "mtu", found "zzz"'
    assert error(1, param) == 'expected one of "ping", "mtu", found an integer (1)'


def test_either_takes_the_first_fitting_type_and_words_its_own_rule() -> None:
    param = schema.either("false, true or an integer from 5 to 9",
                          schema.boolean(), schema.integer(5, 9))
    assert check(True, param) is True
    assert check(7, param) == 7
    assert error(4, param) == "expected false, true or an integer from 5 to 9, found 4"
    assert error(7.0, param) == (
        "expected false, true or an integer from 5 to 9, found a float (7.0)"
    )


# ---------------------------------------------------------------- hooks


def test_hook_converts_refuses_or_explains() -> None:
    def parse(text: str) -> int:
        if text == "odd":
            raise Unexpected(" (a note)")
        if text == "bad":
            raise ValueError("bad is not good; write good")
        return len(text)

    param = schema.string("a word", check=parse)
    assert check("four", param) == 4
    assert error("odd", param) == 'expected a word, found "odd" (a note)'
    assert error("bad", param) == "bad is not good; write good"
    assert error(1, param) == "expected a word, found an integer (1)"  # the type comes first


def test_hook_runs_after_the_rule() -> None:
    seen: list[Any] = []
    param = schema.integer(1, 3, check=lambda v: seen.append(v) or v * 2)
    assert check(2, param) == 4
    error(9, param)
    assert seen == [2]


# ---------------------------------------------------------------- tables

SITE = {
    "name": schema.string(),
    "mtu": schema.integer(576, 9000, 1500),
    "keepalive": schema.number(0.1, 60, 5),
    "control": schema.string(default=None),
}


def test_table_fills_defaults_checked_like_written_values() -> None:
    out = Checker(DemoError, "f.toml").table({"name": "a"}, "site", SITE)
    assert out == {"name": "a", "mtu": 1500, "keepalive": 5.0, "control": None}
    assert isinstance(out["keepalive"], float)


def test_missing_required_key() -> None:
    assert table_error({"site": {"mtu": 1500}}, {"site": schema.table(SITE)}) == (
        "site.name", "missing required key; expected a string"
    )
    assert table_error({}, {"site": schema.table(SITE, rule="a table [site]")}) == (
        "site", "missing required key; expected a table [site]"
    )


def test_unknown_key_names_its_full_path_with_a_hint() -> None:
    keys = {"site": schema.table(SITE)}
    assert table_error({"site": {"name": "a", "mtuu": 1}}, keys) == (
        "site.mtuu", 'unknown key "mtuu" (did you mean "mtu"?)'
    )
    assert table_error({"site": {"name": "a", "zzz": 1}}, keys) == (
        "site.zzz", 'unknown key "zzz"; expected one of name, mtu, keepalive, control'
    )
    assert table_error({"sites": {}}, keys) == (
        "sites", 'unknown key "sites" (did you mean "site"?)'
    )


def test_unknown_keys_come_before_the_values() -> None:
    assert table_error({"site": {"name": 3, "zzz": 1}}, {"site": schema.table(SITE)})[0] == (
        "site.zzz"
    )


def test_a_key_that_is_not_bare_is_quoted_in_the_path() -> None:
    keys = {"t": schema.table({"x": schema.boolean(False)})}
    assert table_error({"t": {"a b": 1}}, keys) == (
        't."a b"', 'unknown key "a b"; expected one of x'
    )
    assert table_error({"t": {"x\ny": 1}}, keys)[0] == 't."x\\ny"'  # still one line


def test_free_table_keeps_any_keys() -> None:
    assert check({"x": [1, {"y": 2}]}, schema.table()) == {"x": [1, {"y": 2}]}
    assert error([], schema.table()) == "expected a table, found an array"


# ---------------------------------------------------------------- arrays and paths

HOST = {
    "name": schema.string(),
    "ipv4": schema.string(default=None),
    "vlan": schema.integer(1, 9, None),
}
LAB = {
    "site": schema.tables(
        {"name": schema.string(), "host": schema.tables(HOST, "site.host", min_items=1)},
        "site", min_items=2, max_items=3,
    ),
}


def lab(*sites: dict[str, Any]) -> dict[str, Any]:
    return {"site": list(sites)}


def test_paths_have_zero_based_indexes() -> None:
    hosts = [{"name": "a"}, {"name": "b"}, {"name": "c", "ipv4": 10}]
    assert table_error(lab({"name": "x", "host": [{"name": "h"}]}, {"name": "y", "host": hosts}),
                       LAB) == ("site[1].host[2].ipv4", "expected a string, found an integer (10)")
    assert child("", "peer") == "peer"
    assert child(child("peer", 1), "endpoint") == "peer[1].endpoint"


def test_array_of_tables_counts() -> None:
    one = {"name": "x", "host": [{"name": "h"}]}
    assert table_error(lab(one), LAB) == (
        "site", "expected an array of 2 to 3 tables [[site]], found 1"
    )
    assert table_error(lab(one, one, one, one), LAB)[1].endswith("found 4")
    assert table_error({}, LAB) == (
        "site", "missing required key; expected an array of 2 to 3 tables [[site]]"
    )
    assert table_error(lab(one, {"name": "y", "host": []}), LAB) == (
        "site[1].host", "expected a non-empty array of tables [[site.host]], found 0"
    )


def test_array_of_tables_written_as_one_table_or_holding_other_values() -> None:
    peers = {"peer": schema.tables({"name": schema.string()}, "peer", [])}
    assert table_error({"peer": {"name": "b"}}, peers) == (
        "peer", "expected an array of tables [[peer]], found a table [peer];"
        " write [[peer]] for each peer"
    )
    assert table_error({"peer": ["b"]}, peers) == (
        "peer[0]", 'expected a table [[peer]], found a string ("b")'
    )
    assert Checker(DemoError, "f.toml").table({}, "", peers) == {"peer": []}


def test_array_items_are_checked_one_by_one() -> None:
    param = schema.array(schema.integer(1, 5), "small numbers", [])
    assert check([1, 5], param) == [1, 5]
    assert error([1, 6], param, "n") == "n[1]: expected an integer from 1 to 5, found 6"
    assert error("1", param) == 'expected an array of small numbers, found a string ("1")'
    assert error([], schema.strings(min_items=1)) == (
        "expected a non-empty array of strings, found 0"
    )
    assert error(["a"] * 4, schema.array(schema.string(), "words", max_items=3)) == (
        "expected an array of at most 3 words, found 4"
    )
    assert error([], schema.array(schema.string(), "words", min_items=2)) == (
        "expected an array of at least 2 words, found 0"
    )


# ---------------------------------------------------------------- parsing and messages


def test_parse_syntax_errors_name_the_line() -> None:
    checker = Checker(DemoError, "f.toml")
    assert checker.parse('a = 1\nb = "x"\n') == {"a": 1, "b": "x"}
    assert checker.parse(b"a = 1\n") == {"a": 1}
    with pytest.raises(DemoError) as info:
        checker.parse("a = 1\nb = = 2\n")
    assert str(info.value) == "f.toml: -: TOML syntax error at line 2, column 5: Invalid value"
    assert info.value.line == 2
    with pytest.raises(DemoError, match=r"^f.toml: -: TOML syntax error at line 2 \(end of file\)"):
        checker.parse("a = 1\nb =")
    with pytest.raises(DemoError) as info:
        checker.parse(b"a = 1\nb = \"caf\xe9\"\n")
    assert str(info.value) == (
        "f.toml: -: not valid UTF-8 (byte 0xe9 at line 2); save the file as UTF-8"
    )
    assert info.value.line == 2


def test_parse_deep_nesting_is_one_line() -> None:
    with pytest.raises(DemoError) as info:
        Checker(DemoError, "f.toml").parse("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert str(info.value) == (
        "f.toml: -: nested too deeply to parse (arrays or inline tables inside each other);"
        " flatten it"
    )


def test_error_is_one_line_with_its_parts() -> None:
    err = DemoError("a\nb.toml", "site.x", "one\ntwo", 3)
    assert (err.path, err.key, err.message, err.line) == ("a\nb.toml", "site.x", "one\ntwo", 3)
    assert str(err) == "a b.toml: site.x: one two"


def test_message_helpers() -> None:
    assert quote("x" * 50) == '"' + "x" * 37 + '..."'
    assert quote("é\n") == '"\\u00e9\\n"'
    assert [format_number(v) for v in (300.0, 0.1, 7, math.nan)] == ["300", "0.1", "7", "nan"]
    assert show(["a", 1, True, [2], {"b": 3}]) == '["a", 1, true, an array, a table]'
    assert show(list(range(10))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"
    assert describe_value(object()) == "a value of type object"
    assert repr(REQUIRED) == "REQUIRED"


# ---------------------------------------------------------------- properties

toml_values = st.recursive(
    st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.dates(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=6,
)
EVERY_KIND = {
    "s": schema.string(default=None),
    "n": schema.name(re.compile(r"[a-z]+"), 4, "a-z", None),
    "b": schema.boolean(False),
    "i": schema.integer(0, 9, 0),
    "f": schema.number(0, 1, 0.5),
    "c": schema.choice(("x", "y"), "x"),
    "t": schema.table({"i": schema.integer(0, 9, 1)}, {}),
    "ts": schema.tables({"s": schema.string()}, "ts", []),
    "a": schema.strings([]),
    "e": schema.either("e", schema.boolean(), schema.integer(0, 1), default=False),
}


@given(st.dictionaries(st.sampled_from([*EVERY_KIND, "zz"]), toml_values, max_size=4))
def test_random_documents_raise_only_the_callers_error(doc: dict[str, Any]) -> None:
    try:
        out = Checker(DemoError, "r.toml").table(doc, "", EVERY_KIND)
    except DemoError as exc:
        assert "\n" not in str(exc)
        assert exc.key.split(".")[0].split("[")[0] in doc
    else:
        assert set(out) == set(EVERY_KIND)
        assert 0 <= out["f"] <= 1 and isinstance(out["f"], float)
