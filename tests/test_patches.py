"""The worked patches in patches/: each applied to a copy of erc_minimal.py, run, and checked against its paper's
formula on a hand-made batch."""
import copy

import pytest
import torch

import erc_minimal as E
from helpers import load_tool, patched_script
from test_erc_minimal import check_logp_and_entropy_backward, grid, reference_token_loss, rolled_out_batch, rollout_tensors, table_weight, tiny_argv


def test_ablation_one_sided_erc_band(tmp_path):
    P = patched_script(tmp_path, "one_sided")
    cfg = P.Config(preset="tiny", erc=True)
    old = torch.ones(4)
    fell, rose = P.erc_band_exits(old * torch.tensor([0.9, 0.96, 1.04, 1.2]), old, cfg)
    assert (fell | rose).tolist() == [True, False, False, False]
    rows = P.main(tiny_argv(tmp_path / "run", "--erc", "--steps", "3"))
    assert len(rows) == 3


def test_ablation_k3_kl_to_the_initial_policy_survives_resume(tmp_path):
    """The penalty is >= 0 and grows from 0; after --resume (a fresh process: a freshly imported module) the
    reference is still the initial model, not the checkpoint that training resumed from."""
    P = patched_script(tmp_path, "kl")
    rows = P.main(tiny_argv(tmp_path / "run", "--steps", "3", "--kl-coef", "0.01"))
    assert all(r["kl"] >= 0 for r in rows) and rows[-1]["kl"] > 0
    resumed = patched_script(tmp_path, "kl")
    rows = resumed.main(["--out", str(tmp_path / "run"), "--resume", "--steps", "4"])
    torch.manual_seed(0)
    initial = E.make_tiny_model(13)
    reference = resumed.REFERENCE["model"]
    assert all(torch.equal(p, q) for p, q in zip(initial.parameters(), reference.parameters()))
    checkpoint = E.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-3")
    assert not all(torch.equal(p, q) for p, q in zip(checkpoint.parameters(), reference.parameters()))


def test_ablation_dr_grpo(tmp_path):
    """Dr. GRPO: advantages R - mean (no std), loss normalised by responses x max_new_tokens."""
    P = patched_script(tmp_path, "dr_grpo")
    assert P.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4).tolist() == [0.75, -0.25, -0.25, -0.25]
    cfg = P.Config(preset="tiny", max_new_tokens=20)
    logp, old, adv, mask = grid()
    micro = rollout_tensors(old, adv, mask)
    loss = P.objective(logp, None, micro, micro, cfg)[0]
    expected = (reference_token_loss("grpo", torch.exp(logp - old), adv[:, None], logp, cfg) * mask).sum() / (3 * 20)
    torch.testing.assert_close(loss, expected)
    assert len(P.main(tiny_argv(tmp_path / "run", "--steps", "3"))) == 3


def patched_loss_and_grad(P, logp, old, adv, mask, cfg, entropy=None):
    """A patched module's objective on a hand-made batch: loss, d loss / d logp, stats."""
    logp = logp.clone().requires_grad_(True)
    micro = rollout_tensors(old, adv, mask, old_entropy=entropy)
    loss, stats, _ = P.objective(logp, entropy, micro, micro, cfg)
    loss.backward()
    return loss, logp.grad, {k: v.item() for k, v in stats.items()}


def centred_covariance(logp, adv, mask):
    """Cov(log pi, A) per token as Cui et al. 2025 define it: (A - mean A)(log pi - mean log pi), means over the
    valid tokens, computed here on its own in float64."""
    a = adv[:, None].expand_as(logp).double()
    valid = mask.bool()
    return (a - a[valid].mean()) * (logp.double() - logp.double()[valid].mean())


