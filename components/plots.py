"""The report's pictures as PNG bytes (matplotlib, Agg: no display needed, same on CI and a Mac).

Each function takes plain data and returns one PNG; the report decides what to draw from what a
run left behind.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

# One palette for every picture: base vs tuned and train vs validation read the same everywhere.
BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"


def _figure(width: float = 7.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    # Figure without pyplot: no global state, safe in threads and in a long-lived process.
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_curves(series: Mapping[str, Sequence[tuple[int, float]]]) -> bytes:
    """Lines by step, one per series (``{"train": [(step, loss), ...], "validation": ...}``)."""
    fig, ax = _figure()
    colors = iter([BLUE, ORANGE, GREEN, RED, GREY])
    for name, points in series.items():
        pts = sorted(points)
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", markersize=3,
                label=name, color=next(colors, None))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss by step")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def hbars(values: Mapping[str, float], title: str, xlabel: str, color: str = BLUE,
          limit: float | None = None) -> bytes:
    """One horizontal bar per label, value printed at its end."""
    labels = list(values)
    fig, ax = _figure(height=max(1.8, 0.35 * len(labels) + 1.0))
    ax.barh(labels, [values[k] for k in labels], color=color)
    ax.invert_yaxis()
    for i, k in enumerate(labels):
        ax.annotate(f"{values[k]:.3g}", (values[k], i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    if limit is not None:
        ax.set_xlim(0, limit)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
                 ylabel: str, limit: float | None = None) -> bytes:
    """Bars side by side per group (``series`` name -> one value per group)."""
    fig, ax = _figure(width=max(6.0, 0.9 * len(groups) + 3))
    n = max(1, len(series))
    width = 0.8 / n
    colors = iter([BLUE, ORANGE, GREEN, RED, GREY])
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, vals, width=width, label=name, color=next(colors, None))
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 4 else 0, ha="right"
                  if len(groups) > 4 else "center", fontsize=8)
    if limit is not None:
        ax.set_ylim(0, limit)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _png(fig)


def base_vs_tuned(panels: Mapping[str, Mapping[str, tuple]], title: str = "Base vs tuned") -> bytes:
    """One panel per scale, base and tuned side by side per measure. ``panels``: scale ->
    measure -> ``(base, tuned)`` or ``(base, tuned, (lo, hi), (lo, hi))`` with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    widest = max((len(v) for v in panels.values()), default=1)
    fig = Figure(figsize=(max(6.0, 1.6 * widest + 2) , 3.4 * len(panels)), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (scale, measures) in zip(axes, panels.items()):
        names = list(measures)
        for i, (label, color) in enumerate((("base", BLUE), ("tuned", ORANGE))):
            xs = [g + (i - 0.5) * 0.38 for g in range(len(names))]
            vals = [measures[n][i] for n in names]
            errs = None
            if all(len(measures[n]) == 4 for n in names):
                lo = [v - measures[n][2 + i][0] for n, v in zip(names, vals)]
                hi = [measures[n][2 + i][1] - v for n, v in zip(names, vals)]
                errs = [lo, hi]
            ax.bar(xs, vals, width=0.38, label=label, color=color, yerr=errs, capsize=4)
            for x, v in zip(xs, vals):
                ax.annotate(f"{v:.3g}", (x, v), xytext=(0, 2), textcoords="offset points", ha="center",
                            fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        if scale == "accuracy":
            ax.set_ylim(0, 1.05)
        ax.set_ylabel(scale)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(title)
    return _png(fig)


def stacked_bars(groups: Sequence[str], parts: Mapping[str, Sequence[float]], title: str,
                 ylabel: str) -> bytes:
    """One bar per group, split into ``parts`` (name -> one value per group)."""
    fig, ax = _figure()
    bottom = [0.0] * len(groups)
    colors = iter([BLUE, ORANGE, GREEN, RED, GREY])
    for name, vals in parts.items():
        ax.bar(groups, vals, bottom=bottom, label=name, color=next(colors, None))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _png(fig)
