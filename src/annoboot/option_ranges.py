"""The ranges of numeric options, declared with each option (``option(default, RANGE)``) and
checked when a config loads, so that a value no recipe would use (a negative rate, a zero
temperature, a fraction above one, NaN) stops with one line naming the key, the value and the
range instead of a traceback from inside the optimiser or a loss.

A leaf module: every option class may import it. Lists of numbers are checked element by
element; None passes (an Optional option left unset). Every number must be finite, and an
integer must fit in 32 bits (torch indexes with them).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple, get_type_hints

from annoboot.errors import AnnobootError

INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e6  # no option of ours means anything beyond a million (a rate, a temperature, a period)


@dataclass(frozen=True)
class Range:
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # the low end excluded
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "any finite number"
        if self.high is None:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        low = "-inf" if self.low is None else f"{self.low:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {self.high:g}{')' if self.high_open else ']'}"


ANY = Range()
POSITIVE = Range(0, low_open=True)  # rates, temperatures, sizes in units
NON_NEGATIVE = Range(0)  # weights, decays, counts that may be 0
COUNT = Range(1)  # counts of at least one
FRACTION = Range(0, 1, low_open=True)  # (0, 1]: a share that cannot be empty
PROBABILITY = Range(0, 1)  # [0, 1]
BELOW_ONE = Range(0, 1, high_open=True)  # [0, 1): discounts, Adam betas


def option(default: Any = MISSING, range: Range = ANY, *, factory: Optional[Callable[[], Any]] = None) -> Any:  # noqa: A002
    """A dataclass field whose numbers must lie in ``range`` (``factory`` for list defaults)."""
    metadata = {"range": range}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _numbers(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def ranged_options(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Range, Any]]:
    """(key, declared range, value) of every option of a config dataclass tree that declares one."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            yield from ranged_options(value, key + ".")
        elif "range" in f.metadata:
            yield key, f.metadata["range"], value


def unranged_numeric_options(obj: Any, prefix: str = "") -> List[str]:
    """Keys of numeric options (by their declared type, or their value) that declare no range:
    there should be none."""
    hints = get_type_hints(type(obj))
    missing = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            missing += unranged_numeric_options(value, key + ".")
            continue
        hint = str(hints.get(f.name, ""))
        numeric = any(True for _ in _numbers(value)) or ("int" in hint or "float" in hint) and "Dict" not in hint
        if numeric and "range" not in f.metadata:
            missing.append(key)
    return missing


def check_ranges(cfg: Any) -> None:
    """AnnobootError naming the first option whose value lies outside its declared range (or is
    not finite, or is an integer too large)."""
    for key, allowed, value in ranged_options(cfg):
        for number in _numbers(value):
            problem = None
            if isinstance(number, float) and not math.isfinite(number):
                problem = "not finite"
            elif isinstance(number, int) and abs(number) > INT_LIMIT:
                problem = f"too large (at most {INT_LIMIT})"
            elif isinstance(number, float) and abs(number) > FLOAT_LIMIT:
                problem = f"too large (at most {FLOAT_LIMIT:g} in size)"
            elif not allowed.contains(number):
                problem = f"out of range: it must be {allowed}"
            if problem:
                shown = value if not isinstance(value, (list, tuple)) or len(value) <= 8 else f"[{number}, ...]"
                raise AnnobootError(f"bad config: key '{key}' is {shown}; {problem}")


__all__ = ["ANY", "BELOW_ONE", "COUNT", "FLOAT_LIMIT", "FRACTION", "INT_LIMIT", "NON_NEGATIVE", "POSITIVE", "PROBABILITY", "Range",
           "check_ranges", "option", "ranged_options", "unranged_numeric_options"]
