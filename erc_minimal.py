"""erc_minimal.py: RL post-training of a small language model on math problems, with Entropy Ratio Clipping
(ERC, Su et al. 2025, arXiv 2512.05591) on top of GRPO, DAPO, GPPO, CE-GPPO, CISPO or GSPO.

    python erc_minimal.py --preset tiny --algo gppo --erc    # CPU, offline, under a minute
    python erc_minimal.py --algo gppo --erc                  # Qwen2.5-0.5B-Instruct on GSM8K, one CUDA GPU
The method first, in the order a step runs, then a fence and the plumbing. Read first: train_step (one step,
whole), policy_loss (every variant, then ERC), objective, logp_and_entropy, group_advantages. [DAPO §3.2]:
the paper section a line implements; "formulas §n": docs/equations.md; a fork starts at docs/forking.md.
Left out on purpose: a KL penalty (no released ERC recipe has one; patches/kl.patch adds it), a value model
(GRPO's group baseline replaces it), vLLM (`generate` samples from exactly the policy being trained), several
devices, trackers (each step is a line of OUT/metrics.jsonl). tools/, labs/, bench/ reuse its functions."""
import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from fractions import Fraction
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

# ================================================================== configuration
PRESETS = {  # the default run: Qwen2.5-0.5B-Instruct on GSM8K with the released ERC recipes' optimiser
    "gsm8k": dict(model="Qwen/Qwen2.5-0.5B-Instruct", dataset="openai/gsm8k",
                  instruction="Please reason step by step, and put your final answer within \\boxed{}.",
                  steps=200, prompts_per_step=16, group_size=8, num_minibatches=8, max_new_tokens=512,
                  lr=1e-6, warmup_steps=10, eval_prompts=256),
    "tiny": dict(model="tiny", dataset="tiny", steps=300, prompts_per_step=32, group_size=8,
                 num_minibatches=4, max_new_tokens=2, lr=3e-4, warmup_steps=0, eval_prompts=64, threads=1),
}
ALGO_DEFAULTS = {  # each loss's settings in its paper or released recipe (formulas §5), for flags left unset
    "grpo":   dict(eps_low=0.2, eps_high=0.2, clip_c=10.0),
    "dapo":   dict(eps_low=0.2, eps_high=0.28, clip_c=10.0, dynamic_sampling=True),
    "gppo":   dict(eps_low=0.2, eps_high=0.2, clip_c=10.0, beta1=1.0, beta2=1.0),
    "cegppo": dict(eps_low=0.2, eps_high=0.2, clip_c=10.0, beta1=0.5, beta2=1.0),
    "cispo":  dict(eps_low=1.0, eps_high=4.0),
    "gspo":   dict(eps_low=3e-4, eps_high=4e-4),
}
RUN_STATE = {}  # what a fork adapts during a run: saved in each checkpoint, restored on --resume

@dataclasses.dataclass
class Config:  # each field is a flag (eps_low: --eps-low) and its comment the flag's help
    preset: str = "gsm8k"  # gsm8k: Qwen2.5-0.5B on GSM8K (GPU); tiny: a 1-minute CPU smoke test
    model: str = None  # hub id or local folder (per --preset)
    dataset: str = None  # hub id, or a local .json/.jsonl/.parquet/.csv file (per --preset)
    prompt_field: str = "question"  # dataset column holding the question
    answer_field: str = "answer"  # dataset column holding the gold answer (after '####' if present)
    instruction: str = None  # text after each question in the user turn (per --preset)
    chat_template_args: str = "{}"  # JSON object for the chat template: '{"enable_thinking": false}' (Qwen3)
    reward: str = "numeric"  # numeric: the number check below; math-verify: symbolic (pip install it)
    # --- the policy loss (formulas §3-§5)
    algo: str = "grpo"  # the policy loss: grpo, dapo, gppo, cegppo, cispo or gspo
    eps_low: float = None  # ratio clip: an offset, the lower bound is 1 - eps_low (per --algo)
    eps_high: float = None  # ratio clip: an offset, the upper bound is 1 + eps_high (per --algo)
    clip_c: float = None  # dual clip for A < 0: grpo, dapo, gppo, cegppo (per --algo)
    beta1: float = None  # gppo/cegppo: gradient weight for A < 0, r < 1 - eps_low (per --algo)
    beta2: float = None  # gppo/cegppo: gradient weight for A > 0, r > 1 + eps_high (per --algo)
    dynamic_sampling: bool = None  # drop groups whose rewards are all equal (on for dapo)
    oversample: int = 1  # dynamic sampling: sample N x --prompts-per-step prompts (the recipes: 2)
    erc: bool = False  # entropy ratio clipping on top of the chosen loss (formulas §4)
    erc_low: float = 0.95  # ERC: a bound, not an offset: a token keeps its gradient if erc_low < H / H_old
    erc_high: float = 1.05  # ERC: a bound, not an offset: a token keeps its gradient if H / H_old < erc_high
    sft_coef: float = 0.0  # weight of the NLL of correct responses (the released ERC recipes: 0.1)
    # --- rollout, batch sizes, precision
    steps: int = None  # training steps, one rollout batch each (per --preset)
    prompts_per_step: int = None  # prompts per rollout batch (per --preset)
    group_size: int = None  # responses sampled per prompt, G (per --preset)
    num_minibatches: int = None  # optimizer steps per rollout batch (per --preset)
    micro_batch_size: int = None  # responses per forward pass (default: a whole mini-batch)
    max_new_tokens: int = None  # max response length (per --preset)
    temperature: float = 1.0  # sampling temperature; log-probs and entropies use the same T
    bf16: bool = None  # bf16 autocast and a bf16 sampler (default: on where CUDA has native bf16)
    logprob_chunk: int = 512  # response tokens per chunk of the output layer (bounds logits memory)
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, slower)
    static_cache: bool = None  # generate with a static KV cache, compiled on a GPU (default: on with CUDA)
    threads: int = None  # CPU threads for torch (default: torch's own; 1 for --preset tiny)
    # --- optimiser (the released recipes: AdamW, lr 1e-6, 10 warm-up steps, weight decay 0.1, clip 1.0)
    lr: float = None  # learning rate (per --preset)
    warmup_steps: int = None  # linear warm-up, in training steps that updated (per --preset)
    weight_decay: float = 0.1  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient-norm clip
    # --- evaluation, checkpoints, output
    eval_every: int = 0  # evaluate on held-out prompts every N steps and at the end (0: never)
    eval_prompts: int = None  # held-out prompts per evaluation, the first N (per --preset)
    eval_samples: int = 4  # samples per prompt for avg@k and pass@k at --eval-temperature
    eval_temperature: float = 1.0  # sampling temperature of avg@k and pass@k
    eval_top_p: float = 1.0  # top-p of avg@k and pass@k (the ERC recipes validate at T 0.6, top-p 0.95)
    eval_dataset: str = None  # held-out data, hub id or local file (default: --dataset's test split)
    log_every: int = 10  # a console line every N steps (metrics.jsonl gets every step)
    save_every: int = 0  # checkpoint every N steps; always at the end and on Ctrl-C / SIGTERM
    save_total_limit: int = 3  # keep the newest N checkpoints
    seed: int = 0  # random seed
    out: str = "runs/latest"  # output folder: metrics.jsonl, config.json, checkpoints
    resume: bool = False  # continue the run in --out from its newest checkpoint (given flags override)
    overwrite: bool = False  # start over in --out even if it holds another run
    given: dataclasses.InitVar[dict] = ()  # the flags typed: one that cannot act is an error
    def __post_init__(self, given):  # --preset and --algo are checked by parse_args's choices
        cuda = torch.cuda.is_available()  # bf16 by default only where it is native, not emulated (T4, V100)
        by_device = dict(static_cache=cuda,
                         bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False))
        for name, value in {**ALGO_DEFAULTS[self.algo], **PRESETS[self.preset], **by_device}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_config(self, given)  # below the fence: a bad value is one clear line

