"""Does the smol preset's gain carry beyond its own generator? Word problems written by hand for this check
(word_problems.jsonl beside this file: 20 each of one-digit sums in other phrasings, two-digit sums, subtraction,
multiplication and sharing; none from the preset's templates), asked the way the preset asks.

    python labs/word_problems/word_problems.py smollm2 runs/smol_grid/gppo_erc/seed0 --out runs/word_problems.json

Each model (`smollm2`, a checkpoint, or a run folder: its newest checkpoint) is evaluated per kind of problem with
erc_minimal's own evaluate at the smol preset's settings (greedy accuracy; avg@4 and pass@4 at temperature 1,
seeded) and its greedy answers are read once more: `writes_sum` is the share of responses that write "a + b" with
the problem's two numbers ("5 boxes with 6 books in each" -> "5 + 6 = 11"), the habit a model trained on sums
alone would carry over, `sum_answer` the share whose final answer is that sum, and `at_limit` the share that
used every token of the response length without ending (cut off, whether or not an answer came before the cut).
--max-new-tokens 48 is the control for the preset's 16 tokens, in which a restated question can leave no room
for the answer. Printed: one row per model and kind, then mean ± std over the seeds of each arm (RUNS/ARM/seedS)
and response length; --out writes the numbers and every greedy answer; --summary FILE... prints the arms' table
of saved results.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[1] / "tools")]  # erc_minimal, smol.py
import erc_minimal as E  # noqa: E402
import smol  # noqa: E402

PROBLEMS = HERE / "word_problems.jsonl"


def by_kind(path=PROBLEMS):
    """{kind: [problem, ...]} in the file's order; a problem has kind, question, answer, numbers."""
    kinds = {}
    for line in Path(path).read_text().splitlines():
        problem = json.loads(line)
        kinds.setdefault(problem["kind"], []).append(problem)
    return kinds


def writes_a_plus_b(text, numbers):
    """Whether text writes the sum of the problem's two numbers, in their order: '5 + 6', '5+6'."""
    return re.search(r"\b{} ?\+ ?{}\b".format(*numbers), text) is not None


def at_limit(response_mask, max_new_tokens):
    """[B] bool: the response used every one of max_new_tokens (cut off, or ended on the very last token)."""
    return (response_mask[:, -1] == 1) & (response_mask.shape[1] == max_new_tokens)


def evaluate_model(model, tokenizer, problems, cfg):
    """erc_minimal's evaluate on one kind, plus the greedy answers, correctness and sum_answer share."""
    prompts = [E.format_prompt(p["question"], tokenizer, cfg.instruction) for p in problems]
    data = E.datasets.Dataset.from_dict({"prompt": prompts, "answer": [p["answer"] for p in problems]})
    result = E.evaluate(model, tokenizer, data, cfg)
    ids, _, response_mask = E.rollout(model, tokenizer, prompts, 1, 0.0, cfg.max_new_tokens)  # greedy
    answers = tokenizer.batch_decode(ids[:, -response_mask.shape[1]:], skip_special_tokens=True)
    correct = [E.reward_fn(a, p["answer"]) for a, p in zip(answers, problems)]
    sums = [E.reward_fn(a, str(sum(p["numbers"]))) for a, p in zip(answers, problems)]
    writes = [writes_a_plus_b(a, p["numbers"]) for a, p in zip(answers, problems)]
    cut = at_limit(response_mask, cfg.max_new_tokens).tolist()  # [B]
    assert abs(sum(correct) / len(correct) - result["eval_greedy"]) < 1e-6  # the greedy answers evaluate saw
    saved = [dict(question=p["question"], answer=a, gold=p["answer"], at_limit=c)
             for p, a, c in zip(problems, answers, cut)]
    return dict(result, sum_answer=sum(sums) / len(sums), writes_sum=sum(writes) / len(writes),
                at_limit=sum(cut) / len(cut), answers=saved)


def arm(target):
    """A checkpoint's arm: RUNS/ARM/seedS/checkpoint-N -> ARM; any other model is its own arm."""
    path = Path(target)
    return path.parent.parent.name if path.name.startswith("checkpoint-") else str(target)


def summary(results):
    """Mean ± std over the seeds of each arm, per response length and kind: lines of a markdown table."""
    import statistics
    groups = {}
    for r in results:
        groups.setdefault((arm(r["model"]), r.get("max_new_tokens", 16), r["kind"]), []).append(r)
    lines = ["| model | tokens | kind | seeds | greedy | avg@4 | pass@4 | writes a + b | answers a + b "
             "| at the limit |", "|---" * 10 + "|"]
    for (name, tokens, kind), rows in groups.items():
        cell = lambda key: (f"{statistics.mean(r[key] for r in rows):.2f}"
                            + (f" ± {statistics.stdev(r[key] for r in rows):.2f}" if len(rows) > 1 else ""))
        lines.append(f"| {name} | {tokens} | {kind} | {len(rows)} | {cell('eval_greedy')} | {cell('eval_avg@4')} | "
                     f"{cell('eval_pass@4')} | {cell('writes_sum')} | {cell('sum_answer')} | {cell('at_limit')} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="smollm2, checkpoint folders or run folders")
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="only print the per-arm table of saved results")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="response length (default: the smol preset's 16, at which most of these responses stop)")
    args = parser.parse_args(argv)
    if args.summary:
        results = [r for f in args.summary for r in json.loads(Path(f).read_text())]
        print("\n".join(summary(results)))
        return results
    smol.install()
    longer = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    cfg = E.Config(preset="smol", eval_samples=4, eval_temperature=1.0, seed=0, **longer)
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds, results = by_kind(), []
    print("model | kind | greedy | avg@4 | pass@4 | writes a + b | answers a + b | at the limit")
    for name in args.models:
        target = E.checkpoints(name)[-1] if E.checkpoints(name) else name
        model, tokenizer = E.load_model_and_tokenizer(target, "cpu")
        for kind, problems in kinds.items():
            result = dict(model=target, kind=kind, max_new_tokens=cfg.max_new_tokens,
                          **evaluate_model(model, tokenizer, problems, cfg))
            results.append(result)
            print(f"{target} | {kind} | {result['eval_greedy']:.2f} | {result['eval_avg@4']:.2f} | "
                  f"{result['eval_pass@4']:.2f} | {result['writes_sum']:.2f} | {result['sum_answer']:.2f} | "
                  f"{result['at_limit']:.2f}", flush=True)
        if args.out:  # after each model, so a stopped run keeps the models it finished
            Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n".join(summary(results)))
    return results


if __name__ == "__main__":
    main()
