"""See what ERC does: its decisions drawn on a real model's tokens.

    python tools/erc_tokens.py record --preset smol --algo gppo --erc --out runs/erc_tokens   # a run
    python tools/erc_tokens.py page runs/erc_tokens       # -> runs/erc_tokens/erc_tokens.html
    python tools/erc_tokens.py png runs/erc_tokens --step 20 --to labs/erc_tokens/erc_tokens.png
    python tools/erc_tokens.py summary runs/erc_tokens    # shares stopped, by token group

`record` runs erc_minimal's own main with any of its flags (`--preset smol` included) and writes, at the steps
of --record-steps (default 1, 10, 20, 30), a per-token record of a few responses to OUT/erc_tokens.jsonl
(--record-responses, default 4: half with a positive advantage and half with a negative one where the batch has
them, outside the first mini-batch where there are enough): their tokens and, from their mini-batch's own update,
the entropy ratio rho = H / H_old that ERC saw for each token, whether ERC clipped it (rho at or below --erc-low:
entropy fell; at or above --erc-high: it rose), whether the ratio clip stopped it (ratio outside
[1 - eps_low, 1 + eps_high] on the side its advantage pushes), and the response's advantage and reward. The
values are captured inside the run, from the same tensors the loss used: it replaces erc_minimal's train_step,
train_on_batch and policy_loss by recording wrappers, and changes nothing the run computes.

`page` writes a self-contained HTML page: every recorded response as its tokens, each coloured by log rho (blue:
entropy fell; red: it rose; white: unchanged) and marked where ERC clipped it (a solid box), where the ratio clip
did (underlined) or both; the band's edges, the advantage's sign, and each token's rho and r on hovering.
`png` draws the first responses of one step the same way with matplotlib, for the README.
"""
import argparse
import html
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import erc_minimal as E  # noqa: E402


