"""Report plots: valid, non-empty, byte-identical PNGs; bad tables rejected with the column named."""

from __future__ import annotations

import struct
import zlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from harness.report.plots import plot_category_bars, plot_selection_heatmap, plot_stability

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _selection_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(12):
        for pos in (-4, -3, -2, -1):
            rows.append({"layer": layer, "pos": pos, "bypass_score": float(rng.normal()), "induce_score": 1.0,
                         "kl": 0.01, "filtered": layer >= 9 or (layer == 3 and pos == -2)})
    table = pd.DataFrame(rows)
    table.loc[5, "bypass_score"] = np.nan  # a zero-norm candidate
    kept = table[~table["filtered"]]
    best = kept["bypass_score"].idxmin()
    table["selected"] = table.index == best
    return table


def _stability_curve() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        {"budget": b, "repeat": r, "cosine": float(min(1.0, 0.7 + 0.03 * b + rng.normal(0, 0.03)))}
        for b in (2, 4, 6, 8)
        for r in range(5)
    ]
    return pd.DataFrame(rows)


def _category_frame() -> pd.DataFrame:
    rows = []
    for i, category in enumerate(["fraud", "hacking", "self-harm", "violence", "weapons"]):
        for condition, rate in (("baseline", 0.1 + 0.02 * i), ("weight_edit", 0.8 - 0.05 * i)):
            rows.append({"category": category, "condition": condition, "n": 20, "k": round(rate * 20),
                         "rate": rate, "ci_low": max(0.0, rate - 0.15), "ci_high": min(1.0, rate + 0.15)})
    return pd.DataFrame(rows)


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == PNG_SIGNATURE
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        offset += 12 + length
    return chunks


CASES = [
    ("selection.png", plot_selection_heatmap, _selection_table, {}),
    ("stability.png", plot_stability, _stability_curve, {"threshold": 0.8}),
    ("stability_nothreshold.png", plot_stability, _stability_curve, {}),
    ("categories.png", plot_category_bars, _category_frame, {"ylabel": "refusal rate"}),
]


@pytest.mark.parametrize(("name", "plot", "make", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_plot_writes_valid_deterministic_png(tmp_path, name, plot, make, kwargs):
    open_before = plt.get_fignums()
    first = plot(make(), tmp_path / "a" / name, **kwargs)
    second = plot(make(), tmp_path / "b" / name, **kwargs)
    assert first == tmp_path / "a" / name and first.is_file()
    data = first.read_bytes()
    assert len(data) > 5000
    chunks = _png_chunks(data)
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    assert b"tIME" not in chunks
    assert b"matplotlib" not in data.lower()  # no Software tag
    assert data == second.read_bytes()
    assert plt.get_fignums() == open_before  # no pyplot figure left behind


def test_heatmap_marks_change_the_image(tmp_path):
    """Filtered hatching and the selected outline are drawn: removing them changes the pixels."""
    table = _selection_table()
    plain = table.assign(filtered=False, selected=False)
    a = plot_selection_heatmap(table, tmp_path / "marked.png").read_bytes()
    b = plot_selection_heatmap(plain, tmp_path / "plain.png").read_bytes()
    assert a != b


def test_threshold_changes_stability_plot(tmp_path):
    curve = _stability_curve()
    a = plot_stability(curve, tmp_path / "a.png", threshold=0.8).read_bytes()
    b = plot_stability(curve, tmp_path / "b.png", threshold=0.9).read_bytes()
    assert a != b


@pytest.mark.parametrize(
    ("plot", "frame", "message"),
    [
        (plot_selection_heatmap, pd.DataFrame({"layer": [0], "pos": [-1], "bypass_score": [0.1], "filtered": [False]}),
         r"lacks columns \['selected'\]"),
        (plot_stability, pd.DataFrame({"budget": [2], "cosine": [0.9]}), r"lacks columns \['repeat'\]"),
        (plot_category_bars, pd.DataFrame(columns=["category", "condition", "rate", "ci_low", "ci_high"]), "empty"),
        (plot_category_bars,
         pd.DataFrame({"category": ["a"], "condition": ["baseline"], "rate": [0.5], "ci_low": [0.6], "ci_high": [0.9]}),
         "rate outside its interval for category 'a'"),
        (plot_selection_heatmap,
         pd.DataFrame({"layer": [0, 1], "pos": [-1, -1], "bypass_score": [0.1, 0.2], "filtered": [False, False],
                       "selected": [True, True]}),
         "more than one row has selected=True"),
    ],
)
def test_plots_reject_bad_tables(tmp_path, plot, frame, message):
    kwargs = {"ylabel": "refusal rate"} if plot is plot_category_bars else {}
    with pytest.raises(ValueError, match=message):
        plot(frame, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_category_bars_put_baseline_first_and_accept_stats_table(tmp_path):
    from harness.stats.proportions import category_table

    long = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(8)] * 2,
            "category": ["a", "a", "b", "b", "c", "c", "d", "d"] * 2,
            "condition": ["weight_edit"] * 8 + ["baseline"] * 8,
            "score": [1, 1, 1, 0, 1, 1, 0, 1] + [0, 0, 0, 1, 0, 0, 0, 0],
        }
    )
    path = plot_category_bars(category_table(long), tmp_path / "cat.png", ylabel="compliance rate")
    assert path.stat().st_size > 5000


