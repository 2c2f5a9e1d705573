"""The labs' own rules (labs/*/): task generators, verifiers, controls and the criteria their reports answer."""

import pytest
import torch

import erc_minimal as E
from helpers import load_lab, load_tool


# ------------------------------------------------------------------ the Countdown lab (labs/countdown/countdown.py)
def countdown():
    return load_lab("countdown")


@pytest.mark.parametrize("completion,expected", [
    ("w0 w5 = ( 3 * 7 ) + 2", 1.0),          # right
    ("= 3 * 7 + 2", 1.0),                    # right, no thought
    ("w1 = 3 * ( 7 + 2 )", 0.0),             # wrong value (27)
    ("w1 = 3 * 7 + 3", 0.0),                 # a number reused, another missing
    ("w1 = 3 * 7", 0.0),                     # a number missing
    ("w1 = 3 * 8 - 1", 0.0),                 # numbers not given
    ("w1 = ( 3 * 7 + 2", 0.0),               # malformed
    ("w1 = 3 7 + 2", 0.0),                   # malformed: two numbers side by side
    ("w1 = - 3 + 7 * 2 + 10", 0.0),          # unary minus, a number not given
    ("w1 = 3 / 7 + 2", 0.0),                 # division
    ("w1 = 3 ^ 7 + 2", 0.0),                 # an unknown symbol
    ("w1 = ( 3 * 7 ) + 2 w4", 0.0),          # text after the answer
    ("w1 = 3 * 7 + 2 = 23", 0.0),            # a second '='
    ("w1 w2 3 * 7 + 2", 0.0),                # no '='
])
def test_countdown_verifier(completion, expected):
    assert countdown().verify(completion, "3 7 2 23") == expected


def test_countdown_sets_are_disjoint_and_round_trip():
    C = countdown()
    train, held_out = C.splits()
    assert len(train) == 1563 and len(held_out) == 400 and len(set(train)) == len(train)
    assert not {(tuple(sorted(n)), t) for n, t in train} & {(tuple(sorted(n)), t) for n, t in held_out}
    tokenizer, prompt = C.make_tokenizer(), C.prompt_of(*held_out[0])
    assert tokenizer.decode(tokenizer(prompt).input_ids) == prompt and len(tokenizer) == 220
    assert all(C.verify("= " + " ".join(t), C.answer_of(n, target)) == 1.0
               for n, target in held_out[:50] for t, v in C.expressions(n) if v == target)


def test_countdown_warm_start_learns_and_rl_runs_through_main(tmp_path):
    """A 120-step warm start (~17 s) on the noisy teacher: held-out pass@8 on 64 prompts at least 0.1 (0.16 measured)
    where the random initialisation scores 0; then 3 RL steps through E.main with the verifier as its reward."""
    C = countdown()
    C.write_data(tmp_path)
    model, tokenizer = C.warm_start(tmp_path / "model", steps=120, hidden=128, batch=48)
    result = C.measure(model, tokenizer, C.splits()[1][:64])
    assert result["pass_k"] >= 0.1, result
    rows = C.lab_main(C.base_argv(tmp_path) + ["--steps", "3", "--prompts-per-step", "4", "--num-minibatches", "2",
                                               "--eval-every", "3", "--eval-prompts", "8", "--out", str(tmp_path / "run")])
    assert [r["step"] for r in rows] == [1, 2, 3] and "diag_kl_all" in rows[-1] and "eval_pass@8" in rows[-1]


def test_countdown_dropout_control_drops_the_fraction_it_is_given():
    C = countdown()
    torch.manual_seed(0)
    fell, rose = C.dropout_gate(0.3)(torch.rand(200, 50), torch.rand(200, 50), None)
    assert fell.float().mean().item() == pytest.approx(0.3, abs=0.01) and not rose.any()
    low, _ = C.lowest_entropy_gate(0.25)(entropy := torch.rand(100, 40), entropy + 1, None)
    assert low.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert entropy[low].max() <= entropy[~low].min()


