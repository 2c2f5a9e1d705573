"""The seams a fork's own numbers and state pass through (docs/forking.md): each as a fork would use it."""
import json
import re

import pytest
import torch

import erc_minimal as E
from helpers import ROOT, comparable, load_script, load_tool, patched_script
from test_erc_minimal import rolled_out_batch, spy_on_generate, tiny_argv


def update_logging(monkeypatch, extra, num_minibatches):
    """(stats, batch, mini-batch plan) of E.train_on_batch on a tiny rolled-out batch of 16 responses in
    micro-batches of 3, with policy_loss also logging extra(loss_tok, advantages)'s entries, as a fork's would."""
    policy_loss = E.policy_loss

    def with_extra(logp, old_logp, advantages, response_mask, cfg, *entropies):
        loss_tok, logged = policy_loss(logp, old_logp, advantages, response_mask, cfg, *entropies)
        return loss_tok, {**logged, **extra(loss_tok, advantages)}
    monkeypatch.setattr(E, "policy_loss", with_extra)
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=4, max_new_tokens=4,
                   num_minibatches=num_minibatches, micro_batch_size=3)
    model, optimizer, batch, minibatches = rolled_out_batch(cfg)
    batch["old_logp"], batch["old_entropy"] = E.score_old_policy(model, batch, minibatches, cfg)
    return E.train_on_batch(model, optimizer, batch, minibatches, cfg), batch, minibatches


# ------------------------------------------------------------------ a core that forks without traps
def test_registered_reward_needs_no_package_and_a_step_cannot_shift_later_rollouts(tmp_path, monkeypatch):
    """A reward registered in E.REWARDS runs through setup and train with no package check. Every step seeds its
    own random stream from (seed, step): a reward that draws random numbers (any randomness inside a step) leaves
    the random state each later rollout starts from unchanged, so ablations stay paired with their baseline."""
    states = {}
    for name, reward in (("plain", E.reward_fn), ("draws", lambda c, a: E.reward_fn(c, a) + 0 * torch.rand(5).sum().item())):
        monkeypatch.setitem(E.REWARDS, name, reward)
        cfg = E.Config(preset="tiny", steps=3, reward=name, out=str(tmp_path / name))
        model, tok, data, _ = E.setup(cfg)
        spy_on_generate(model, states.setdefault(name, []), lambda kw: torch.get_rng_state())
        E.train(cfg, model, tok, data)
    assert len(states["plain"]) == 3 and all(torch.equal(a, b) for a, b in zip(states["plain"], states["draws"]))


def test_evaluation_does_not_change_training(tmp_path):
    plain = E.main(tiny_argv(tmp_path / "plain", "--steps", "6"))
    evaluated = E.main(tiny_argv(tmp_path / "evaluated", "--steps", "6", "--eval-every", "2", "--eval-prompts", "8"))
    assert "eval_greedy" in evaluated[1]
    assert comparable(plain) == [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in comparable(evaluated)]


def test_a_stat_cannot_overwrite_a_record_field():
    """A forker's new objective stat named like a record field (say `entropy`) is an error, not a silent overwrite."""
    record = dict(entropy=2.0)
    with pytest.raises(KeyError, match="entropy"):
        E.add_stats(record, dict(entropy=1.0, kl=0.1))
    assert record == dict(entropy=2.0)


def test_a_scalar_stat_from_policy_loss_reaches_the_record_weighted_by_tokens(monkeypatch):
    """A forker's policy_loss may return a 0-d tensor beside its masks (an adaptive band's width): it reaches the
    step's stats under its own name, as the token-weighted mean over micro-batches, so a constant stays itself
    with --micro-batch-size; a mask is logged as a fraction."""
    stats, _, minibatches = update_logging(monkeypatch, lambda loss_tok, advantages: {
        "band_width": torch.tensor(0.1), "everything_frac": torch.ones_like(loss_tok) > 0}, num_minibatches=2)
    assert len(minibatches[0]) > 1 and stats["band_width"] == pytest.approx(0.1) and stats["everything_frac"] == 1.0