# ================================================================== rollout
def rollout(model, tokenizer, prompts, num_samples, temperature, max_new_tokens, static_cache=False,
            top_p=1.0):
    """num_samples responses per prompt from softmax(logits / T), T = 0: greedy; top_p < 1 only to evaluate.
    Returns input_ids, attention_mask [B, P+T], response_mask [B, T]; B = prompts x num_samples."""
    model.eval()
    # a static cache is compiled per shape: prompts padded to a multiple of 64 bound the shapes (docs/gpu.md)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                    pad_to_multiple_of=64 if static_cache else None).to(model.device)
    # formulas §6.1: every sampling parameter explicit, so the model's generation_config cannot leak in
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False)
    extra = model.generation_config.eos_token_id or []  # instruct models may have several EOS ids
    eos = [tokenizer.eos_token_id, *(extra if isinstance(extra, list) else [extra])]  # repeats are harmless
    sequences = model.generate(**enc, **sampling, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
                               num_return_sequences=num_samples, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=eos, cache_implementation="static" if static_cache else None)
    prompt_mask = enc.attention_mask.repeat_interleave(num_samples, 0)  # [B, P]
    response_mask = make_response_mask(sequences[:, enc.input_ids.shape[1]:], eos)  # [B, T]
    return sequences, torch.cat([prompt_mask, response_mask], 1), response_mask

def make_response_mask(completion_ids, eos_ids):
    """1 up to and including the first EOS, 0 after (formulas §1); from positions: right when pad == EOS."""
    is_eos = torch.isin(completion_ids, completion_ids.new_tensor(eos_ids)).long()  # [B, T]
    eos_before = is_eos.cumsum(1) - is_eos  # [B, T]: EOS tokens strictly before t
    return (eos_before == 0).long()

def frozen_copy(model, dtype):
    """A no-gradient copy, parameters in `dtype`, buffers (RoPE's inv_freq) as they are (formulas §6.9)."""
    params = {id(p): torch.nn.Parameter(p.detach().to(dtype, copy=True), False) for p in model.parameters()}
    return copy.deepcopy(model, memo=params)

# ================================================================== reward
def reward_fn(completion, answer):
    """1.0 if the final answer equals the gold one as a number (to_number, below the fence), else 0.0."""
    gold, pred = to_number(answer), to_number(extract_answer(completion))
    return float(gold is not None and pred == gold)

def math_verify_reward(completion, answer):
    """--reward math-verify: HF's math-verify compares expressions symbolically (MATH, AIME answers)."""
    from math_verify import parse, verify
    return float(verify(parse(f"${answer}$"), parse(completion)))  # an empty (unparsable) gold never verifies

REWARDS = {"numeric": reward_fn}  # experiments register their own here
if importlib.util.find_spec("math_verify"):
    REWARDS["math-verify"] = math_verify_reward

def response_rewards(tokenizer, input_ids, response_mask, answers, num_samples, reward):
    """The reward of every decoded response [B]; `answers` holds one gold answer per prompt."""
    completions = tokenizer.batch_decode(input_ids[:, -response_mask.shape[1]:], skip_special_tokens=True)
    answers = [a for a in answers for _ in range(num_samples)]
    rewards = [REWARDS[reward](c, a) for c, a in zip(completions, answers)]
    return torch.tensor(rewards, device=input_ids.device)

