"""The one timestamp parser of the data layer: a time column read with ONE scale (``time_unit``), exactly.

Rules (``docs/data.md``, "Times"):

* A column holds ISO dates or numbers, never both. Numbers are Unix times in one unit -- seconds (``"s"``),
  milliseconds (``"ms"``), microseconds (``"us"``), nanoseconds (``"ns"``) -- or plain numbers that only order the
  rows (``"number"``: counters, days since a start). ``time_unit=None`` reads the unit off the whole column by the
  size of its values and refuses a column whose values have several sizes (dates beside numbers, seconds beside
  milliseconds), naming the first row of each; a declared unit refuses the values that do not have its size.
* Values are kept exactly, in the column's own unit (dates: Unix seconds): an integer stays an ``int`` (large
  ones never go through a float), a fraction is kept as a :class:`~decimal.Decimal` (1.9 and 1.1 stay apart);
  nothing is truncated. A value that is not finite or does not fit a 64-bit integer (``inf``, ``1e400``, ``NaN``,
  ``NaT``) is refused naming its row.
* A date without a time-zone offset is read in ``time_zone`` (default ``"UTC"``, whatever the machine's zone); a
  local time that does not exist or exists twice there (daylight-saving changes) is refused naming its row.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from datetime import date, datetime, timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .recdata import DataFormatError

__all__ = ["TIME_UNITS", "Time", "parse_times"]

Time = int | Decimal  # a parsed time: exact, in the column's unit
TIME_UNITS = ("s", "ms", "us", "ns", "number", "iso")
# the sizes |value| of Unix times in each unit (seconds: 1973 to 5138); "number": below the smallest
_SIZES = {"number": (0, 10**8), "s": (10**8, 10**11), "ms": (10**11, 10**14), "us": (10**14, 10**17),
          "ns": (10**17, 2**63)}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
               "number": "plain numbers", "iso": "ISO dates"}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?)?"
                  r"(Z|[+-]\d{2}(?::?\d{2})?)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FINEST = 30  # decimal places a time may have (nanoseconds of seconds need 9)


def _exact(number: Decimal) -> Time:
    """``number`` exactly, one spelling per value: an ``int`` when whole, else a ``Decimal`` without trailing zeros
    (digits are moved, never rounded: no decimal context is involved)."""
    sign, digits, exponent = number.as_tuple()
    if not any(digits):
        return 0
    while digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    if exponent >= 0:
        return (-1 if sign else 1) * int("".join(map(str, digits))) * 10**exponent
    return Decimal((sign, digits, exponent))


def _decimal(integer: int, exponent: int) -> Time:
    """``integer`` x 10**``exponent``, exactly."""
    return _exact(Decimal((int(integer < 0), tuple(int(c) for c in str(abs(integer))), exponent)))


def _local(naive: datetime, zone: tzinfo, where: str, column: str, shown: str) -> datetime:
    """``naive`` as a time in ``zone``; a local time skipped or repeated by a daylight-saving change is refused."""
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        back = first.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None)
        what = "does not exist" if back != naive else "exists twice"
        raise DataFormatError(f"{where}: {column} {shown} {what} in time zone {zone} (a daylight-saving change); "
                              "write it with its offset (e.g. 2024-03-10T03:30:00-04:00) or pass another time_zone")
    return first


def _seconds(moment: datetime, extra_nanoseconds: int = 0) -> Time:
    """Unix seconds of an aware datetime, exactly (microseconds, plus pandas' nanoseconds)."""
    delta = moment - _EPOCH
    micro = (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds
    return _decimal(micro * 1000 + extra_nanoseconds, -9)


def _date_value(value: date, zone: tzinfo, where: str, column: str) -> Time:
    """A ``datetime`` / pandas ``Timestamp`` / ``date`` object as Unix seconds (naive ones in ``zone``)."""
    if value != value:  # pandas NaT
        raise DataFormatError(f"{where}: {column} is missing (NaT)")
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    nanos = getattr(value, "nanosecond", 0)  # pandas Timestamp
    plain = datetime(value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
                     tzinfo=value.tzinfo, fold=value.fold)
    if plain.utcoffset() is None:
        plain = _local(plain.replace(tzinfo=None), zone, where, column, repr(str(value)))
    return _seconds(plain, nanos)


def _iso_value(text: str, zone: tzinfo, where: str, column: str) -> Time | None:
    """An ISO date string as Unix seconds (fractions of a second exactly); ``None`` when it is not one."""
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    day, clock, fraction, offset = match.groups()
    try:
        moment = datetime.fromisoformat(day + (f"T{clock}" if clock else "") + (offset or ""))
    except ValueError as err:
        raise DataFormatError(f"{where}: {column} {text!r} is not a valid date ({err})") from None
    if moment.tzinfo is None:
        moment = _local(moment, zone, where, column, repr(text))
    seconds = _seconds(moment)  # whole: the fraction was not given to fromisoformat (it keeps 6 digits only)
    if not fraction:
        return seconds
    return _decimal(seconds * 10 ** len(fraction) + int(fraction), -len(fraction))


def _number_value(value: object, where: str, column: str) -> Decimal | int | None:
    """A number (``int``, ``float``, ``Decimal``, numpy scalar, or text such as ``1.9e3``) exactly; ``None`` when
    the value is not a number. Not finite (``inf``, ``1e400`` read as a float, ``NaN``): refused."""
    if isinstance(value, bool):
        raise DataFormatError(f"{where}: {column} must be a number or a date, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise DataFormatError(f"{where}: {column} must be a finite number, got {value!r}")
        return Decimal(float.__repr__(float(value)))  # the float's shortest exact spelling: 1.9 -> Decimal('1.9')
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        if "." not in value and "e" not in value.lower():
            return int(value)  # never through a float
        number = Decimal(value)
    elif isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
        raise DataFormatError(f"{where}: {column} must be a finite number, got {value!r}")
    else:
        return None
    if not number.is_finite():
        raise DataFormatError(f"{where}: {column} must be a finite number, got {value!r}")
    return number


def _size_unit(number: Decimal | int) -> str | None:
    """The unit whose Unix times have this number's size (``"number"`` below 1e8), or ``None``: none does."""
    size = abs(number)
    return next((unit for unit, (low, high) in _SIZES.items() if low <= size < high), None)


def _zone(time_zone: str) -> tzinfo:
    if time_zone.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time_zone={time_zone!r} is not a known time zone (e.g. 'UTC', 'Europe/Berlin')") from None


def parse_times(values: Iterable[tuple[str, object]], column: str, time_unit: str | None = None,
                time_zone: str = "UTC") -> tuple[list[Time], str]:
    """Parse one time column: ``(where, raw value)`` pairs, ``where`` naming the row (``file:line``) in errors.

    Returns the times (exact, in the column's unit; dates as Unix seconds) and the unit they were read in
    (``time_unit``, or the one read off the values). See the module docstring for the rules."""
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit={time_unit!r}: use one of {', '.join(map(repr, TIME_UNITS))} or None (read off "
                         "the values)")
    zone = _zone(time_zone)
    parsed: list[Time] = []
    first_of: dict[str, tuple[str, object]] = {}  # scale -> (where, raw) of its first row
    for where, raw in values:
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or raw == "":
            raise DataFormatError(f"{where}: empty {column}")
        if isinstance(raw, date):
            time, scale = _date_value(raw, zone, where, column), "iso"
        else:
            number = _number_value(raw, where, column)
            if number is None:
                time = _iso_value(raw, zone, where, column) if isinstance(raw, str) else None
                if time is None:
                    raise DataFormatError(f"{where}: {column} must be a number or an ISO date (2024-05-01T12:00:00), "
                                          f"got {raw!r}")
                scale = "iso"
            else:
                scale = _size_unit(number)
                if scale is None:
                    raise DataFormatError(f"{where}: {column} {raw!r} does not fit a 64-bit time in any unit")
                if time_unit == "number":
                    scale = "number"
                time = _exact(number) if isinstance(number, Decimal) else number
                if isinstance(time, Decimal) and time.as_tuple().exponent < -_FINEST:
                    raise DataFormatError(f"{where}: {column} {raw!r} has more than {_FINEST} decimal places")
        if time_unit is not None and scale != time_unit:
            sizes = ""
            if time_unit in _SIZES and scale != "iso":
                low, high = _SIZES[time_unit]
                sizes = f" (Unix times in {_UNIT_NAMES[time_unit]} are {low:.0e} to {high:.0e}; declare 'number' for "
                sizes += "numbers that only order the rows)"
            raise DataFormatError(f"{where}: {column} {raw!r} is not in time_unit={time_unit!r} "
                                  f"({_UNIT_NAMES[time_unit]}): it reads as {_UNIT_NAMES[scale]}{sizes}")
        first_of.setdefault(scale, (where, raw))
        parsed.append(time)
    if len(first_of) > 1:
        shown = "; ".join(f"{_UNIT_NAMES[scale]} from {where} ({raw!r})" for scale, (where, raw) in first_of.items())
        raise DataFormatError(f"{column} mixes time scales: {shown}; a column holds one scale (convert the column, "
                              "or declare the right one with time_unit= to have the rows that do not fit named)")
    unit = time_unit or next(iter(first_of), "number")
    return parsed, unit

