"""Compare runs of erc_minimal.py: arms by their config.json, seeds pooled, mean ± std per arm.

    python tools/compare.py runs/a_seed0 runs/a_seed1 runs/b_seed0 runs/b_seed1
    python tools/compare.py runs/* --figure runs/compare.png
    python tools/compare.py base=runs/a_seed0,runs/a_seed1 mine=runs/b_seed0,runs/b_seed1

Runs whose config.json differ only in --seed (and --out) form one arm, named by the fields that differ between
arms; or name the arms yourself, NAME=RUN,RUN,... (for runs whose configs are equal, as when a fork patched a
function). A row for every numeric field of metrics.jsonl that any run has (a fork's own statistics included):
its mean over the steps that logged it, except held-out metrics (eval_*: at the last evaluation) and
grad_norm_max (the largest); and for the entropy also its first and last value and the standard deviation of its
step-to-step changes. A field an arm's runs lack reads "missing". With two arms, each row says whether the
difference of the means exceeds the larger of the two standard deviations; with a single run in an arm there is
no spread to compare against, and the row says so. Reads only metrics.jsonl and config.json, so runs from any
machine compare.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

IGNORED = ("seed", "out", "resume", "overwrite")  # what differs between the seeds of one arm


def read_metrics(run):
    """A run folder's metrics.jsonl: one record per step."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_summary(rows):
    """One run's numbers, from its metrics.jsonl records: every numeric field but the step (see the docstring)."""
    entropy = [r["entropy"] for r in rows if "entropy" in r]
    summary = {"entropy_start": entropy[0], "entropy_end": entropy[-1]} if entropy else {}
    if len(entropy) > 2:
        summary["entropy_change_sd"] = statistics.stdev(b - a for a, b in zip(entropy, entropy[1:]))
    for key in dict.fromkeys(k for r in rows for k, v in r.items() if is_number(v) and k != "step"):
        values = [r[key] for r in rows if key in r]  # the steps that logged it, in order
        if key.startswith("eval_"):
            summary[key] = values[-1]  # the last evaluation
        else:
            summary[key] = max(values) if key == "grad_norm_max" else statistics.mean(values)
    return summary


def arms_of(folders):
    """{arm name: [folder, ...]}: runs grouped by their config.json without the seed."""
    configs = {folder: json.loads((Path(folder) / "config.json").read_text()) for folder in folders}
    keys = sorted({k for c in configs.values() for k in c if k not in IGNORED})
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    arms = {}
    for folder, config in configs.items():
        name = ", ".join(f"{k}={config.get(k)}" for k in differing) or "all"
        arms.setdefault(name, []).append(folder)
    return arms


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def differs(a, b):
    """+1 if the mean of a exceeds that of b by more than the larger of their standard deviations, -1 if it falls
    short by that much, else 0."""
    gap, margin = statistics.mean(a) - statistics.mean(b), max(spread(a), spread(b))
    return (gap > margin) - (-gap > margin)


def compare(arms):
    """{arm: {metric: [value per seed]}} and the table's lines; `arms` is a list of run folders (grouped by
    arms_of) or {arm name: [run folder, ...]}."""
    arms, values = arms if isinstance(arms, dict) else arms_of(arms), {}
    for arm, runs in arms.items():
        summaries = [run_summary(read_metrics(run)) for run in runs]
        values[arm] = {k: [s[k] for s in summaries if k in s] for k in dict.fromkeys(k for s in summaries for k in s)}
    return values, table(values, {arm: len(runs) for arm, runs in arms.items()})


def cell(values):
    """mean ± std over an arm's runs; the std is left out where one run has the metric, "missing" where none has."""
    if not values:
        return "missing"
    return f"{statistics.mean(values):.4g} ± {spread(values):.2g}" if len(values) > 1 else f"{values[0]:.4g} (1 run)"


def table(values, runs=None):
    """The table's lines: a row per metric that any arm has, mean ± std per arm, and with two arms "differs?";
    `runs` ({arm: number of runs}) names the arms' sizes in the header (default: the most values of a metric)."""
    arms = list(values)
    metrics = list(dict.fromkeys(k for a in arms for k in values[a]))
    runs = runs or {a: max(len(v) for v in values[a].values()) for a in arms}
    header = ["metric", *(f"{a} (n={runs[a]})" for a in arms)] + (["differs?"] * (len(arms) == 2))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        per_arm = [values[a].get(metric, []) for a in arms]
        cells = [cell(v) for v in per_arm]
        if len(arms) == 2:
            if not all(per_arm):
                cells.append("-")
            elif min(len(v) for v in per_arm) < 2:
                cells.append("no spread (1 run)")
            else:
                cells.append("yes" if differs(*per_arm) else "no")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def figure(arms, path):
    """reward, entropy and held-out greedy accuracy per step: each arm's mean with a band of ± one std; `arms` as
    in compare."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for arm, runs in (arms if isinstance(arms, dict) else arms_of(arms)).items():
        rows = [read_metrics(run) for run in runs]
        for ax, key in zip(axes, ("reward", "entropy", "eval_greedy")):
            steps = sorted({r["step"] for run in rows for r in run if key in r})
            per_step = [[r[key] for run in rows for r in run if r["step"] == s and key in r] for s in steps]
            mean = [statistics.mean(v) for v in per_step]
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_step]
            if len(steps) < 4:  # a few evaluations: points with error bars, a band would not show
                ax.errorbar(steps, mean, yerr=sd, marker="o", capsize=3, label=arm)
            else:
                ax.plot(steps, mean, label=arm)
                ax.fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], alpha=0.2)
            ax.set_title(key)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (each with config.json and metrics.jsonl), or arms "
                        "NAME=RUN,RUN,...")
    parser.add_argument("--figure", help="also draw reward, entropy and held-out accuracy bands to this PNG")
    args = parser.parse_args(argv)
    named = [arg.partition("=") for arg in args.runs]
    if any(sep for _, sep, _ in named) and not all(name and sep and runs for name, sep, runs in named):
        print("compare.py: error: name every arm (NAME=RUN,RUN,...) or none", file=sys.stderr)
        sys.exit(2)
    arms = {name: runs.split(",") for name, sep, runs in named} if named[0][1] else args.runs
    folders = [r for runs in arms.values() for r in runs] if isinstance(arms, dict) else arms
    missing = [r for r in folders if not (Path(r) / "metrics.jsonl").exists() or not (Path(r) / "config.json").exists()]
    if missing:
        print(f"compare.py: error: {missing[0]} has no metrics.jsonl and config.json", file=sys.stderr)
        sys.exit(2)
    _, lines = compare(arms)
    print("\n".join(lines))
    if args.figure:
        figure(arms, args.figure)
    return lines


if __name__ == "__main__":
    main()
