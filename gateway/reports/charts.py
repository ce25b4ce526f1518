"""The geometry of the chargeback page's two SVG charts, as numbers for the templates to draw
(``templates/charts.html.j2``): where each bar goes, which round dollar amounts the daily
chart's y-axis marks. No text is formatted here and no markup is written."""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.reports.chargeback import DailySpend

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f")
OTHERS_COLOR = "#a0aec0"
WIDTH = 760
CENT = 10_000  # micro-USD


def group_colors(spend: Sequence[tuple[str, int]]) -> dict[str, str]:
    """A colour per group, in the order given, for the ones that spent most (as many as the
    palette has colours: more could not be told apart); the others share ``OTHERS_COLOR``.
    Both charts use it, so a group has the same colour in each."""
    ranked = sorted(spend, key=lambda group: (-group[1], group[0]))
    coloured = {label for label, _ in ranked[: len(PALETTE)]}
    palette = iter(PALETTE)
    return {label: next(palette) if label in coloured else OTHERS_COLOR for label, _ in spend}


@dataclass(frozen=True)
class SpendBar:
    label: str
    micro_usd: int
    y: int
    length: int
    color: str


@dataclass(frozen=True)
class SpendChart:
    """Horizontal bars, one per group, their labels to the left of ``label_width``."""

    bars: list[SpendBar]
    height: int
    label_width: int
    bar_height: int
    width: int = WIDTH


def spend_chart(groups: Sequence[tuple[str, int]], colors: dict[str, str]) -> SpendChart:
    """A bar per ``(label, micro-USD)``, the longest for the largest amount."""
    label_width, bar_height, gap, top = 220, 22, 8, 32
    room = WIDTH - label_width - 120  # the amount is written after the bar
    peak = max((value for _, value in groups), default=0) or 1
    bars = [
        SpendBar(
            label=label,
            micro_usd=value,
            y=top + index * (bar_height + gap),
            length=max(room * max(value, 0) // peak, 1),
            color=colors.get(label, OTHERS_COLOR),
        )
        for index, (label, value) in enumerate(groups)
    ]
    return SpendChart(
        bars=bars,
        height=top + len(bars) * (bar_height + gap) + 4,
        label_width=label_width,
        bar_height=bar_height,
    )


def nice_step(peak: int, ticks: int = 5) -> int:
    """A round step in micro-USD for an axis from 0 to ``peak`` in at most ``ticks`` steps: 1,
    2, 2.5 or 5 times a power of ten, never under a cent (2.5 only from $0.25 up, so every
    tick is a whole number of cents).

    >>> nice_step(34_260_000)  # a peak of $34.26: a tick every $10
    10000000
    """
    wanted = max(-(-peak // ticks), 1)
    magnitude = CENT
    while True:
        factors = (10, 20, 25, 50) if magnitude >= 10 * CENT else (10, 20, 50)
        for factor in factors:
            step = magnitude * factor // 10
            if step >= wanted:
                return step
        magnitude *= 10


@dataclass(frozen=True)
class Tick:
    y: float
    micro_usd: int


@dataclass(frozen=True)
class Segment:
    """One group's spend on one day: a piece of that day's stacked bar."""

    x: float
    y: float
    width: float
    height: float
    color: str
    day: str
    group: str
    micro_usd: int


@dataclass(frozen=True)
class DayLabel:
    x: float
    label: str


@dataclass(frozen=True)
class Swatch:
    x: int
    y: int
    color: str
    label: str


@dataclass(frozen=True)
class DailyChart:
    """Stacked bars per day of the month over a y-axis in dollars (``ticks``, 0 first)."""

    segments: list[Segment]
    ticks: list[Tick]
    days: list[DayLabel]
    legend: list[Swatch]
    step: int
    height: int
    left: int
    top: int
    bottom: int
    right: int
    width: int = WIDTH

    @property
    def whole_dollars(self) -> bool:
        """Whether every tick is a whole number of dollars (the labels then show no cents)."""
        return self.step % 1_000_000 == 0


def daily_chart(month: str, points: Sequence[DailySpend], colors: dict[str, str]) -> DailyChart:
    """Every day of ``month``, each bar stacking the groups' spend that day in the order of
    ``colors``; the groups without a colour of their own are stacked as one, on top."""
    left, top, bottom, right = 84, 40, 280, WIDTH - 8
    groups = {point.group for point in points}
    others = sorted(group for group in groups if colors.get(group, OTHERS_COLOR) == OTHERS_COLOR)
    stack = [group for group in colors if group in groups and group not in others]
    if len(others) > 1:
        stack.append(f"{len(others)} other groups")
    elif others:
        stack.append(others[0])
    by_day: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for point in points:
        group = stack[-1] if point.group in others else point.group
        by_day[point.day][group] += point.captured_micro_usd
    peak = max((sum(spend.values()) for spend in by_day.values()), default=0)
    step = nice_step(max(peak, 1))
    axis_max = -(-max(peak, 1) // step) * step
    scale = (bottom - top) / axis_max
    days = _days_of(month, points)
    slot = (right - left) / len(days)
    segments = []
    for index, day in enumerate(days):
        base = float(bottom)
        for group in stack:
            amount = by_day[day].get(group, 0)
            if amount <= 0:
                continue
            base -= amount * scale
            segments.append(
                Segment(
                    x=left + index * slot + 1,
                    y=base,
                    width=max(slot - 2, 1),
                    height=amount * scale,
                    color=colors.get(group, OTHERS_COLOR),
                    day=day,
                    group=group,
                    micro_usd=amount,
                )
            )
    return DailyChart(
        segments=segments,
        ticks=[Tick(bottom - value * scale, value) for value in range(0, axis_max + 1, step)],
        days=[
            DayLabel(left + (index + 0.5) * slot, day[8:].lstrip("0"))
            for index, day in enumerate(days)
        ],
        legend=[
            Swatch(
                left + (index % 4) * 170,
                bottom + 34 + (index // 4) * 16,
                colors.get(group, OTHERS_COLOR),
                group,
            )
            for index, group in enumerate(stack)
        ],
        step=step,
        height=bottom + 34 + -(-len(stack) // 4) * 16 + 4,
        left=left,
        top=top,
        bottom=bottom,
        right=right,
    )


def _days_of(month: str, points: Sequence[DailySpend]) -> list[str]:
    """Each day of the month: a day without spend is an empty slot, not a missing one."""
    year, number = (int(part) for part in month.split("-"))
    last = calendar.monthrange(year, number)[1]
    return sorted({f"{month}-{day:02d}" for day in range(1, last + 1)} | {p.day for p in points})
