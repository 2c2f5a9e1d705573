"""What tools/diagnostics.py costs on the tiny preset: train time per step (the diagnostics run inside the
step, after the updates) with and without them, in alternating fresh processes (1 thread each, 3 per side, 100 steps; the
first 10 steps of each are left out as warm-up). Prints the medians and their ratio.

    python bench/diagnostics_cost.py        # about 3 minutes on a quiet 2-core machine
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_time(script):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, os.path.join(ROOT, script), "--preset", "tiny", "--algo", "gppo", "--erc",
                        "--steps", "100", "--out", out], check=True, capture_output=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f][10:]
    return statistics.mean(r["train_time"] for r in rows), statistics.mean(r["gen_time"] for r in rows)


def main():
    times = {"off": [], "on": []}
    for _ in range(3):
        for side, script in (("off", "erc_minimal.py"), ("on", "tools/diagnostics.py")):
            times[side].append(train_time(script))
            print(side, f"train {times[side][-1][0] * 1000:.1f} ms/step, rollout {times[side][-1][1] * 1000:.1f} ms/step",
                  flush=True)
    off, on = (statistics.median(t for t, _ in times[side]) for side in ("off", "on"))
    print(f"median train time per step: {off * 1000:.1f} ms without, {on * 1000:.1f} ms with diagnostics "
          f"(x{on / off:.2f})")


if __name__ == "__main__":
    main()
