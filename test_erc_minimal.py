"""Tests for erc_minimal.py. Every expected value is computed independently here, from SPEC.md, never from
the function under test. Run: python -m pytest -q test_erc_minimal.py"""
import json
import math
import os
import signal

import pytest
import torch

import erc_minimal as E

ALGOS = E.ALGOS
TOKEN_MEAN_ALGOS = ("grpo", "dapo", "gppo", "cegppo", "cispo")


# ------------------------------------------------------------------ independent references (SPEC §3-§4)
def table_weight(algo, r, A, cfg):
    """SPEC §3's table: F such that d loss / d logp = -F * A / N."""
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    if algo == "cispo":
        return (r.clamp(lo, hi) * (A != 0)).double()
    high, low = (A > 0) & (r > hi), (A < 0) & (r < lo)
    out_high, out_low = {"grpo": (0.0, 0.0), "dapo": (0.0, 0.0), "gppo": (hi, lo),
                         "cegppo": (cfg.beta2 * hi, cfg.beta1 * lo)}[algo]
    F = torch.where(high, torch.full_like(r, out_high), torch.where(low, torch.full_like(r, out_low), r))
    F = torch.where((A < 0) & (r > cfg.clip_c), torch.zeros_like(r), F)  # dual clip
    return torch.where(A == 0, torch.zeros_like(r), F)


def reference_token_loss(algo, r, A, logp, cfg):
    """SPEC §3 loss values, written case by case."""
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    if algo == "cispo":
        return -A * r.clamp(lo, hi) * logp
    if algo == "cegppo":
        l = torch.where((A < 0) & (r < lo), -cfg.beta1 * lo * A,
                        torch.where((A > 0) & (r > hi), -cfg.beta2 * hi * A, -r * A))
    else:  # grpo, dapo, gppo share the PPO-clip value
        l = torch.maximum(-A * r, -A * r.clamp(lo, hi))
    return torch.where(A < 0, torch.minimum(l, -A * cfg.clip_c), l)


# Ratios covering every row of the table for eps 0.2 / 0.2 (and 0.2 / 0.28 for dapo): well inside,
# exactly at each bound, just beyond each bound, beyond the dual clip c = 10.
RATIOS = [0.5, 0.79, 0.8, 0.81, 1.0, 1.19, 1.2, 1.21, 1.27, 1.28, 1.29, 3.0, 9.9, 10.5, 20.0]
ADVANTAGES = [1.3, -0.7, 0.0]


def grid(extra_pad=2):
    """logp, old_logp [3, len(RATIOS) + pad] float64 with exp(logp - old_logp) = RATIOS on valid tokens,
    advantages [3], response_mask with `extra_pad` padding positions per row holding garbage log-probs."""
    g = torch.Generator().manual_seed(0)
    n = len(RATIOS)
    old = -torch.rand(3, n + extra_pad, generator=g, dtype=torch.float64) * 3
    logp = old + torch.log(torch.tensor(RATIOS + [0.0] * extra_pad, dtype=torch.float64).clamp(min=1e-300))
    logp[:, n:] = -50.0  # padding: a log-prob far from old_logp would overflow exp if it were not masked
    old[:, n:] = 0.0
    mask = torch.zeros(3, n + extra_pad, dtype=torch.long)
    mask[:, :n] = 1
    return logp, old, torch.tensor(ADVANTAGES, dtype=torch.float64), mask


def loss_and_grad(logp, old, adv, mask, cfg, **kw):
    logp = logp.clone().requires_grad_(True)
    loss, stats = E.policy_loss(logp, old, adv, mask, cfg, **kw)
    loss.backward()
    return loss, logp.grad, stats


# ------------------------------------------------------------------ config
def test_config_defaults_follow_spec_table():
    assert E.Config(algo="dapo").eps_high == 0.28 and E.Config(algo="dapo").dynamic_sampling
    assert E.Config(algo="cegppo").beta1 == 0.5 and E.Config(algo="cegppo").beta2 == 1.0
    assert (E.Config(algo="cispo").eps_low, E.Config(algo="cispo").eps_high) == (1.0, 4.0)
    assert (E.Config(algo="gspo").eps_low, E.Config(algo="gspo").eps_high) == (3e-4, 4e-4)
    assert E.Config(algo="grpo").clip_c == 10 and E.Config(algo="gspo").clip_c is None
    assert E.Config(algo="gppo", eps_high=0.3).eps_high == 0.3  # user value wins
    cfg = E.Config(algo="gppo", erc=True)
    assert (cfg.erc_low, cfg.erc_high, cfg.sft_coef) == (0.95, 1.05, 0.0)