# ================================================================== log-probs and entropies
class TokenLogpAndEntropy(torch.autograd.Function):
    """log p(target) and entropy H of softmax(hidden @ weight.T / T), `chunk` tokens at a time, from fp32
    logits whatever autocast says (formulas §6.7-6.8); backward recomputes each chunk, for log p only."""
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):  # [N, H], [V, H], [N]
        logps, entropies, lses = [], [], []
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits, not autocast's bf16
            w = weight.float()
            for h, y in zip(hidden.split(chunk), targets.split(chunk)):
                logits = (h.float() @ w.T).div_(temperature)  # z [chunk, V]
                top = logits.amax(-1, keepdim=True)  # [chunk, 1]
                exp = (logits - top).exp_()  # [chunk, V]; in place: on a CPU each new block costs page faults
                total = exp.sum(-1)  # [chunk]
                lse = top.squeeze(-1) + total.log()  # log sum_v exp(z_v), [chunk]
                logps.append(logits.gather(-1, y[:, None]).squeeze(-1) - lse)  # log p(y) = z_y - lse
                entropies.append(lse - exp.mul_(logits).sum(-1) / total)  # H = lse - sum_v p_v z_v
                lses.append(lse)
        ctx.save_for_backward(hidden, weight, targets, torch.cat(lses))
        ctx.temperature, ctx.chunk = temperature, chunk
        return torch.cat(logps), torch.cat(entropies)  # [N] each
    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):  # [N] each
        if grad_entropy.any():
            raise NotImplementedError("a loss uses H's gradient: apply patches/entropy_bonus.patch")
        hidden, weight, targets, lse = ctx.saved_tensors
        c, T = ctx.chunk, ctx.temperature
        with torch.autocast(hidden.device.type, enabled=False):  # the gradient's matmuls in fp32 too
            w = weight.float()
            grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(w)  # [N, H], [V, H]
            for i in range(0, len(hidden), c):
                h, y, g = hidden[i:i + c].float(), targets[i:i + c], grad_logp[i:i + c, None] / T  # g [c, 1]
                p = (h @ w.T).div_(T).sub_(lse[i:i + c, None]).exp_()  # the softmax, recomputed, [c, V]
                grad_logits = p.mul_(-g).scatter_add_(-1, y[:, None], g)  # d logp(y)/dz = (onehot(y) - p) / T
                grad_hidden[i:i + c] = grad_logits @ w
                grad_weight.addmm_(grad_logits.T, h)
        return grad_hidden, grad_weight, None, None, None  # fp32 weights (the master copy): fp32 gradients

def response_hidden(model, input_ids, attention_mask, response_mask):
    """Final hidden states at the positions that predict real response tokens [N, H], and those tokens [N]."""
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # formulas §6.3: left padding
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state  # [B, P+T, H]; no KV cache outside generate
    n_prompt = input_ids.shape[1] - response_mask.shape[1]
    valid = response_mask.bool()  # [B, T]
    return hidden[:, n_prompt - 1:-1][valid], input_ids[:, n_prompt:][valid]  # [N, H], [N]

def logp_and_entropy(model, batch, cfg):
    """log p of each response token and the entropy at its position, [B, T] each, 0 off response_mask."""
    mask = batch["response_mask"]  # [B, T]
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):  # fp32 master weights
        hidden, targets = response_hidden(model, batch["input_ids"], batch["attention_mask"], mask)  # [N, H]
    weight = model.get_output_embeddings().weight  # [V, H]; Qwen and Llama output layers have no bias
    logp, entropy = TokenLogpAndEntropy.apply(hidden, weight, targets, cfg.temperature, cfg.logprob_chunk)
    zeros = torch.zeros(mask.shape, device=mask.device)
    return zeros.masked_scatter(mask.bool(), logp), zeros.masked_scatter(mask.bool(), entropy)  # [B, T] each

# ================================================================== advantages
def group_advantages(rewards, group_size):
    """A_i = (R_i - mean_g R) / (std_g R + 1e-6), unbiased std; all-equal groups get exactly 0. [B]"""
    r = rewards.view(-1, group_size)  # [B / G, G]: one row per group [DeepSeekMath §4.1.2; formulas §2]
    advantages = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)  # [B / G, G]
    return advantages.view(-1).masked_fill(~group_varies(rewards, group_size), 0.0)  # [B]

def group_varies(rewards, group_size):
    """[B] True where the response's group has unequal rewards: a learning signal, what DAPO keeps."""
    r = rewards.view(-1, group_size)  # [B / G, G]
    return (r != r[:, :1]).any(1).repeat_interleave(group_size)

# ================================================================== policy losses, and ERC on top
def policy_loss(logp, old_logp, advantages, response_mask, cfg, entropy, old_entropy):
    """The per-token loss l [B, T] of --algo with ERC on top (formulas §3-§4), and what to log: [B, T] masks
    (as their share of response tokens) and 0-d tensors. advantages [B]; the other arguments [B, T]."""
    A = advantages[:, None]  # [B, 1]: the tokens of a response share its advantage
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    log_r = (logp - old_logp) * response_mask  # [B, T]; 0 on padding, so exp never overflows there
    if cfg.algo == "gspo":  # [GSPO §4] s_i = exp(mean_t log r), per token as sg(s_i) pi / sg(pi), GSPO-token
        log_s = log_r.sum(1, keepdim=True) / response_mask.sum(1, keepdim=True)  # [B, 1]
        r = torch.exp(log_s.detach() + logp - logp.detach())  # [B, T]: value s_i, gradient of log pi
    else:
        r = torch.exp(log_r)  # [B, T]: r = pi / pi_old, with its gradient
    sg_r = r.detach()  # sg(r): the same value, no gradient
    # --- each variant's per-token loss l [B, T]; read them side by side
    if cfg.algo in ("grpo", "dapo", "gspo"):  # PPO-clip [DeepSeekMath §4.1; DAPO §3.1 clip-higher]
        loss_tok = torch.maximum(-A * r, -A * r.clamp(lo, hi))
    elif cfg.algo in ("gppo", "cegppo"):  # [CE-GPPO §3; GPPO is beta1 = beta2 = 1, Klear-Reasoner §3.2]
        # a clipped token keeps the clipped value and, through r / sg(r) (value 1), the gradient of r x beta
        loss_tok = torch.where((A < 0) & (sg_r < lo), -A * cfg.beta1 * lo * (r / sg_r),
                   torch.where((A > 0) & (sg_r > hi), -A * cfg.beta2 * hi * (r / sg_r), -A * r))
    elif cfg.algo == "cispo":  # [MiniMax-M1 §3.1] REINFORCE with a clipped stop-gradient IS weight
        loss_tok = -A * sg_r.clamp(lo, hi) * logp
    if cfg.clip_c is not None:  # dual clip [arXiv 1912.09729], in the authors' losses: for A < 0, l <= -A c
        loss_tok = torch.where(A < 0, torch.minimum(loss_tok, -A * cfg.clip_c), loss_tok)
    clipped = ((A > 0) & (sg_r > hi)) | ((A < 0) & (sg_r < lo))  # the tokens PPO-clip stops (GPPO bounds)
    logged = dict(clip_frac=(sg_r < lo) | (sg_r > hi) if cfg.algo == "cispo" else clipped)  # CISPO: IS weight
    # --- ERC [ERC §3]: a token whose entropy ratio leaves (erc_low, erc_high) keeps its loss value but loses
    # its gradient, and still counts in the denominator; on top of any variant, for either sign of A
    if cfg.erc:
        logged["erc_low_frac"], logged["erc_high_frac"] = erc_band_exits(entropy, old_entropy, cfg)
        logged["erc_clip_frac"] = logged["erc_low_frac"] | logged["erc_high_frac"]
        loss_tok = torch.where(logged["erc_clip_frac"], loss_tok.detach(), loss_tok)
    return loss_tok, logged

