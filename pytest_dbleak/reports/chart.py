"""The geometry of the HTML report's timeline: its size in SVG user units, the step lines
of each series decimated to the chart's pixel columns, and the axis ticks.

No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

# Geometry of the chart in SVG user units; the SVG scales to the page width.
WIDTH, HEIGHT = 1200, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 40, 44
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM
LANE_Y = 18  # the row of leak markers above the plot

Point = tuple[float, float]


def series_points(values: Sequence[int], y_of: Callable[[float], float]) -> list[Point]:
    """A step line: each test's value holds across its slot of the x axis.

    With more tests than pixel columns, each column keeps its first, lowest, highest and
    last value: the line looks the same as the full one, at a bounded number of points.
    """
    n = len(values)
    points: list[Point] = []
    if n <= PLOT_W:
        width = PLOT_W / n
        for i, value in enumerate(values):
            y = y_of(value)
            points += [(LEFT + i * width, y), (LEFT + (i + 1) * width, y)]
    else:
        for col in range(PLOT_W):
            chunk = values[col * n // PLOT_W : (col + 1) * n // PLOT_W]
            x0, x1 = LEFT + col, LEFT + col + 1
            for value in (chunk[0], min(chunk), max(chunk), chunk[-1]):
                points.append((x0, y_of(value)))
            points.append((x1, y_of(chunk[-1])))
    return simplify([(rounded(x), rounded(y)) for x, y in points])


def simplify(points: Iterable[Point]) -> list[Point]:
    """Drop repeated points and points in the middle of a straight horizontal or vertical
    run: a flat stretch of 10,000 clean tests becomes two points."""
    out: list[Point] = []
    for p in points:
        if out and p == out[-1]:
            continue
        if len(out) >= 2:
            a, b = out[-2], out[-1]
            flat = a[1] == b[1] == p[1] and min(a[0], p[0]) <= b[0] <= max(a[0], p[0])
            upright = a[0] == b[0] == p[0] and min(a[1], p[1]) <= b[1] <= max(a[1], p[1])
            if flat or upright:
                out[-1] = p
                continue
        out.append(p)
    return out


def nice_step(span: int, ticks: int) -> int:
    """1, 2, 5, 10, 20, 50...: the smallest such step that gives at most `ticks` ticks."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if span / step <= ticks:
                return step
        magnitude *= 10


def nice_ceiling(value: int) -> int:
    step = nice_step(value, 5)
    return -(-value // step) * step


def rounded(value: float) -> float:
    return round(value, 1)
