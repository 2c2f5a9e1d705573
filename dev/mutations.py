"""Mutation check: change one line of a formula in erc_minimal.py (or an experiment's rule) and confirm the test
suite turns red.

    python dev/mutations.py            # every mutation, about 30 minutes on 2 CPU cores (pytest-xdist)
    python dev/mutations.py erc gspo   # only those whose name contains one of these words

Each mutation is applied to erc_minimal.py in a copy of the repository, the tests run there (the slow end-to-end
and crash-recovery runs are left out), and the failing tests are listed. Exit code 1 if any survives."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XDIST = ["-n", "2"] if importlib.util.find_spec("xdist") else []  # the suite in two processes, as the README runs it
SKIPPED = "not tiny_preset and not killed and not countdown_warm and not real_model"  # slow runs, no formula

# (name, exact text in erc_minimal.py, replacement[, the file instead of erc_minimal.py])
MUTATIONS = [
    ("ppo-clip: flip the sign of the unclipped term",
     "torch.maximum(-A * r, -A * r.clamp(lo, hi))", "torch.maximum(A * r, -A * r.clamp(lo, hi))"),
    ("ppo-clip: min instead of max",
     "torch.maximum(-A * r, -A * r.clamp(lo, hi))", "torch.minimum(-A * r, -A * r.clamp(lo, hi))"),
    ("clip bounds: swap eps_low and eps_high",
     "its advantage\n    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high", "its advantage\n    lo, hi = 1 - cfg.eps_high, 1 + cfg.eps_low"),
    ("cegppo: swap beta1 and beta2",
     "-A * cfg.beta1 * lo * (r / sg_r)", "-A * cfg.beta2 * lo * (r / sg_r)"),
    ("cegppo: beta2 on the high side replaced by beta1",
     "-A * cfg.beta2 * hi * (r / sg_r)", "-A * cfg.beta1 * hi * (r / sg_r)"),
    ("gppo: clipped tokens lose their gradient (no r / sg(r))",
     "-A * cfg.beta1 * lo * (r / sg_r)", "-A * cfg.beta1 * lo * (sg_r / sg_r)"),
    ("gppo: low-side condition uses A > 0",
     "torch.where((A < 0) & (sg_r < lo)", "torch.where((A > 0) & (sg_r < lo)"),
    ("dual clip dropped",
     "if cfg.clip_c is not None:", "if False:"),
    ("dual clip applied to A > 0",
     "torch.where(A < 0, torch.minimum(loss_tok, -A * cfg.clip_c), loss_tok)",
     "torch.where(A > 0, torch.minimum(loss_tok, -A * cfg.clip_c), loss_tok)"),
    ("cispo: IS weight not detached",
     "-A * sg_r.clamp(lo, hi) * logp", "-A * r.clamp(lo, hi) * logp"),
    ("cispo: weight unclipped",
     "-A * sg_r.clamp(lo, hi) * logp", "-A * sg_r * logp"),
    ("gspo: sequence log-ratio not length-normalised",
     "log_s = log_r.sum(1, keepdim=True) / response_mask.sum(1, keepdim=True)", "log_s = log_r.sum(1, keepdim=True)"),
    ("gspo: token mean instead of sequence mean",
     'if cfg.algo == "gspo":  # [GSPO §4] mean over sequences', 'if False:  # [GSPO §4] mean over sequences'),
    ("gspo: sequence count of the micro-batch, not the mini-batch",
     'n_responses = len(minibatch["response_mask"])', 'n_responses = len(micro["response_mask"])'),
    ("erc: re-normalise over kept tokens",
     "policy = (loss_tok * response_mask).sum() / n_tokens",
     "policy = (loss_tok * response_mask).sum() / (response_mask * ~logged.get('erc_clip_frac', False)).sum().clamp(min=1)"),
    ("erc: band edges inclusive instead of strict",
     "return entropy_ratio <= cfg.erc_low, entropy_ratio >= cfg.erc_high",
     "return entropy_ratio < cfg.erc_low, entropy_ratio > cfg.erc_high"),
    ("erc: sides swapped (a fall counted as a rise)",
     "return entropy_ratio <= cfg.erc_low, entropy_ratio >= cfg.erc_high",
     "return entropy_ratio >= cfg.erc_high, entropy_ratio <= cfg.erc_low"),
    ("erc: ratio inverted (H_old / H)",
     "entropy_ratio = (entropy + 1e-8) / (old_entropy + 1e-8)", "entropy_ratio = (old_entropy + 1e-8) / (entropy + 1e-8)"),
    ("erc: clipped tokens zeroed instead of detached (value changes)",
     'torch.where(logged["erc_clip_frac"], loss_tok.detach(), loss_tok)',
     'torch.where(logged["erc_clip_frac"], 0 * loss_tok, loss_tok)'),
    ("erc: no epsilon (0 / 0 entropies)",
     "entropy_ratio = (entropy + 1e-8) / (old_entropy + 1e-8)", "entropy_ratio = entropy / old_entropy"),
    ("advantages: biased std",
     "r.std(1, keepdim=True)", "r.std(1, keepdim=True, unbiased=False)"),
    ("advantages: all-equal groups not forced to 0",
     "return advantages.view(-1).masked_fill(~group_varies(rewards, group_size), 0.0)", "return advantages.view(-1)"),
    ("dynamic sampling keeps every group",
     "return (r != r[:, :1]).any(1).repeat_interleave(group_size)", "return (r == r).any(1).repeat_interleave(group_size)"),
    ("response mask: EOS excluded",
     "eos_before = is_eos.cumsum(1) - is_eos", "eos_before = is_eos.cumsum(1)"),
    ("response mask: from ids != pad",
     "return (eos_before == 0).long()", "return (completion_ids != eos_ids[0]).long()"),
    ("log-probs without temperature",
     "logits = (h.float() @ w.T).div_(temperature)", "logits = (h.float() @ w.T)"),
    ("chunked backward: gradient of logp(y) without the onehot term",
     "p.mul_(-g).scatter_add_(-1, y[:, None], g)", "p.mul_(-g)"),
    ("chunked backward: the softmax recomputed without the temperature",
     "p = (h @ w.T).div_(T).sub_(", "p = (h @ w.T).sub_("),
    ("chunked backward: a loss on the entropy passes silently without its gradient",
     "if grad_entropy.any():", "if False:"),
    ("chunked entropy: softmax numerator not normalised",
     "exp.mul_(logits).sum(-1) / total", "exp.mul_(logits).sum(-1)"),
    ("chunk logits in bf16 under autocast (forward)",
     "logits = (h.float() @ w.T).div_(temperature)", "logits = (h.bfloat16() @ w.bfloat16().T).float().div_(temperature)"),
    ("chunk gradients under autocast (bf16 matmuls in backward)",
     "with torch.autocast(hidden.device.type, enabled=False):  # the gradient's matmuls in fp32 too",
     "with torch.autocast(hidden.device.type, enabled=torch.is_autocast_enabled(hidden.device.type)):"),
    # Dropping only the attention mask is an equivalent mutant under transformers >= 5: it infers sequence starts
    # from position ids that restart at 0, which left padding's clamped positions do. Dropping both is not.
    ("scoring forward ignores left padding (no attention mask, no position ids)",
     "attention_mask=attention_mask, position_ids=position_ids,", "attention_mask=None, position_ids=None,"),
    ("scoring and update forwards keep the KV cache",
     "use_cache=False).last_hidden_state", "use_cache=True).last_hidden_state"),
    ("log-probs and entropies at T = 1 whatever the sampling temperature",
     "targets, cfg.temperature, cfg.logprob_chunk)", "targets, 1.0, cfg.logprob_chunk)"),
    ("rollout: top_k not overridden",
     "top_p=top_p, top_k=0)", "top_p=top_p)"),
    ("rollout: repetition penalty not overridden",
     "repetition_penalty=1.0, max_new_tokens", "max_new_tokens"),
    ("checkpoints: sorted by name, not by step (checkpoint-10 before checkpoint-9)",
     "sorted(names, key=lambda n: int(n.split(\"-\")[1]))", "sorted(names)"),
    ("bf16 sampler: buffers cast too (RoPE inv_freq in bf16)",
     "return copy.deepcopy(model, memo=params)", "return copy.deepcopy(model, memo=params).to(dtype)"),
    ("bf16 sampler: parameters left in fp32",
     "torch.nn.Parameter(p.detach().to(dtype, copy=True), False)", "torch.nn.Parameter(p.detach().clone(), False)"),
    ("bf16 sampler: not refreshed after the update",
     "sampler.load_state_dict(model.state_dict())", "pass"),
    ("reward: \\text{...} not unwrapped",
     'r" \\1 ", answer)  # unwrap', 'r"", answer)  # unwrap'),
    ("reward: a unit word after the number is kept",
     '(?:\\s*\\^\\{?\\d\\}?)?\\s*$", "", s)', '(?:\\s*\\^\\{?\\d\\}?)?\\s*$", "", "x" + s)'),
    ("reward: {,} thousands separator kept",
     'r"\\{,\\}|', 'r"'),
    ("reward: 'Answer:' marker ignored",
     "(?:####|answer is|answer\\s*:)", "(?:####|answer is)"),
    ("reward: first \\boxed{} instead of the last",
     'start = text.rfind("\\\\boxed{")', 'start = text.find("\\\\boxed{")'),
    ("reward: unparsable gold may score",
     "return float(gold is not None and pred == gold)", "return float(pred == gold)"),
    ("token mean: micro-batch denominator under accumulation",
     'n_tokens = minibatch["response_mask"].sum()', 'n_tokens = micro["response_mask"].sum()'),
    ("sft: sign flipped",
     'stats["sft_loss"] = -(logp * correct).sum() / n_correct', 'stats["sft_loss"] = (logp * correct).sum() / n_correct'),
    ("sft: counts every response, not only the correct ones",
     'correct = response_mask * (micro["rewards"] > 0)[:, None]', "correct = response_mask"),
    ("sft: normalised by all tokens instead of the correct ones",
     'stats["sft_loss"] = -(logp * correct).sum() / n_correct', 'stats["sft_loss"] = -(logp * correct).sum() / n_tokens'),
    ("update: grad-norm clip not applied",
     "clip_grad_norm_(model.parameters(), cfg.max_grad_norm)", "clip_grad_norm_(model.parameters(), float('inf'))"),
    ("update: weight decay not passed to AdamW",
     "lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True", "lr=cfg.lr, weight_decay=0.0, fused=True"),
    ("warm-up advances on a step whose updates were all skipped",
     'if record["updates"]:', "if True:"),
    ("metrics: the first mini-batch counted in the after-first clip fractions",
     "each[k][1:].mean().item()", "each[k][0:].mean().item()"),
    ("metrics: grad_norm_max is the mean, not the largest",
     'grad_norm_max=each["grad_norm"].max().item()', 'grad_norm_max=each["grad_norm"].mean().item()'),
    ("metrics: CE-GPPO kinds, positive advantage below the band counted above it",
     "pa_below_frac=(A > 0) & (r < lo)", "pa_below_frac=(A > 0) & (r > hi)", "tools/diagnostics.py"),
    ("metrics: no_signal_frac counts the groups that vary",
     "no_signal_frac=1 - varies.float().mean().item()", "no_signal_frac=varies.float().mean().item()"),
    ("evaluation: pass@k is the mean over samples",
     "(sampled > 0).any(1).float().mean().item()", "(sampled > 0).float().mean().item()"),
    ("evaluation: rows per generate call not capped (a prompts_per_step of prompts x k)",
     "per_call, rewards = max(1, cfg.prompts_per_step * cfg.group_size // k), []",
     "per_call, rewards = cfg.prompts_per_step, []"),
    ("evaluation: not seeded (draws from wherever training left the generator)",
     "    torch.manual_seed(cfg.seed)\n    def rewards_of", "    def rewards_of"),
    ("diagnostics: KL's direction reversed (KL(pi || pi_old))",
     "kl=(p0 * (logq0 - logq1)).sum(-1)", "kl=(p1 * (logq1 - logq0)).sum(-1)", "tools/diagnostics.py"),
    ("diagnostics: mass moved on un-sampled tokens includes the sampled one",
     "moved_unsampled=moved.abs_().sum(-1) - dp.abs()", "moved_unsampled=moved.abs_().sum(-1)",
     "tools/diagnostics.py"),
    ("dynamic sampling: no cap at --prompts-per-step groups",
     "varies.nonzero().squeeze(1)[:cfg.prompts_per_step * cfg.group_size]", "varies.nonzero().squeeze(1)"),
    ("dynamic sampling: whatever survives cut into --num-minibatches pieces",
     "torch.randperm(n).split(size)", "torch.randperm(n).tensor_split(min(n, cfg.num_minibatches))"),
    ("dynamic sampling: --oversample ignored",
     "n_prompts = cfg.prompts_per_step * cfg.oversample", "n_prompts = cfg.prompts_per_step"),
    ("per-step seed dropped (a step's randomness shifts every later rollout)",
     "torch.manual_seed(cfg.seed * 1_000_000 + step)", "None"),
    ("tokenizer: prompts not checked for a round trip",
     "if text != prompt:", "if False:"),
    ("tokenizer: rebuilt as the model type's instead of loaded as saved",
     "tokenizer = PreTrainedTokenizerFast.from_pretrained(name)", "tokenizer = transformers.AutoTokenizer.from_pretrained(name)"),
    ("--resume with --steps at or below the run's step is not refused",
     "if done >= cfg.steps:", "if False:"),
    ("metrics: entropy averaged over padding too",
     'record["entropy"] = (batch["old_entropy"].sum() / batch["response_mask"].sum()).item()',
     'record["entropy"] = batch["old_entropy"].mean().item()'),
    ("metrics: response_len is the padded width",
     "response_len=response_mask.sum(1).float().mean().item()", "response_len=float(response_mask.shape[1])"),
    ("metrics: cispo clip_frac counts only PPO-clip's two kinds",
     'clip_frac=(sg_r < lo) | (sg_r > hi) if cfg.algo == "cispo" else clipped', "clip_frac=clipped"),
    ("metrics: a 0-d stat from policy_loss summed over micro-batches, not weighted by their tokens",
     'stats[name] = (x * response_mask).sum() / n_tokens', 'stats[name] = (x * response_mask).sum() / n_tokens if x.dim() else x'),
    ("--max-bad-steps: the counter is never reset by a good step",
     'bad_steps = bad_steps + 1 if record.get("nonfinite_updates") else 0',
     'bad_steps = bad_steps + 1 if record.get("nonfinite_updates") else bad_steps'),
    ("--overwrite leaves the older run's checkpoints",
     "        for path in checkpoints(cfg.out):\n            shutil.rmtree(path)", "        pass"),
    ("--save-total-limit keeps one checkpoint too many",
     "checkpoints(cfg.out)[:-cfg.save_total_limit]", "checkpoints(cfg.out)[:-cfg.save_total_limit - 1]"),
    ("diagnostics: entropy ratio inverted (H_old / H) at the band's edges",
     "erc_out = torch.logical_or(*E.erc_band_exits(entropy, old_entropy, cfg))",
     "erc_out = torch.logical_or(*E.erc_band_exits(old_entropy, entropy, cfg))", "tools/diagnostics.py"),
    ("--erc-low given without --erc passes when it equals the default",
     '(cfg.erc or not {"erc_low", "erc_high"} & set(given),', '(cfg.erc or (cfg.erc_low, cfg.erc_high) == (0.95, 1.05),'),
    ("word sums: held-out pairs also in training",
     '((a * 9 + b) % 4 == 0) == (split != "train")', '(a * 9 + b) % 4 == 0 or split == "train"', "tools/smol.py"),
    ("erc_tokens: entropy ratio inverted (H_old / H shown)",
     "rho = ((entropy[j] + 1e-8) / (old_entropy[j] + 1e-8))", "rho = ((old_entropy[j] + 1e-8) / (entropy[j] + 1e-8))",
     "tools/erc_tokens.py"),
    ("erc_tokens: ratio clip marked on the wrong side",
     "stopped = (r > hi) if a > 0 else (r < lo)", "stopped = (r < lo) if a > 0 else (r > hi)", "tools/erc_tokens.py"),
    ("flags: a zero size passes the checks",
     " or value == 0 and f.name in positive", ""),
    ("noise floor: ERC's first-mini-batch share taken from the last mini-batch",
     'each["erc_clip_frac"][0].item()', 'each["erc_clip_frac"][-1].item()'),
    ("noise floor: first mini-batch ratio error not measured",
     'first_log_ratio.append((logp - micro["old_logp"]).detach()',
     'first_log_ratio.append((logp - logp).detach()'),
    ("sapo patch: the gate without its 4 / tau scale",
     "gate = 4 / tau * torch.sigmoid(", "gate = torch.sigmoid(", "patches/sapo.patch"),
    ("sapo patch: the temperatures of A > 0 and A < 0 swapped",
     "torch.where(A > 0, cfg.tau_pos, cfg.tau_neg)", "torch.where(A > 0, cfg.tau_neg, cfg.tau_pos)",
     "patches/sapo.patch"),
    ("clip_cov patch: tokens PPO-clip stopped may be picked",
     "(response_mask > 0) & ~stopped", "(response_mask > 0)", "patches/clip_cov.patch"),
    ("kl_cov patch: covariance not centred on the advantage",
     "cov = (A - (A * response_mask).sum() / n) *", "cov = A *", "patches/kl_cov.patch"),
    ("top_entropy patch: the low-entropy share trained instead",
     "entropy.detach() >= threshold", "entropy.detach() < threshold", "patches/top_entropy.patch"),
    ("to_verl: the ERC band's edges swapped",
     "1e9 if no_erc_gppo else cfg.erc_high", "1e9 if no_erc_gppo else cfg.erc_low", "tools/to_verl.py"),
    ("compare: a difference counts when it exceeds the smaller seed spread",
     "max(spread(a), spread(b))", "min(spread(a), spread(b))", "tools/compare.py"),
    ("smol grid: higher entropy-change SD read as steadier",
     "sign = -differs(on[key], off[key])", "sign = differs(on[key], off[key])", "labs/smol_grid/smol_grid.py"),
    ("smol grid: accuracy for when any metric favours ERC",
     "verdict = 1 if all(x == 1 for x in signs)", "verdict = 1 if 1 in signs", "labs/smol_grid/smol_grid.py"),
    ("smol grid: mechanism ratio upside down",
     "wins = sum(x > 1 for x in ratios", "wins = sum(x < 1 for x in ratios", "labs/smol_grid/smol_grid.py"),
    ("smol grid: the lead's control read the wrong way",
     "if differs(on[key], drop[key]) == -1:", "if differs(on[key], drop[key]) == 1:", "labs/smol_grid/smol_grid.py"),
    ("smol grid: the lead's 'as low as ERC' without ERC's spread",
     "<= statistics.mean(on[key]) + spread(on[key]):", "<= statistics.mean(on[key]):", "labs/smol_grid/smol_grid.py"),
    ("word problems: a + b read in the other order",
     'r"\\b{} ?\\+ ?{}\\b".format(*numbers), text)', 'r"\\b{} ?\\+ ?{}\\b".format(*numbers[::-1]), text)',
     "labs/word_problems/word_problems.py"),
    ("word problems: a response that ended early counted at the limit",
     "(response_mask[:, -1] == 1) & (response_mask.shape[1] == max_new_tokens)", "(response_mask[:, -1] == 1)",
     "labs/word_problems/word_problems.py"),
]


def main():
    chosen = [m for m in MUTATIONS if not sys.argv[1:] or any(word in m[0] for word in sys.argv[1:])]
    survivors = []
    for name, old, new, *where in chosen:
        path = where[0] if where else "erc_minimal.py"
        with open(os.path.join(ROOT, path)) as f:
            source = f.read()
        assert source.count(old) == 1, f"mutation {name!r}: text found {source.count(old)} times in {path}"
        with tempfile.TemporaryDirectory() as tmp:
            tmp = os.path.join(tmp, "repo")  # the whole tree: tests run tools, labs and patches
            shutil.copytree(ROOT, tmp, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache"))
            with open(os.path.join(tmp, path), "w") as f:
                f.write(source.replace(old, new))
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_erc_minimal.py",
                                  "tests", "-k", SKIPPED, *XDIST], cwd=tmp, capture_output=True, text=True)
        failed = sorted({re.sub(r"\[.*", "", line.split("::")[1].split(" ")[0])
                         for line in run.stdout.splitlines() if line.startswith("FAILED")})
        print(f"{'caught' if failed else 'SURVIVED'}: {name}: {', '.join(failed[:3])}"
              f"{f' (+{len(failed) - 3} more)' if len(failed) > 3 else ''}", flush=True)
        if not failed:
            survivors.append(name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations caught")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
