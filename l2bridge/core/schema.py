"""Checking a TOML document against a schema (pure: no trio, no socket, no pyroute2).

One checker for every TOML file the project reads, the site configuration
(``l2bridge.core.config``) and the lab's scenarios (``netns.describe.scenario``),
so that each mistake is found by one piece of code and worded one way.

A schema is a mapping ``{key: Param}``; the factories below make the parameters:
``string``, ``name``, ``boolean``, ``integer``, ``number`` (a float; integers are
accepted), ``choice``, ``table``, ``tables`` (an array of tables), ``array``,
``strings`` and ``either`` (the first alternative whose type fits).  Every
parameter has a ``rule`` (what is expected, in words: ``"an integer from 576 to
9000"``), a default and an optional ``check`` hook, run on a value that passed the
type and the parameter's own rule: it returns the value to keep (so it may
convert, e.g. text to an endpoint), raises ``Unexpected`` when the value breaks the
parameter's rule (the checker words it), or ``ValueError`` with its own message.

Flow of ``Checker.table(value, key, schema)``:
1. the value must be a table;
2. unknown keys first: the first key the schema does not know is refused, with
   the closest known key as a hint, else the list of known keys;
3. then each key in the schema's order: a missing key takes its default (checked
   like a written value, so defaults are TOML values; ``None`` means absent and
   is kept as is) or is reported missing when it has none (``REQUIRED``); a key
   present must have the exact TOML type (a boolean is not an integer, a float
   is not an integer), then pass its parameter's rule (a range, a choice, a name
   pattern, its items or keys), then the hook;
4. the caller then checks what relates keys to each other.

Every problem raises the caller's error type (a subclass of ``SchemaError``)
whose ``str()`` is one line, ``{file}: {key}: {message}``.  Key paths are dotted
with 0-based indexes as in the file (``peer[1].endpoint``,
``site[0].host[2].ipv4``); a key that is not a bare TOML key is quoted
(``site."a b"``); ``-`` is the document as a whole.  One wording per mistake:

    unknown key "ageng" (did you mean "ageing"?)
    unknown key "zzz"; expected one of name, listen, bridge, ...
    missing required key; expected RULE
    expected RULE, found a string ("x")          the wrong type: its kind and value
    expected RULE, found 575                     the right type, a wrong value
    expected one of "a", "b", found "c"          a choice (with a hint when one is close)
    expected an array of 2 to 200 tables [[site]], found 1     too few or too many items
    expected an array of tables [[peer]], found a table [peer]; write [[peer]] for each peer
    TOML syntax error at line 3, column 7: Invalid value
    nested too deeply to parse (arrays or inline tables inside each other); flatten it
    not valid UTF-8 (byte 0xe9 at line 2); save the file as UTF-8
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from l2bridge.errors import UsageError


class _Required:
    """The default of a key that must be written."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()
DOCUMENT = "-"  # the key path of the document as a whole
QUOTE_LIMIT = 40  # characters of a user string shown in a message
SHOWN_ITEMS = 8  # items of an array shown in a message

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_AT_RE = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_AT_END = " (at end of document)"


