"""Reference outputs any implementation of these losses can check itself against, written from the running code.

    python tools/conformance.py write    # conformance/cases.json: hand-made batches and what each loss must give
    python tools/conformance.py table    # the per-token gradient weight of every variant, with and without ERC

`write` builds, for each loss at its defaults and at a few other settings (asymmetric bounds, CE-GPPO's betas, the
dual clip off, wider GSPO bounds, an asymmetric ERC band), with and without ERC, one batch of 12 responses in 3
groups of 4 whose tokens sit in every region of formulas §3's gradient table: each side of each ratio bound and
exactly on it, both signs of the advantage, beyond the dual clip, an all-equal group (A = 0), padding (with
garbage log-probs), a response of one token, and entropy ratios inside ERC's band, on both sides of it and
exactly on its edges. Every expected number comes from erc_minimal's own `policy_loss` and `objective` in
float64; conformance/README.md gives the schema and a worked check. The suite fails if the file and the code
disagree, so a changed formula needs the file written again on purpose.

`table` computes the weight F in d loss / d logp = -F * A / N by autograd through `policy_loss`, one token per
region, and prints it as the formula sheet writes it (r, lo, hi, beta1 * lo, ...): the §3 table, from the code.
"""
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import erc_minimal as E  # noqa: E402

CASES = ROOT / "conformance" / "cases.json"
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # what a float32 implementation meets away from the edges (see README)
GROUP_SIZE = 4
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # A of both signs; the last group all equal
LENGTHS = [6, 5, 6, 1, 6, 3, 6, 4, 6, 2, 5, 6]  # padding after these; one response of a single token
# (name, settings): each loss at its defaults and elsewhere; ERC added to each below
SETTINGS = [
    ("grpo", dict(algo="grpo")), ("grpo_asymmetric", dict(algo="grpo", eps_low=0.1, eps_high=0.3)),
    ("grpo_no_dual_clip", dict(algo="grpo", clip_c=None)), ("dapo", dict(algo="dapo")),
    ("gppo", dict(algo="gppo")), ("gppo_asymmetric", dict(algo="gppo", eps_low=0.15, eps_high=0.25, clip_c=3.0)),
    ("cegppo", dict(algo="cegppo")), ("cegppo_betas", dict(algo="cegppo", beta1=0.75, beta2=1.25)),
    ("cispo", dict(algo="cispo")), ("cispo_two_sided", dict(algo="cispo", eps_low=0.2, eps_high=0.28)),
    ("gspo", dict(algo="gspo")), ("gspo_wide", dict(algo="gspo", eps_low=0.05, eps_high=0.08)),
]
ERC_BANDS = [("erc", dict(erc=True)), ("erc_asymmetric", dict(erc=True, erc_low=0.9, erc_high=1.02))]


def config(settings):
    """A Config of these settings; clip_c None (the dual clip off) is set after the defaults filled it in."""
    cfg = E.Config(**{k: v for k, v in settings.items() if k != "clip_c" or v is not None})
    if "clip_c" in settings and settings["clip_c"] is None:
        cfg.clip_c = None
    return cfg


def ratio_kinds(cfg):
    """Token ratios in every region of the §3 table for this setting, in a fixed order: inside, on each bound,
    below lo, above hi (still under the dual clip's c), beyond c."""
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    c = cfg.clip_c or 2 * hi + 2  # no dual clip: any large ratio
    on_lo, below_lo = (lo, lo * 0.9) if lo > 0 else (1.0, 0.5)  # cispo's default has no lower bound (lo = 0)
    return [(max(lo, 0) + hi) / 2, on_lo, hi, below_lo, (hi + min(c, 2 * hi)) / 2, c * 1.5]