class Recorder:
    """Wraps erc_minimal's train_step and policy_loss: at the chosen steps, the chosen rows' per-token values."""

    def __init__(self, path, steps, responses):
        self.path, self.steps, self.responses = Path(path), set(steps), responses
        self.step, self.pending, self.rows = 0, [], {}

    def install(self):
        train_step, train_on_batch, policy_loss = E.train_step, E.train_on_batch, E.policy_loss

        def recording_train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows):
            self.step += 1
            self.tokenizer = tokenizer
            return train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows)

        def recording_train_on_batch(model, optimizer, batch, minibatches, cfg):
            self.pending, self.rows = [], {}
            if self.step in self.steps:
                self.choose(batch, minibatches, cfg)
            stats = train_on_batch(model, optimizer, batch, minibatches, cfg)
            self.write(cfg)
            return stats

        def recording_policy_loss(logp, old_logp, advantages, response_mask, cfg, entropy, old_entropy):
            loss_tok, logged = policy_loss(logp, old_logp, advantages, response_mask, cfg, entropy, old_entropy)
            if self.pending:  # the micro-batches come in the order train_on_batch runs them
                self.capture(self.pending.pop(0), logp, old_logp, advantages, response_mask, cfg, entropy,
                             old_entropy, logged)
            return loss_tok, logged

        E.train_step, E.train_on_batch, E.policy_loss = (recording_train_step, recording_train_on_batch,
                                                         recording_policy_loss)

    def choose(self, batch, minibatches, cfg):
        """Up to self.responses rows, half of positive and half of negative advantage where there are such."""
        advantages = batch["advantages"].tolist()
        first = set(torch.cat(minibatches[0]).tolist()) if len(minibatches) > 1 else set()  # no clips there
        order = sorted(range(len(advantages)), key=lambda i: i in first)
        positive = [i for i in order if advantages[i] > 0]
        negative = [i for i in order if advantages[i] < 0]
        half = self.responses // 2
        chosen = positive[:half] + negative[:self.responses - min(half, len(positive))]
        chosen += [i for i in order if i not in chosen][:self.responses - len(chosen)]
        for m, micros in enumerate(minibatches):
            for idx in micros:
                self.pending.append((m, idx.tolist()))
        self.chosen, self.batch = set(chosen), batch

    def capture(self, where, logp, old_logp, advantages, response_mask, cfg, entropy, old_entropy, logged):
        """The chosen rows of one micro-batch; ERC's decisions are the loss's own masks (a fork's included)."""
        if cfg.erc and not {"erc_low_frac", "erc_high_frac"} <= logged.keys():
            E.fail("erc_tokens.py: this run's policy_loss logs no erc_low_frac / erc_high_frac masks, so ERC's "
                   "decisions cannot be read from it (docs/forking.md)")
        no_erc = torch.zeros_like(response_mask, dtype=torch.bool)
        fell_all, rose_all = (logged["erc_low_frac"], logged["erc_high_frac"]) if cfg.erc else (no_erc, no_erc)
        minibatch, rows = where
        lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
        for j, row in enumerate(rows):
            if row not in self.chosen:
                continue
            valid = response_mask[j].bool()
            a = advantages[j].item()
            rho = ((entropy[j] + 1e-8) / (old_entropy[j] + 1e-8)).detach()[valid]  # as erc_band_exits
            fell, rose = fell_all[j][valid], rose_all[j][valid]  # what the loss decided
            r = (logp[j] - old_logp[j]).detach().exp()[valid]
            stopped = (r > hi) if a > 0 else (r < lo) if a < 0 else torch.zeros_like(r, dtype=torch.bool)
            ids = self.batch["input_ids"][row, -response_mask.shape[1]:][valid.to(self.batch["input_ids"].device)]
            self.rows[row] = dict(
                step=self.step, row=row, minibatch=minibatch, first_minibatch=minibatch == 0, advantage=a,
                reward=self.batch["rewards"][row].item(), erc=bool(cfg.erc), band=[cfg.erc_low, cfg.erc_high],
                ratio_band=[lo, hi], prompt=self.tokenizer.decode(
                    self.batch["input_ids"][row, :-response_mask.shape[1]].tolist(), skip_special_tokens=True),
                tokens=[self.tokenizer.decode([t]) for t in ids.tolist()], rho=rho.tolist(), r=r.tolist(),
                erc_low=fell.tolist(), erc_high=rose.tolist(),
                ratio_clipped=stopped.tolist())

    def write(self, cfg):
        if self.rows:
            with open(self.path, "a") as f:
                for row in sorted(self.rows):
                    f.write(json.dumps(self.rows[row]) + "\n")


def record(argv):
    parser = argparse.ArgumentParser(prog="erc_tokens.py record", add_help=False)
    parser.add_argument("--record-steps", default="1,10,20,30")
    parser.add_argument("--record-responses", type=int, default=4)
    own, rest = parser.parse_known_args(argv)
    import smol
    smol.install()  # --preset smol works here too
    given = E.parse_args(rest)
    out = Path(given.get("out", E.Config.out))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "erc_tokens.jsonl"
    if not given.get("resume"):
        path.unlink(missing_ok=True)
    Recorder(path, [int(s) for s in own.record_steps.split(",")], own.record_responses).install()
    return E.main(rest)


def read(run):
    return [json.loads(line) for line in Path(run, "erc_tokens.jsonl").read_text().splitlines()]


def colour(rho, band):
    """A colour for log rho: blue below 1, red above, white at 1; full strength at twice the band's width."""
    scale = 2 * max(math.log(band[1]), -math.log(band[0]))
    x = max(-1.0, min(1.0, math.log(max(rho, 1e-12)) / scale))
    shade = int(255 * (1 - abs(x)))
    return f"rgb({shade},{shade},255)" if x < 0 else f"rgb(255,{shade},{shade})"


def ink(rho, band):
    """White text on the darkest colours, black elsewhere."""
    return "#fff" if int(colour(rho, band).split(",")[1]) < 110 else "#000"


