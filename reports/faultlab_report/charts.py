"""The charts every faultlab report draws, in one style: line charts of series with their spread,
called-out points and footnotes, saved as SVG whose text stays text and whose bytes depend only
on the input (fixed hash salt, no date), so a report can be diffed and tested.

Use:
    chart = line_chart([Series("kernel anon4k", x, y, low=..., high=...)], title=..., ...)
    chart = bar_chart(["missing_copy anon4k", ...], [Bars("same_cpu", [v, ...]), ...], ...)
    chart = heatmap([Grid("anon4k", ["cpu 0"], ["mem 0"], [[95.2]], [["95.2 ns"]])], ...)
    chart = range_chart(["anon4k", ...], [Points("p50", [1.49, ...]), Points("max", ...)], ...)
    data = svg_bytes(chart)
"""

import io
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display here; SVG and PNG only

from matplotlib.colors import Normalize  # noqa: E402 (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

# matplotlib settings every chart is drawn and saved with.
STYLE = {
    # Text stays <text> in the SVG: searchable, and the tests read legend labels from it.
    "svg.fonttype": "none",
    # Element ids are hashed with this salt; a fixed salt gives byte-identical SVG.
    "svg.hashsalt": "faultlab",
    # DejaVu Sans ships with matplotlib's Debian package (fonts-dejavu-core).
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "axes.grid.which": "both",
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
}

# Footnotes are wrapped to this many characters a line (fits the default chart width).
NOTE_WIDTH = 150


@dataclass
class Series:
    """One line: points (x, y), optionally the spread at each point as its low and high ends."""
    label: str
    x: Sequence[float]
    y: Sequence[float]
    low: Optional[Sequence[float]] = None
    high: Optional[Sequence[float]] = None
    color: Optional[str] = None
    dashed: bool = False
    markers: bool = True


@dataclass
class Bars:
    """One bar per category of a bar chart (None where the series has no value there), with the
    spread at each as its low and high ends."""
    label: str
    values: Sequence[Optional[float]]
    low: Optional[Sequence[Optional[float]]] = None
    high: Optional[Sequence[Optional[float]]] = None
    color: Optional[str] = None
    hatched: bool = False


@dataclass
class Points:
    """One point per category of a range chart (None where the series has no value there), with
    the spread at each as its low and high ends; marker: a matplotlib marker, or the next of
    RANGE_MARKERS."""
    label: str
    values: Sequence[Optional[float]]
    low: Optional[Sequence[Optional[float]]] = None
    high: Optional[Sequence[Optional[float]]] = None
    color: Optional[str] = None
    marker: Optional[str] = None


# The markers of a range chart's series, in order: shapes tell them apart where they overlap.
RANGE_MARKERS = "os^Dvph*"


@dataclass
class Grid:
    """One panel of a heatmap: values[row][column] coloured and annotated with texts[row][column].
    A cell whose value is None is left grey and annotated with its text (why it has no value) in
    grey, if any. cell_ids, if given, name each valued cell's annotation in the SVG (its <g id>),
    so that a test can find them; the unvalued cells' annotations are named "missing-" + id."""
    title: str
    rows: Sequence[str]
    columns: Sequence[str]
    values: Sequence[Sequence[Optional[float]]]
    texts: Sequence[Sequence[Optional[str]]]
    cell_ids: Optional[Sequence[Sequence[str]]] = None


@dataclass
class Mark:
    """A point to call out, with a short text beside it."""
    x: float
    y: float
    text: str


@contextmanager
def style():
    with matplotlib.rc_context(STYLE):
        yield


def plain_number(value, _position=None):
    """Tick labels as plain numbers (0.5, 10, 256), not powers of ten."""
    return f"{value:g}"


def plain_ticks(axis):
    """A log axis labelled in plain numbers at its decades, without minor labels."""
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())


def finish_rows(axes, categories, *, title, value_label, log, legend, notes):
    """What every chart of rows (one category a row, the first on top) ends with: the row
    labels, the value axis (log: plain ticks), the title, the legend beside, the notes below."""
    axes.set_yticks(range(len(categories)))
    axes.set_yticklabels(categories)
    axes.set_ylim(len(categories) - 0.5, -0.5)  # first category on top
    axes.grid(axis="y", visible=False)
    if log:
        axes.set_xscale("log")
        plain_ticks(axes.xaxis)
    axes.set_title(title)
    axes.set_xlabel(value_label)
    if legend:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    add_notes(axes, notes)


