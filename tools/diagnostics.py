"""What ERC sees that the ratio clip does not: erc_minimal's run with per-step diagnostics (formulas §4.1).

    python tools/diagnostics.py --preset tiny --algo gppo --erc --out runs/diag    # any erc_minimal flag
    python tools/diagnostics.py --preset smol --algo gppo --erc                    # the smol preset too

After each step's updates, from the full next-token distributions of pi_old (the policy that sampled the batch)
and pi (after the updates) at every response token: KL(pi_old || pi), the sampled token's change p - p_old,
the probability moved on the other tokens sum_{v != y} |p_v - p_old,v|, and the entropy; logged as token means
`diag_{quantity}_{group}` over all tokens and over the tokens ERC's band would clip (`erc_clipped`: on either
side of the band, as the run's own policy_loss decides) or keep (`erc_kept`), whose ratio is outside / inside
[1 - eps_low, 1 + eps_high] (`ratio_out`, `ratio_in`), and that ERC clips while the ratio does not
(`erc_only`), with each group's share of tokens (`diag_{group}_frac`). Every step also logs CE-GPPO's four kinds
of token (its §3): positive / negative advantage, ratio above / below the band (`pa_above_frac`,
`pa_below_frac`, `na_above_frac`, `na_below_frac`).

It works as a forker would: `install()` replaces erc_minimal's `train_on_batch` (a frozen copy of pi_old before
the updates, the diagnostics after) and `policy_loss` (the token kinds added to what it logs). Training itself is
unchanged, its update part about 1.6x slower on the tiny preset (python bench/diagnostics_cost.py).
"""
import dataclasses
import itertools
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import erc_minimal as E  # noqa: E402


@torch.no_grad()
def diagnostics(old_model, model, batch, cfg):
    """The diag_* means of a step: from full softmaxes of pi_old and pi at each response token, a chunk at a time.
    Which tokens ERC's band clips is read from the run's own policy_loss (its `erc_clip_frac` mask, with --erc
    on), so a fork that changes how ERC decides is followed; one whose policy_loss logs no such mask is refused."""
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    erc_cfg = dataclasses.replace(cfg, erc=True)  # the band's decisions, also for a run without ERC
    rows, sums = torch.arange(len(batch["response_mask"])), {}  # sums[quantity, group]: a sum over tokens
    w_old, w_new = (m.get_output_embeddings().weight.float() for m in (old_model, model))
    for idx in rows.split(cfg.micro_batch_size or len(rows)):
        micro = E.take(batch, idx)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            h_old, y = E.response_hidden(old_model, micro["input_ids"], micro["attention_mask"],
                                         micro["response_mask"])
            h_new, _ = E.response_hidden(model, micro["input_ids"], micro["attention_mask"], micro["response_mask"])
        per_token = {}  # the micro-batch's response tokens, in response_hidden's order
        for h0, h1, t in zip(*(x.split(cfg.logprob_chunk) for x in (h_old, h_new, y))):  # [chunk, V] at a time
            logq0 = torch.log_softmax(h0.float() @ w_old.T / cfg.temperature, -1)  # log pi_old
            logq1 = torch.log_softmax(h1.float() @ w_new.T / cfg.temperature, -1)  # log pi
            p0, p1 = logq0.exp(), logq1.exp()
            moved = p1 - p0
            dp = moved.gather(-1, t[:, None]).squeeze(-1)
            chunk = dict(tokens=torch.ones_like(dp), kl=(p0 * (logq0 - logq1)).sum(-1), dp_sampled=dp,
                         moved_unsampled=moved.abs_().sum(-1) - dp.abs(), entropy=-(p1 * logq1).sum(-1),
                         old_entropy=-(p0 * logq0).sum(-1), logp=logq1.gather(-1, t[:, None]).squeeze(-1),
                         old_logp=logq0.gather(-1, t[:, None]).squeeze(-1))
            for name, value in chunk.items():
                per_token.setdefault(name, []).append(value)
        values = {name: torch.cat(parts) for name, parts in per_token.items()}
        mask = micro["response_mask"].bool()
        as_rows = {k: torch.zeros(mask.shape, device=mask.device).masked_scatter(mask, values[k])
                   for k in ("logp", "old_logp", "entropy", "old_entropy")}  # [b, T], as the loss sees them
        _, logged = E.policy_loss(as_rows["logp"], as_rows["old_logp"], micro["advantages"], mask.float(), erc_cfg,
                                  as_rows["entropy"], as_rows["old_entropy"])
        if "erc_clip_frac" not in logged:
            E.fail("diagnostics.py: this run's policy_loss logs no erc_clip_frac mask, so the tokens ERC clips "
                   "cannot be read from it; log the mask under that name (docs/forking.md)")
        erc_out = logged["erc_clip_frac"][mask]
        ratio = (values["logp"] - values["old_logp"]).exp()
        ratio_out = (ratio < lo) | (ratio > hi)
        groups = dict(all=torch.ones_like(erc_out), erc_clipped=erc_out, erc_kept=~erc_out,
                      ratio_out=ratio_out, ratio_in=~ratio_out, erc_only=erc_out & ~ratio_out)
        quantities = ("tokens", "kl", "dp_sampled", "moved_unsampled", "entropy")
        for name, (group, member) in itertools.product(quantities, groups.items()):
            sums[name, group] = sums.get((name, group), 0.0) + values[name][member].sum()
    out = {f"diag_{g}_frac": (sums["tokens", g] / sums["tokens", "all"]).item() for g in groups if g != "all"}
    out.update({f"diag_{name}_{group}": (total / sums["tokens", group]).item()
                for (name, group), total in sums.items() if name != "tokens" and sums["tokens", group] > 0})
    return out