def _demo_shaped_sweep() -> pd.DataFrame:
    """30 layers at one position, as the demo sweeps: the shortest selection figure there is."""
    table = pd.DataFrame({"layer": range(30), "pos": -1, "bypass_score": np.linspace(-5.7, 5.0, 30),
                          "filtered": [layer != 22 for layer in range(30)]})
    table["selected"] = table["layer"] == 22
    return table


def _demo_shaped_categories() -> pd.DataFrame:
    """Near-full baseline bars in every category, the last one included, where a default legend sits."""
    rows = []
    for i, category in enumerate(["dangerous_chem_bio", "fraud_scams", "privacy_surveillance", "self_harm"]):
        for condition, rate in (("baseline", 1.0 if i < 3 else 0.95), ("ablation", 0.7), ("weight_edit", 0.7),
                                ("actadd", 0.2), ("inlp", 0.6)):
            rows.append({"category": category, "condition": condition, "rate": rate,
                         "ci_low": max(0.0, rate - 0.2), "ci_high": min(1.0, rate + 0.05)})
    return pd.DataFrame(rows)


def test_demo_shaped_plots_keep_labels_on_the_canvas_and_data_clear_of_the_legend(tmp_path):
    plot_selection_heatmap(_demo_shaped_sweep(), tmp_path / "selection.png")
    plot_category_bars(_demo_shaped_categories(), tmp_path / "categories.png", ylabel="refusal rate")


def test_clipped_text_and_covered_bars_are_detected():
    """The checks _save runs: a colourbar label longer than a short figure, a legend drawn over the bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from harness.report.plots import clipped_texts, legend_overlaps

    fig = Figure(figsize=(6, 2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.arange(30.0).reshape(1, 30), aspect="auto")
    fig.colorbar(image, ax=ax, label="bypass score (lower = refusal removed)")
    assert clipped_texts(fig) == ["bypass score (lower = refusal removed)"]

    fig = Figure(figsize=(6.4, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, name in enumerate(("baseline", "ablation")):
        ax.bar(np.arange(3) + 0.4 * i, [1.0, 1.0, 0.95], 0.4, yerr=[[0.1] * 3, [0.0] * 3], label=name)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right")
    assert legend_overlaps(fig) and not clipped_texts(fig)


def test_many_long_category_names_stay_readable(tmp_path):
    """JailbreakBench's ten categories, names up to 26 characters: slanted labels would run into one another, so
    they stand upright, and the figure saves (the save refuses overlapping labels)."""
    from harness.report.plots import plot_category_bars

    names = ["Disinformation", "Economic harm", "Expert advice", "Fraud/Deception", "Government decision-making",
             "Harassment/Discrimination", "Malware/Hacking", "Physical harm", "Privacy", "Sexual/Adult content"]
    frame = pd.DataFrame([{"category": c, "condition": cond, "rate": 0.5, "ci_low": 0.3, "ci_high": 0.7}
                          for c in names for cond in ("baseline", "ablation", "weight_edit")])
    assert plot_category_bars(frame, tmp_path / "categories.png", ylabel="refusal rate").is_file()