def test_smol_grid_answers_its_criteria_from_per_seed_values():
    """The smol grid's four pre-registered criteria (labs/README.md) on hand-made per-seed values: ERC's entropy
    changes are steadier beyond the spread and the 1-mini-batch pair agrees (for), until a dropout control is as
    steady (inconclusive); pass@4 is lower (against); greedy higher but avg@4 within the spread (inconclusive);
    moved mass ERC-only / kept above 1 in two of three seeds (inconclusive), in all three (for)."""
    grid = load_lab("smol_grid")
    on = {"entropy_change_sd": [0.10, 0.11, 0.12], "eval_pass@4": [0.5, 0.5, 0.5], "eval_greedy": [0.9, 0.9, 0.9],
          "eval_avg@4": [0.5, 0.5, 0.5], "diag_moved_unsampled_erc_only": [0.03, 0.03, 0.03],
          "diag_moved_unsampled_erc_kept": [0.02, 0.02, 0.04]}
    off = {"entropy_change_sd": [0.20, 0.21, 0.22], "eval_pass@4": [0.9, 0.9, 0.9], "eval_greedy": [0.5, 0.6, 0.7],
           "eval_avg@4": [0.5, 0.52, 0.48], "diag_moved_unsampled_erc_only": [0.01] * 3,
           "diag_moved_unsampled_erc_kept": [0.02] * 3}
    one_minibatch = {"entropy_change_sd": [0.15]}
    values = {"gppo_erc": on, "gppo": off, "gppo_mb1": one_minibatch, "gppo_erc_mb1": one_minibatch}
    verdicts = [line.split("**")[1] for line in grid.verdicts(values)]
    assert verdicts == ["for", "against", "inconclusive", "inconclusive"]
    assert "gppo_erc 1.50, 1.50, 0.75; gppo 0.50, 0.50, 0.50" in grid.verdicts(values)[3]
    values["gppo_erc_dropout"] = dict(on, entropy_change_sd=[0.12, 0.12, 0.12])
    on["diag_moved_unsampled_erc_kept"] = [0.02, 0.02, 0.02]
    assert [line.split("**")[1] for line in grid.verdicts(values)] == ["inconclusive", "against", "inconclusive", "for"]
    values["gppo_erc_mb1"] = {"entropy_change_sd": [0.25]}
    del values["gppo_erc_dropout"]
    assert grid.verdicts(values)[0].startswith("1. Entropy stable: **inconclusive**")  # ERC acted at 1 mini-batch


def test_smol_grid_reads_the_lead_with_the_dropout_control():
    """The lead (ERC's step smaller in KL): ERC's KL below the dropout control's by more than the spread ->
    ERC's choice of tokens; the control as low as ERC's mean + its spread -> the number of tokens; in between
    -> inconclusive; a lead that did not recur against GPPO is said so."""
    grid = load_lab("smol_grid")
    kl = lambda *xs: {"diag_kl_all": list(xs)}
    values = {"gppo_erc": kl(0.004, 0.005, 0.006), "gppo": kl(0.008, 0.008, 0.008)}
    assert "**not read**" in grid.lead(values) and "did not recur" not in grid.lead(values)
    values["gppo_erc_dropout"] = kl(0.008, 0.0085, 0.009)
    assert "**ERC's choice of tokens**" in grid.lead(values)
    values["gppo_erc_dropout"] = kl(0.0055, 0.006, 0.0065)
    assert "**the number of tokens**" in grid.lead(values)
    values["gppo_erc_dropout"] = kl(0.004, 0.0065, 0.009)  # above ERC + its spread, within the wider spread
    assert "**inconclusive**" in grid.lead(values)
    values["gppo"] = kl(0.006, 0.006, 0.006)
    assert "did not recur" in grid.lead(values)