def batch(cfg):
    """The case's inputs as float64 tensors: log-probs whose ratios sit in every region, entropies whose ratios
    sit inside, outside and on the edges of ERC's band, rewards and their group advantages, the response mask."""
    B, T = len(REWARDS), max(LENGTHS)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS], dtype=torch.float64)
    old_logp = -torch.tensor([[0.3 + 0.1 * ((i + 2 * t) % 7) for t in range(T)] for i in range(B)], dtype=torch.float64)
    kinds = ratio_kinds(cfg)
    if cfg.algo == "gspo":  # the sequence ratio decides: a response's tokens share it, around its geometric mean
        s = torch.tensor([kinds[k] for k in (4, 3, 4, 1, 2, 3, 0, 2, 0, 1, 2, 3)], dtype=torch.float64)
        wiggle = torch.tensor([[0.02 * ((t % 3) - 1) for t in range(T)] for _ in range(B)], dtype=torch.float64)
        wiggle = (wiggle - (wiggle * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)) * mask
        log_r = s.log()[:, None] + wiggle
    else:
        log_r = torch.tensor([[math.log(kinds[(t + i) % len(kinds)]) for t in range(T)] for i in range(B)],
                             dtype=torch.float64)
    logp = torch.where(mask > 0, old_logp + log_r, torch.full_like(old_logp, -50.0))  # garbage on padding
    old_entropy = torch.tensor([[0.2 + 0.05 * ((3 * i + t) % 11) for t in range(T)] for i in range(B)],
                               dtype=torch.float64)
    rho_kinds = [1.0, 0.99, cfg.erc_low, cfg.erc_high, cfg.erc_low - 0.05, cfg.erc_high + 0.05, 1.01]
    rho = torch.tensor([[rho_kinds[(2 * i + t) % len(rho_kinds)] for t in range(T)] for i in range(B)],
                       dtype=torch.float64)
    entropy = rho * (old_entropy + 1e-8) - 1e-8  # so that (H + 1e-8) / (H_old + 1e-8) is the intended ratio
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    return dict(log_prob=logp, old_log_prob=old_logp, response_mask=mask, entropy=entropy, old_entropy=old_entropy,
                rewards=rewards, advantages=E.group_advantages(rewards, GROUP_SIZE))


def expected(cfg, inputs):
    """What erc_minimal computes on these inputs, in float64: per-token loss and gradient, the aggregated loss and
    its normaliser, the ratio-clip and ERC masks."""
    logp = inputs["log_prob"].clone().requires_grad_(True)
    mask = inputs["response_mask"]
    loss_tok, logged = E.policy_loss(logp, inputs["old_log_prob"], inputs["advantages"], mask, cfg,
                                     inputs["entropy"], inputs["old_entropy"])
    micro = dict(old_logp=inputs["old_log_prob"], advantages=inputs["advantages"], response_mask=mask,
                 old_entropy=inputs["old_entropy"], rewards=inputs["rewards"])
    loss, _, _ = E.objective(logp, inputs["entropy"], micro, micro, cfg)
    loss.backward()
    rho = (inputs["entropy"] + 1e-8) / (inputs["old_entropy"] + 1e-8)
    log_r = (logp.detach() - inputs["old_log_prob"]) * mask
    if cfg.algo == "gspo":  # the sequence ratio is what meets the bounds
        log_r = (log_r.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).expand_as(log_r)
    r = log_r.exp()
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    edge = torch.isclose(r, torch.tensor(lo, dtype=r.dtype), rtol=0, atol=1e-12) | \
        torch.isclose(r, torch.tensor(hi, dtype=r.dtype), rtol=0, atol=1e-12)
    if cfg.erc:
        edge |= torch.isclose(rho, torch.tensor(cfg.erc_low, dtype=r.dtype), rtol=0, atol=1e-12) | \
            torch.isclose(rho, torch.tensor(cfg.erc_high, dtype=r.dtype), rtol=0, atol=1e-12)
    out = dict(loss=loss.item(), normaliser=len(mask) if cfg.algo == "gspo" else mask.sum().item(),
               loss_per_token=(loss_tok.detach() * mask), grad_per_token=logp.grad,
               ratio_clipped=logged["clip_frac"] & (mask > 0), edge=edge & (mask > 0))
    if cfg.erc:
        out.update(erc_low=logged["erc_low_frac"] & (mask > 0), erc_high=logged["erc_high_frac"] & (mask > 0))
    return out


def plain(x):
    """JSON-ready expected values: tensors as nested lists, floats with 12 significant digits (well below the
    tolerance; the inputs are stored exactly), booleans as they are."""
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, list):
        return [plain(v) for v in x]
    return float(f"{x:.12g}") if isinstance(x, float) else x


def cases():
    out = []
    for name, settings in SETTINGS:
        for suffix, band in [("", {})] + ERC_BANDS[:1] + ([ERC_BANDS[1]] if name == "gppo" else []):
            cfg = config({**settings, **band})
            inputs = batch(cfg)
            shown = {k: getattr(cfg, k) for k in ("algo", "eps_low", "eps_high", "clip_c", "beta1", "beta2", "erc",
                                                  "erc_low", "erc_high")}
            out.append(dict(name=name + (f"+{suffix}" if suffix else ""), settings=shown, group_size=GROUP_SIZE,
                            inputs={k: v.tolist() for k, v in inputs.items()},  # exact: edges stay edges
                            expected={k: plain(v) for k, v in expected(cfg, inputs).items()}))
    return out


