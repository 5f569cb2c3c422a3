"""PNG plots for materialization metadata, embedded in markdown as base64 data URIs.

The Dagster UI (1.13) shows a markdown value of 1,000 characters or more as a
"[Show Markdown]" link in the asset's metadata table, and the dialog that link
opens renders the image. Figures are drawn with matplotlib's Agg canvas, with
no pyplot state, so concurrent runs in one process cannot draw into each
other's figures. Every figure is 800x400 pixels (8x4 inches at 100 dpi) to
keep each materialization event small.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping

import dagster as dg
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

FIGURE_INCHES = (8.0, 4.0)
DPI = 100
# Net equity series in equity.csv, in drawing order, with their legend names and styles.
EQUITY_SERIES = {
    "model": ("model", {"color": "#1f5fbf", "linewidth": 1.6}),
    "buy_and_hold": ("buy and hold", {"color": "#7f7f7f", "linewidth": 1.2}),
    "head_only": ("head only (no encoder)", {"color": "#d9822b", "linewidth": 1.0, "linestyle": "--"}),
}


def new_figure() -> Figure:
    """Return an empty 800x400 figure on its own Agg canvas."""
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def figure_to_png(figure: Figure) -> bytes:
    """Render ``figure`` to PNG bytes, without matplotlib's Software stamp."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    """Return a markdown metadata value that shows ``png`` as an image with ``alt`` text."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"cannot embed {alt!r}: the bytes are not a PNG image")
    encoded = base64.b64encode(png).decode("ascii")
    # Brackets in the alt text would end the markdown image early.
    label = alt.replace("[", "(").replace("]", ")")
    return dg.MetadataValue.md(f"![{label}](data:image/png;base64,{encoded})")


def read_equity_csv(data: bytes) -> pd.DataFrame:
    """Parse a model folder's ``equity.csv`` into net equity columns indexed by UTC time."""
    frame = pd.read_csv(io.BytesIO(data), index_col="date")
    frame.index = pd.to_datetime(frame.index, utc=True)
    missing = [name for name in ("model", "buy_and_hold") if name not in frame.columns]
    if missing:
        raise ValueError(
            f"equity.csv has no column {', '.join(missing)} (found: {list(frame.columns)}); "
            "it must come from a model folder written by the coin stage"
        )
    return frame


def _final_return(series: pd.Series) -> float | None:
    values = series.dropna()
    if values.empty:
        return None
    return float(values.iloc[-1]) - 1.0


def equity_plot(equity: pd.DataFrame, title: str, model_label: str = "model") -> bytes:
    """Draw the net equity of the model against buy-and-hold (and the head-only model) over time.

    ``equity`` contains equity multiples that start near 1.0, as in ``equity.csv``.
    Each legend entry ends with the series' total return over the window.
    """
    if equity.empty:
        raise ValueError(f"cannot plot {title!r}: the equity frame has no rows")
    figure = new_figure()
    axes = figure.subplots()
    for column, (label, style) in EQUITY_SERIES.items():
        if column not in equity.columns:
            continue
        series = equity[column].astype(float)
        name = model_label if column == "model" else label
        final = _final_return(series)
        suffix = f", {final:+.1%}" if final is not None else ""
        axes.plot(equity.index, series, label=f"{name}{suffix}", **style)
    axes.axhline(1.0, color="#bbbbbb", linewidth=0.8, zorder=0)
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_ylabel("equity after costs (start = 1)")
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=9)
    figure.tight_layout()
    return figure_to_png(figure)


def loss_plot(history: Iterable[Mapping], title: str = "shared encoder: loss by epoch") -> bytes:
    """Draw training and validation loss by epoch from the encoder's history records."""
    records = [record for record in history if record.get("epoch") is not None]
    if not records:
        raise ValueError(f"cannot plot {title!r}: the history has no epochs")
    epochs = [int(record["epoch"]) for record in records]
    figure = new_figure()
    axes = figure.subplots()
    for key, label, color in (("train_loss", "training", "#1f5fbf"), ("val_loss", "validation", "#d9822b")):
        values = [float(record[key]) if record.get(key) is not None else math.nan for record in records]
        axes.plot(epochs, values, marker="o", label=label, color=color)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=9)
    figure.tight_layout()
    return figure_to_png(figure)


def returns_plot(rows: Iterable[Mapping], title: str = "holdout return after costs by coin") -> bytes | None:
    """Draw each coin's net holdout return beside buy-and-hold as paired bars.

    ``rows`` are summary rows with ``symbol``, ``total_return_net`` and
    ``buy_and_hold_return``. Returns None when no row has a return to draw.
    """
    points = [
        (row["symbol"], row.get("total_return_net"), row.get("buy_and_hold_return"))
        for row in rows
        if row.get("total_return_net") is not None
    ]
    if not points:
        return None
    symbols = [symbol for symbol, _, _ in points]
    positions = list(range(len(points)))
    width = 0.4
    figure = new_figure()
    axes = figure.subplots()
    axes.bar([p - width / 2 for p in positions], [model for _, model, _ in points], width, label="model", color="#1f5fbf")
    hold = [value if value is not None else math.nan for _, _, value in points]
    axes.bar([p + width / 2 for p in positions], hold, width, label="buy and hold", color="#7f7f7f")
    axes.axhline(0.0, color="#444444", linewidth=0.8)
    axes.set_xticks(positions)
    axes.set_xticklabels(symbols, rotation=60 if len(symbols) > 8 else 0, fontsize=8, ha="right" if len(symbols) > 8 else "center")
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_title(title, fontsize=11)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="best", fontsize=9)
    figure.tight_layout()
    return figure_to_png(figure)