def test_word_problems_are_labelled_right_and_not_the_presets():
    """labs/word_problems/word_problems.jsonl: 20 problems of each kind, each gold answer the kind's operation on the
    two numbers its question states (in order), sharing exact; no question from the smol preset's generator; a
    response at the length limit told from one that ended; the per-arm table averages seeds of one arm and keeps
    other models apart."""
    import re
    tool = load_lab("word_problems")
    generated = set(load_tool("smol")
                    .make_word_sums("train")["question"])
    operation = {"sum": int.__add__, "two-digit sum": int.__add__, "subtraction": int.__sub__,
                 "multiplication": int.__mul__, "sharing": int.__floordiv__}
    kinds = tool.by_kind()
    assert {k: len(v) for k, v in kinds.items()} == dict.fromkeys(operation, 20)
    for kind, problems in kinds.items():
        for p in problems:
            a, b = p["numbers"]
            assert [int(n) for n in re.findall(r"\d+", p["question"])] == [a, b]
            assert p["answer"] == str(operation[kind](a, b)) and (kind != "sharing" or a % b == 0)
            assert p["question"] not in generated and not re.search(r"has \d+ \w+ and (gets|finds|buys)", p["question"])
            assert kind != "sum" or a < 10 and b < 10  # one-digit, as the preset's; the two-digit kind is not
            assert kind != "two-digit sum" or a >= 10 and b >= 10
    cases = {"There are 5 + 6 = 11 books": True, "5+6=11": True, "15 + 6 = 21": False, "5 + 60": False,
             "6 + 5 = 11": False, "5 x 6 = 30": False}
    assert {text: tool.writes_a_plus_b(text, [5, 6]) for text in cases} == cases
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])  # used all 3 tokens, ended at 2, ended at 1
    assert tool.at_limit(mask, 3).tolist() == [True, False, False]
    assert tool.at_limit(mask, 4).tolist() == [False, False, False]  # generation stopped before the limit
    result = dict(kind="sharing", **{"eval_avg@4": 0.5, "eval_pass@4": 1.0, "writes_sum": 0.5, "sum_answer": 0.25,
                                     "at_limit": 0.75})
    results = [dict(result, model=f"runs/smol_grid/gppo_erc/seed{s}/checkpoint-30", eval_greedy=g)
               for s, g in ((0, 0.0), (1, 1.0))] + [dict(result, model="smollm2", eval_greedy=0.1)]
    results.append(dict(result, model="runs/smol_grid/gppo_erc/seed0/checkpoint-30", eval_greedy=0.9, max_new_tokens=48))
    assert tool.summary(results)[2:] == ["| gppo_erc | 16 | sharing | 2 | 0.50 ± 0.71 | 0.50 ± 0.00 | 1.00 ± 0.00 | "
                                         "0.50 ± 0.00 | 0.25 ± 0.00 | 0.75 ± 0.00 |",
                                         "| smollm2 | 16 | sharing | 1 | 0.10 | 0.50 | 1.00 | 0.50 | 0.25 | 0.75 |",
                                         "| gppo_erc | 48 | sharing | 1 | 0.90 | 0.50 | 1.00 | 0.50 | 0.25 | 0.75 |"]


def test_word_problems_answers_a_plus_b_compares_with_the_sum_not_the_gold(monkeypatch):
    """`answers a + b` (sum_answer) is the share of greedy answers equal to the sum of the problem's two numbers,
    whatever the gold answer: on a subtraction problem answered with the sum it is 1 while greedy is 0."""
    tool = load_lab("word_problems")
    answers = ["so it is 13", "13"]

    class Tokenizer:
        chat_template = None

        def batch_decode(self, ids, skip_special_tokens):
            return answers

    monkeypatch.setattr(E, "evaluate", lambda *args: {"eval_greedy": 0.0, "eval_avg@4": 0.0, "eval_pass@4": 0.0})
    monkeypatch.setattr(E, "rollout", lambda *args: (torch.zeros(2, 4, dtype=torch.long), None, torch.ones(2, 2)))
    problems = [dict(question="Tom has 9 pens and gives away 4. How many are left?", answer="5", numbers=[9, 4]),
                dict(question="Ana has 9 cups and breaks 4. How many are left?", answer="5", numbers=[9, 4])]
    result = tool.evaluate_model(None, Tokenizer(), problems, E.Config(preset="tiny"))
    assert result["sum_answer"] == 1.0 and result["writes_sum"] == 0.0  # 13 = 9 + 4, where the gold is 5
