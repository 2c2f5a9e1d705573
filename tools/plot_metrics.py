"""Plot a run's metrics: reward and held-out accuracy, old-policy entropy, clipped-token fractions per step.

    pip install matplotlib
    python tools/plot_metrics.py runs/tiny_gppo_erc              # writes runs/tiny_gppo_erc/metrics.png
    python tools/plot_metrics.py runs/my_fork erc_scale          # and a panel of the fields named after OUT

Every numeric field the figure leaves out is named in one line, so a fork's own statistic is never dropped unsaid.
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from erc_minimal import read_jsonl  # noqa: E402


PANELS = (("reward / accuracy", ["reward"]), ("entropy (old policy)", ["entropy"]),
          ("clipped token fraction", ["clip_frac", "erc_clip_frac", "erc_low_frac", "erc_high_frac"]))


def plot_metrics(out, fields=()):
    """OUT/metrics.png from OUT/metrics.jsonl, with the named `fields` (a fork's own, say) in a fourth panel;
    returns its path. Prints one line naming the numeric fields the figure leaves out."""
    rows = read_jsonl(os.path.join(out, "metrics.jsonl"))
    evals = sorted({k for r in rows for k in r if k.startswith("eval_")})
    panels = [(PANELS[0][0], PANELS[0][1] + evals), *PANELS[1:]] + ([("other fields", list(fields))] * bool(fields))
    drawn = {key for _, keys in panels for key in keys} | {"step"}
    left_out = [k for k in dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, (int, float)))
                if k not in drawn]
    if left_out:
        print(f"not drawn (name them after OUT to draw them): {', '.join(left_out)}")
    unknown = [f for f in fields if not any(f in r for r in rows)]
    if unknown:  # a misspelt field would otherwise draw an empty panel
        print(f"not in {out}/metrics.jsonl: {', '.join(unknown)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4))
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
    if len(sys.argv) < 2 or not os.path.isfile(os.path.join(sys.argv[1], "metrics.jsonl")):
        print("usage: python tools/plot_metrics.py OUT [FIELD ...], where OUT holds a run's metrics.jsonl",
              file=sys.stderr)
        sys.exit(2)
    print(plot_metrics(sys.argv[1], sys.argv[2:]))