def line_chart(series, *, title, x_label, y_label, log_x=False, symlog_x=False, log_y=False,
               x_ticks=None, y_min=None, marks=(), notes=(), size=(10, 5.5)):
    """A figure with one line per series (spread drawn as error bars), a legend right of the
    axes, called-out marks, and footnotes below the axes. symlog_x: linear from 0 to 1, log
    beyond (counts that start at zero)."""
    with style():
        figure = Figure(figsize=size)
        axes = figure.add_subplot()
        for line in series:
            spread = None
            if line.low is not None and line.high is not None:
                spread = [[y - low for y, low in zip(line.y, line.low)],
                          [high - y for y, high in zip(line.y, line.high)]]
            axes.errorbar(line.x, line.y, yerr=spread, label=line.label, color=line.color,
                          linestyle="--" if line.dashed else "-",
                          marker="o" if line.markers else None, capsize=2, elinewidth=0.8)
        for mark in marks:
            axes.plot([mark.x], [mark.y], marker="X", markersize=8, color="black",
                      linestyle="none")
            axes.annotate(mark.text, (mark.x, mark.y), xytext=(8, 8), textcoords="offset points",
                          fontsize=8)
        if log_x:
            axes.set_xscale("log")
        if symlog_x:
            axes.set_xscale("symlog", linthresh=1, linscale=0.5)
        if log_y:
            axes.set_yscale("log")
        for axis, is_log in ((axes.xaxis, log_x), (axes.yaxis, log_y)):
            if is_log:
                plain_ticks(axis)
        if x_ticks:
            axes.set_xticks(list(x_ticks))
            axes.xaxis.set_major_formatter(FuncFormatter(plain_number))
        if y_min is not None:
            axes.set_ylim(bottom=y_min)
        axes.set_title(title)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        if series:
            axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        add_notes(axes, notes)
        return figure


def bar_chart(categories, bars, *, title, value_label, log=False, notes=(), size=None):
    """Horizontal grouped bars, the first category on top: in each category one bar per series
    that has a value there (spread as error bars). log: a log value axis, for figures that span
    decades (the model's nanoseconds beside the kernel's microseconds)."""
    count = max(1, len(bars))
    height = 0.8 / count
    with style():
        figure = Figure(figsize=size or (10, 1.0 + 0.22 * len(categories) * count))
        axes = figure.add_subplot()
        for index, series in enumerate(bars):
            rows = [(row, value) for row, value in enumerate(series.values) if value is not None]
            if not rows:
                continue
            positions = [row + (index - (count - 1) / 2) * height for row, _ in rows]
            values = [value for _, value in rows]
            spread = None
            if series.low is not None and series.high is not None:
                # Never negative: a mean of equal repetitions can round an ulp past them.
                spread = [[max(0.0, value - series.low[row]) for row, value in rows],
                          [max(0.0, series.high[row] - value) for row, value in rows]]
            axes.barh(positions, values, height=height * 0.9, xerr=spread, label=series.label,
                      color=series.color, hatch="//" if series.hatched else None,
                      error_kw={"elinewidth": 0.8, "capsize": 2})
        finish_rows(axes, categories, title=title, value_label=value_label, log=log,
                    legend=bool(bars), notes=notes)
        return figure