def token_kinds(logp, old_logp, advantages, response_mask, cfg):
    """CE-GPPO's four kinds of token, [B, T] masks: advantage > 0 or < 0, ratio above or below the clip band."""
    A, lo, hi = advantages[:, None], 1 - cfg.eps_low, 1 + cfg.eps_high
    log_r = ((logp - old_logp) * response_mask).detach()  # [B, T]
    if cfg.algo == "gspo":  # the sequence ratio s_i, as policy_loss uses it
        log_r = (log_r.sum(1, keepdim=True) / response_mask.sum(1, keepdim=True)).expand_as(log_r)
    r = log_r.exp()
    return dict(pa_above_frac=(A > 0) & (r > hi), pa_below_frac=(A > 0) & (r < lo),
                na_above_frac=(A < 0) & (r > hi), na_below_frac=(A < 0) & (r < lo))


def install():
    """Replace erc_minimal's train_on_batch and policy_loss by versions that also log the diagnostics (once)."""
    if getattr(E.train_on_batch, "diagnostics", False):
        return
    train_on_batch, policy_loss = E.train_on_batch, E.policy_loss

    def train_on_batch_with_diagnostics(model, optimizer, batch, minibatches, cfg):
        old_model = E.frozen_copy(model, torch.float32)  # pi_old, before this step's updates
        stats = train_on_batch(model, optimizer, batch, minibatches, cfg)
        E.add_stats(stats, diagnostics(old_model, model, batch, cfg))
        return stats

    def policy_loss_with_token_kinds(logp, old_logp, advantages, response_mask, cfg, *entropies):
        loss_tok, logged = policy_loss(logp, old_logp, advantages, response_mask, cfg, *entropies)
        return loss_tok, {**logged, **token_kinds(logp, old_logp, advantages, response_mask, cfg)}

    train_on_batch_with_diagnostics.diagnostics = True
    E.train_on_batch, E.policy_loss = train_on_batch_with_diagnostics, policy_loss_with_token_kinds


def main(argv=None):
    import smol
    smol.install()  # --preset smol works here too
    install()
    return E.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
