"""How the CLI prints: tables aligned by a table library (plain text, no colour, never
wrapped when piped) and progress bars on stderr only when stderr is a terminal."""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

_PIPED_WIDTH = 10_000  # never wrap or cut a cell when the output goes to a file or a pipe


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[object]]) -> None:
    """One header row, then the rows, aligned; ``None`` cells print as ``-``."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=True)
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else _PIPED_WIDTH
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False).print(table)
    click.echo("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()))


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Progress]:
    """A progress bar on stderr while the block runs, if stderr is a terminal; nothing
    otherwise (a pipe or a log gets no control characters). ``total=None``: a spinner."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
        transient=True,
    )
    with bar:
        bar.add_task(description, total=total)
        yield bar


def advance(bar: Progress, amount: int = 1) -> None:
    for task in bar.task_ids:
        bar.advance(task, amount)