def range_chart(categories, points, *, title, value_label, log=False, notes=(), size=None):
    """Per category (the first on top) a row: one point per series that has a value there
    (spread as error bars), on a grey line from the row's smallest point to its largest, so that
    a distribution's percentiles read as one stretch. log: a log value axis."""
    with style():
        figure = Figure(figsize=size or (10, 1.4 + 0.35 * len(categories)))
        axes = figure.add_subplot()
        for row in range(len(categories)):
            values = [series.values[row] for series in points if series.values[row] is not None]
            if len(values) > 1:
                axes.plot([min(values), max(values)], [row, row], color="#bbbbbb",
                          linewidth=1.0, zorder=1)
        for index, series in enumerate(points):
            rows = [(row, value) for row, value in enumerate(series.values) if value is not None]
            if not rows:
                continue
            spread = None
            if series.low is not None and series.high is not None:
                # Never negative: a mean of equal repetitions can round an ulp past them.
                spread = [[max(0.0, value - series.low[row]) for row, value in rows],
                          [max(0.0, series.high[row] - value) for row, value in rows]]
            axes.errorbar([value for _, value in rows], [row for row, _ in rows], xerr=spread,
                          label=series.label, color=series.color, linestyle="none",
                          marker=series.marker or RANGE_MARKERS[index % len(RANGE_MARKERS)],
                          markersize=6, capsize=2, elinewidth=0.8, zorder=2)
        finish_rows(axes, categories, title=title, value_label=value_label, log=log,
                    legend=bool(points), notes=notes)
        return figure


def heatmap(grids, *, title, row_label, column_label, value_label, colormap="viridis",
            reverse=False, notes=()):
    """Panels side by side, one per grid, on one colour scale (one colour bar) so that the panels
    compare; every cell annotated. reverse: the colour map reversed (for figures where lower is
    better, so that the better cells are the same colour in every chart)."""
    values = [value for grid in grids for row in grid.values for value in row if value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if low == high:
        low, high = low * 0.9 if low else -1.0, high * 1.1 if high else 1.0
    columns = max((len(grid.columns) for grid in grids), default=1)
    rows = max((len(grid.rows) for grid in grids), default=1)
    width = max(7.0, len(grids) * (1.2 + 1.0 * columns) + 1.6)
    height = 2.2 + 0.5 * rows
    with style():
        figure = Figure(figsize=(width, height))
        # Room above the panels' titles for the chart's title, between panels for their labels.
        figure.subplots_adjust(top=1 - 0.85 / height, wspace=0.3)
        cmap = matplotlib.colormaps[colormap + ("_r" if reverse else "")].copy()
        cmap.set_bad("#eeeeee")
        norm = Normalize(low, high)
        axes_list = figure.subplots(1, max(1, len(grids)), squeeze=False)[0]
        image = None
        for axes, grid in zip(axes_list, grids):
            data = [[float("nan") if value is None else value for value in row]
                    for row in grid.values]
            image = axes.imshow(data, cmap=cmap, norm=norm, aspect="auto")
            axes.grid(False)
            axes.set_xticks(range(len(grid.columns)))
            axes.set_xticklabels(grid.columns)
            axes.set_yticks(range(len(grid.rows)))
            axes.set_yticklabels(grid.rows)
            axes.set_xlabel(column_label)
            if axes is axes_list[0]:
                axes.set_ylabel(row_label)
            axes.set_title(grid.title)
            for r, row in enumerate(grid.values):
                for c, value in enumerate(row):
                    text = grid.texts[r][c]
                    if not text:
                        continue
                    cell_id = grid.cell_ids[r][c] if grid.cell_ids else None
                    if value is None:
                        color, cell_id = "#777777", cell_id and f"missing-{cell_id}"
                    else:
                        red, green, blue, _ = cmap(norm(value))
                        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                        color = "white" if dark else "black"
                    annotation = axes.text(c, r, text, ha="center", va="center", color=color,
                                           fontsize=8)
                    annotation.set_gid(cell_id)
        if image is not None:
            figure.colorbar(image, ax=list(axes_list), label=value_label, fraction=0.04,
                            pad=0.03)
        figure.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
        add_notes(axes_list[0], notes)
        return figure


def add_notes(axes, notes):
    """Footnotes below the axes, wrapped."""
    if not notes:
        return
    wrapped = [textwrap.fill(note, NOTE_WIDTH, subsequent_indent="  ", break_on_hyphens=False,
                             break_long_words=False)
               for note in notes]
    # Below the x axis label, in points from the axes' bottom left corner.
    axes.annotate("\n".join(wrapped), xy=(0, 0), xycoords="axes fraction", xytext=(-40, -40),
                  textcoords="offset points", va="top", ha="left", fontsize=7.5, color="#333333")


def svg_bytes(figure):
    """The figure as SVG; the same figure gives the same bytes (no date, fixed hash salt)."""
    buffer = io.BytesIO()
    with style():
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()
