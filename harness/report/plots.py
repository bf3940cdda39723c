"""Report figures: selection heat-map, stability curve, per-category refusal bars.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot, so no
global figure state survives a call. Size and dpi are fixed (or derived from the data alone) and the
PNG carries no Software tag, so the same table gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

DPI = 120
_PNG_METADATA = {"Software": None}


def _require(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: table lacks columns {missing}; has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{where}: table is empty")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def axis_labels(fig: Figure) -> list[dict[str, str]]:
    """Title and axis labels of each axes: what a reader is told the figure shows."""
    return [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()} for ax in fig.axes]


def clipped_texts(fig: Figure) -> list[str]:
    """Every drawn text (labels, titles, tick labels, legend entries) that reaches outside the figure's canvas,
    where the saved PNG cuts it off, and tick labels that run into one another."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    frame = fig.bbox.padded(1.0)  # a pixel of anti-aliasing slack
    tick_labels, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                labels = (tick.label1, tick.label2)
                tick_labels.update(map(id, labels))
                if lo - slack <= tick.get_loc() <= hi + slack:
                    drawn += labels  # a tick outside the view keeps its label object but draws nothing
    out = _overlapping(drawn, renderer)
    for text in [t for t in fig.findobj(Text) if id(t) not in tick_labels] + drawn:
        if not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.width and not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)):
            out.append(text.get_text())
    return out


def _overlapping(labels: list[Text], renderer) -> list[str]:
    """Tick labels that run into one another (unreadable where they meet)."""
    shown = [t for t in labels if t.get_visible() and t.get_text().strip()]
    boxes = [t.get_window_extent(renderer) for t in shown]
    return [f"{a.get_text()} overlaps {b.get_text()}" for i, (a, ba) in enumerate(zip(shown, boxes))
            for b, bb in zip(shown[i + 1 :], boxes[i + 1 :]) if ba.overlaps(bb)]