@pytest.mark.parametrize("kwargs", [dict(algo="ppo"), dict(eps_low=0.0), dict(eps_low=1.5), dict(eps_high=-0.1),
                                    dict(clip_c=1.0), dict(erc_low=1.1, erc_high=1.05), dict(erc_low=0.0),
                                    dict(beta1=-1.0), dict(group_size=1), dict(steps=0),
                                    dict(preset="tiny", num_minibatches=3)])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        E.Config(**kwargs)


def test_cli_bad_algo_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--preset", "tiny", "--eps-low", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "eps-low" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ policy losses: SPEC §3 table
@pytest.mark.parametrize("algo", TOKEN_MEAN_ALGOS)
def test_gradient_matches_spec_table(algo):
    cfg = E.Config(algo=algo)
    logp, old, adv, mask = grid()
    loss, grad, _ = loss_and_grad(logp, old, adv, mask, cfg)
    r = torch.exp(logp - old).detach()
    A = adv[:, None].expand_as(r)
    N = mask.sum()
    expected = -table_weight(algo, r, A, cfg) * A / N * mask
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    expected_loss = (reference_token_loss(algo, r, A, logp.detach(), cfg) * mask).sum() / N
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-12, atol=1e-15)


def test_bounds_are_hit_exactly_in_the_grid():
    logp, old, _, _ = grid()
    r = torch.exp(logp - old)[0, :len(RATIOS)].tolist()
    for bound in (0.8, 1.2, 1.28):
        assert bound in r  # the table's inclusive-bound rows are really exercised


def test_cegppo_betas_are_not_swapped():
    """beta1 scales A<0 / r<lo, beta2 scales A>0 / r>hi (SPEC §3.4)."""
    cfg = E.Config(algo="cegppo", beta1=0.3, beta2=0.7)
    logp = torch.log(torch.tensor([[0.5], [2.0]], dtype=torch.float64))  # r = 0.5 (A<0), r = 2.0 (A>0)
    old = torch.zeros(2, 1, dtype=torch.float64)
    _, grad, _ = loss_and_grad(logp, old, torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.ones(2, 1), cfg)
    torch.testing.assert_close(grad[:, 0], torch.tensor([-(0.3 * 0.8) * -1 / 2, -(0.7 * 1.2) / 2], dtype=torch.float64))


def test_padding_gets_no_gradient_and_is_finite():
    for algo in ALGOS:
        logp, old, adv, mask = grid(extra_pad=3)
        loss, grad, _ = loss_and_grad(logp, old, adv, mask, E.Config(algo=algo))
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert (grad[mask == 0] == 0).all()


def test_clip_frac_counts_active_clips():
    cfg = E.Config(algo="grpo")
    logp, old, adv, mask = grid()
    _, _, stats = loss_and_grad(logp, old, adv, mask, cfg)
    r = torch.tensor(RATIOS, dtype=torch.float64)
    expected = (((r > 1.2).sum() + (r < 0.8).sum()) / (3 * len(RATIOS))).item()  # row A>0 + row A<0; A=0 none
    assert stats["clip_frac"] == pytest.approx(expected)


# ------------------------------------------------------------------ GSPO (SPEC §3.6)
def test_gspo_sequence_ratio_gradient_and_aggregation():
    cfg = E.Config(algo="gspo", eps_low=0.05, eps_high=0.05)
    g = torch.Generator().manual_seed(1)
    B, T = 4, 6
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    offset = torch.tensor([[0.1], [-0.1], [0.01], [0.02]], dtype=torch.float64)  # s ~ 1.1, 0.9, 1.01, 1.02
    logp = old + offset + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.03
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 2 + [0] * 4])
    logp[mask == 0] = 5.0  # garbage on padding must not enter the sequence ratio
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=torch.float64)
    loss, grad, _ = loss_and_grad(logp, old, adv, mask, cfg)
    lengths = mask.sum(1).double()
    s = torch.exp(((logp - old) * mask).sum(1) / lengths)  # geometric mean of valid-token ratios
    clipped = ((adv > 0) & (s > 1.05)) | ((adv < 0) & (s < 0.95))
    seq_loss = torch.maximum(-adv * s, -adv * s.clamp(0.95, 1.05))
    torch.testing.assert_close(loss.detach(), seq_loss.mean())  # mean over sequences
    expected = (-adv * s * ~clipped / lengths / B)[:, None] * mask  # d/dlogp_t of s_i is s_i / |y_i|
    torch.testing.assert_close(grad, expected)
    assert clipped.tolist() == [True, True, False, False]