def test_ablation_clip_cov(tmp_path):
    """Clip-Cov (patches/clip_cov.patch): among the tokens PPO-clip did not stop, those whose centred
    Cov(log pi, A) lies in (lb, ub) are candidates, max(1, ratio x N) of them are picked at random, and their loss
    is 0 in value and gradient; every other token keeps PPO-clip's gradient (no dual clip), N unchanged."""
    P = patched_script(tmp_path, "clip_cov")
    logp, old, adv, mask = grid()
    cov = centred_covariance(logp, adv, mask)
    r = torch.exp((logp - old) * mask)
    cfg = P.Config(algo="clip_cov", clip_cov_ratio=1.0, clip_cov_lb=0.0, clip_cov_ub=1e9)  # every candidate picked
    ppo_stopped = ((adv[:, None] > 0) & (r > 1.2)) | ((adv[:, None] < 0) & (r < 0.8))
    candidate = (cov > 0) & mask.bool() & ~ppo_stopped
    loss, grad, stats = patched_loss_and_grad(P, logp, old, adv, mask, cfg)
    no_dual_clip = copy.copy(cfg)
    no_dual_clip.clip_c = float("inf")
    n = mask.sum()
    expected_grad = -table_weight("grpo", r, adv[:, None], no_dual_clip) * adv[:, None] * mask * ~candidate / n
    torch.testing.assert_close(grad, expected_grad.to(grad.dtype))
    value = torch.maximum(-adv[:, None] * r, -adv[:, None] * r.clamp(0.8, 1.2)) * mask * ~candidate
    torch.testing.assert_close(loss, value.sum() / n)
    assert 0 < candidate.sum() < mask.sum() and stats["cov_clip_frac"] == pytest.approx((candidate.sum() / n).item())
    cfg.clip_cov_ratio = 3 / n.item()  # three of the candidates, at random
    torch.manual_seed(0)
    _, grad, stats = patched_loss_and_grad(P, logp, old, adv, mask, cfg)
    ppo_grad = -table_weight("grpo", r, adv[:, None], no_dual_clip) * adv[:, None] * mask / n
    newly_zero = (grad == 0) & (ppo_grad != 0)  # the picked tokens that had a gradient to lose
    assert stats["cov_clip_frac"] == pytest.approx(3 / n.item()) and not (newly_zero & ~candidate).any()
    assert 0 < newly_zero.sum() <= 3
    torch.testing.assert_close(grad[~newly_zero], ppo_grad[~newly_zero].to(grad.dtype))
    rows = P.main(tiny_argv(tmp_path / "run", "--algo", "clip_cov", "--steps", "3"))
    assert all("cov_clip_frac" in r for r in rows) and E.read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 3


def test_ablation_kl_cov(tmp_path):
    """KL-Cov (patches/kl_cov.patch): no clip; the max(1, ratio x N) tokens of largest centred
    Cov(log pi, A) get the penalty coef x |log r|, so d loss / d log pi = (-A r + coef sign(log r)) / N there and
    -A r / N elsewhere."""
    P = patched_script(tmp_path, "kl_cov")
    logp, old, adv, mask = grid()
    n = mask.sum()
    cfg = P.Config(algo="kl_cov", kl_cov_ratio=4 / n.item(), kl_cov_coef=0.5)
    log_r = (logp - old) * mask
    r = log_r.exp()
    picked = []
    for advantages in (adv, adv + 2.0):  # all positive: only a centred A ranks tokens as the covariance does
        cov = centred_covariance(logp, advantages, mask).masked_fill(mask == 0, -torch.inf)
        top = torch.zeros(cov.numel(), dtype=torch.bool)
        top[cov.flatten().argsort(descending=True)[:4]] = True
        top = top.view_as(cov)
        loss, grad, stats = patched_loss_and_grad(P, logp, old, advantages, mask, cfg)
        expected_value = ((-advantages[:, None] * r + 0.5 * top * log_r.abs()) * mask).sum() / n
        expected_grad = (-advantages[:, None] * r + 0.5 * top * log_r.sign()) * mask / n
        torch.testing.assert_close(loss, expected_value)
        torch.testing.assert_close(grad, expected_grad)
        assert stats["kl_cov_frac"] == pytest.approx(4 / n.item()) and (top & (log_r != 0)).sum() > 0
        picked.append(top)
    assert torch.equal(*picked)  # Cov is blind to the shift; an uncentred A (A x centred log pi) is not:
    uncentred = ((adv + 2.0)[:, None] * (logp - logp[mask.bool()].mean())).masked_fill(mask == 0, -torch.inf)
    assert not set(uncentred.flatten().argsort(descending=True)[:4].tolist()) == set(picked[0].flatten().nonzero()
                                                                                   .flatten().tolist())
    rows = P.main(tiny_argv(tmp_path / "run", "--algo", "kl_cov", "--steps", "3"))
    assert all("kl_cov_frac" in r for r in rows)