def page(run):
    """The HTML page of a run's records: one block per recorded response, grouped by step."""
    records = read(run)
    about = ""
    if Path(run, "config.json").exists():  # erc_minimal writes it
        c = json.loads(Path(run, "config.json").read_text())
        about = (f" (model {c['model']}, --preset {c['preset']}, --algo {c['algo']}{' --erc' * bool(c['erc'])}, "
                 f"{c['num_minibatches']} mini-batches, seed {c['seed']})")
    parts = ["<!doctype html><meta charset='utf-8'><title>ERC's decisions, token by token</title><style>",
             "body{font:14px sans-serif;margin:24px;max-width:1100px} .tok{font-family:monospace;padding:1px 2px;"
             "margin:1px;display:inline-block;border:2px solid transparent;white-space:pre}"
             " .erc{border-color:#111} .ratio{text-decoration:underline 3px #d08000} .resp{margin:10px 0 18px}"
             " .meta{color:#444;font-size:12px;margin-bottom:4px} .legend span{margin-right:14px}</style>",
             "<h1>ERC's decisions, token by token</h1>",
             f"<p>Run: {html.escape(str(run) + about)}. Each token of a recorded response, coloured by the entropy ratio "
             "rho = H / H_old that ERC saw for it in its mini-batch's update (blue: the entropy fell; red: it rose; "
             "white: unchanged). A box: ERC clipped the token (rho outside the band); underlined: the ratio clip "
             "stopped it (r outside [1 - eps_low, 1 + eps_high] on the side its advantage pushes); both: both. "
             "Hover a token for its rho and r. The first mini-batch of a step sees rho = r = 1: nothing is clipped "
             "there.</p>"]
    band = records[0]["band"] if records else [0.95, 1.05]
    parts.append("<p class='legend'>" + "".join(
        f"<span class='tok' style='background:{colour(rho, band)};color:{ink(rho, band)}'>rho {rho:g}</span>"
        for rho in (band[0] ** 2, band[0], 1.0, band[1], band[1] ** 2)) +
        "<span class='tok erc'>ERC clipped</span><span class='tok ratio'>ratio clipped</span>"
        f"<span>ERC band ({band[0]:g}, {band[1]:g})</span></p>")
    for step in sorted({r["step"] for r in records}):
        parts.append(f"<h2>Step {step}</h2>")
        for rec in (r for r in records if r["step"] == step):
            n = len(rec["tokens"])
            erc = [a or b for a, b in zip(rec["erc_low"], rec["erc_high"])] if rec["erc"] else [False] * n
            parts.append(
                f"<div class='resp'><div class='meta'>response {rec['row']}, advantage {rec['advantage']:+.2f} "
                f"({'pushed up' if rec['advantage'] > 0 else 'pushed down' if rec['advantage'] < 0 else 'no push'}), "
                f"reward {rec['reward']:g}, mini-batch {rec['minibatch']}{' (the first)' * rec['first_minibatch']}; "
                f"ERC clipped {sum(erc)} of {n} tokens ({sum(rec['erc_low'])} fell, {sum(rec['erc_high'])} rose), "
                f"the ratio clip {sum(rec['ratio_clipped'])} <details><summary>prompt</summary><pre>"
                f"{html.escape(rec['prompt'])}</pre></details></div>")
            for i, token in enumerate(rec["tokens"]):
                classes = "tok" + " erc" * erc[i] + " ratio" * rec["ratio_clipped"][i]
                parts.append(f"<span class='{classes}' style='background:{colour(rec['rho'][i], rec['band'])};"
                             f"color:{ink(rec['rho'][i], rec['band'])}' "
                             f"title='rho {rec['rho'][i]:.4f}, r {rec['r'][i]:.4f}'>{html.escape(token)}</span>")
            parts.append("</div>")
    path = Path(run, "erc_tokens.html")
    path.write_text("\n".join(parts))
    return path