# ------------------------------------------------------------------ ERC (SPEC §4)
@pytest.mark.parametrize("algo", ALGOS)
def test_erc_masks_gradient_keeps_value_and_denominator(algo):
    logp, old, adv, mask = grid()
    g = torch.Generator().manual_seed(2)
    old_entropy = torch.rand(logp.shape, generator=g, dtype=torch.float64) + 0.1
    rho = torch.empty_like(old_entropy).uniform_(0.9, 1.1, generator=g)
    entropy = old_entropy * rho
    rho = (entropy + 1e-8) / (old_entropy + 1e-8)
    # put the band edges exactly on two tokens' ratios: the band is strict, so both must be clipped
    rho[0, 0], rho[0, 1], rho[0, 2] = rho.min(), rho.max(), 1.0
    entropy[0, :3] = rho[0, :3] * (old_entropy[0, :3] + 1e-8) - 1e-8
    rho = (entropy + 1e-8) / (old_entropy + 1e-8)
    low, high = rho[0, 0].item(), rho[0, 1].item()
    assert rho.min() == low and rho.max() == high and rho[0, 2] == 1.0 and low < 0.95 and high > 1.05
    plain = E.Config(algo=algo)
    with_erc = E.Config(algo=algo, erc=True, erc_low=low, erc_high=high)
    loss0, grad0, _ = loss_and_grad(logp, old, adv, mask, plain)
    loss1, grad1, stats = loss_and_grad(logp, old, adv, mask, with_erc, entropy=entropy, old_entropy=old_entropy)
    inside = (rho > low) & (rho < high)
    torch.testing.assert_close(grad1, grad0 * inside)  # same denominator: kept tokens' gradient unchanged
    torch.testing.assert_close(loss1, loss0)  # value unchanged
    valid = mask.bool()
    assert stats["erc_clip_frac"] == pytest.approx(1 - (inside & valid).sum().item() / valid.sum().item())
    assert not inside[0, 0] and not inside[0, 1] and inside[0, 2]


def test_erc_zero_entropy_is_finite_and_kept():
    cfg = E.Config(algo="grpo", erc=True)
    logp, old, adv, mask = grid()
    zero = torch.zeros_like(logp)
    loss, grad, stats = loss_and_grad(logp, old, adv, mask, cfg, entropy=zero, old_entropy=zero)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and stats["erc_clip_frac"] == 0.0
    # near-zero entropies: SPEC's 1e-8 decides, (1e-9 + 1e-8) / (1.2e-9 + 1e-8) = 0.982 is inside the band
    _, grad_tiny, stats = loss_and_grad(logp, old, adv, mask, cfg, entropy=zero + 1e-9, old_entropy=zero + 1.2e-9)
    torch.testing.assert_close(grad_tiny, grad)
    assert stats["erc_clip_frac"] == 0.0


def test_erc_without_entropies_is_a_clear_error():
    logp, old, adv, mask = grid()
    with pytest.raises(ValueError, match="entropy"):
        E.policy_loss(logp, old, adv, mask, E.Config(erc=True))


def test_denominator_under_gradient_accumulation():
    """Two micro-batches with the mini-batch's token count give the gradient of the whole (SPEC §6 trap 6)."""
    cfg = E.Config(algo="grpo")
    logp, old, adv, mask = grid()
    _, full_grad, _ = loss_and_grad(logp, old, adv, mask, cfg)
    parts = [loss_and_grad(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], cfg, denom=mask.sum().item())[1]
             for i in range(3)]
    torch.testing.assert_close(torch.cat(parts), full_grad)


# ------------------------------------------------------------------ advantages (SPEC §2)
def test_group_advantages_unbiased_std_and_zero_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0] + [0.7] * 8 + [1.0] * 8)
    adv = E.group_advantages(rewards, 8)
    g = rewards.view(3, 8).double()
    expected = (g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=True, keepdim=True) + 1e-6)
    expected[1] = 0.0  # in float32 the mean of eight 0.7 is not 0.7: R - mean must still give exactly 0
    torch.testing.assert_close(adv.double(), expected.view(-1), rtol=1e-5, atol=1e-6)
    assert (adv[8:] == 0).all()
    assert adv[0] == pytest.approx((1 - 5 / 8) / (math.sqrt(5 / 8 * 3 / 8 * 8 / 7) + 1e-6), rel=1e-5)
    with pytest.raises(ValueError):
        E.group_advantages(rewards, 1)


