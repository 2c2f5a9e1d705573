"""Held-out accuracy (greedy, avg@k, pass@k) of a run's newest checkpoint, a checkpoint, or any model, with the run's
config.json under the flags given (any flag of erc_minimal.py). Each result is appended with the whole config to
CHECKPOINT/eval.jsonl, or to --out's eval.jsonl for a model that is not one of this script's checkpoints.

    python experiments/eval_checkpoint.py runs/tiny_gppo_erc                    # its newest checkpoint
    python experiments/eval_checkpoint.py runs/tiny_gppo_erc/checkpoint-300 --eval-samples 16
    python experiments/eval_checkpoint.py smollm2 --preset smol --out runs/smol_start   # a model before training
"""
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import erc_minimal as E  # noqa: E402


def evaluate_checkpoint(argv):
    if not argv or argv[0].startswith("-"):  # --help, or no target: usage and erc_minimal's flags
        E.parse_args(["--help"], prog="eval_checkpoint.py RUN_OR_CHECKPOINT_OR_MODEL", description=__doc__)
    target, given = Path(argv[0]), E.parse_args(argv[1:], prog="eval_checkpoint.py RUN_OR_CHECKPOINT_OR_MODEL")
    if E.checkpoints(target):  # a run folder: its newest checkpoint
        target = Path(E.checkpoints(target)[-1])
    run_config = target.parent / "config.json"
    saved = json.loads(run_config.read_text()) if run_config.exists() else {}
    cfg = E.Config(**{**saved, **given, "model": str(target), "resume": False, "overwrite": False}, given=tuple(given))
    model, tokenizer = E.load_model_and_tokenizer(cfg.model, *E.prepare(cfg))
    result = E.evaluate(E.make_sampler(model, cfg.bf16), tokenizer, E.load_data(cfg, tokenizer, split="test"), cfg)
    is_checkpoint = os.path.exists(os.path.join(cfg.model, "trainer_state.pt"))  # never write into a user's model
    path = Path(cfg.model if is_checkpoint else cfg.out, "eval.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # every evaluation of this checkpoint, each with its settings
        f.write(json.dumps({**dataclasses.asdict(cfg), **result}) + "\n")
    print("  ".join(f"{k} {v:.3f}" for k, v in result.items()) + f"  ({path})")
    return result


def main(argv=None):
    E.datasets.disable_progress_bars()
    E.transformers.logging.disable_progress_bar()
    try:
        return evaluate_checkpoint(sys.argv[1:] if argv is None else argv)
    except ValueError as e:  # bad input: one line, exit 2, as erc_minimal.py does
        E.fail(e)


if __name__ == "__main__":
    main()