def test_ablation_sapo(tmp_path):
    """SAPO (patches/sapo.patch): l = -A f(r), f(r) = 4 / tau sigmoid(tau (r - 1)) with tau_pos for A > 0
    and tau_neg for A < 0, averaged per sequence then over sequences; d l / d log pi = -A r 4 s (1 - s) at every
    token with A != 0, whatever r (no token loses its gradient), equal to -A where r = 1."""
    P = patched_script(tmp_path, "sapo")
    logp, old, adv, mask = grid()
    cfg = P.Config(algo="sapo", tau_pos=1.0, tau_neg=1.05)
    A = adv[:, None]
    r = torch.exp((logp - old) * mask)
    tau = torch.where(A > 0, 1.0, 1.05).double()
    s = torch.sigmoid(tau * (r - 1))
    lengths = mask.sum(1, keepdim=True)
    loss, grad, stats = patched_loss_and_grad(P, logp, old, adv, mask, cfg)
    torch.testing.assert_close(loss, ((-A * 4 / tau * s * mask).sum(1) / lengths[:, 0]).mean())
    torch.testing.assert_close(grad, -A * r * 4 * s * (1 - s) * mask / lengths / len(adv))
    assert ((grad != 0) == ((A != 0) & mask.bool())).all()
    at_one = (r == 1.0) & mask.bool()
    assert at_one.any() and torch.allclose(grad[at_one] * lengths.expand_as(grad)[at_one] * len(adv),
                                           -A.expand_as(grad)[at_one])
    rows = P.main(tiny_argv(tmp_path / "run", "--algo", "sapo", "--steps", "3"))
    assert all(0 < r["sapo_gate"] for r in rows)