def erc_band_exits(entropy, old_entropy, cfg):
    """Masks [B, T]: entropy ratio at or below erc_low (entropy fell), at or above erc_high (it rose)."""
    entropy_ratio = (entropy + 1e-8) / (old_entropy + 1e-8)  # [B, T], rho [ERC §3; formulas §4]
    return entropy_ratio <= cfg.erc_low, entropy_ratio >= cfg.erc_high

# ================================================================== objective: the loss and its normaliser
def objective(logp, entropy, micro, minibatch, cfg):
    """(loss, stats, which stats are shares) of a micro-batch, normalised by its mini-batch's counts."""
    response_mask = micro["response_mask"].float()  # [b, T]
    n_tokens = minibatch["response_mask"].sum()  # N: the mini-batch's response tokens (formulas §3)
    n_responses = len(minibatch["response_mask"])
    loss_tok, logged = policy_loss(logp, micro["old_logp"], micro["advantages"], response_mask, cfg, entropy,
                                   micro["old_entropy"])  # [b, T]
    if cfg.algo == "gspo":  # [GSPO §4] mean over sequences of each sequence's token mean
        per_sequence = (loss_tok * response_mask).sum(1) / response_mask.sum(1)  # [b]
        policy = per_sequence.sum() / n_responses
    else:  # token mean over the mini-batch [DAPO §3.3]; ERC-clipped tokens still count in N
        policy = (loss_tok * response_mask).sum() / n_tokens
    loss, stats = policy, dict(policy_loss=policy)
    if cfg.sft_coef:  # [Klear-Reasoner §3.2.3] NLL of the correct responses, not gated by ERC (recipes: 0.1)
        correct = response_mask * (micro["rewards"] > 0)[:, None]  # [b, T]
        n_correct = (minibatch["response_mask"] * (minibatch["rewards"] > 0)[:, None]).sum().clamp(min=1)
        stats["sft_loss"] = -(logp * correct).sum() / n_correct
        loss = loss + cfg.sft_coef * stats["sft_loss"]
    stats["loss"] = loss
    for name, x in logged.items():  # [b]: a mean over the mini-batch's responses; [b, T], 0-d: its tokens
        stats[name] = x.sum() / n_responses if x.dim() == 1 else (x * response_mask).sum() / n_tokens
    shares = [name for name, x in logged.items() if x.dtype == torch.bool]  # masks: the share they mark
    return loss, {k: v.detach().float() for k, v in stats.items()}, shares

# ================================================================== the update
def plan_minibatches(n, cfg):
    """A shuffled epoch in mini-batches of rollout batch / --num-minibatches responses (fewer after dynamic
    sampling, as in the authors' fork), each a list of micro-batches; scoring reuses it (formulas §6.10)."""
    size = cfg.prompts_per_step * cfg.group_size // cfg.num_minibatches
    return [mb.split(cfg.micro_batch_size or size) for mb in torch.randperm(n).split(size)]

def take(batch, index):
    return {k: v[index] for k, v in batch.items()}

def add_stats(record, stats):
    """record.update(stats), except that a name already in the record is an error, never an overwrite."""
    if record.keys() & stats.keys():
        raise KeyError(f"stats {record.keys() & stats.keys()} would overwrite record fields; rename them")
    record.update(stats)

@torch.no_grad()
def score_old_policy(model, batch, minibatches, cfg):
    """old_logp, old_entropy [B, T]: the policy that sampled the batch, before any update (formulas §4)."""
    model.eval()
    old_logp, old_entropy = torch.zeros(2, *batch["response_mask"].shape, device=model.device)  # [B, T]
    for idx in (idx for micros in minibatches for idx in micros):
        old_logp[idx], old_entropy[idx] = logp_and_entropy(model, take(batch, idx), cfg)
    return old_logp, old_entropy

