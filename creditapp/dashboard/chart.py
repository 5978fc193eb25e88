"""The geometry of a line chart drawn as SVG by the server: no script, no library, nothing a
fresh clone must build. The template only places what this computes."""
from dataclasses import dataclass
from datetime import datetime

from .figures import Series

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 32, 16, 36
# Distinguishable on white and for the common colour blindnesses (Okabe–Ito).
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442", "#000000")


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    day: datetime
    value: int


@dataclass(frozen=True)
class Line:
    feature: str
    credit_type: str
    total: int
    colour: str
    points: list[Point]

    @property
    def path(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    right: int  # x of the plot's right edge
    top: int
    bottom: int  # y of the plot's baseline
    lines: list[Line]
    y_ticks: list[Tick]
    x_ticks: list[Tick]


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^n at or above `value`: round gridlines."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def line_chart(days: list[datetime], series: list[Series]) -> Chart:
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    top_value = _nice_ceiling(max([1, *(max(s.points) for s in series)]))
    span = max(len(days) - 1, 1)

    def x(i: int) -> float:
        return LEFT + (right - LEFT) * i / span

    def y(value: int) -> float:
        return bottom - (bottom - TOP) * max(value, 0) / top_value

    lines = [
        Line(s.feature, s.credit_type, s.total, COLOURS[n % len(COLOURS)],
             [Point(x(i), y(v), days[i], v) for i, v in enumerate(s.points)])
        for n, s in enumerate(series)
    ]
    y_ticks = [Tick(y(v), f"{v:,}") for v in sorted({top_value * k // 4 for k in range(5)})]
    # Weekly labels counted back from today, so the last day is always labelled.
    x_ticks = [Tick(x(i), days[i].strftime("%d %b")) for i in reversed(range(len(days) - 1, -1, -7))]
    return Chart(WIDTH, HEIGHT, LEFT, right, TOP, bottom, lines, y_ticks, x_ticks)


def charts_by_credit_type(days: list[datetime], series: list[Series]) -> dict[str, Chart]:
    """One chart per credit type: credits of two types share no axis."""
    types = dict.fromkeys(s.credit_type for s in series)
    return {t: line_chart(days, [s for s in series if s.credit_type == t]) for t in types}
