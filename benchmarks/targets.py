"""The issue's targets, judged: measured value, ratio, met or not, and a profile finding."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Target:
    key: str  # "1a"
    text: str  # what the issue asks
    measured: str  # the numbers behind the ratio
    value: float | None  # the ratio or figure judged; None = could not be measured
    goal: float | None  # None = informational, nothing to meet
    at_most: bool = False  # True: value <= goal meets it; False: value >= goal
    unit: str = "x"
    finding: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.goal is None:
            return None
        return self.value <= self.goal if self.at_most else self.value >= self.goal

    def row(self) -> str:
        verdict = {True: "**met**", False: "**not met**", None: "n/a"}[self.met]
        goal = "—" if self.goal is None else ("≤ " if self.at_most else "≥ ") + _fmt(
            self.goal, self.unit)
        value = "n/a" if self.value is None else _fmt(self.value, self.unit)
        finding = self.finding or ("profile finding: _(to fill in)_" if self.met is False
                                   else "")
        return (f"| {self.key} | {self.text} | {self.measured} | {value} | {goal} | {verdict} | "
                f"{finding} |")


def _fmt(x: float, unit: str) -> str:
    if unit == "x":
        return f"{x:.2f}x"
    if unit == "s":
        return f"{x:.1f} s"
    if unit == "ms":
        return f"{x:.1f} ms"
    if unit == "/study":
        return f"{x:.2f} /study"
    return f"{x:,.0f} {unit}"


@dataclass
class Section:
    """One section of the report: its markdown and the targets it judged."""

    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


def table(targets: list[Target]) -> list[str]:
    if not targets:
        return []
    return ["| # | target (from the issue) | measured | value | goal | verdict | notes |",
            "|---|---|---|---:|---:|---|---|", *(t.row() for t in targets)]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
