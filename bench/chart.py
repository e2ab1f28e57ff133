"""chart.png of a benchmark run: one panel per workload, one bar per target.

Bars are throughput in MiB/s; the label on each bar is its ratio to
qemu-storage-daemon.  Rendered with matplotlib's Agg backend (no display);
matplotlib is the ``bench`` extra (``pip install -e '.[bench]'``).

Usage: ``python -m bench.chart RESULTS.json [OUT.png]`` redraws a chart.
"""

from __future__ import annotations

import json
import os
import sys

from .workloads import ALL_WORKLOADS

COLORS = {
    "raw": "#7f7f7f",
    "vvfs-linear": "#1f77b4",
    "vvfs-mirror": "#6baed6",
    "vvfs-mirror-nv": "#c6dbef",
    "vvfs-stripe": "#08519c",
    "vvfs-linear-python": "#9467bd",
    "qsd": "#ff7f0e",
    "nbdfuse": "#2ca02c",
}


def available() -> str | None:
    """None when matplotlib can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    return None


def render(doc: dict, path: str) -> str:
    """Draw the chart of results document *doc* to *path*; return *path*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t["name"] for t in doc["targets"] if not t["skipped"]]
    # a target whose data check failed is labelled so in every panel
    label = {t["name"]: t["name"] + ("\n(data check FAILED)"
                                     if (t.get("data_check") or "").startswith("FAILED") else "")
             for t in doc["targets"]}
    rows = {(r["target"], r["workload"]): r for r in doc["results"] if not r["error"]}
    workloads = [wl for wl in ALL_WORKLOADS if any((t, wl.name) in rows for t in targets)]
    cols = 4
    nrows = max((len(workloads) + cols - 1) // cols, 1)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(workloads):]:
        ax.axis("off")
    for ax, wl in zip(axes.flat, workloads):
        names = [t for t in targets if (t, wl.name) in rows]
        values = [rows[(t, wl.name)]["mib_s"] for t in names]
        bars = ax.barh([label[t] for t in names], values,
                       color=[COLORS.get(t, "#999999") for t in names])
        ax.invert_yaxis()
        ax.set_title(wl.title, fontsize=9)
        ax.set_xlabel("MiB/s", fontsize=8)
        ax.tick_params(labelsize=8)
        for bar, t in zip(bars, names):
            ratio = (rows[(t, wl.name)].get("ratio") or {}).get("qsd", {}).get("throughput")
            if ratio is not None:
                ax.annotate(f"{ratio:.2f}× qsd", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xlim(0, max(values, default=1) * 1.35)
    meta = doc["meta"]
    fig.suptitle(f"vvfs vs peers — {meta['mode']} run {meta['started']} "
                 f"(direct I/O; bars MiB/s, labels ratio to qemu-storage-daemon)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m bench.chart RESULTS.json [OUT.png]")
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(os.path.dirname(sys.argv[1]),
                                                               "chart.png")
    print(render(doc, out))


if __name__ == "__main__":
    main()
