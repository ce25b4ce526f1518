"""CSV that a spreadsheet reads as data: rows that stay rows, text cells it will not run.

A CSV cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula (CSV injection: a cost center named
``=HYPERLINK(...)`` becomes a link that leaks the sheet). As OWASP recommends, such a cell is
prefixed with a single quote, which spreadsheets show as text and never evaluate; the value
stays readable. Only free text goes through here: amounts and counts are written by the
gateway itself and stay numbers (a negative amount would otherwise turn into text).

    >>> safe_cell("=1+2")
    "'=1+2"

Rows end in CRLF (RFC 4180): with Python's csv writer that is also what makes a cell holding
a lone carriage return quoted, instead of splitting its row in two.
"""

from __future__ import annotations

import csv
from typing import Any, TextIO

_FORMULA_TRIGGERS = frozenset("=+-@\t\r")


def safe_cell(text: str) -> str:
    if text and text[0] in _FORMULA_TRIGGERS:
        return "'" + text
    return text


def csv_writer(out: TextIO) -> Any:
    """``csv.writer`` for every CSV the gateway produces."""
    return csv.writer(out, lineterminator="\r\n")