def legend_overlaps(fig: Figure) -> list[str]:
    """Labels of the data a legend covers inside its axes: bars (their own label or container's) and error-bar
    segments."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for container in ax.containers:
            for bar in getattr(container, "patches", []):
                extent = bar.get_window_extent(renderer)
                if bar.get_height() and np.isfinite(bar.get_height()) and box.overlaps(extent):
                    out.append(f"bar {container.get_label()}")
        for col in ax.collections:
            if not isinstance(col, LineCollection):
                continue
            for seg in col.get_segments():
                if len(seg) and np.isfinite(seg).all() and box.overlaps(Bbox(ax.transData.transform(seg))):
                    out.append("error bar")
    return out


def _save(fig: Figure, path: str | Path) -> Path:
    """PNG with the axis labels in its Description text chunk, so a test can read what the plot claims to show.
    A text cut off by the canvas or a legend over the data is an error, not a figure to ship."""
    path = Path(path)
    clipped, covered = clipped_texts(fig), legend_overlaps(fig)
    if clipped or covered:
        raise ValueError(f"{path.name}: text cut off by the figure's edge or overlapping {clipped}; "
                         f"data under the legend {covered}")
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = json.dumps(axis_labels(fig), sort_keys=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={**_PNG_METADATA, "Description": labels})
    fig.clear()
    return path


def plot_selection_heatmap(table: pd.DataFrame, path: str | Path) -> Path:
    """Layer x position heat-map of the bypass score; filtered candidates hatched, the selected one outlined.

    `table`: one row per candidate with layer, pos, bypass_score, filtered (bool), selected (bool);
    a NaN score (e.g. a zero-norm candidate) is drawn grey.
    """
    where = "plot_selection_heatmap"
    _require(table, ["layer", "pos", "bypass_score", "filtered", "selected"], where)
    if table.duplicated(["layer", "pos"]).any():
        dup = table.loc[table.duplicated(["layer", "pos"]), ["layer", "pos"]].iloc[0].tolist()
        raise ValueError(f"{where}: (layer, pos) {dup} appears more than once")
    if int(table["selected"].astype(bool).sum()) > 1:
        raise ValueError(f"{where}: more than one row has selected=True")
    layers = sorted(int(x) for x in table["layer"].unique())
    positions = sorted(int(x) for x in table["pos"].unique())
    col = {layer: i for i, layer in enumerate(layers)}
    row = {pos: i for i, pos in enumerate(positions)}
    grid = np.full((len(positions), len(layers)), np.nan)  # [pos, layer]
    for r in table.itertuples(index=False):
        grid[row[int(r.pos)], col[int(r.layer)]] = float(r.bypass_score)

    fig = _new_figure(min(18.0, max(6.0, 2.5 + 0.22 * len(layers))), min(8.0, 3.2 + 0.45 * len(positions)))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="bypass score\n(lower = refusal removed)")
    for r in table.itertuples(index=False):
        x, y = col[int(r.layer)] - 0.5, row[int(r.pos)] - 0.5
        if bool(r.filtered):
            ax.add_patch(Rectangle((x, y), 1, 1, fill=False, hatch="///", edgecolor="white", linewidth=0))
        if bool(r.selected):
            ax.add_patch(Rectangle((x, y), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    step = max(1, len(layers) // 20)
    ax.set_xticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]])
    ax.set_yticks(range(len(positions)), [str(p) for p in positions])
    ax.set_xlabel("layer")
    ax.set_ylabel("post-instruction position")
    ax.set_title("Direction selection: bypass score per candidate")
    ax.legend(
        handles=[
            Patch(facecolor="grey", hatch="///", edgecolor="white", label="filtered"),
            Patch(fill=False, edgecolor="red", linewidth=2.5, label="selected"),
        ],
        loc="upper left",
        bbox_to_anchor=(0, -0.18),
        ncols=2,
        frameon=False,
    )
    return _save(fig, path)


def plot_stability(curve: pd.DataFrame, path: str | Path, threshold: float | None = None) -> Path:
    """Cosine to the reference direction against fit budget: one point per repeat, the mean as a line.

    `curve`: columns budget, repeat, cosine; `threshold` (the claim's bound) is drawn dashed.
    """
    _require(curve, ["budget", "repeat", "cosine"], "plot_stability")
    data = curve.sort_values(["budget", "repeat"], kind="stable")
    budgets = sorted(data["budget"].unique())
    repeats = sorted(data["repeat"].unique())
    gaps = np.diff(budgets)
    jitter = 0.15 * (float(gaps.min()) if len(gaps) else 1.0) / max(1, len(repeats) - 1)
    offset = {rep: (i - (len(repeats) - 1) / 2) * jitter for i, rep in enumerate(repeats)}

    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.scatter(
        data["budget"].astype(float) + data["repeat"].map(offset).astype(float),
        data["cosine"].astype(float),
        s=18,
        color="tab:blue",
        alpha=0.5,
        label=f"draws (n={len(repeats)})",
    )
    means = data.groupby("budget", sort=True)["cosine"].mean()
    ax.plot(means.index.astype(float), means.to_numpy(float), "-o", color="tab:orange", label="mean")
    if threshold is not None:
        ax.axhline(float(threshold), linestyle="--", color="tab:red", label=f"threshold {float(threshold):g}")
    ax.set_xticks([float(b) for b in budgets], [str(b) for b in budgets])
    ax.set_xlabel("fit budget (policy areas)")
    ax.set_ylabel("cosine to held-out direction")
    ax.set_title("Direction stability")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _condition_order(conditions: list[str]) -> list[str]:
    """Baseline first, the rest in order of appearance."""
    return sorted(conditions, key=lambda c: (c != "baseline", conditions.index(c)))


def plot_category_bars(frame: pd.DataFrame, path: str | Path, *, ylabel: str) -> Path:
    """Grouped bars per category, one bar per condition (baseline first), with CI error bars.

    `frame`: columns category, condition, rate, ci_low, ci_high (as `harness.stats.proportions.category_table`).
    """
    where = "plot_category_bars"
    _require(frame, ["category", "condition", "rate", "ci_low", "ci_high"], where)
    bad = frame[(frame["ci_low"] > frame["rate"] + 1e-12) | (frame["rate"] > frame["ci_high"] + 1e-12)]
    if not bad.empty:
        r = bad.iloc[0]
        raise ValueError(
            f"{where}: rate outside its interval for category {r['category']!r}, condition {r['condition']!r}: "
            f"{r['ci_low']} <= {r['rate']} <= {r['ci_high']} fails"
        )
    if frame.duplicated(["category", "condition"]).any():
        r = frame[frame.duplicated(["category", "condition"])].iloc[0]
        raise ValueError(f"{where}: category {r['category']!r}, condition {r['condition']!r} appears more than once")
    categories = sorted(str(c) for c in frame["category"].unique())
    conditions = _condition_order(list(dict.fromkeys(str(c) for c in frame["condition"])))
    width = 0.8 / len(conditions)

    # Room for the legend right of the axes (it never covers a bar there).
    fig = _new_figure(min(22.0, max(6.4, 1.5 + 0.45 * len(categories) * len(conditions) ** 0.5) + 1.8), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(categories))
    for i, condition in enumerate(conditions):
        sub = frame[frame["condition"].astype(str) == condition]
        sub = sub.set_index(sub["category"].astype(str)).reindex(categories)
        rate = sub["rate"].to_numpy(float)
        err = np.vstack([rate - sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float) - rate])
        ax.bar(
            x + (i - (len(conditions) - 1) / 2) * width,
            rate,  # a category missing for this condition stays NaN: no bar, not a zero bar
            width,
            yerr=np.nan_to_num(err),
            capsize=2,
            label=condition,
            color=f"C{i}",
        )
    slanted = len(categories) > 6 or max(len(c) for c in categories) > 12
    ax.set_xticks(x, categories, rotation=30 if slanted else 0, ha="right" if slanted else "center",
                  rotation_mode="anchor" if slanted else "default")
    if slanted and _overlapping(ax.get_xticklabels(), fig.canvas.get_renderer()):
        # Many long names: upright labels take one line-height each, so they never run into one another.
        ax.set_xticks(x, categories, rotation=90, ha="center", rotation_mode="default")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title("Harmful prompts by category")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="condition")
    return _save(fig, path)
