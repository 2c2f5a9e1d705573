"""Held-out accuracy (greedy, avg@k, pass@k) of a run's newest checkpoint, a checkpoint, or any model, with the run's
config.json under the flags given (the evaluation's flags below; the smol preset's model and data work too). Each
result is appended with the whole config to CHECKPOINT/eval.jsonl, or to --out's eval.jsonl for a model that is not
one of this script's checkpoints.

    python tools/eval_checkpoint.py runs/tiny_gppo_erc                    # its newest checkpoint
    python tools/eval_checkpoint.py runs/tiny_gppo_erc/checkpoint-300 --eval-samples 16
    python tools/eval_checkpoint.py smollm2 --preset smol --out runs/smol_start   # a model before training
"""
import dataclasses
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import erc_minimal as E  # noqa: E402
import smol  # noqa: E402

# the erc_minimal flags that act in an evaluation (a training flag here would be silently ignored)
FLAGS = ("preset", "dataset", "eval_dataset", "prompt_field", "answer_field", "instruction", "reward", "eval_prompts",
         "eval_samples", "eval_temperature", "eval_top_p", "max_new_tokens", "prompts_per_step", "group_size", "bf16",
         "static_cache", "threads", "seed", "out")


def evaluate_checkpoint(argv):
    smol.install()
    prog = "eval_checkpoint.py RUN_OR_CHECKPOINT_OR_MODEL"
    if not argv or argv[0].startswith("-"):  # --help, or no target: usage and the evaluation's flags
        E.parse_args(["--help"], prog=prog, description=__doc__, fields=FLAGS)
    target, given = Path(argv[0]), E.parse_args(argv[1:], prog=prog, fields=FLAGS)
    if E.checkpoints(target):  # a run folder: its newest checkpoint
        target = Path(E.checkpoints(target)[-1])
    run_config = target.parent / "config.json"
    saved = json.loads(run_config.read_text()) if run_config.exists() else {}
    cfg = E.Config(**{**saved, **given, "model": str(target), "resume": False, "overwrite": False}, given=given)
    if cfg.threads:
        E.torch.set_num_threads(cfg.threads)
    E.torch.set_float32_matmul_precision("highest")  # as in training
    device = E.torch.device("cuda" if E.torch.cuda.is_available() else "cpu")
    model, tokenizer = E.load_model_and_tokenizer(cfg.model, device)
    sampler = E.frozen_copy(model, E.torch.bfloat16) if cfg.bf16 else model  # the model training evaluates
    result = E.evaluate(sampler, tokenizer, E.load_data(cfg, tokenizer, split="test"), cfg)
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
