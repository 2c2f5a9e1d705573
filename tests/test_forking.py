"""The seams a fork's own numbers and state pass through (docs/forking.md): each as a fork would use it."""

import pytest
import torch

import erc_minimal as E
from helpers import comparable
from test_erc_minimal import rolled_out_batch, spy_on_generate, tiny_argv


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
    policy_loss = E.policy_loss

    def with_scalar(*args, **kwargs):
        loss_tok, logged = policy_loss(*args, **kwargs)
        return loss_tok, {**logged, "band_width": torch.tensor(0.1), "everything_frac": torch.ones_like(loss_tok) > 0}
    monkeypatch.setattr(E, "policy_loss", with_scalar)
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=4, max_new_tokens=4, num_minibatches=2,
                   micro_batch_size=3)
    model, optimizer, batch, minibatches = rolled_out_batch(cfg)
    batch["old_logp"], batch["old_entropy"] = E.score_old_policy(model, batch, minibatches, cfg)
    stats = E.train_on_batch(model, optimizer, batch, minibatches, cfg)
    assert len(minibatches[0]) > 1 and stats["band_width"] == pytest.approx(0.1) and stats["everything_frac"] == 1.0
