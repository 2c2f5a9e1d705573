"""The papers' entropy story on the tiny preset: every algorithm, with and without ERC, over several seeds.

    pip install matplotlib
    python experiments/entropy_story.py                  # 6 algos x {off, on} x 3 seeds, ~12 min on 2 cores

Trains `erc_minimal.py --preset tiny` at a learning rate 3.3x the preset's (1e-3 instead of 3e-4, 200 steps),
where updates are large enough for entropy to collapse before the task is learned. Writes, under --out:
one metrics.jsonl per run, table.md (mean +- std over seeds) and entropy_story.png (entropy and reward per
step, one column per algorithm, ERC vs no ERC). Runs already finished are reused."""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from erc_minimal import ALGOS  # noqa: E402


def run_one(args, algo, erc, seed):
    out = os.path.join(args.out, f"{algo}{'_erc' if erc else ''}", f"seed{seed}")
    metrics = os.path.join(out, "metrics.jsonl")
    if not (os.path.exists(metrics) and sum(1 for _ in open(metrics)) == args.steps):
        cmd = [sys.executable, os.path.join(ROOT, "erc_minimal.py"), "--preset", "tiny", "--algo", algo,
               "--seed", str(seed), "--lr", str(args.lr), "--steps", str(args.steps), "--out", out, "--overwrite"]
        subprocess.run(cmd + (["--erc"] if erc else []), check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return [json.loads(line) for line in open(metrics)]


def summarize(rows):
    """One run -> the table's numbers. A step skipped by dynamic sampling (every group's rewards equal) has a
    reward but no entropy or clip statistics."""
    reward = [r["reward"] for r in rows]
    entropy = [r["entropy"] for r in rows if "entropy" in r]
    moving = [statistics.mean(reward[max(0, i - 9):i + 1]) for i in range(len(reward))]
    return dict(final_reward=statistics.mean(reward[-20:]),
                steps_to_08=next((i for i, m in enumerate(moving) if m >= 0.8), None),
                final_entropy=statistics.mean(entropy[-20:]),
                max_entropy_jump=max(abs(a - b) for a, b in zip(entropy[1:], entropy)),
                erc_clip_frac=statistics.mean(r["erc_clip_frac"] for r in rows if "erc_clip_frac" in r))


def fmt(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "never"
    std = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{std}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="runs/entropy_story")
    args = parser.parse_args()

    grid = [(algo, erc, seed) for algo in ALGOS for erc in (False, True) for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(grid, pool.map(lambda key: run_one(args, *key), grid)))

    lines = [f"Tiny preset, lr {args.lr}, {args.steps} steps, seeds 0..{args.seeds - 1}; mean ± std over seeds "
             "(steps to 0.8: first step whose 10-step mean reward reaches 0.8, over the seeds that got there).", "",
             "| algo | ERC | final reward | steps to 0.8 (seeds) | final entropy | largest entropy jump | erc_clip_frac |",
             "|---|---|---|---|---|---|---|"]
    for algo in ALGOS:
        for erc in (False, True):
            s = [summarize(runs[algo, erc, seed]) for seed in range(args.seeds)]
            reached = [x["steps_to_08"] for x in s if x["steps_to_08"] is not None]
            lines.append(f"| {algo} | {'on' if erc else 'off'} | {fmt([x['final_reward'] for x in s])} | "
                         f"{fmt(reached, 0)} ({len(reached)}/{args.seeds}) | {fmt([x['final_entropy'] for x in s])} | "
                         f"{fmt([x['max_entropy_jump'] for x in s])} | {fmt([x['erc_clip_frac'] for x in s], 3)} |")
    table = "\n".join(lines)
    open(os.path.join(args.out, "table.md"), "w").write(table + "\n")
    print(table)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib for the figure")
        return
    fig, axes = plt.subplots(2, len(ALGOS), figsize=(3 * len(ALGOS), 5.5), sharex=True, sharey="row")
    for col, algo in enumerate(ALGOS):
        for erc, color in ((False, "tab:blue"), (True, "tab:red")):
            for seed in range(args.seeds):
                rows = runs[algo, erc, seed]
                label = ("ERC" if erc else "no ERC") if seed == 0 else None
                trained = [r for r in rows if "entropy" in r]
                axes[0, col].plot([r["step"] for r in trained], [r["entropy"] for r in trained], color=color,
                                  alpha=0.6, lw=1, label=label)
                axes[1, col].plot([r["reward"] for r in rows], color=color, alpha=0.6, lw=1)
        axes[0, col].set_title(algo)
        axes[1, col].set_xlabel("step")
    axes[0, 0].set_ylabel("entropy (old policy, nats)")
    axes[1, 0].set_ylabel("mean reward")
    axes[0, 0].legend()
    fig.tight_layout()
    path = os.path.join(args.out, "entropy_story.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