def train_on_batch(model, optimizer, batch, minibatches, cfg):
    """One optimizer step per mini-batch, on the sum of its micro-batches' gradients; the step's stats."""
    model.train()
    per_minibatch, first_log_ratio = [], []
    for micros in minibatches:
        minibatch, totals = take(batch, torch.cat(micros)), {}
        optimizer.zero_grad()
        for idx in micros:
            micro = take(batch, idx)
            logp, entropy = logp_and_entropy(model, micro, cfg)  # [b, T] each
            loss, stats, shares = objective(logp, entropy, micro, minibatch, cfg)
            loss.backward()
            for k, v in stats.items():  # the micro-batches' shares add up to the mini-batch's value
                totals[k] = totals.get(k, 0.0) + v
            if not per_minibatch:  # noise floor: before the first update r = H / H_old = 1, up to rounding
                first_log_ratio.append((logp - micro["old_logp"]).detach()[micro["response_mask"].bool()])
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        if torch.isfinite(totals["grad_norm"]):  # a NaN / inf loss or gradient: skip the update, keep weights
            optimizer.step()
        per_minibatch.append(totals)
    each = {k: torch.stack([mb[k] for mb in per_minibatch]) for k in per_minibatch[0]}  # [mini-batches]
    stats = {k: v.mean().item() for k, v in each.items()}
    for k in shares if len(per_minibatch) > 1 else ():  # the first mini-batch clips nothing: the others' mean
        stats[f"{k}_after_first"] = each[k][1:].mean().item()
    updates = int(each["grad_norm"].isfinite().sum())
    add_stats(stats, dict(grad_norm_max=each["grad_norm"].max().item(), updates=updates,
                          nonfinite_updates=len(per_minibatch) - updates,
                          first_mb_max_ratio_err=torch.cat(first_log_ratio).exp().sub(1).abs().max().item()))
    if "erc_clip_frac" in each:  # what ERC clipped before any update: rounding, not learning
        stats["first_mb_erc_clip_frac"] = each["erc_clip_frac"][0].item()
    return stats

# ================================================================== one training step: the algorithm, whole
def train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows):
    """One step on a batch of prompts (rows: prompt, answer) sampled by `sampler`: the step's metrics."""
    t0 = time.time()
    input_ids, attention_mask, response_mask = rollout(sampler, tokenizer, rows["prompt"], cfg.group_size,
                                                       cfg.temperature, cfg.max_new_tokens, cfg.static_cache)
    rewards = response_rewards(tokenizer, input_ids, response_mask, rows["answer"], cfg.group_size,
                               cfg.reward)  # [B]
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                 rewards=rewards, advantages=group_advantages(rewards, cfg.group_size))
    varies = group_varies(rewards, cfg.group_size)  # [B]
    record = dict(reward=rewards.mean().item(), response_len=response_mask.sum(1).float().mean().item(),
                  no_signal_frac=1 - varies.float().mean().item(), gen_time=time.time() - t0)
    t0 = time.time()
    if cfg.dynamic_sampling:  # [DAPO §3.2] keep the groups whose rewards vary, at most --prompts-per-step
        batch = take(batch, varies.nonzero().squeeze(1)[:cfg.prompts_per_step * cfg.group_size])
    record["kept_groups"] = len(batch["rewards"]) // cfg.group_size
    if not record["kept_groups"]:  # nothing to learn from: no update this step
        return record
    minibatches = plan_minibatches(len(batch["rewards"]), cfg)
    batch["old_logp"], batch["old_entropy"] = score_old_policy(model, batch, minibatches, cfg)  # [B, T]
    record["entropy"] = (batch["old_entropy"].sum() / batch["response_mask"].sum()).item()  # per token
    add_stats(record, train_on_batch(model, optimizer, batch, minibatches, cfg))
    if record["updates"]:
        scheduler.step()  # the warm-up counts training steps that updated
    if sampler is not model:
        sampler.load_state_dict(model.state_dict())  # the sampler follows the policy (cast to bf16 on copy)
    record["train_time"] = time.time() - t0
    return record

