"""Hypothesis strategies shared by the property and fuzz tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def scalars(*, max_text_size: int) -> st.SearchStrategy[Any]:
    """Any JSON scalar: null, a boolean, an integer (far beyond 64 bits), a finite float, or a
    string of at most ``max_text_size`` characters."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=max_text_size),
    )