def png(run, step, to, count=6, width=96):
    """The first `count` recorded responses of `step` drawn as coloured, marked tokens (matplotlib), for the
    README: the page's colours and boxes, one line of text per `width` characters."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = [r for r in read(run) if r["step"] == step][:count]
    lines = []  # (kind, content): "meta" with its text, or "tokens" with [(x, token, record, i)]
    for rec in records:
        n, erc = len(rec["tokens"]), [a or b for a, b in zip(rec["erc_low"], rec["erc_high"])]
        lines.append(("meta", f"advantage {rec['advantage']:+.2f}, reward {rec['reward']:g}, mini-batch "
                      f"{rec['minibatch']}: ERC clipped {sum(erc) if rec['erc'] else 0} of {n} tokens, "
                      f"the ratio clip {sum(rec['ratio_clipped'])}"))
        row, x = [], 0
        for i, token in enumerate(rec["tokens"]):
            shown = token.replace("\n", "\\n") or " "
            if x + len(shown) > width and row:
                lines.append(("tokens", row))
                row, x = [], 0
            row.append((x, shown, rec, i))
            x += len(shown) + 1
        lines.append(("tokens", row))
    fig = plt.figure(figsize=(11, 0.6 + 0.3 * len(lines)))
    ax = fig.add_axes([0.01, 0, 0.98, 1])
    ax.axis("off")
    ax.set_xlim(0, width + 4)
    ax.set_ylim(len(lines) + 1.5, 0)
    band = records[0]["band"]
    ax.text(0, 0.6, f"Step {step}. Colour: entropy ratio H / H_old per token (blue fell, red rose); box: ERC "
            f"clipped it (outside {band[0]:g}-{band[1]:g}); orange bar: the ratio clip stopped it", fontsize=9)
    for y, (kind, content) in enumerate(lines, start=2):
        if kind == "meta":
            ax.text(0, y - 0.15, content, fontsize=8, color="#444")
            continue
        for x, shown, rec, i in content:
            clipped = rec["erc"] and (rec["erc_low"][i] or rec["erc_high"][i])
            rgb = tuple(int(c) / 255 for c in colour(rec["rho"][i], rec["band"])[4:-1].split(","))
            ax.text(x, y, shown, family="monospace", fontsize=10, color=ink(rec["rho"][i], rec["band"]), bbox=dict(
                facecolor=rgb, pad=1.5, edgecolor="black" if clipped else "none", linewidth=1.2))
            if rec["ratio_clipped"][i]:
                ax.plot([x, x + len(shown)], [y + 0.3] * 2, color="#d08000", linewidth=2.5)
    fig.savefig(to, dpi=110)
    return to


def summary(run):
    """Shares of tokens ERC and the ratio clip stopped in the records outside a step's first mini-batch (where
    nothing can be stopped), by group: lines of text."""
    groups = {g: [] for g in ("all", "A > 0", "A < 0", "A = 0", "number", "+ - =", "other token", "positions 1-4",
                              "positions 5+")}
    for rec in read(run):
        if rec["first_minibatch"]:
            continue
        sign = "A > 0" if rec["advantage"] > 0 else "A < 0" if rec["advantage"] < 0 else "A = 0"
        for i, token in enumerate(rec["tokens"]):
            kind = ("number" if token.strip().isdigit() else "+ - =" if token.strip() in ("+", "-", "=")
                    else "other token")
            marks = (rec["erc_low"][i], rec["erc_high"][i], rec["ratio_clipped"][i])
            for group in ("all", sign, kind, "positions 1-4" if i < 4 else "positions 5+"):
                groups[group].append(marks)
    lines = ["group | tokens | ERC clipped | of which entropy fell | ratio clip"]
    for group, marks in groups.items():
        if not marks:
            continue
        n, fell, rose, ratio = len(marks), *(sum(m[k] for m in marks) for k in range(3))
        lines.append(f"{group} | {n} | {(fell + rose) / n:.2f} | {fell / max(1, fell + rose):.2f} | {ratio / n:.3f}")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["record"]:
        return record(argv[1:])
    if argv[:1] == ["summary"] and len(argv) == 2:
        print("\n".join(summary(argv[1])))
        return
    if argv[:1] == ["page"] and len(argv) == 2:
        print(page(argv[1]))
        return
    if argv[:1] == ["png"]:
        parser = argparse.ArgumentParser(prog="erc_tokens.py png")
        parser.add_argument("run")
        parser.add_argument("--step", type=int, required=True)
        parser.add_argument("--count", type=int, default=6, help="responses drawn (default 6)")
        parser.add_argument("--to", required=True)
        args = parser.parse_args(argv[1:])
        print(png(args.run, args.step, args.to, args.count))
        return
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
