"""Reading matplotlib figures in tests: the figures a module encodes, the texts it draws."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox


def capture_figures(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[Figure]:
    """Every figure ``module`` encodes (its ``encode_figure``), in order, still encoded."""
    figures: list[Figure] = []
    encode = module.encode_figure

    def capture(fig: Figure, fmt: Any) -> bytes:
        figures.append(fig)
        return encode(fig, fmt)  # type: ignore[no-any-return]

    monkeypatch.setattr(module, "encode_figure", capture)
    return figures


def texts(fig: Figure) -> Iterator[Text]:
    """The texts drawn on ``fig`` (tick labels outside the view are kept but not drawn)."""
    fig.canvas.draw()  # lays out the figure: tick labels exist, positions are final
    hidden: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - span <= tick.get_loc() <= high + span:
                    hidden.update((id(tick.label1), id(tick.label2)))
    for text in fig.findobj(Text):
        assert isinstance(text, Text)
        if text.get_visible() and text.get_text() and id(text) not in hidden:
            yield text


def box(artist: Any, fig: Figure) -> Bbox:
    """``artist``'s extent on the laid-out figure, in display units."""
    return artist.get_window_extent(fig.canvas.get_renderer())  # type: ignore[no-any-return]