# ================================================================== the loop: optimiser, sampler, prompts
def train(cfg, model, tokenizer, data, eval_data=None, stop=()):
    """The loop around train_step. A non-empty `stop` (Ctrl-C, SIGTERM): save after this step, return."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up from lr / (warmup_steps + 1)
        optimizer, lambda step: min(1.0, (step + 1) / (cfg.warmup_steps + 1)))  # counts steps that updated
    start, order, history = start_or_resume(cfg, optimizer, scheduler)
    sampler = frozen_copy(model, torch.bfloat16) if cfg.bf16 else model  # --bf16: half the bytes per token
    bad_steps, t_start = 0, time.time()
    for step in range(start + 1, cfg.steps + 1):  # steps count from 1: console, metrics, checkpoint-STEP
        torch.manual_seed(cfg.seed * 1_000_000 + step)  # each step's own random stream, whatever ran before
        n_prompts = cfg.prompts_per_step * cfg.oversample
        while len(order) < n_prompts:  # epochs of shuffled prompts
            order += torch.randperm(len(data)).tolist()
        rows = data[[order.pop() for _ in range(n_prompts)]]
        record = dict(step=step, **train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows),
                      lr=scheduler.get_last_lr()[0])
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            add_stats(record, evaluate(sampler, tokenizer, eval_data, cfg))
        history.append(record)
        log_step(cfg, record)
        bad_steps = bad_steps + 1 if record.get("nonfinite_updates") else 0
        if bad_steps == 1:
            print(f"warning: step {step}: non-finite loss or gradient, updates skipped")
        if bad_steps == 3:
            raise SystemExit(f"erc_minimal: stopped at step {step}: 3 steps in a row with a non-finite loss "
                             "or gradient (try a lower --lr)")
        if stop or step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
            path = save_checkpoint(cfg, step, model, tokenizer, optimizer, scheduler, order)
        if stop:
            print(f"interrupted after step {step}: saved {path}; continue with --out {cfg.out} --resume")
            return history
    if history:  # the end-of-run line: mean reward of the first and the last 10 steps
        rewards = torch.tensor([r["reward"] for r in history])  # [steps]
        print(f"done in {time.time() - t_start:.0f} s ({cfg.out}): reward {rewards[:10].mean():.3f} -> "
              f"{rewards[-10:].mean():.3f}")
    return history

# ======== Above: the method and its loop. Below, only these change a number: the answer check
# ======== (extract_answer, to_number); the data (read_dataset; load_data's chat template, --instruction, gold
# ======== after '####'); the tiny model; setup's seed and fp32 matmuls kept fp32. The rest: checks, I/O, CLI.
def check_config(cfg, given):
    """Every bad value is a ValueError, which main prints as one line (exit code 2)."""
    positive = ("steps", "prompts_per_step", "num_minibatches", "micro_batch_size", "max_new_tokens",
                "eps_low", "temperature", "logprob_chunk", "max_grad_norm", "eval_prompts", "eval_samples",
                "log_every", "save_total_limit", "oversample")
    for f in dataclasses.fields(cfg):  # every number >= 0; the sizes and a few more > 0
        value = getattr(cfg, f.name) if f.type in (int, float) else None
        if value is not None and (not value >= 0 or value == 0 and f.name in positive):
            raise ValueError(f"{flag(f.name)} must be {'>' if f.name in positive else '>='} 0, got {value}")
    checks = [  # (what must hold, the message if it does not)
        (cfg.eps_low <= 1, f"--eps-low must be in (0, 1], got {cfg.eps_low}"),
        (0 < cfg.eval_top_p <= 1, f"--eval-top-p must be in (0, 1], got {cfg.eval_top_p}"),
        (cfg.clip_c is None or cfg.clip_c > 1, f"--clip-c must be > 1, got {cfg.clip_c}"),
        (0 < cfg.erc_low < 1 < cfg.erc_high, f"the ERC band must hold 1: need 0 < --erc-low < 1 < "
         f"--erc-high, got {cfg.erc_low}, {cfg.erc_high}"),
        (cfg.dynamic_sampling or "oversample" not in given, "--oversample acts only with --dynamic-sampling"),
        (cfg.group_size >= 2, f"--group-size must be >= 2 for group advantages, got {cfg.group_size}"),
        (cfg.prompts_per_step * cfg.group_size % cfg.num_minibatches == 0, f"--num-minibatches "
         f"{cfg.num_minibatches} must divide the rollout batch {cfg.prompts_per_step} x {cfg.group_size}"),
        (not (cfg.resume and cfg.overwrite), "--resume and --overwrite exclude each other"),
        (cfg.reward in REWARDS, f"unknown --reward {cfg.reward!r}; choose one of {', '.join(REWARDS)} "
         "(math-verify needs: pip install math-verify)"),  # experiments register rewards before main runs
    ]
    for name in given:  # a flag where it cannot act: a switch's own (--erc-low) or another loss's number
        checks += [(getattr(cfg, f.name), f"{flag(name)} acts only with {flag(f.name)}")
                   for f in dataclasses.fields(cfg) if f.type is bool and name.startswith(f.name + "_")]
        algos = [algo for algo, table in ALGO_DEFAULTS.items() if name in table]
        if algos and not isinstance(getattr(cfg, name), bool):  # dynamic sampling acts under any loss
            checks.append((cfg.algo in algos, f"{flag(name)} acts only with --algo {' or '.join(algos)}"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)

def flag(name):
    return "--" + name.replace("_", "-")

NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"  # 1,234.5 / 42 / -3 / .75

def last_boxed(text):
    """Content of the last \\boxed{...}, nested braces included (\\boxed{\\frac{1}{2}})."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return text[i:j]
    return None

def extract_answer(text):
    """The last \\boxed{}, else the number after '####' / 'answer is' / 'answer:', else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed  # to_number drops spaces, $ and a final '.'
    marked = re.findall(r"(?:####|answer is|answer\s*:)[\s:*$]*(" + NUMBER + ")", text, flags=re.IGNORECASE)
    numbers = marked or re.findall(NUMBER, text)
    return numbers[-1] if numbers else None

def to_number(answer):
    """An answer as a Fraction, or None: 1,234, 1{,}234, $, %, \\text{18}, 18 cm^2, x = 7, \\frac12."""
    if answer is None:
        return None
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}", r" \1 ", answer)  # unwrap \text{...}
    s = re.sub(r"\{,\}|\\[!,;: $%]|[~$%,]|\^\\circ|°", "", s)  # separators, spaces, currency, %, degrees
    s = re.sub(r"^\s*[a-zA-Z]\s*=", "", s)  # x = 7
    s = re.sub(r"(?<=[\d.])\s*[a-zA-Z]{2,}(?:\s*\^\{?\d\}?)?\s*$", "", s)  # a unit word: 18 cm^2, 90 minutes
    s = re.sub(r"\s", "", s).rstrip(".")
    s = re.sub(r"^(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(\d+)\}?$", r"\1\2/\3", s)
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None

TINY_CHARS = "0123456789+="
FILE_TYPES = (".json", ".jsonl", ".parquet", ".csv")  # local --dataset / --eval-dataset files
CARD_FLAGS = {40: "", 20: "--micro-batch-size 4", 0: "--micro-batch-size 4 --gradient-checkpointing"}

def make_tiny_tokenizer():
    """A character tokenizer built in code; pad == EOS, as in Qwen base models (formulas §1)."""
    from tokenizers import Tokenizer, decoders, models
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", *TINY_CHARS])}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<|endoftext|>"))  # no merges: a token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")

def make_tiny_model(vocab_size):
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=0))

def make_tiny_dataset(n, seed):
    """'a+b=' -> str(a + b), a, b in 0..4: a random policy is right about 1 time in 15, so RL can learn it."""
    rng = random.Random(seed)
    pairs = [(rng.randrange(5), rng.randrange(5)) for _ in range(n)]
    return datasets.Dataset.from_dict({"question": [f"{a}+{b}=" for a, b in pairs],
                                       "answer": [str(a + b) for a, b in pairs]})

def load_model_and_tokenizer(name, device):
    """'tiny', a local folder, or a hub id. tools/smol.py wraps this for GGUF files."""
    if name == "tiny":
        tokenizer = make_tiny_tokenizer()
        model = make_tiny_model(len(tokenizer))
    else:
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(name)  # as saved, not rebuilt per model type
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        except Exception as e:  # no network, not cached, truncated weights: all mean "cannot load"
            raise ValueError(f"cannot load model {name!r}; offline, HF_HUB_OFFLINE=1 uses the local cache; "
                             f"or use a local folder or --preset tiny ({type(e).__name__}: {e})") from None
    tokenizer.padding_side = "left"  # generate appends after the prompt
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model.to(device), tokenizer

def format_prompt(question, tokenizer, instruction, template_args="{}"):
    """The question and --instruction, in the tokenizer's chat template if any, with --chat-template-args."""
    message = f"{question}\n{instruction}" if instruction else question
    if not tokenizer.chat_template:  # arguments for a template that is not there would be lost without a word
        if json.loads(template_args):
            raise ValueError("--chat-template-args: this tokenizer has no chat template")
        return message
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True, **json.loads(template_args))