def document():
    return dict(
        about="Reference outputs of erc_minimal.py's policy losses, with and without ERC (conformance/README.md).",
        made_by="python tools/conformance.py write", tolerance=TOLERANCE,
        tolerance_note="for a float32 implementation on tokens whose `edge` is false; edge tokens sit exactly on a "
                       "ratio bound or an ERC band edge, where float32 rounding may pick either side",
        cases=cases())


def text(doc):
    return json.dumps(doc, separators=(",", ":")) + "\n"


# ------------------------------------------------------------------ the gradient table from the code
REGIONS = [  # (formulas §3's row, the sign of A, how to place r given lo, hi, c)
    ("lo ≤ r ≤ hi", 1.0, lambda lo, hi, c: (max(lo, 0) + hi) / 2),
    ("A > 0, r > hi", 1.0, lambda lo, hi, c: hi * 1.2),
    ("A < 0, r < lo", -1.0, lambda lo, hi, c: lo * 0.8),
    ("A > 0, r < lo", 1.0, lambda lo, hi, c: lo * 0.8),
    ("A < 0, hi < r ≤ c", -1.0, lambda lo, hi, c: (hi + c) / 2),
    ("A < 0, r > c (dual clip)", -1.0, lambda lo, hi, c: c * 1.5),
]
VARIANTS = [("grpo", dict(algo="grpo")), ("dapo", dict(algo="dapo")), ("gppo", dict(algo="gppo")),
            ("cegppo", dict(algo="cegppo")), ("cispo", dict(algo="cispo", eps_low=0.2, eps_high=0.28)),
            ("gspo", dict(algo="gspo", eps_low=0.05, eps_high=0.08))]  # a one-token response: r is s


def weight(cfg, r, A, rho=1.0):
    """F for one token of ratio r, advantage A and entropy ratio rho: -(d l / d logp) / A by autograd."""
    logp = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    entropy = torch.full((1, 1), rho, dtype=torch.float64)
    loss_tok, _ = E.policy_loss(logp, old, torch.tensor([A], dtype=torch.float64), torch.ones(1, 1), cfg, entropy,
                                torch.ones(1, 1, dtype=torch.float64))
    loss_tok.sum().backward()
    return -logp.grad.item() / A


def name_of(F, r, cfg):
    """F as the formula sheet writes it, where it is one of the sheet's expressions."""
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    betas = {"β2 · hi": cfg.beta2 * hi, "β1 · lo": cfg.beta1 * lo} if cfg.algo == "cegppo" else {}
    names = {**betas, "r": r, "0": 0.0, "hi": hi, "lo": lo}
    return next((n for n, v in names.items() if abs(F - v) < 1e-12), f"{F:.6g}")


def gradient_table():
    """{variant (+ERC): {region: F as the sheet writes it}}, and for ERC the column 'ρ outside the band'."""
    table = {}
    for name, settings in VARIANTS:
        for erc in (False, True):
            cfg = E.Config(**settings, erc=erc)
            lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
            row = {}
            for region, A, place in REGIONS:
                r = place(lo, hi, cfg.clip_c or 2 * hi + 2)
                row[region] = name_of(weight(cfg, r, A), r, cfg)
            if erc:  # a token whose entropy ratio left the band loses its gradient whatever its region
                row["ρ outside the band"] = "0" if all(weight(cfg, place(lo, hi, cfg.clip_c or 2 * hi + 2), A, rho)
                                                       == 0 for _, A, place in REGIONS for rho in (0.9, 1.1)) else "≠ 0"
            table[name + (" + ERC" if erc else "")] = row
    return table


def print_table():
    table = gradient_table()
    columns = list(dict.fromkeys(k for row in table.values() for k in row))
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(row.get(c, "") for c in columns) + " |" for name, row in table.items()]
    print("F in d loss / d logp = -F * A / N, by autograd through erc_minimal.policy_loss (cispo at eps 0.2 / 0.28, "
          "gspo at 0.05 / 0.08 on one-token responses, where r is the sequence ratio s and N the responses):")
    print("\n".join(lines))
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["write"]:
        CASES.parent.mkdir(exist_ok=True)
        CASES.write_text(text(document()))
        print(f"wrote {CASES.relative_to(ROOT)} ({CASES.stat().st_size // 1024} KB)")
    elif argv == ["table"]:
        return print_table()
    else:
        print("usage: python tools/conformance.py write | table", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