# ------------------------------------------------------------------ the seams of docs/forking.md
def test_a_per_response_share_is_counted_over_the_minibatchs_responses(monkeypatch):
    """A [b] mask from policy_loss (one value per response) is logged as the share of the mini-batch's responses it
    marks, also under --micro-batch-size (micro-batches of 3 and 1 of a mini-batch of 4 add up); a float [b, T]
    entry is a token mean, not a share; every mask, per token or per response, gets its *_after_first."""
    seen = []

    def response_stats(loss_tok, advantages):
        seen.append(advantages.clone())
        return {"positive_frac": advantages > 0, "half": torch.full_like(loss_tok, 0.5)}
    stats, batch, minibatches = update_logging(monkeypatch, response_stats, num_minibatches=4)
    per_minibatch = [(batch["advantages"][torch.cat(micros)] > 0).float().mean().item() for micros in minibatches]
    assert [len(micros) for micros in minibatches] == [2] * 4 and len(seen) == 8  # 3 + 1 responses each
    assert stats["positive_frac"] == pytest.approx(sum(per_minibatch) / 4)
    assert stats["positive_frac_after_first"] == pytest.approx(sum(per_minibatch[1:]) / 3)
    assert stats["half"] == pytest.approx(0.5) and "half_after_first" not in stats
    assert "clip_frac_after_first" in stats and len(set(per_minibatch)) > 1  # the mini-batches differ


def test_run_state_survives_resume_and_leaves_config_json_alone(tmp_path, monkeypatch):
    """A value a fork adapts during a run, kept in E.RUN_STATE, is saved in every checkpoint and restored on
    --resume: a run stopped at step 2 and resumed logs what the uninterrupted run logs. A new run starts without
    it, and config.json holds only the configuration."""
    train_step = E.train_step

    def counting_train_step(*args):
        record = train_step(*args)
        E.RUN_STATE["total_reward"] = E.RUN_STATE.get("total_reward", 0.0) + record["reward"]
        return {**record, "total_reward": E.RUN_STATE["total_reward"]}
    monkeypatch.setattr(E, "train_step", counting_train_step)
    whole = E.main(tiny_argv(tmp_path / "whole", "--steps", "4", "--erc"))
    E.main(tiny_argv(tmp_path / "split", "--steps", "2", "--erc"))
    E.RUN_STATE["total_reward"] = 99.0  # what another run left behind: --resume must replace it
    resumed = E.main(tiny_argv(tmp_path / "split", "--steps", "4", "--resume"))
    assert comparable(resumed) == comparable(whole) and whole[-1]["total_reward"] > whole[1]["total_reward"] > 0
    configs = [json.loads((tmp_path / run / "config.json").read_text()) for run in ("whole", "split")]
    assert "total_reward" not in configs[0] and {k for k in configs[0] if configs[0][k] != configs[1][k]} == {
        "out", "resume"}


