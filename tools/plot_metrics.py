"""Plot a run's metrics: reward and held-out accuracy, old-policy entropy, clipped-token fractions per step.

    pip install matplotlib
    python tools/plot_metrics.py runs/tiny_gppo_erc      # writes runs/tiny_gppo_erc/metrics.png
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from erc_minimal import read_jsonl  # noqa: E402


def plot_metrics(out):
    """OUT/metrics.png from OUT/metrics.jsonl; returns its path."""
    rows = read_jsonl(os.path.join(out, "metrics.jsonl"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    evals = sorted({k for r in rows for k in r if k.startswith("eval_")})
    panels = (("reward / accuracy", ["reward"] + evals), ("entropy (old policy)", ["entropy"]),
              ("clipped token fraction", ["clip_frac", "erc_clip_frac", "erc_low_frac", "erc_high_frac"]))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]  # a skipped step has no entropy or clip stats
            if points:
                ax.plot(*zip(*points), "o-" if key.startswith("eval_") else "-", label=key, lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "metrics.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isfile(os.path.join(sys.argv[1], "metrics.jsonl")):
        print("usage: python tools/plot_metrics.py OUT, where OUT holds a run's metrics.jsonl", file=sys.stderr)
        sys.exit(2)
    print(plot_metrics(sys.argv[1]))
