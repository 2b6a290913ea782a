"""Is a cron string one Dagster schedules? Answered without importing Dagster.

:func:`is_valid_cron` gives the answer of Dagster's ``is_valid_cron_string`` (Dagster 1.13):
the expression must expand with croniter's rules (Dagster vendors croniter) to exactly five
fields (minute, hour, day of month, month, day of week; no seconds or years), and must not name
only the 30th or 31st of February. The expansion below follows croniter's ``_expand`` (MIT
licence): ``*``, ``?`` (day fields only), numbers, ``a-b`` ranges (backwards ones wrap, ``a-a`` is
the whole cycle), ``/step``, lists, ``jan``-``dec``, ``sun``-``sat`` (``7`` is Sunday), ``l``
(last day of month; ``l5`` last Friday), ``2#3`` (third Tuesday), and the ``@hourly``-style
aliases. Croniter's hashed ``H`` needs a hash id Dagster never passes, so it is invalid; its
random ``R`` is valid when every value it may draw is.

Example::

    is_valid_cron("0 2 * * *")     # True
    is_valid_cron("0 0 30 2 *")    # False: February has no 30th
    is_valid_cron("* * * * * *")   # False: six fields (seconds)
"""

from __future__ import annotations

import re

_MONTHS = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
           "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
MINUTE, HOUR, DAY, MONTH, DOW = range(5)
#: (low, high) of each of croniter's fields (5 and 6: seconds and years, which Dagster refuses)
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6), (0, 59), (1970, 2099))
_ALPHA: tuple[dict[str, int | str], ...] = ({}, {}, {"l": "l"}, dict(_MONTHS), dict(_DAYS), {}, {})
_ALL = (60, 24, 31, 12, 7, 60, 130)
_ALIASES = {"@midnight": "0 0 * * *", "@hourly": "0 * * * *", "@daily": "0 0 * * *",
            "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_STEP = re.compile(r"^([^-]+)-([^-/]+)(/(\d+))?$")
_INT = re.compile(r"^\d+$")
_STAR_OR_INT = re.compile(r"^(\d+|\*)$")
_WEEKDAYS, _MONTH_NAMES = "|".join(_DAYS), "|".join(_MONTHS)
_SPECIAL_DOW = re.compile(rf"^(?P<pre>((?P<he>(({_WEEKDAYS})(-({_WEEKDAYS}))?)|(({_MONTH_NAMES})(-({_MONTH_NAMES}))?)"
                          r"|\w+)#)|l)(?P<last>\d+)$")
_HASHED = re.compile(r"^(?P<type>h|r)(\((?P<begin>\d+)-(?P<end>\d+)\))?(\/(?P<divisor>\d+))?$")


class _Bad(ValueError):
    """The expression is not one croniter expands."""


def is_valid_cron(text: str) -> bool:
    """True when Dagster would accept ``text`` as a schedule's ``cron_schedule``."""
    if not isinstance(text, str):
        return False
    try:
        expanded = _expand(text)
    except (_Bad, ValueError):
        return False
    if len(expanded) != 5:
        return False
    return not (expanded[MONTH] == [2] and len(expanded[DAY]) == 1 and expanded[DAY][0] in (30, 31))


def _alpha(index: int, key: str) -> int | str:
    try:
        return _ALPHA[index][key]
    except KeyError:
        raise _Bad(key) from None


def _alias(value: object, index: int, fields: int) -> object:
    # croniter's LOWMAP: day of week 7 is Sunday (0) in five-field forms; a day 0 is 1 only in the
    # six-field form, which Dagster refuses anyway
    if index == DOW and value == 7 and fields == 5:
        return 0
    if index == DAY and value == 0 and fields == 6:
        return 1
    return value


def _random(index: int, expr: str) -> str:
    """Croniter's ``R`` forms as a value they may draw, or :class:`_Bad` when any draw is invalid."""
    match = _HASHED.match(expr)
    if not match:
        return expr
    m = match.groupdict()
    if m["type"] == "h":
        raise _Bad("hashed expressions need a hash id")
    low, high = _RANGES[index]
    begin, end, divisor = m["begin"], m["end"], m["divisor"]
    if begin and end and int(begin) >= int(end):
        raise _Bad("range end must be greater than range begin")
    if divisor is not None and int(divisor) == 0:
        raise _Bad("bad divisor")
    if begin and end and divisor:
        first, last = int(begin), int(begin) + int(divisor) - 1
        if last > high or int(end) > high or first < low:
            raise _Bad("random range leaves the field")
        return f"{first}-{end}/{divisor}"
    if begin and end:
        if int(begin) < low or int(end) > high:
            raise _Bad("random range leaves the field")
        return begin
    if divisor:
        if low + int(divisor) - 1 > high:
            raise _Bad("random start leaves the field")
        return f"{low}-{high}/{divisor}"
    return str(low)


def _expand(text: str) -> list[list[object]]:
    """croniter's expansion of ``text`` (no hash id, no seconds-first); :class:`_Bad` when invalid."""
    lowered = text.lower()
    lowered = _ALIASES.get(lowered, lowered)
    fields = lowered.split()
    if len(fields) not in (5, 6, 7):
        raise _Bad("5, 6 or 7 fields")
    expanded: list[list[object]] = []
    nth_weekday: dict[object, set[object]] = {}
    for index, expr in enumerate(fields):
        expr = _random(index, expr)
        if "?" in expr:
            if expr != "?" or index not in (DAY, DOW):
                raise _Bad("`?` stands alone, in a day field")
            expr = "*"
        pending: list[object] = list(expr.split(","))
        values: list[object] = []
        while pending:
            item = str(pending.pop())
            nth: object = None
            if index == DOW:
                special = _SPECIAL_DOW.match(item)
                if special:
                    he, last = special.group("he"), special.group("last")
                    if he:
                        item, nth = he, int(last)
                        if not 1 <= nth <= 5:  # type: ignore[operator]
                            raise _Bad("nth weekday is 1..5")
                    elif last:
                        item, nth = last, special.group("pre")
            low_bound, high_bound = _RANGES[index]
            candidate = re.sub(r"^\*(\/.+)$", rf"{low_bound}-{high_bound}\1", item)
            match = _STEP.search(candidate)
            if not match:
                candidate = re.sub(r"^(.+)\/(.+)$", rf"\1-{high_bound}/\2", item)
                match = _STEP.search(candidate)
            if match:
                low_text, high_text, step_text = match.group(1), match.group(2), match.group(4) or "1"
                if index == DAY and high_text == "l":
                    high_text = "31"
                if not _INT.search(low_text):
                    low_text = str(_alpha(index, low_text))
                if not _INT.search(high_text):
                    high_text = str(_alpha(index, high_text))
                if not (_INT.search(low_text) and _INT.search(high_text)):
                    raise _Bad("range bounds must be numbers")
                step = int(step_text)
                low, high = (_alias(int(v), index, len(fields)) for v in (low_text, high_text))
                assert isinstance(low, int) and isinstance(high, int)
                if max(low, high) > max(low_bound, high_bound):
                    raise _Bad("out of range")
                if low > high:
                    whole = list(range(low_bound, high_bound + 1))
                    span = list(range(low, high_bound + 1, step))
                    skip = 0
                    if span:
                        skipped = list(reversed(whole)).index(span[-1])
                        position = whole.index(span[-1])
                        if position + step > len(whole) and skipped < step:
                            skip = step - skipped
                    span += list(range(low_bound + skip, high + 1, step))
                elif low == high:
                    span = list(range(low_bound, high_bound + 1, step))
                else:
                    span = list(range(low, high + 1, step))
                if index == DOW and nth and nth != "l":
                    span = [f"{v}#{nth}" for v in span]  # type: ignore[misc]
                pending += [v for v in span if v not in pending]
                continue
            if candidate.startswith("-"):
                raise _Bad("negative numbers")
            value: object = candidate if _STAR_OR_INT.search(candidate) else _alpha(index, candidate)
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                value = int(value)
            value = _alias(value, index, len(fields))
            if value not in ("*", "l") and not (isinstance(value, int) and low_bound <= value <= high_bound):
                raise _Bad("out of range")
            values.append(value)
            if index == DOW and nth:
                nth_weekday.setdefault(value, set()).add(nth)
        unique = sorted(set(values), key=lambda v: f"{v:02}" if isinstance(v, int) else str(v))
        if len(unique) == _ALL[index] and not (
                (index == DAY and "*" not in fields[DOW]) or (index == DOW and "*" not in fields[DAY])):
            unique = ["*"]
        expanded.append(["*"] if unique == ["*"] else unique)
    if nth_weekday and len(fields) > DOW:
        literal = set(expanded[DOW]) - set(nth_weekday) - {"*"}
        if literal and len(set(expanded[DOW])) != _ALL[DOW]:
            raise _Bad("day of week mixes literal values and nth weekdays")
    return expanded