def test_the_worked_fork_reaches_every_tool(tmp_path, capsys):
    """patches/adaptive_erc.patch, the worked example of docs/forking.md: a flag (--erc-adapt), a per-token share
    (erc_and_ratio_frac), a per-response share (erc_response_frac) and a value carried across --resume (the band's
    scale, in RUN_STATE). Its flag acts only with --erc by rule; its numbers reach metrics.jsonl with
    *_after_first, the resumed run equals the uninterrupted one, and compare.py shows them with their spread."""
    P = patched_script(tmp_path, "adaptive_erc")
    with pytest.raises(SystemExit) as exit_info:
        P.main(tiny_argv(tmp_path / "no_erc", "--erc-adapt", "0.1"))
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().endswith("--erc-adapt acts only with --erc")
    fork = ["--algo", "gppo", "--erc", "--erc-adapt", "0.05", "--prompts-per-step", "8"]
    whole = P.main(tiny_argv(tmp_path / "seed0", *fork, "--steps", "6"))
    P.main(tiny_argv(tmp_path / "split", *fork, "--steps", "3"))
    resumed = P.main(tiny_argv(tmp_path / "split", "--steps", "6", "--resume"))
    assert comparable(resumed) == comparable(whole)
    scales = [r["erc_scale"] for r in whole]
    assert len(set(scales)) > 2 and all(0 < s < 3 for s in scales)  # the band really adapts, step after step
    for key in ("erc_and_ratio_frac", "erc_response_frac"):
        assert all(0 <= r[key] <= 1 and 0 <= r[f"{key}_after_first"] <= 1 for r in whole)
    assert all(r["erc_response_frac"] >= r["erc_clip_frac"] for r in whole)  # a response with a clipped token
    P.main(tiny_argv(tmp_path / "seed1", *fork, "--steps", "6", "--seed", "1"))
    for seed in (0, 1):
        E.main(tiny_argv(tmp_path / f"stock{seed}", "--algo", "gppo", "--erc", "--prompts-per-step", "8",
                         "--steps", "6", "--seed", str(seed)))
    capsys.readouterr()
    rows = {line.split(" | ")[0].strip("| "): line for line in load_tool("compare").main(
        [f"fork={tmp_path / 'seed0'},{tmp_path / 'seed1'}", f"stock={tmp_path / 'stock0'},{tmp_path / 'stock1'}"])}
    assert " ± " in rows["erc_scale"] and "| missing |" in rows["erc_scale"]
    assert rows["erc_response_frac_after_first"].count(" ± ") == 1 and "missing" in rows["erc_response_frac"]
    assert rows["erc_clip_frac_after_first"].count(" ± ") == 2


def test_a_field_without_a_help_comment_gets_a_plain_help(tmp_path, capsys):
    """A fork's Config field written without the `# help` comment still makes a flag, with a plain help that says
    where help comes from, and `--help` lists it (never a KeyError)."""
    source = (ROOT / "erc_minimal.py").read_text().replace(
        "    sft_coef: float = 0.0  #", "    erc_warmup: int = 3\n    sft_coef: float = 0.0  #", 1)
    (tmp_path / "erc_minimal.py").write_text(source)
    P = load_script(str(tmp_path / "erc_minimal.py"))
    with pytest.raises(SystemExit):
        P.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--erc-warmup ERC_WARMUP no help: write it as a comment after the field in Config (default: 3)" in out
    with pytest.raises(SystemExit) as exit_info:
        P.main(tiny_argv(tmp_path / "run", "--erc-warmup", "5"))
    assert exit_info.value.code == 2 and "--erc-warmup acts only with --erc" in capsys.readouterr().err


def test_the_fence_names_what_below_it_changes_a_number():
    """The loop (optimiser, warm-up, sampler, per-step seed, prompt order) sits above the fence; every function
    the fence names as changing a number below it exists below it."""
    lines = (ROOT / "erc_minimal.py").read_text().splitlines()
    fence = next(i for i, line in enumerate(lines) if line.startswith("# ======== Above: the method"))
    above = "\n".join(lines[:fence])
    for needle in ("def train(", "torch.optim.AdamW(", "LambdaLR(", "frozen_copy(model, torch.bfloat16)",
                   "torch.manual_seed(cfg.seed * 1_000_000 + step)", "torch.randperm(len(data))"):
        assert needle in above, needle
    named = re.findall(r"\b([a-z]+_[a-z_]+)\b", " ".join(l for l in lines[fence:] if l.startswith("# ========")))
    below = "\n".join(lines[fence:])
    assert {"extract_answer", "to_number", "read_dataset", "load_data"} <= set(named)
    assert all(f"def {name}(" in below for name in named if hasattr(E, name))
