"""A run's metrics.jsonl as TensorBoard scalars, for those who read runs there (erc_minimal.py itself talks to no
tracker: every step is one JSON line, and this reads them back).

    pip install tensorboard
    python tools/to_tensorboard.py runs/latest              # writes runs/latest/tensorboard
    tensorboard --logdir runs                                     # every run under runs/

Run it again at any time, also while the run goes on: it rewrites the event files from the whole metrics.jsonl.
"""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from erc_minimal import read_jsonl  # noqa: E402


def to_tensorboard(out):
    from torch.utils.tensorboard import SummaryWriter
    folder = Path(out, "tensorboard")
    shutil.rmtree(folder, ignore_errors=True)
    with SummaryWriter(str(folder)) as writer:
        for record in read_jsonl(Path(out, "metrics.jsonl")):
            for key, value in record.items():
                writer.add_scalar(key, value, record["step"])
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1], "metrics.jsonl").exists():
        print("usage: python tools/to_tensorboard.py OUT, where OUT holds a run's metrics.jsonl", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {to_tensorboard(sys.argv[1])}")