def test_dynamic_sampling_keeps_exactly_the_groups_with_varying_rewards():
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.0, 1.0, 0.0])
    expected = [False] * 9 + [True] * 3  # only the last group (0, 1, 0) varies
    assert E.group_varies(rewards, 3).tolist() == expected


def test_step_with_every_group_dropped_skips_the_update(tmp_path, monkeypatch):
    """dapo with all rewards equal: dynamic sampling drops everything, the update is skipped, weights stay."""
    monkeypatch.setattr(E, "reward_fn", lambda completion, answer: 1.0)
    cfg = E.Config(preset="tiny", algo="dapo", steps=2, prompts_per_step=4, out=str(tmp_path))
    model, tokenizer, data, _ = E.setup(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    E.train(cfg, model, tokenizer, data)
    rows = E.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [1, 1] and [r["kept_groups"] for r in rows] == [0, 0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------ response mask (SPEC §1)
def test_response_mask_eos_included_after_excluded_pad_equals_eos():
    eos = 0  # the tiny tokenizer uses the same id for pad and eos
    ids = torch.tensor([[5, 6, eos, eos, eos],   # EOS then padding (same id)
                        [5, 6, 7, 8, 9],         # truncated: no EOS, all real
                        [eos, eos, eos, eos, eos],  # EOS first
                        [5, eos, 7, eos, 9]])    # tokens after the first EOS never count
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    assert torch.equal(E.make_response_mask(ids, [eos]), expected)
    assert torch.equal(E.make_response_mask(torch.tensor([[5, 3, 9, 9]]), [3, 9]), torch.tensor([[1, 1, 0, 0]]))


# ------------------------------------------------------------------ reward (SPEC §6 trap 5)
REWARD_CASES = [  # (completion, gold, expected reward)
    ("so the total is \\boxed{72}.", "72", 1.0),
    ("\\boxed{72}", "72", 1.0),
    ("\\boxed{ 72 }", "72", 1.0),
    ("\\boxed{\\$72}", "72", 1.0),
    ("\\boxed{72.}", "72", 1.0),
    ("\\boxed{1,234}", "1234", 1.0),
    ("\\boxed{1234}", "1,234", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),
    ("\\boxed{\\frac{1}{2}}", "1", 0.0),
    ("\\boxed{3.50}", "3.5", 1.0),
    ("\\boxed{3.5}", "3.50", 1.0),
    ("\\boxed{-4}", "-4", 1.0),
    ("\\boxed{-4}", "4", 0.0),
    ("\\boxed{4}", "-4", 0.0),
    ("first \\boxed{3} then \\boxed{5}", "5", 1.0),
    ("first \\boxed{3} then \\boxed{5}", "3", 0.0),
    ("\\boxed{50\\%}", "50", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
    ("\\boxed{x+1}", "2", 0.0),
    ("\\boxed{}", "0", 0.0),
    ("The answer is 42.", "42", 1.0),
    ("the answer is: $42", "42", 1.0),
    ("The answer is 41, not 42.", "41", 1.0),
    ("#### 72", "72", 1.0),
    ("She paid 3 + 4 = 7 dollars.\n#### 7", "7", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("#### 72\nThen 5 more apples", "72", 1.0),
    ("There are 3 cats and 4 dogs, so 7 animals", "7", 1.0),
    ("There are 3 cats and 4 dogs, so 7 animals", "3", 0.0),
    ("It costs $5.", "5", 1.0),
    ("The total is 1,250 dollars.", "1250", 1.0),
    ("we get 0.75", "0.75", 1.0),
    ("we get .75", "0.75", 1.0),
    ("temperature drops to -12 degrees", "-12", 1.0),
    ("I don't know", "5", 0.0),
    ("", "5", 0.0),
    ("7", "7", 1.0),
    ("77", "7", 0.0),
    ("12", "12", 1.0),
    ("\\boxed{72}", "seventy-two", 0.0),  # gold cannot be parsed: never 1
    ("seventy-two", "seventy-two", 0.0),
    ("\\boxed{}", "", 0.0),
    ("The answer is 10", "10.0", 1.0),
]


@pytest.mark.parametrize("completion,gold,expected", REWARD_CASES)
def test_reward_table(completion, gold, expected):
    assert E.reward_fn(completion, gold) == expected


def test_extract_answer_examples():
    assert E.extract_answer("so \\boxed{\\frac{1}{2}} is it") == "\\frac{1}{2}"
    assert E.extract_answer("#### 1,234") == "1,234"
    assert E.extract_answer("nothing here") is None


# ------------------------------------------------------------------ log-probs and entropies
def tiny_model_and_tokenizer(seed=0):
    torch.manual_seed(seed)
    tok = E.make_tiny_tokenizer()
    tok.padding_side = "left"
    return E.make_tiny_model(len(tok)).eval(), tok


def test_chunked_logp_entropy_equal_naive_float64():
    model, tok = tiny_model_and_tokenizer()
    T = 0.7
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, len(tok), (3, 9), generator=g)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # left padding
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    attention[:, 5:] = response_mask
    logp, ent = E.logp_and_entropy(model, ids, attention, response_mask, T, chunk=3)  # chunk < tokens
    with torch.no_grad():
        pos = (attention.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attention, position_ids=pos).logits.double() / T
    logp_all = logits[:, 4:-1].log_softmax(-1)
    naive_logp = logp_all.gather(-1, ids[:, 5:, None]).squeeze(-1) * response_mask
    naive_ent = -(logp_all.exp() * logp_all).sum(-1) * response_mask
    torch.testing.assert_close(logp.double(), naive_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), naive_ent, atol=1e-5, rtol=0)
    assert (ent[response_mask.bool()] > 0).all() and (logp[response_mask == 0] == 0).all()


def test_chunked_logp_gradient_equals_naive_autograd():
    """The hand-written backward of TokenLogpAndEntropy against autograd through a naive float64 log_softmax."""
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 37, (10,), generator=g)
    upstream = torch.randn(10, generator=g, dtype=torch.float64)
    logp, entropy = E.TokenLogpAndEntropy.apply(hidden, weight, targets, 0.7, 3)  # 4 chunks of <= 3 tokens
    (logp * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp_all = (hidden @ weight.T / 0.7).log_softmax(-1)
    naive_logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    (naive_logp * upstream).sum().backward()
    close = dict(rtol=1e-5, atol=1e-6, check_dtype=False)  # the function works in float32 internally
    torch.testing.assert_close(logp, naive_logp.detach(), **close)
    torch.testing.assert_close(entropy, -(logp_all.exp() * logp_all).sum(-1).detach(), **close)
    torch.testing.assert_close(grads[0], hidden.grad, **close)
    torch.testing.assert_close(grads[1], weight.grad, **close)


def test_rollout_logp_match_generation_logits_with_leaky_generation_config():
    """The scoring forward reproduces the sampler: log_softmax(scores) of generate at the sampled tokens, with
    left padding of different lengths, T != 1 and a generation_config full of top_k / top_p / penalties."""
    model, tok = tiny_model_and_tokenizer(seed=4)
    model.generation_config.top_k, model.generation_config.top_p = 3, 0.5
    model.generation_config.repetition_penalty = 1.7
    cfg = E.Config(preset="tiny", temperature=0.7, group_size=3, max_new_tokens=12)
    captured = {}
    generate = model.generate

    def generate_with_scores(**kw):
        out = generate(**kw, output_scores=True, return_dict_in_generate=True)
        captured["scores"] = torch.stack(out.scores, 1)  # [B, T, V], after temperature and any warper
        return out.sequences

    model.generate = generate_with_scores
    torch.manual_seed(0)
    ids, attention, response_mask = E.rollout(model, tok, ["1+2=", "13+4+2=", "3="], num_samples=cfg.group_size,
                                              temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    assert (attention[:, 0] == 0).any() and (response_mask == 0).any()  # padding on both sides really occurs
    gen_logp_all = captured["scores"].log_softmax(-1)
    targets = ids[:, -response_mask.shape[1]:]
    gen_logp = gen_logp_all.gather(-1, targets[..., None]).squeeze(-1) * response_mask
    gen_entropy = -(gen_logp_all.exp() * gen_logp_all).nan_to_num().sum(-1) * response_mask
    with torch.no_grad():
        logp, entropy = E.logp_and_entropy(model, ids, attention, response_mask, cfg.temperature, chunk=4)
    torch.testing.assert_close(logp, gen_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, gen_entropy, atol=1e-5, rtol=0)


def test_static_cache_rollout_equals_dynamic():
    """--static-cache pads prompts to a multiple of 64 and decodes with a fixed-size KV cache: the same
    responses, masks and log-probs as the default dynamic cache (greedy, and sampled from the same seed)."""
    model, tok = tiny_model_and_tokenizer(seed=6)
    prompts = ["1+2=", "13+4+2=", "3="]
    for temperature, num_samples in ((0.0, 1), (1.0, 2)):  # greedy takes one sample per prompt
        runs = []
        for static in (False, True):
            torch.manual_seed(2)
            runs.append(E.rollout(model, tok, prompts, num_samples, temperature, max_new_tokens=6,
                                  static_cache=static))
        (ids, attention, response_mask), (s_ids, s_attention, s_response_mask) = runs
        assert s_ids.shape[1] == 64 + 6 and ids.shape[1] == 7 + 6  # prompts padded to 64 on the left
        torch.testing.assert_close(s_ids[:, -13:], ids, rtol=0, atol=0)
        torch.testing.assert_close(s_response_mask, response_mask, rtol=0, atol=0)
        with torch.no_grad():
            logp, _ = E.logp_and_entropy(model, ids, attention, response_mask, 1.0, 8)
            s_logp, _ = E.logp_and_entropy(model, s_ids, s_attention, s_response_mask, 1.0, 8)
        torch.testing.assert_close(s_logp, logp, atol=1e-5, rtol=0)


def test_first_minibatch_sees_ratio_one():
    """Old log-probs / entropies (no grad, whole batch) equal the training forward's on a mini-batch before
    any update, so ratio and entropy ratio are 1: they describe the sampler's weights."""
    model, tok = tiny_model_and_tokenizer(seed=5)
    cfg = E.Config(preset="tiny", group_size=4, max_new_tokens=4, micro_batch_size=8)
    torch.manual_seed(1)
    ids, attention, response_mask = E.rollout(model, tok, ["1+2=", "3+4=", "12+1=", "2+2="], num_samples=4,
                                              temperature=1.0, max_new_tokens=4)
    batch = dict(input_ids=ids, attention_mask=attention, response_mask=response_mask)
    old_logp, old_entropy = E.score_old_policy(model, batch, cfg)
    model.train()
    mb = torch.tensor([1, 5, 6, 14])
    logp, entropy = E.logp_and_entropy(model, ids[mb], attention[mb], response_mask[mb], cfg.temperature, 3)
    valid = response_mask[mb].bool()
    ratio = torch.exp(logp - old_logp[mb])[valid]
    assert logp.requires_grad
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy[valid] / old_entropy[mb][valid], torch.ones_like(ratio), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ end to end
def test_tiny_preset_learns_gppo_erc(tmp_path):
    """The README's tiny command: reward climbs from near 0 to >= 0.8 and metrics.jsonl has every field."""
    E.main(["--preset", "tiny", "--algo", "gppo", "--erc", "--out", str(tmp_path)])
    rows = E.read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == E.PRESETS["tiny"]["steps"]
    for key in ("step", "reward", "entropy", "clip_frac", "erc_clip_frac", "grad_norm", "response_len",
                "gen_time", "train_time"):
        assert all(key in row for row in rows)
    first = sum(r["reward"] for r in rows[:10]) / 10
    last = sum(r["reward"] for r in rows[-20:]) / 20
    assert first < 0.2 and last >= 0.8
    assert any(r["erc_clip_frac"] > 0 for r in rows)  # ERC really acted after the first mini-batch


# ------------------------------------------------------------------ reliability: bad input, interruption, resume
def tiny_argv(out, *extra):
    return ["--preset", "tiny", "--out", str(out), *extra]


@pytest.mark.parametrize("extra,expected", [
    (["--algo", "ppo"], "unknown --algo"),
    (["--eps-low", "0"], "--eps-low"),
    (["--eps-low", "1.5"], "--eps-low"),
    (["--eps-high", "-0.1"], "--eps-high"),
    (["--clip-c", "1"], "--clip-c"),
    (["--erc", "--erc-low", "1.1", "--erc-high", "1.05"], "--erc-low"),
    (["--erc-low", "0"], "--erc-low"),
    (["--beta2", "-1"], "--beta1/--beta2"),
    (["--group-size", "1"], "--group-size"),
    (["--steps", "0"], "must be > 0"),
    (["--prompts-per-step", "-4"], "must be > 0"),
    (["--max-new-tokens", "0"], "must be > 0"),
    (["--num-minibatches", "3"], "must divide the rollout batch"),
    (["--dataset", "/nonexistent/data.jsonl"], "does not exist"),
    (["--model", "/nonexistent/model"], "--preset tiny"),
    (["--steps", "abc"], "invalid int value"),
    (["--ercc"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path / "run", *extra))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing half-written


def test_dataset_without_the_field_names_its_fields(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"problem": "1+1=", "solution": "2"}\n')
    with pytest.raises(SystemExit):
        E.main(tiny_argv(tmp_path / "run", "--dataset", str(data), "--prompt-field", "problem"))
    err = capsys.readouterr().err
    assert "no field 'answer'" in err and "problem" in err and "solution" in err


def test_local_dataset_file_trains(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"q": "{a}+{b}=", "a": "#### {a + b}"}}\n' for a in range(5) for b in range(5)))
    rows = E.main(tiny_argv(tmp_path / "run", "--dataset", str(data), "--prompt-field", "q", "--answer-field", "a",
                            "--steps", "2"))
    assert len(rows) == 2 and rows[0]["reward"] > 0  # '#### 7' was parsed to the gold answer '7'


def test_out_with_another_run_is_refused(tmp_path, capsys):
    E.main(tiny_argv(tmp_path, "--steps", "1"))
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path, "--steps", "1"))
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert len(E.main(tiny_argv(tmp_path, "--steps", "2", "--overwrite"))) == 2


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in rows]


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, monkeypatch, capsys):
    """SIGINT during step 15 finishes that step, saves, returns; --resume continues bit for bit on CPU."""
    argv = ["--steps", "30", "--save-every", "10", "--eval-every", "10", "--eval-prompts", "8"]
    whole = E.main(tiny_argv(tmp_path / "whole", *argv))

    calls = {"n": 0}
    group_advantages = E.group_advantages

    def advantages_then_interrupt(rewards, group_size):  # called once per training step
        calls["n"] += 1
        if calls["n"] == 16:  # during step 15
            os.kill(os.getpid(), signal.SIGINT)
        return group_advantages(rewards, group_size)

    monkeypatch.setattr(E, "group_advantages", advantages_then_interrupt)
    first = E.main(tiny_argv(tmp_path / "cut", *argv))
    assert len(first) == 16 and "interrupted after step 15" in capsys.readouterr().out
    assert (tmp_path / "cut" / "latest").read_text() == "checkpoint-16"
    monkeypatch.setattr(E, "group_advantages", group_advantages)
    resumed = E.main(["--out", str(tmp_path / "cut"), "--resume"])
    assert comparable(resumed) == comparable(whole)
    on_disk = E.read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in on_disk] == list(range(30))
    a = E.AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "checkpoint-30")
    b = E.AutoModelForCausalLM.from_pretrained(tmp_path / "cut" / "checkpoint-30")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_nonfinite_updates_are_skipped_then_the_run_stops(tmp_path, monkeypatch, capsys):
    policy_loss = E.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = policy_loss(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(E, "policy_loss", nan_loss)
    cfg = E.Config(preset="tiny", steps=10, max_bad_steps=3, warmup_steps=4, out=str(tmp_path))
    model, tokenizer, data, _ = E.setup(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(SystemExit, match="3 consecutive steps with a non-finite"):
        E.train(cfg, model, tokenizer, data)
    rows = E.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["nonfinite_updates"] for r in rows] == [cfg.num_minibatches] * 3
    assert [r["lr"] for r in rows] == [cfg.lr / 5] * 3  # warm-up does not advance on steps that did not update
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert capsys.readouterr().out.count("warning: step") == 1  # warned once


def test_checkpoint_loads_with_from_pretrained_and_plot_command(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (optional)")
    E.main(tiny_argv(tmp_path, "--steps", "2"))
    model = E.AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2")
    tokenizer = E.AutoTokenizer.from_pretrained(tmp_path / "checkpoint-2")
    assert tokenizer.decode(tokenizer("12+3=").input_ids) == "12+3=" and model.config.vocab_size == len(tokenizer)
    os.remove(tmp_path / "metrics.png")
    E.main(["plot", str(tmp_path)])
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