def read_dataset(source, split, cfg):
    """The raw rows of 'tiny', a local file or a hub dataset; tools/smol.py wraps this for word sums."""
    if source == "tiny":
        return make_tiny_dataset(cfg.eval_prompts if split == "test" else 2000, cfg.seed + (split == "test"))
    suffix = Path(source).suffix
    if suffix in FILE_TYPES and source == cfg.dataset and split != "train":
        raise ValueError("a local --dataset file has no held-out split: evaluate on --eval-dataset FILE")
    try:
        if suffix in FILE_TYPES:
            return datasets.load_dataset(suffix[1:].replace("jsonl", "json"), data_files=source)["train"]
        return datasets.load_dataset(source, "main" if source == "openai/gsm8k" else None, split=split)
    except Exception as e:  # a missing file, no network: datasets raises many types; all mean "cannot load"
        raise ValueError(f"cannot load dataset {source!r}; local files: {', '.join(FILE_TYPES)}; offline, "
                         f"HF_HUB_OFFLINE=1 uses the local cache ({type(e).__name__}: {e})") from None

def load_data(cfg, tokenizer, split="train"):
    """Columns 'prompt' (formatted), 'answer' (gold); 'test': --eval-dataset, else --dataset's test split."""
    source = cfg.eval_dataset if split == "test" and cfg.eval_dataset else cfg.dataset
    data = read_dataset(source, split, cfg)
    if split != "train":
        data = data.take(cfg.eval_prompts)
    try:
        data = data.map(lambda row: {"prompt": format_prompt(row[cfg.prompt_field], tokenizer,
                                                             cfg.instruction, cfg.chat_template_args),
                                     "answer": str(row[cfg.answer_field]).split("####")[-1].strip()},
                        remove_columns=data.column_names)
    except KeyError as e:  # --prompt-field or --answer-field names no column
        raise ValueError(f"dataset {source!r} has no field {e}; it has {data.column_names}") from None
    for prompt in data["prompt"]:  # a tokenizer that drops characters would train on other text
        if tokenizer.decode(tokenizer(prompt, add_special_tokens=False).input_ids) != prompt:
            raise ValueError(f"the tokenizer of {cfg.model} cannot write the prompt {prompt!r} back; use a "
                             f"tokenizer that covers the data (the tiny one knows only {TINY_CHARS!r})")
    return data

