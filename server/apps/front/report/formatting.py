"""One formatter for every percent, difference, p-value and duration the report shows a person.

The terminal (``TEXT``) and the admin page (``HTML``) differ only in its
settings: how a missing value reads, ``1.5s`` vs ``1.5 s``, whether tiny
p-values read ``< 1e-16``. ``stats.decide`` words its reasons with it too,
and the spec's analytics functions take their percentages from ``percent``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Formatter:
    missing: str = "–"
    seconds_unit: str = " s"
    p_floor: float | None = 1e-16  # p-values below this read "< 1e-16"

    def pct(self, value: float | None, digits: int = 1) -> str:
        return self.missing if value is None else f"{value * 100:.{digits}f}%"

    def points(self, value: float | None, digits: int = 2, unit: str = " pp") -> str:
        return self.missing if value is None else f"{value * 100:+.{digits}f}{unit}"

    def p(self, value: float | None, digits: str = ".3g") -> str:
        if value is None:
            return self.missing
        if self.p_floor is not None and value < self.p_floor:
            return f"< {self.p_floor:g}"
        return f"{value:{digits}}"

    def seconds(self, ms: float | None, sign: str = "") -> str:
        return self.missing if ms is None else f"{ms / 1000:{sign}.1f}{self.seconds_unit}"


HTML = Formatter()
TEXT = Formatter(missing="n/a", seconds_unit="s", p_floor=None)


def percent(value: float | None) -> float | None:
    """A share as a percentage number (the spec's analytics functions return numbers, not strings)."""
    return None if value is None else value * 100