class SchemaError(UsageError):
    """A problem in a TOML document; ``str()`` is ``{path}: {key}: {message}`` on one line.

    ``path`` names the file, ``key`` the key path (``-``: the whole document),
    ``line`` the line when one is known (syntax and encoding errors).
    """

    def __init__(self, path: str, key: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.key = key
        self.message = message
        self.line = line
        super().__init__(path, key, message)

    def __str__(self) -> str:
        text = f"{self.path}: {self.key}: {self.message}"
        return " ".join(text.splitlines())


class Unexpected(ValueError):
    """Raised by a hook: the value has the right type but breaks the parameter's rule.

    The checker words it ``expected RULE, found VALUE`` followed by ``note``
    (e.g. ``" (16 bytes)"``).
    """

    def __init__(self, note: str = "") -> None:
        super().__init__(note)
        self.note = note


Hook = Callable[[Any], Any]


# ---------------------------------------------------------------- messages


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Quote a user string for a one-line message (escaped, shortened)."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return json.dumps(text)


def format_number(value: float) -> str:
    """Format a number as it would be written in TOML (``300.0`` as ``300``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def describe_value(value: Any) -> str:
    """Name the TOML type of ``value`` and show it briefly: what a wrong type is."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({quote(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return f"a value of type {type(value).__name__}"


def show(value: Any) -> str:
    """Show a value of the right type as it is written in TOML: what a wrong value is."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, list):
        items = [
            describe_value(item) if isinstance(item, list | Mapping) else show(item)
            for item in value[:SHOWN_ITEMS]
        ]
        more = ", ..." if len(value) > SHOWN_ITEMS else ""
        return "[" + ", ".join(items) + more + "]"
    return describe_value(value)


def expected(rule: str, found: str) -> str:
    """The one wording of a value that breaks a rule: ``expected RULE, found FOUND``."""
    return f"expected {rule}, found {found}"


def missing(rule: str) -> str:
    """The one wording of a key that must be written and is not."""
    return f"missing required key; expected {rule}"


def duplicate(what: str, value: str, first: str) -> str:
    """The one wording of a value that must be unique: ``first`` is where it stood before."""
    return f"duplicate {what} {quote(value)} (also {first})"


def suggest(word: str, known: list[str]) -> str | None:
    """The known word closest to ``word`` (a likely typo), or None."""
    close = difflib.get_close_matches(word, known, n=1)
    return close[0] if close else None


def unknown_key(key: str, known: list[str]) -> str:
    """The one wording of a key the schema does not know."""
    close = suggest(key, known)
    if close is not None:
        return f"unknown key {quote(key)} (did you mean {quote(close)}?)"
    return f"unknown key {quote(key)}; expected one of " + ", ".join(known)


def child(path: str, part: str | int) -> str:
    """The key path of key or index ``part`` inside ``path`` (``""`` is the document)."""
    if isinstance(part, int):
        return f"{path}[{part}]"
    shown = part if _BARE_KEY_RE.fullmatch(part) else quote(part)
    return f"{path}.{shown}" if path else shown


def _options(options: tuple[str, ...]) -> str:
    return "one of " + ", ".join(quote(o) for o in options)


def _array_rule(of: str, low: int, high: int | None) -> str:
    """An array of ``low`` to ``high`` items, in words: ``"an array of 2 to 200 tables"``."""
    if high is None:
        if low == 1:
            return f"a non-empty array of {of}"
        return f"an array of at least {low} {of}" if low else f"an array of {of}"
    if low == 0:
        return f"an array of at most {high} {of}"
    return f"an array of {low} to {high} {of}"


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One key of a table: what is expected (``rule``), its default and a hook."""

    rule: str
    default: Any = REQUIRED
    check: Hook | None = None
    types: ClassVar[tuple[type, ...]] = ()  # the TOML types taken (bool only when named)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has the exact TOML type this parameter takes."""
        if isinstance(value, bool) and bool not in self.types:
            return False  # a boolean is an int to Python, never to TOML
        return isinstance(value, self.types)

    def wrong_type(self, value: Any) -> str:
        return expected(self.rule, describe_value(value))

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        """Judge a value of the right type beyond its type; raise ``Unexpected``."""
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Str(Param):
    """Any string; ``rule`` says what it stands for, a hook may judge it further."""

    types = (str,)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bool(Param):
    """``true`` or ``false``."""

    types = (bool,)


@dataclass(frozen=True, slots=True, kw_only=True)
class Name(Str):
    """1 to ``max_len`` characters, all of them matching ``pattern``."""

    pattern: re.Pattern[str]
    max_len: int

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        if len(value) > self.max_len:
            raise Unexpected(f" ({len(value)} characters)")
        if not self.pattern.fullmatch(value):
            raise Unexpected()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Number(Param):
    """From ``low`` to ``high``, both included; kept as a float (an integer is taken)."""

    low: float
    high: float
    types: ClassVar[tuple[type, ...]] = (int, float)

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        if not self.low <= value <= self.high:  # also refuses nan
            raise Unexpected()
        return float(value) if float in self.types else value


@dataclass(frozen=True, slots=True, kw_only=True)
class Int(Number):
    """An integer in range: a float (even 5.0) is not one."""

    types = (int,)


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice(Str):
    """One of the strings ``options``; a near miss gets a hint."""

    options: tuple[str, ...]

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        if value not in self.options:
            close = suggest(value, list(self.options))
            raise Unexpected(f" (did you mean {quote(close)}?)" if close else "")
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Table(Param):
    """A table checked against its own schema (``keys``)."""

    keys: Mapping[str, Param] | None  # None: any keys, values as written
    types = (Mapping,)

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        if self.keys is None:
            return dict(value)
        return checker.keys(value, key, self.keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class Array(Param):
    """``min_items`` to ``max_items`` items, each checked by ``item`` at its index."""

    item: Param
    min_items: int = 0
    max_items: int | None = None
    header: str | None = None  # an array of tables: how its tables are written
    types = (list,)

    def wrong_type(self, value: Any) -> str:
        if self.header is not None and isinstance(value, Mapping):
            each = self.header.rsplit(".", 1)[-1]
            return (f"{expected(self.rule, f'a table [{self.header}]')};"
                    f" write [[{self.header}]] for each {each}")
        return expected(self.rule, describe_value(value))

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        count = len(value)
        if count < self.min_items or (self.max_items is not None and count > self.max_items):
            raise checker.fail(key, expected(self.rule, str(count)))
        return [checker.value(item, child(key, i), self.item) for i, item in enumerate(value)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Either(Param):
    """The first of ``params`` whose type fits judges the value (with this rule)."""

    params: tuple[Param, ...]

    def accepts(self, value: Any) -> bool:
        return any(p.accepts(value) for p in self.params)

    def refine(self, value: Any, key: str, checker: Checker) -> Any:
        param = next(p for p in self.params if p.accepts(value))
        return checker.value(value, key, param)


# ---------------------------------------------------------------- factories


def string(rule: str = "a string", default: Any = REQUIRED, *, check: Hook | None = None
           ) -> Param:
    """A string; ``rule`` says what it means (``"a path to a key file"``)."""
    return Str(rule=rule, default=default, check=check)


def name(pattern: re.Pattern[str], max_len: int, chars: str, default: Any = REQUIRED,
         *, check: Hook | None = None) -> Param:
    """A name: 1 to ``max_len`` characters matching ``pattern``, ``chars`` in words."""
    rule = f"a name of 1 to {max_len} characters from {chars}"
    return Name(rule=rule, default=default, check=check, pattern=pattern, max_len=max_len)


def boolean(default: Any = REQUIRED, *, check: Hook | None = None) -> Param:
    """``true`` or ``false``; an integer is not one."""
    return Bool(rule="true or false", default=default, check=check)


def integer(low: int, high: int, default: Any = REQUIRED, *, check: Hook | None = None
            ) -> Param:
    """An integer from ``low`` to ``high`` (both included); a float or a boolean is not one."""
    rule = f"an integer from {low} to {high}"
    return Int(rule=rule, default=default, check=check, low=low, high=high)


def number(low: float, high: float, default: Any = REQUIRED, *, unit: str | None = None,
           check: Hook | None = None) -> Param:
    """A number from ``low`` to ``high``, kept as a float; ``unit`` in words (``"seconds"``)."""
    what = f"a number of {unit}" if unit else "a number"
    rule = f"{what} from {format_number(low)} to {format_number(high)}"
    return Number(rule=rule, default=default, check=check, low=low, high=high)


def choice(options: tuple[str, ...], default: Any = REQUIRED) -> Param:
    """One of the strings ``options``."""
    return Choice(rule=_options(options), default=default, options=options)


def table(keys: Mapping[str, Param] | None = None, default: Any = REQUIRED, *,
          rule: str = "a table", check: Hook | None = None) -> Param:
    """A table checked against ``keys`` (``None``: any keys, any values)."""
    return Table(rule=rule, default=default, check=check, keys=keys)


def array(item: Param, of: str, default: Any = REQUIRED, *, min_items: int = 0,
          max_items: int | None = None, check: Hook | None = None) -> Param:
    """An array whose items are each checked by ``item``; ``of`` names them (plural)."""
    rule = _array_rule(of, min_items, max_items)
    return Array(rule=rule, default=default, check=check, item=item, min_items=min_items,
                 max_items=max_items)


def strings(default: Any = REQUIRED, *, of: str = "strings", min_items: int = 0,
            check: Hook | None = None) -> Param:
    """An array of strings."""
    return array(string(), of, default, min_items=min_items, check=check)


def tables(keys: Mapping[str, Param] | None, header: str, default: Any = REQUIRED, *,
           min_items: int = 0, max_items: int | None = None) -> Param:
    """An array of tables written ``[[header]]``, each checked against ``keys``."""
    rule = _array_rule(f"tables [[{header}]]", min_items, max_items)
    item = table(keys, rule=f"a table [[{header}]]")
    return Array(rule=rule, default=default, item=item, min_items=min_items,
                 max_items=max_items, header=header)


def either(rule: str, *params: Param, default: Any = REQUIRED) -> Param:
    """A value of any of the types of ``params``; every message says ``rule``."""
    own = tuple(dataclasses.replace(p, rule=rule) for p in params)
    return Either(rule=rule, default=default, params=own)


# ---------------------------------------------------------------- the checker


class Checker:
    """Checks one document, raising ``error(path, key, message)`` for the first problem.

    ``error`` is the caller's subclass of ``SchemaError`` (``ConfigError``,
    ``ScenarioError``); ``path`` names the file in every message.
    """

    def __init__(self, error: type[SchemaError], path: str) -> None:
        self.error = error
        self.path = path

    def fail(self, key: str, message: str, line: int | None = None) -> SchemaError:
        """The error for ``key`` (``""`` is the document), to raise."""
        return self.error(self.path, key or DOCUMENT, message, line)

    def parse(self, data: str | bytes) -> dict[str, Any]:
        """Decode (bytes must be UTF-8) and parse a TOML document; any problem is one line."""
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                raise self.fail(
                    DOCUMENT, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line});"
                    " save the file as UTF-8", line,
                ) from None
        else:
            text = data
        try:
            return tomllib.loads(text)
        except RecursionError:  # tomllib recurses once per nested array or inline table
            raise self.fail(
                DOCUMENT, "nested too deeply to parse (arrays or inline tables inside each"
                " other); flatten it",
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise self._syntax_error(str(exc), text) from None

    def _syntax_error(self, detail: str, text: str) -> SchemaError:
        at = _TOML_AT_RE.match(detail)
        if at:
            line = int(at["line"])
            return self.fail(
                DOCUMENT, f"TOML syntax error at line {line}, column {at['col']}: {at['what']}",
                line,
            )
        if detail.endswith(_TOML_AT_END):
            line = text.count("\n") + 1
            what = detail.removesuffix(_TOML_AT_END)
            return self.fail(DOCUMENT, f"TOML syntax error at line {line} (end of file): {what}",
                             line)
        return self.fail(DOCUMENT, f"TOML syntax error: {detail}")

    def table(self, value: Any, key: str, keys: Mapping[str, Param],
              rule: str = "a table") -> dict[str, Any]:
        """Check that ``value`` is a table matching ``keys``; return it with defaults filled in."""
        checked: dict[str, Any] = self.value(value, key, table(keys, rule=rule))
        return checked

    def keys(self, value: Mapping[str, Any], key: str, keys: Mapping[str, Param]
             ) -> dict[str, Any]:
        """Check the keys of table ``value``: unknown ones first, then each in schema order."""
        known = list(keys)
        for k in value:
            if k not in keys:
                raise self.fail(child(key, k), unknown_key(k, known))
        return {k: self.get(value, key, k, param) for k, param in keys.items()}

    def get(self, value: Mapping[str, Any], key: str, k: str, param: Param) -> Any:
        """The checked value of key ``k`` of table ``value`` (at ``key``), or its default."""
        where = child(key, k)
        if k in value:
            return self.value(value[k], where, param)
        if param.default is REQUIRED:
            raise self.fail(where, missing(param.rule))
        if param.default is None:
            return None
        return self.value(param.default, where, param)

    def value(self, value: Any, key: str, param: Param) -> Any:
        """Check one value against ``param``: its type, its rule, then its hook."""
        if not param.accepts(value):
            raise self.fail(key, param.wrong_type(value))
        try:
            value = param.refine(value, key, self)
            if param.check is not None:
                value = param.check(value)
        except Unexpected as exc:
            raise self.fail(key, expected(param.rule, show(value) + exc.note)) from None
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        return value