def evaluate(model, tokenizer, data, cfg):
    """Held-out greedy accuracy, avg@k (mean reward), pass@k (share solved), from the run's own seed."""
    torch.manual_seed(cfg.seed)
    def rewards_of(k, temperature):  # [prompts, k]
        per_call, rewards = max(1, cfg.prompts_per_step * cfg.group_size // k), []  # a rollout's rows at most
        for rows in data.iter(per_call):
            ids, _, response_mask = rollout(model, tokenizer, rows["prompt"], k, temperature,
                                            cfg.max_new_tokens, cfg.static_cache, cfg.eval_top_p)
            rewards.append(response_rewards(tokenizer, ids, response_mask, rows["answer"], k, cfg.reward))
        return torch.cat(rewards).view(-1, k)
    k = cfg.eval_samples
    greedy, sampled = rewards_of(1, 0.0), rewards_of(k, cfg.eval_temperature)  # one seeded stream, in order
    return {"eval_greedy": greedy.mean().item(), f"eval_avg@{k}": sampled.mean().item(),
            f"eval_pass@{k}": (sampled > 0).any(1).float().mean().item()}

def fail(message):
    """Bad input or an unusable file: one line on stderr (the message's first), exit code 2, no traceback."""
    print(f"erc_minimal: error: {(str(message).splitlines() or [''])[0]}", file=sys.stderr)
    sys.exit(2)

def checkpoints(out):
    """OUT's complete checkpoint folders, oldest first (a checkpoint gets its name once fully written)."""
    return sorted(map(str, Path(out).glob("checkpoint-*[0-9]")), key=lambda path: int(path.rsplit("-", 1)[1]))

def save_checkpoint(cfg, step, model, tokenizer, optimizer, scheduler, order):
    """OUT/checkpoint-STEP, written as .tmp, then renamed: a kill or a full disk leaves older ones intact."""
    final, tmp = f"{cfg.out}/checkpoint-{step}", f"{cfg.out}/checkpoint-{step}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(dict(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        order=order, run_state=RUN_STATE), Path(tmp, "trainer_state.pt"))
        os.replace(tmp, final)  # atomic: from here on checkpoints() lists it
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        fail(f"cannot write checkpoint {tmp}; the earlier checkpoints are intact ({type(e).__name__}: {e})")
    for old in checkpoints(cfg.out)[:-cfg.save_total_limit]:
        shutil.rmtree(old)
    return final

def read_jsonl(path):
    """A JSONL file's records. A torn last line (a kill while writing it) is dropped with a warning."""
    lines, records = Path(path).read_text().splitlines(), []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                fail(f"{path}, line {number}: not valid JSON")
            print(f"warning: {path}: dropped a torn last line (a step after the checkpoint: it is redone)")
    return records

def start_or_resume(cfg, optimizer, scheduler):
    """(steps done, data order, metrics so far): --resume restores them; a new run removes checkpoints."""
    os.makedirs(cfg.out, exist_ok=True)
    metrics = f"{cfg.out}/metrics.jsonl"
    start, order, history = 0, [], []
    RUN_STATE.clear()  # a new run starts without a fork's adapted values
    if cfg.resume:
        path = Path(checkpoints(cfg.out)[-1], "trainer_state.pt")
        try:
            state = torch.load(path, weights_only=False)
        except Exception as e:  # missing or truncated: name the file
            fail(f"cannot load {path} ({type(e).__name__}: {e})")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, order = state["step"], state["order"]
        RUN_STATE.update(state["run_state"])
        history = [r for r in read_jsonl(metrics) if r["step"] <= start]  # later steps will be redone
    else:
        for path in checkpoints(cfg.out):
            shutil.rmtree(path)
    Path(cfg.out, "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    Path(metrics + ".tmp").write_text("".join(json.dumps(r) + "\n" for r in history))
    os.replace(metrics + ".tmp", metrics)  # atomic: a crash here loses no saved line
    return start, order, history

def log_step(cfg, record):
    """A line of OUT/metrics.jsonl every step; a console line every --log-every steps and at evaluations."""
    with open(Path(cfg.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if record["step"] % cfg.log_every == 0 or "eval_greedy" in record:  # named as in metrics.jsonl
        shown = [f"{k} {v:.3f}" for k, v in record.items()
                 if k in ("reward", "entropy", "clip_frac", "erc_clip_frac") or k.startswith("eval_")]
        seconds = f"{record['gen_time'] + record.get('train_time', 0):.2f} s/step"
        print(f"step {record['step']:>4}  " + "  ".join(shown) + f"  {seconds}", flush=True)

def setup(cfg):
    """Model, tokenizer, train and eval data; every user-input problem surfaces here as a ValueError."""
    if cfg.threads:  # the tiny model gains nothing from intra-op threads, and loses much on a busy CPU
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls stay fp32, not TF32 (formulas §6.8)
    torch.manual_seed(cfg.seed)
    last = (checkpoints(cfg.out) or ["none-0"])[-1]  # on --resume, weights and tokenizer come from here
    done = int(last.rsplit("-", 1)[1]) if cfg.resume else 0
    if cfg.resume and not done:
        raise ValueError(f"--resume: {cfg.out!r} has no checkpoint to resume from")
    if done >= cfg.steps:
        raise ValueError(f"--resume: {cfg.out!r} is at step {done} already; ask for more --steps")
    if Path(cfg.out, "metrics.jsonl").exists() and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"--out {cfg.out!r} holds another run: add --resume or --overwrite")
    model, tokenizer = load_model_and_tokenizer(last if cfg.resume else cfg.model,
                                                "cuda" if torch.cuda.is_available() else "cpu")
    if cfg.gradient_checkpointing:  # transformers 5 renamed gradient_checkpointing_enable
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    eval_data = load_data(cfg, tokenizer, split="test") if cfg.eval_every else None
    return model, tokenizer, load_data(cfg, tokenizer), eval_data

def parse_args(argv, prog="erc_minimal.py", description=__doc__, fields=None):
    """The flags given (--resume tells them from config.json's); a flag's help is its comment in Config."""
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = dict(re.findall(r"^    (\w+):[^#\n]*#\s*(.+)$", Path(__file__).read_text(), flags=re.M))
    for f in dataclasses.fields(Config):
        if fields is None or f.name in fields:
            help = helps.get(f.name, "no help: write it as a comment after the field in Config")
            help += "" if f.default is None else f" (default: {f.default})"
            kind = dict(action=argparse.BooleanOptionalAction) if f.type is bool else dict(type=f.type)
            kind["choices"] = dict(preset=PRESETS, algo=ALGO_DEFAULTS).get(f.name)  # a row of a table
            parser.add_argument(flag(f.name), help=help, **kind)
    def one_line_error(message):  # argparse's own errors too: main prints them as one line, exit 2
        raise ValueError(f"{message} (see --help)")
    parser.error = one_line_error
    return vars(parser.parse_args(argv))

def main(argv=None):  # argv None: the command line
    datasets.disable_progress_bars()  # datasets' per-map bars
    transformers.logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    try:
        given = parse_args(argv)
        saved = Path(given.get("out", Config.out), "config.json")
        resumed = given.get("resume") and saved.exists()
        cfg = Config(**({**json.loads(saved.read_text()), "overwrite": False, **given} if resumed else given),
                     given=given)
        model, tokenizer, data, eval_data = setup(cfg)
    except ValueError as e:  # bad input: one line, exit 2, no traceback
        fail(e)
    stop = []  # Ctrl-C / SIGTERM: finish the current step, save, exit 0; a second Ctrl-C aborts at once
    def request_stop(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train(cfg, model, tokenizer, data, eval_data, stop)
    except torch._dynamo.exc.BackendCompilerFailed as e:  # generate's compiled decoding (no C compiler?)
        fail(f"torch.compile cannot run here ({e.inner_exception!r}); add --no-static-cache")
    except torch.OutOfMemoryError as e:  # one line: the phase, the card, the README's flags by card GiB
        phases = ("evaluate", "rollout", "score_old_policy", "train_on_batch")  # the outermost one names it
        phase = next((f.name for f in traceback.extract_tb(e.__traceback__) if f.name in phases), "train")
        gib = torch.cuda.mem_get_info()[1] / 2**30
        flags = next(flags for least, flags in CARD_FLAGS.items() if gib >= least) or "no flag"
        fail(f"CUDA out of memory in {phase} on this {gib:.0f} GiB card: the README's command for it adds "
             f"{flags}; the checkpoints saved are intact")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

if __name__ == "__main__":
    main()