def test_ablation_top_entropy_tokens(tmp_path):
    """Top-entropy tokens (patches/top_entropy.patch): only the tokens whose current entropy is at or above
    the micro-batch's (1 - share) quantile keep their loss and gradient; the rest are 0, N unchanged."""
    P = patched_script(tmp_path, "top_entropy")
    logp, old, adv, mask = grid()
    entropy = torch.rand(logp.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    cfg = P.Config(algo="grpo", top_entropy=0.25)
    high = entropy >= torch.quantile(entropy[mask.bool()], 0.75)
    r = torch.exp((logp - old) * mask)
    n = mask.sum()
    loss, grad, stats = patched_loss_and_grad(P, logp, old, adv, mask, cfg, entropy=entropy)
    torch.testing.assert_close(grad, -table_weight("grpo", r, adv[:, None], cfg) * adv[:, None] * mask * high / n)
    value = reference_token_loss("grpo", r, adv[:, None], logp, cfg) * mask * high
    torch.testing.assert_close(loss, value.sum() / n)
    assert stats["top_entropy_frac"] == pytest.approx(((high & mask.bool()).sum() / n).item(), abs=1e-6)
    rows = P.main(tiny_argv(tmp_path / "run", "--steps", "3"))
    assert all(0.2 <= r["top_entropy_frac"] <= 0.5 for r in rows)


def test_compare_tells_a_patched_loss_from_erc_without_edits(tmp_path, capsys):
    """tools/compare.py on tiny runs of a patched loss (SAPO) and of GPPO + ERC, two seeds each: two arms,
    named by what their config.json files differ in, with no edit to compare.py."""
    P = patched_script(tmp_path, "sapo")
    folders = []
    for seed in (0, 1):
        folders.append(tmp_path / f"sapo{seed}")
        P.main(tiny_argv(folders[-1], "--algo", "sapo", "--steps", "3", "--seed", str(seed)))
        folders.append(tmp_path / f"erc{seed}")
        E.main(tiny_argv(folders[-1], "--algo", "gppo", "--erc", "--steps", "3", "--seed", str(seed)))
    compare = load_tool("compare")
    lines = compare.main([str(f) for f in folders])
    assert "algo=sapo" in lines[0] and "algo=gppo" in lines[0] and "(n=2)" in lines[0] and "differs?" in lines[0]
    assert any(line.startswith("| entropy_start |") for line in lines)


def test_entropy_bonus_patch_is_one_flag_and_trains_the_entropy(tmp_path):
    """patches/entropy_bonus.patch: --entropy-coef c adds -c x token-mean entropy of the current policy; with
    A = 0 it is the only gradient, and it equals float64 autograd of -c x mean H through the full softmax at T = 0.7."""
    P = patched_script(tmp_path, "entropy_bonus")
    cfg = P.Config(preset="tiny", prompts_per_step=4, group_size=4, max_new_tokens=4, temperature=0.7,
                   entropy_coef=0.01, logprob_chunk=3)
    model, _, batch, minibatches = rolled_out_batch(cfg)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    batch["old_logp"], batch["old_entropy"] = P.score_old_policy(model, batch, minibatches, cfg)
    ids, attention, response_mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    logp, entropy = P.logp_and_entropy(model, batch, cfg)
    loss, stats, _ = P.objective(logp, entropy, batch, batch, cfg)
    loss.backward()
    model64 = copy.deepcopy(model).double()
    model64.zero_grad()
    n_prompt, valid = ids.shape[1] - response_mask.shape[1], response_mask.bool()
    logq = model64(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(1) - 1).clamp(min=0)
                   ).logits[:, n_prompt - 1:-1][valid].div(0.7).log_softmax(-1)
    mean_entropy = -(logq.exp() * logq).sum(-1).mean()
    (-0.01 * mean_entropy).backward()
    assert stats["entropy_bonus"].item() == pytest.approx(mean_entropy.item(), rel=1e-5)
    for p, p64 in zip(model.parameters(), model64.parameters()):
        torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-3, atol=1e-7)
    assert max(p.grad.abs().max() for p in model.parameters()) > 1e-4


def test_bf16_logits_patch_rounds_the_logits_as_the_authors_runs_do(tmp_path):
    """patches/bf16_logits.patch, --logits-dtype bf16: the output layer's matmul in bf16 (logits rounded to
    bf16) and the softmax in fp32, as in the authors' runs; values equal a float64 softmax of the bf16-rounded
    logits and differ from fp32 logits'."""
    P = patched_script(tmp_path, "bf16_logits")
    g = torch.Generator().manual_seed(9)
    hidden, weight = torch.randn(10, 64, generator=g) * 2, torch.randn(37, 64, generator=g)
    targets = torch.randint(0, 37, (10,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp16, entropy16 = P.TokenLogpAndEntropy.apply(hidden, weight, targets, 0.7, 3, torch.bfloat16)
        logp32, _ = P.TokenLogpAndEntropy.apply(hidden, weight, targets, 0.7, 3, torch.float32)
    logq = ((hidden.bfloat16() @ weight.bfloat16().T).double() / 0.7).log_softmax(-1)
    torch.testing.assert_close(logp16.double(), logq.gather(-1, targets[:, None]).squeeze(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy16.double(), -(logq.exp() * logq).sum(-1), rtol=0, atol=1e-5)
    assert (logp16 - logp32).abs().max() > 1e-3
    rows = P.main(tiny_argv(tmp_path / "run", "--bf16", "--logits-dtype", "bf16", "--steps", "2"))
    assert len(rows) == 2 and E.read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 2


@pytest.mark.parametrize("T", [1.0, 0.7])
@pytest.mark.parametrize("uses", ["entropy", "both"])
def test_entropy_bonus_patch_backward_equals_naive_autograd(T, uses, tmp_path):
    """patches/entropy_bonus.patch adds the entropy's gradient to the chunked output layer: the same check as the
    script's log-prob gradient, on a loss of the entropies alone and of both."""
    check_logp_and_entropy_backward(patched_script(tmp_path, "entropy_bonus"), T, uses)
