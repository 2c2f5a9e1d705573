"""erc_minimal.py: RL post-training of a small Qwen model on math, with Entropy Ratio Clipping.

In the order a step runs: config, data, reward, rollout, log-probs and entropies, advantages, policy losses
(+ ERC), objective, update, the step, then the loop's plumbing and main. Papers: ERC (arXiv 2512.05591), GRPO
(2402.03300), DAPO (2503.14476), GPPO (2508.07629), CE-GPPO (2509.20712), CISPO (2506.13585), GSPO (2507.18071).
"formulas §n" is section n of docs/equations.md, the formula sheet of this repository.

    python erc_minimal.py --preset tiny --algo gppo --erc     # CPU, offline, under a minute
    python erc_minimal.py --algo gppo --erc                   # Qwen2.5-0.5B-Instruct on GSM8K, one GPU
"""
import argparse
import copy
import dataclasses
import functools
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from fractions import Fraction
from pathlib import Path

import datasets
import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# ================================================================== config
ALGOS = ("grpo", "dapo", "gppo", "cegppo", "cispo", "gspo")
# formulas §5: the papers' / released recipes' defaults, used for every field the user leaves unset.
ALGO_DEFAULTS = {
    "grpo":   dict(eps_low=0.2,  eps_high=0.2,  clip_c=10.0, beta1=1.0, beta2=1.0, dynamic_sampling=False),
    "dapo":   dict(eps_low=0.2,  eps_high=0.28, clip_c=10.0, beta1=1.0, beta2=1.0, dynamic_sampling=True),
    "gppo":   dict(eps_low=0.2,  eps_high=0.2,  clip_c=10.0, beta1=1.0, beta2=1.0, dynamic_sampling=False),
    "cegppo": dict(eps_low=0.2,  eps_high=0.2,  clip_c=10.0, beta1=0.5, beta2=1.0, dynamic_sampling=False),
    "cispo":  dict(eps_low=1.0,  eps_high=4.0,  clip_c=None, beta1=1.0, beta2=1.0, dynamic_sampling=False),
    "gspo":   dict(eps_low=3e-4, eps_high=4e-4, clip_c=None, beta1=1.0, beta2=1.0, dynamic_sampling=False),
}
# A preset picks model, data and sizes; the algorithm code is the same for both.
PRESETS = {
    "gsm8k": dict(model="Qwen/Qwen2.5-0.5B-Instruct", dataset="openai/gsm8k", prompt_field="question",
                  answer_field="answer", steps=200, prompts_per_step=16, group_size=8, num_minibatches=8,
                  max_new_tokens=512, lr=1e-6, warmup_steps=10, eval_prompts=256, threads=None),
    "tiny":  dict(model="tiny", dataset="tiny", prompt_field="question", answer_field="answer",
                  steps=300, prompts_per_step=32, group_size=8, num_minibatches=4,
                  max_new_tokens=2, lr=3e-4, warmup_steps=0, eval_prompts=64, threads=1),
}
POSITIVE = ("steps", "prompts_per_step", "num_minibatches", "micro_batch_size", "max_new_tokens", "temperature",
            "logprob_chunk", "threads", "max_grad_norm", "eval_prompts", "eval_samples", "log_every",
            "save_total_limit", "max_bad_steps", "eps_low")
NON_NEGATIVE = ("eps_high", "beta1", "beta2", "sft_coef", "lr", "weight_decay", "eval_every", "save_every",
                "eval_temperature")


def arg(default, help):
    return dataclasses.field(default=default, metadata=dict(help=help))


@dataclasses.dataclass
class Config:
    # --- what to train
    preset: str = arg("gsm8k", "gsm8k: Qwen2.5-0.5B-Instruct on GSM8K (GPU, hub); tiny: a tiny random Qwen2 (CPU)")
    model: str = arg(None, "hub id or local path (default: the preset's)")
    dataset: str = arg(None, "hub id, or a local .json/.jsonl/.parquet/.csv file (default: the preset's)")
    prompt_field: str = arg(None, "dataset column holding the question")
    answer_field: str = arg(None, "dataset column holding the gold answer (text after '####' if present)")
    reward: str = arg("numeric", "numeric: built-in number check; math-verify: symbolic (pip install math-verify)")
    # --- policy loss (formulas §3-§5); None = the algorithm's default
    algo: str = arg("grpo", "policy loss: " + ", ".join(ALGOS))
    eps_low: float = arg(None, "ratio clip: lower bound is 1 - eps_low")
    eps_high: float = arg(None, "ratio clip: upper bound is 1 + eps_high")
    clip_c: float = arg(None, "dual clip for A < 0 (grpo, dapo, gppo, cegppo)")
    beta1: float = arg(None, "gppo/cegppo: gradient weight for A < 0, r < 1 - eps_low")
    beta2: float = arg(None, "gppo/cegppo: gradient weight for A > 0, r > 1 + eps_high")
    dynamic_sampling: bool = arg(None, "drop groups whose rewards are all equal (DAPO)")
    erc: bool = arg(False, "entropy ratio clipping on top of the chosen loss (formulas §4)")
    erc_low: float = arg(0.95, "ERC: keep a token's gradient only if erc_low < H / H_old ...")
    erc_high: float = arg(1.05, "... < erc_high")
    sft_coef: float = arg(0.0, "weight of the NLL of correct responses (the released ERC recipes use 0.1)")
    # --- rollout, batch sizes, precision
    steps: int = arg(None, "training steps (one rollout batch each)")
    prompts_per_step: int = arg(None, "prompts per rollout batch")
    group_size: int = arg(None, "responses sampled per prompt (G)")
    num_minibatches: int = arg(None, "optimizer steps per rollout batch")
    micro_batch_size: int = arg(None, "responses per forward pass (default: a whole mini-batch)")
    max_new_tokens: int = arg(None, "max completion length")
    temperature: float = arg(1.0, "sampling temperature; log-probs and entropies use the same T")
    bf16: bool = arg(None, "bf16 autocast in the forwards and a bf16 sampler (default: on with CUDA)")
    logprob_chunk: int = arg(512, "response tokens per chunk of the output layer (bounds logits memory)")
    gradient_checkpointing: bool = arg(False, "recompute activations in backward (less memory, slower)")
    static_cache: bool = arg(False, "static KV cache in generate, compiled by transformers on GPU")
    threads: int = arg(None, "CPU threads for torch (default: 1 for --preset tiny, else torch's own)")
    # --- optimiser (released recipes: AdamW, lr 1e-6, 10 warm-up steps, wd 0.1, grad clip 1.0)
    lr: float = arg(None, "learning rate")
    warmup_steps: int = arg(None, "linear learning-rate warm-up, in training steps with an update")
    weight_decay: float = arg(0.1, "AdamW weight decay")
    max_grad_norm: float = arg(1.0, "gradient-norm clip")
    # --- evaluation, checkpoints, output
    eval_every: int = arg(0, "evaluate on held-out prompts every N steps and at the end (0: never)")
    eval_prompts: int = arg(None, "held-out prompts per evaluation")
    eval_samples: int = arg(4, "samples per prompt for avg@k accuracy at --eval-temperature")
    eval_temperature: float = arg(1.0, "sampling temperature of the avg@k evaluation")
    eval_top_p: float = arg(1.0, "top-p of the avg@k evaluation (the ERC recipes validate at T 0.6, top-p 0.95)")
    eval_dataset: str = arg(None, "held-out data, hub id or local file (default: --dataset's test split)")
    log_every: int = arg(10, "print one console line every N steps (metrics.jsonl gets every step)")
    report_to: str = arg("none", "also send each step's record to: none, wandb, trackio, tensorboard")
    save_every: int = arg(0, "checkpoint every N steps; always at the end and on Ctrl-C / SIGTERM")
    save_total_limit: int = arg(3, "keep the newest N checkpoints")
    max_bad_steps: int = arg(3, "stop after this many consecutive steps with a non-finite loss or gradient")
    seed: int = arg(0, "random seed")
    out: str = arg("runs/latest", "output directory: metrics.jsonl, config.json, checkpoints")
    resume: bool = arg(False, "continue the run in --out from its latest checkpoint (flags given now override)")
    overwrite: bool = arg(False, "start over in --out even if it holds another run")

    def __post_init__(self):
        for name, choices in (("algo", ALGO_DEFAULTS), ("preset", PRESETS), ("reward", REWARDS),
                              ("report_to", ("none", "wandb", "trackio", "tensorboard"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; choose one of "
                                 f"{', '.join(choices)}")
        for name, value in {**ALGO_DEFAULTS[self.algo], **PRESETS[self.preset]}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.bf16 = torch.cuda.is_available() if self.bf16 is None else self.bf16
        for sign, names in ((">", POSITIVE), (">=", NON_NEGATIVE)):
            for name in names:
                value = getattr(self, name)
                if value is not None and not (value > 0 if sign == ">" else value >= 0):
                    raise ValueError(f"--{name.replace('_', '-')} must be {sign} 0, got {value}")
        checks = [  # (condition that must hold, message)
            (self.eps_low <= 1, f"--eps-low must be in (0, 1], got {self.eps_low}"),
            (0 < self.eval_top_p <= 1, f"--eval-top-p must be in (0, 1], got {self.eval_top_p}"),
            (self.clip_c is None or self.clip_c > 1, f"--clip-c must be > 1, got {self.clip_c}"),
            (self.clip_c is None or self.algo not in ("cispo", "gspo"), f"--clip-c does not apply to {self.algo}"),
            (self.algo in ("gppo", "cegppo") or (self.beta1, self.beta2) == (1.0, 1.0),
             f"--beta1/--beta2 act only with --algo gppo or cegppo, not {self.algo}"),
            (self.erc or (self.erc_low, self.erc_high) == (0.95, 1.05), "--erc-low/--erc-high act only with --erc"),
            (0 < self.erc_low < self.erc_high, f"need 0 < --erc-low < --erc-high, got {self.erc_low}, {self.erc_high}"),
            (self.group_size >= 2, f"--group-size must be >= 2 for group advantages, got {self.group_size}"),
            (self.prompts_per_step * self.group_size % self.num_minibatches == 0,
             f"--num-minibatches {self.num_minibatches} must divide the rollout batch "
             f"{self.prompts_per_step} x {self.group_size}"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ================================================================== data
TINY_CHARS = "0123456789+="


def make_tiny_tokenizer():
    """A character tokenizer built in code; pad == eos, as in Qwen base models (formulas §1)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", *TINY_CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_tiny_model(vocab_size):
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return Qwen2ForCausalLM(config)


def make_tiny_dataset(n, seed, max_operand=4):
    """'a+b=' -> str(a + b), a, b in 0..4: a random policy is right about 1 time in 15, so RL can learn it."""
    rng = random.Random(seed)
    pairs = [(rng.randrange(max_operand + 1), rng.randrange(max_operand + 1)) for _ in range(n)]
    questions, answers = [f"{a}+{b}=" for a, b in pairs], [str(a + b) for a, b in pairs]
    return datasets.Dataset.from_dict({"question": questions, "answer": answers})


def hub_reachable(*names):
    """False if HF_HUB_OFFLINE is set or huggingface.co does not answer in 3 s, where the hub libraries would
    retry for a minute; True when every name is 'tiny' or a local path."""
    if all(name == "tiny" or os.path.exists(name) for name in names):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def load_model_and_tokenizer(name, device, online=True):
    """'tiny', a hub id (from the local cache only when offline), or a local folder (this script's checkpoints)."""
    if name == "tiny":
        tokenizer = make_tiny_tokenizer()
        model = make_tiny_model(len(tokenizer))
    elif (os.path.isabs(name) or name.startswith((".", "~"))) and not os.path.isdir(name):
        raise ValueError(f"--model {name!r}: no such directory")
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=not online)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, local_files_only=not online)
        except Exception as e:  # offline hub, truncated weights: all mean "cannot load"
            if os.path.isdir(name):
                raise ValueError(f"cannot load the model in folder {name} ({first_line(e)})") from None
            where = "" if online else "; the hub is unreachable or HF_HUB_OFFLINE is set, and it is not cached"
            raise ValueError(f"cannot load model {name!r} ({first_line(e)}){where}; use a local path or "
                             "--preset tiny") from None
    tokenizer.padding_side = "left"  # generate appends after the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def format_prompt(question, tokenizer):
    """The tokenizer's chat template when it has one, asking for the final answer in \\boxed{}."""
    if not tokenizer.chat_template:
        return question
    message = f"{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)


def load_data(cfg, tokenizer, split="train"):
    """Columns 'prompt' (formatted) and 'answer' (gold final answer). split='test': --eval-dataset, else the test
    split of --dataset (GSM8K's), or fresh tiny samples (the tiny task has only 25 distinct questions)."""
    source = cfg.eval_dataset if split == "test" and cfg.eval_dataset else cfg.dataset
    if source == "tiny":
        data = make_tiny_dataset(2000 if split == "train" else cfg.eval_prompts, seed=cfg.seed + (split != "train"))
    elif Path(source).suffix in (".json", ".jsonl", ".parquet", ".csv"):
        if not os.path.isfile(source):
            raise ValueError(f"dataset file {source!r} does not exist")
        if source == cfg.dataset and split != "train":
            raise ValueError("a local --dataset file has no held-out split: evaluate on --eval-dataset FILE_OR_HUB_ID")
        data = datasets.load_dataset(Path(source).suffix[1:].replace("jsonl", "json"), data_files=source)["train"]
    else:
        try:
            data = datasets.load_dataset(source, "main" if source == "openai/gsm8k" else None, split=split)
        except Exception as e:  # datasets raises many types offline; all mean "cannot load"
            raise ValueError(f"cannot load dataset {source!r} ({first_line(e)})") from None
    if split != "train":
        data = data.select(range(min(cfg.eval_prompts, len(data))))
    missing = [f for f in (cfg.prompt_field, cfg.answer_field) if f not in data.column_names]
    if missing:
        raise ValueError(f"dataset {source!r} has no field {missing[0]!r}; its fields are {data.column_names}")
    data = data.map(lambda row: {"prompt": format_prompt(row[cfg.prompt_field], tokenizer),
                                 "answer": str(row[cfg.answer_field]).split("####")[-1].strip()},
                    remove_columns=data.column_names)
    unknown = sorted({c for p in data["prompt"] for c in p} - set(TINY_CHARS)) if cfg.model == "tiny" else []
    if unknown:  # the tiny tokenizer would silently turn each of them into EOS
        raise ValueError(f"the tiny model's tokenizer knows only {TINY_CHARS!r}; the prompts also hold {unknown}")
    return data


# ================================================================== reward
NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"  # 1,234.5 / 42 / -3 / .75


def last_boxed(text):
    """Content of the last \\boxed{...}, with nested braces (e.g. \\boxed{\\frac{1}{2}})."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text):
    """The final answer of a completion: last \\boxed{}, else after '####' / 'answer is' / 'answer:', else the
    last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip().strip("$").rstrip(".").strip()
    marked = re.findall(r"(?:####|answer is|answer\s*:)[\s:*$]*(" + NUMBER + ")", text, flags=re.IGNORECASE)
    numbers = marked or re.findall(NUMBER, text)
    return numbers[-1].rstrip(".") if numbers else None


@functools.lru_cache(maxsize=1 << 16)  # a group's gold answer and most short answers repeat
def to_number(answer):
    """A final answer as a Fraction, or None when it is not a plain number. Handles 1,234 and 1{,}234, $ and %,
    \\text{18} / \\textbf{18}, a unit word after the number (18 \\text{ cm}^2, 90 minutes), 45^\\circ, x = 7,
    and \\frac{a}{b} / \\frac12 / -\\frac{a}{b}."""
    if answer is None:
        return None
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}", r" \1 ", answer)  # unwrap \text{...}
    s = re.sub(r"\{,\}|\\[!,;: $%]|[~$%,]|\^\\circ|°", "", s)  # separators, spaces, currency, percent, degrees
    s = re.sub(r"^\s*[a-zA-Z]\s*=", "", s)  # x = 7
    s = re.sub(r"(?<=[\d.])\s*[a-zA-Z]{2,}(?:\s*\^\{?\d\}?)?\s*$", "", s)  # a unit word: 18 cm^2, 90 minutes
    s = re.sub(r"\s", "", s).rstrip(".")
    s = re.sub(r"^(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(\d+)\}?$", r"\1\2/\3", s)
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def reward_fn(completion, answer):
    """1.0 if the final answer equals the gold answer as a number, else 0.0; an unparsable gold never scores."""
    gold, pred = to_number(answer), to_number(extract_answer(completion))
    return float(gold is not None and pred == gold)


def math_verify_reward(completion, answer):
    """--reward math-verify: HF's math-verify compares expressions symbolically (MATH, AIME answers)."""
    from math_verify import parse, verify
    return float(verify(parse(f"${answer}$"), parse(completion)))  # an empty (unparsable) gold never verifies


REWARDS = {"numeric": reward_fn, "math-verify": math_verify_reward}


# ================================================================== rollout
@torch.no_grad()
def rollout(model, tokenizer, prompts, num_samples, temperature, max_new_tokens, static_cache=False, top_p=1.0):
    """Sample num_samples responses per prompt from softmax(logits / temperature) (top_p < 1 only to evaluate);
    temperature 0 is greedy.
    Returns input_ids [B, P+T], attention_mask [B, P+T], response_mask [B, T], with B = len(prompts) *
    num_samples and the responses of a prompt consecutive."""
    model.eval()
    # a static cache is compiled for its shape: prompts padded to a multiple of 64 bound the recompilations
    enc = tokenizer(prompts, return_tensors="pt", padding=True, pad_to_multiple_of=64 if static_cache else None,
                    add_special_tokens=False).to(model.device)
    # formulas §6: every sampling parameter explicit, so the model's generation_config cannot leak in.
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False)
    eos = model.generation_config.eos_token_id  # instruct models may have several EOS ids
    eos = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])})
    sequences = model.generate(**enc, **sampling, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
                               num_return_sequences=num_samples, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=eos, use_cache=True,
                               cache_implementation="static" if static_cache else "dynamic")
    prompt_mask = enc.attention_mask.repeat_interleave(num_samples, 0)
    response_mask = make_response_mask(sequences[:, enc.input_ids.shape[1]:], eos)
    first = int(prompt_mask.any(0).int().argmax())  # drop columns that are padding in every row (--static-cache)
    return sequences[:, first:], torch.cat([prompt_mask, response_mask], 1)[:, first:], response_mask


def make_response_mask(completion_ids, eos_ids):
    """1 on sampled tokens up to and including the first EOS, 0 after it (formulas §1). Built from positions,
    never from ids != pad, so it is right when pad == eos. A response with no EOS (truncated) is all 1."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device)).long()
    eos_before = is_eos.cumsum(1) - is_eos  # [B, T] number of EOS strictly before t
    return (eos_before == 0).long()


def response_rewards(tokenizer, input_ids, response_mask, answers, num_samples, reward="numeric"):
    """The reward of every decoded response [B]; `answers` holds one gold answer per prompt."""
    completions = tokenizer.batch_decode(input_ids[:, -response_mask.shape[1]:], skip_special_tokens=True)
    answers = [a for a in answers for _ in range(num_samples)]
    return torch.tensor([REWARDS[reward](c, a) for c, a in zip(completions, answers)])


def make_sampler(model, bf16):
    """The model that generates: the policy, or with --bf16 a copy with bf16 parameters (half the bytes read per
    token). Buffers keep the policy's dtype (formulas §6): RoPE's inv_freq in bf16 would be another policy."""
    if not bf16:
        return model
    # deepcopy takes each parameter from the memo (a bf16 copy) and copies the rest: no transient fp32 copy
    bf16_params = {id(p): torch.nn.Parameter(p.detach().bfloat16(), requires_grad=False) for p in model.parameters()}
    return copy.deepcopy(model, memo=bf16_params).eval()


# ================================================================== log-probs and entropies
class TokenLogpAndEntropy(torch.autograd.Function):
    """log p(target) (with gradient) and entropy (without) of softmax(hidden @ W.T / T) over the whole vocabulary,
    `chunk` tokens at a time, from fp32 logits even under bf16 autocast (formulas §6). Backward recomputes each
    chunk, so memory holds one [chunk, V] float32 block, never [N, V]. Plumbing: no need to touch."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):  # hidden [N, H], weight [V, H], targets [N]
        logps, entropies, lses = [], [], []
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits
            w = weight.float()
            for h, y in zip(hidden.split(chunk), targets.split(chunk)):
                logits = (h.float() @ w.T).div_(temperature)  # [chunk, V]; with `exp` the only [chunk, V] blocks
                top = logits.amax(-1, keepdim=True)
                exp = (logits - top).exp_()  # softmax numerator; in-place ops keep CPU allocations (page faults) down
                total = exp.sum(-1)
                lse = top.squeeze(-1) + total.log()
                logps.append(logits.gather(-1, y[:, None]).squeeze(-1) - lse)
                entropies.append(lse - exp.mul_(logits).sum(-1) / total)  # H = lse - sum p * logit
                lses.append(lse)
        ctx.save_for_backward(hidden, weight, targets, torch.cat(lses))
        ctx.temperature, ctx.chunk = temperature, chunk
        return torch.cat(logps), torch.cat(entropies)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        c = ctx.chunk
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 here too
            w = weight.float()
            grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(w)
            for i in range(0, len(hidden), c):
                h, y, scale = hidden[i:i + c].float(), targets[i:i + c], grad_logp[i:i + c, None] / ctx.temperature
                logits = (h @ w.T).div_(ctx.temperature)
                grad_logits = logits.sub_(lse[i:i + c, None]).exp_().mul_(-scale)  # d logp(y) / d logits * g
                grad_logits.scatter_add_(-1, y[:, None], scale)  # = (onehot(y) - p) * g / T
                grad_hidden[i:i + c] = grad_logits @ w
                grad_weight.addmm_(grad_logits.T, h)
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None


def logp_and_entropy(model, input_ids, attention_mask, response_mask, temperature, chunk):
    """Log-prob of every response token and the entropy at its position, both [B, T], 0 where response_mask is 0.
    The output layer runs on response tokens only, `chunk` at a time (memory never grows with B x T x V)."""
    # formulas §6: with left padding, positions count from each row's first real token.
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state  # [B, P+T, H]; no KV cache outside generate
    n_prompt = input_ids.shape[1] - response_mask.shape[1]
    valid = response_mask.bool()
    hidden = hidden[:, n_prompt - 1:-1][valid]  # [N, H]: the positions that predict real response tokens
    targets = input_ids[:, n_prompt:][valid]  # [N]
    lm_head = model.get_output_embeddings()  # no bias in Qwen / Llama output layers
    logp, entropy = TokenLogpAndEntropy.apply(hidden, lm_head.weight, targets, temperature, chunk)
    zeros = torch.zeros(response_mask.shape, device=input_ids.device)
    return zeros.masked_scatter(valid, logp), zeros.masked_scatter(valid, entropy)


# ================================================================== advantages
def group_advantages(rewards, group_size):
    """GRPO (DeepSeekMath, formulas §2): A_i = (R_i - mean_g R) / (std_g R + 1e-6), unbiased std, groups
    consecutive. [B] -> [B]. A group with all rewards equal gets exactly 0."""
    if group_size < 2:
        raise ValueError("group advantages need group_size >= 2")
    r = rewards.view(-1, group_size)  # [num_groups, G]
    advantages = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)
    return advantages.view(-1).masked_fill(~group_varies(rewards, group_size), 0.0)


def group_varies(rewards, group_size):
    """[B] True where the response's group does not have all-equal rewards. DAPO's dynamic sampling keeps
    exactly these responses (formulas §3.2; no top-up)."""
    r = rewards.view(-1, group_size)
    return (r != r[:, :1]).any(1).repeat_interleave(group_size)


# ================================================================== policy losses (+ ERC)
def policy_loss(logp, old_logp, advantages, response_mask, cfg, entropy=None, old_entropy=None):
    """Per-token loss of the chosen variant with ERC on top (formulas §3-§4), and the masks of the tokens each
    clipped. logp, old_logp, response_mask, entropy, old_entropy: [B, T]; advantages: [B]."""
    if cfg.erc and (entropy is None or old_entropy is None):
        raise ValueError("ERC needs entropy and old_entropy")
    mask = response_mask.float()
    A = advantages[:, None]  # [B, 1], shared by the tokens of a response
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    log_ratio = (logp - old_logp) * mask  # 0 on padding, so exp never overflows there
    if cfg.algo == "gspo":
        # GSPO-token (GSPO paper, formulas §3.6): s_i,t = sg(s_i) * exp(logp - sg(logp)), s_i the length-normalised
        # sequence ratio; same value and gradient as sequence-level GSPO since A is shared by the sequence.
        seq_log_ratio = log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        ratio = torch.exp(seq_log_ratio.detach() + logp - logp.detach())  # [B, T]
    else:
        ratio = torch.exp(log_ratio)  # r_t = pi / pi_old, [B, T]
    r = ratio.detach()

    # --- each variant's per-token loss l [B, T]; read them side by side
    if cfg.algo in ("grpo", "dapo", "gspo"):
        # PPO-clip (GRPO, formulas §3.1; DAPO = the same with clip-higher eps, §3.2; GSPO applies it to s_i,t, §3.6).
        loss_tok = torch.maximum(-A * ratio, -A * ratio.clamp(lo, hi))
    elif cfg.algo in ("gppo", "cegppo"):
        # CE-GPPO (formulas §3.4): a clipped token keeps the clipped value but a gradient through r / sg(r), scaled
        # by beta. GPPO (Klear-Reasoner, §3.3) is beta1 = beta2 = 1: PPO-clip's value, gradient lo or hi.
        keep_grad = ratio / r  # value 1, gradient of r
        loss_tok = torch.where((A < 0) & (r < lo), -A * cfg.beta1 * lo * keep_grad,
                   torch.where((A > 0) & (r > hi), -A * cfg.beta2 * hi * keep_grad, -A * ratio))
    elif cfg.algo == "cispo":
        # CISPO (MiniMax-M1, formulas §3.5): REINFORCE, clipped stop-gradient IS weight; every token keeps a gradient.
        loss_tok = -A * ratio.clamp(lo, hi).detach() * logp
    if cfg.clip_c is not None:
        # Dual clip (arXiv 1912.09729), part of the authors' released losses: for A < 0 cap the loss at -A c.
        loss_tok = torch.where(A < 0, torch.minimum(loss_tok, -A * cfg.clip_c), loss_tok)
    clipped = (r < lo) | (r > hi) if cfg.algo == "cispo" else ((A > 0) & (r > hi)) | ((A < 0) & (r < lo))

    # --- ERC (ERC paper, formulas §4): a token whose entropy ratio leaves (erc_low, erc_high) keeps its loss value
    # but loses its gradient, and still counts in the denominator. Any variant, any sign of A.
    erc_clipped = torch.zeros_like(clipped)
    if cfg.erc:
        erc_clipped = outside_erc_band(entropy, old_entropy, cfg)
        loss_tok = torch.where(erc_clipped, loss_tok.detach(), loss_tok)
    return loss_tok, clipped, erc_clipped


def outside_erc_band(entropy, old_entropy, cfg):
    """ERC's test (formulas §4): rho = (H + 1e-8) / (H_old + 1e-8) is kept only strictly inside the band."""
    entropy_ratio = (entropy + 1e-8) / (old_entropy + 1e-8)
    return (entropy_ratio <= cfg.erc_low) | (entropy_ratio >= cfg.erc_high)


# ================================================================== objective: every loss term and its normaliser
def objective(logp, entropy, micro, minibatch, cfg):
    """(loss to minimise, stats) of one micro-batch. logp, entropy [b, T]: the training forward's; micro, minibatch:
    the rollout tensors of this micro-batch and of its whole mini-batch. Every normaliser counts the whole
    mini-batch, so the micro-batches' losses and stats add up to the mini-batch's (formulas §3)."""
    mask = micro["response_mask"].float()  # [b, T]
    n_tokens = minibatch["response_mask"].sum()
    loss_tok, clipped, erc_clipped = policy_loss(logp, micro["old_logp"], micro["advantages"], mask, cfg,
                                                 entropy, micro["old_entropy"])
    if cfg.algo == "gspo":  # mean over sequences of each sequence's token mean (formulas §3.6)
        policy = ((loss_tok * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / len(minibatch["response_mask"])
    else:  # token mean over the mini-batch (formulas §3); ERC-clipped tokens still count
        policy = (loss_tok * mask).sum() / n_tokens
    # Klear-Reasoner §3.2.3: token-mean NLL of the correct responses, not gated by ERC (--sft-coef; recipes: 0.1)
    correct = mask * (micro["rewards"] > 0)[:, None]
    n_correct = (minibatch["response_mask"] * (minibatch["rewards"] > 0)[:, None]).sum().clamp(min=1)
    sft = -(logp * correct).sum() / n_correct
    loss = policy + cfg.sft_coef * sft
    stats = dict(loss=loss, policy_loss=policy, sft_loss=sft, clip_frac=(clipped * mask).sum() / n_tokens,
                 erc_clip_frac=(erc_clipped * mask).sum() / n_tokens)
    return loss, {k: v.detach().float() for k, v in stats.items()}


# ================================================================== update
def autocast(cfg, device):
    """--bf16: bf16 autocast around the model's forward (fp32 master weights); the output layer stays fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


def plan_minibatches(n, cfg):
    """A shuffled epoch: num_minibatches lists of micro-batch indices. Old-policy scoring and the update use the
    same plan: equal shapes give equal numbers, so the first mini-batch's ratio is 1 (formulas §6)."""
    return [mb.split(cfg.micro_batch_size or len(mb)) for mb in torch.randperm(n).tensor_split(cfg.num_minibatches)
            if len(mb)]


def take(batch, index):
    return {k: v[index] for k, v in batch.items()}


@torch.no_grad()
def score_old_policy(model, batch, minibatches, cfg):
    """old_logp and old_entropy [B, T] with the pre-update weights, without autograd (formulas §4)."""
    model.eval()
    old_logp = torch.zeros(batch["response_mask"].shape, device=model.device)
    old_entropy = torch.zeros_like(old_logp)
    for micro in (idx for micros in minibatches for idx in micros):
        with autocast(cfg, model.device):
            old_logp[micro], old_entropy[micro] = logp_and_entropy(
                model, batch["input_ids"][micro], batch["attention_mask"][micro], batch["response_mask"][micro],
                cfg.temperature, cfg.logprob_chunk)
    return old_logp, old_entropy


def train_on_batch(model, optimizer, batch, minibatches, cfg):
    """One optimizer step per mini-batch (gradients accumulated over its micro-batches). Returns the mean stats
    of `objective` and grad_norm over mini-batches, update counts, and the first mini-batch's noise floor."""
    model.train()
    totals, updates, nonfinite = {}, 0, 0
    first_err, first_outside, first_tokens = 0.0, 0, 0
    for i, micros in enumerate(minibatches):
        minibatch = take(batch, torch.cat(micros))
        optimizer.zero_grad(set_to_none=True)
        for idx in micros:
            micro = take(batch, idx)
            with autocast(cfg, model.device):
                logp, entropy = logp_and_entropy(model, micro["input_ids"], micro["attention_mask"],
                                                 micro["response_mask"], cfg.temperature, cfg.logprob_chunk)
            loss, stats = objective(logp, entropy, micro, minibatch, cfg)
            loss.backward()
            for k, v in stats.items():  # micro-batch shares add up to the mini-batch's value
                totals[k] = totals.get(k, 0.0) + v
            if i == 0:  # before this step's first update r = H / H_old = 1: any difference is numerical noise
                valid = micro["response_mask"].bool()
                first_err = max(first_err, (logp - micro["old_logp"])[valid].exp().sub(1).abs().max().item())
                first_outside += int(outside_erc_band(entropy, micro["old_entropy"], cfg)[valid].sum())
                first_tokens += int(valid.sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm
        if torch.isfinite(grad_norm):  # a NaN / inf loss or gradient: skip this update, keep the weights
            optimizer.step()
            updates += 1
        else:
            nonfinite += 1
    stats = {k: v.item() / len(minibatches) for k, v in totals.items()}
    return dict(stats, updates=updates, nonfinite_updates=nonfinite, first_mb_max_ratio_err=first_err,
                first_mb_erc_clip_frac=first_outside / first_tokens)


# ================================================================== one training step: the algorithm, whole
def train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows):
    """Rollout, reward, advantages, old-policy scoring and updates on one batch of prompts; returns its metrics.
    sampler: the model that generates (the policy `model` itself, or its bf16 copy)."""
    t0 = time.time()
    input_ids, attention_mask, response_mask = rollout(sampler, tokenizer, rows["prompt"], cfg.group_size,
                                                       cfg.temperature, cfg.max_new_tokens, cfg.static_cache)
    rewards = response_rewards(tokenizer, input_ids, response_mask, rows["answer"], cfg.group_size, cfg.reward)
    rewards = rewards.to(model.device)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask, rewards=rewards,
                 advantages=group_advantages(rewards, cfg.group_size))
    record = dict(reward=rewards.mean().item(), response_len=response_mask.sum(1).float().mean().item(),
                  gen_time=time.time() - t0)
    t0 = time.time()
    if cfg.dynamic_sampling:  # DAPO: drop every group whose rewards are all equal (formulas §3.2)
        batch = take(batch, group_varies(rewards, cfg.group_size))
    record.update(kept_groups=len(batch["rewards"]) // cfg.group_size, skipped=int(len(batch["rewards"]) == 0))
    if record["skipped"]:
        return record
    minibatches = plan_minibatches(len(batch["rewards"]), cfg)
    batch["old_logp"], batch["old_entropy"] = score_old_policy(model, batch, minibatches, cfg)
    record["entropy"] = (batch["old_entropy"].sum() / batch["response_mask"].sum()).item()  # old policy, per token
    record.update(train_on_batch(model, optimizer, batch, minibatches, cfg))
    if record["updates"]:
        scheduler.step()  # warm-up counts training steps that updated
    if sampler is not model:
        sampler.load_state_dict(model.state_dict())  # the sampler follows the policy (cast to bf16 on copy)
    record["train_time"] = time.time() - t0
    return record


# ================================================================== the loop and its plumbing
@torch.no_grad()
def evaluate(model, tokenizer, data, cfg):
    """Held-out accuracy: greedy, and avg@k (the mean over k samples at --eval-temperature and --eval-top-p)."""
    result = {}
    for name, k, temperature in (("eval_greedy", 1, 0.0),
                                 (f"eval_avg@{cfg.eval_samples}", cfg.eval_samples, cfg.eval_temperature)):
        correct = []
        for start in range(0, len(data), cfg.prompts_per_step):
            rows = data[start:start + cfg.prompts_per_step]
            ids, _, response_mask = rollout(model, tokenizer, rows["prompt"], k, temperature, cfg.max_new_tokens,
                                            cfg.static_cache, cfg.eval_top_p)
            correct += response_rewards(tokenizer, ids, response_mask, rows["answer"], k, cfg.reward).tolist()
        result[name] = sum(correct) / len(correct)
    return result


def first_line(error):
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def fail(message):
    """Bad input or an unusable file: one line on stderr, exit code 2, no traceback."""
    print(f"erc_minimal: error: {message}", file=sys.stderr)
    sys.exit(2)


def checkpoints(out):
    """OUT's complete checkpoint folders, oldest first (a checkpoint gets its name only once fully written)."""
    names = [n for n in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", n)] if os.path.isdir(out) else []
    return [os.path.join(out, n) for n in sorted(names, key=lambda n: int(n.split("-")[1]))]


def save_checkpoint(cfg, step, model, tokenizer, optimizer, scheduler, order):
    """OUT/checkpoint-STEP (save_pretrained model + tokenizer, trainer_state.pt), written under a temporary name
    and renamed: a kill or a full disk leaves the previous checkpoints intact. Keeps the newest --save-total-limit."""
    final = os.path.join(cfg.out, f"checkpoint-{step}")
    tmp = final + ".tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(dict(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), order=order,
                        rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state_all()),
                   os.path.join(tmp, "trainer_state.pt"))
        os.replace(tmp, final)  # atomic: from here on checkpoints() lists it
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        fail(f"cannot write checkpoint {tmp} ({first_line(e)}); the earlier checkpoints are intact")
    for old in checkpoints(cfg.out)[:-cfg.save_total_limit]:
        shutil.rmtree(old)
    return final


def read_jsonl(path):
    """A JSONL file's records. A torn last line (a kill while writing it) is dropped with a warning."""
    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                fail(f"{path}, line {number}: not valid JSON")
            print(f"warning: {path}: dropped a torn last line (a step after the checkpoint; it will be redone)")
    return records


def start_or_resume(cfg, optimizer, scheduler):
    """(first step, data order, metrics so far). --resume restores optimizer, scheduler, data order and RNG from
    the newest checkpoint, so the run continues bit for bit; a fresh run removes OUT's old checkpoints."""
    os.makedirs(cfg.out, exist_ok=True)
    metrics = os.path.join(cfg.out, "metrics.jsonl")
    start, order, history = 0, [], []
    if cfg.resume:
        path = os.path.join(checkpoints(cfg.out)[-1], "trainer_state.pt")
        try:
            state = torch.load(path, weights_only=False)
        except Exception as e:  # missing or truncated: name the file
            fail(f"cannot load {path} ({first_line(e)})")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        torch.cuda.set_rng_state_all(state["cuda_rng"])
        start, order = state["step"], state["order"]
        history = [r for r in read_jsonl(metrics) if r["step"] < start]  # later steps will be redone
    else:
        for path in checkpoints(cfg.out):
            shutil.rmtree(path)
    Path(cfg.out, "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    Path(metrics + ".tmp").write_text("".join(json.dumps(r) + "\n" for r in history))
    os.replace(metrics + ".tmp", metrics)  # atomic: a crash here loses no saved line
    return start, order, history


def make_reporter(cfg):
    """--report-to: a function that sends a step's record to wandb, trackio or tensorboard (None for none)."""
    if cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(cfg.out, "tensorboard"))

        def report(record):
            for key, value in record.items():
                writer.add_scalar(key, value, record["step"])
            writer.flush()
        return report
    if cfg.report_to in ("wandb", "trackio"):  # trackio follows wandb's init / log
        tracker = importlib.import_module(cfg.report_to)
        tracker.init(project="erc_minimal", name=os.path.basename(os.path.abspath(cfg.out)),
                     config=dataclasses.asdict(cfg))
        return lambda record: tracker.log(record, step=record["step"])
    return None


def log_step(cfg, record, progress, report):
    """Every step: a line of OUT/metrics.jsonl (and --report-to). Every --log-every steps and at evaluations: a
    console line."""
    with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if report:
        report(record)
    progress.set_postfix(reward=f"{record['reward']:.2f}")
    evals = {k: v for k, v in record.items() if k.startswith("eval_")}
    if (record["step"] + 1) % cfg.log_every == 0 or evals:
        shown = dict(reward="reward", entropy="entropy", clip_frac="clip", erc_clip_frac="erc_clip")
        shown.update({k: k for k in evals})
        line = [f"step {record['step'] + 1:>4}"] + [f"{shown[k]} {record[k]:.3f}" for k in shown if k in record]
        tqdm.write("  ".join(line + [f"{record['gen_time'] + record.get('train_time', 0):.2f} s/step"]))


def prepare(cfg):
    """Optional packages, threads, matmul precision, seed; the device, and whether the hub can be reached."""
    for choice in (cfg.reward, cfg.report_to):  # packages imported only when asked for
        if choice not in ("none", "numeric") and importlib.util.find_spec(choice.replace("-", "_")) is None:
            raise ValueError(f"{choice} is not installed (pip install {choice})")
    if cfg.threads:  # the tiny model gains nothing from intra-op threads, and loses much on a busy CPU
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls stay fp32, not TF32 (formulas §6)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and cfg.preset != "tiny":
        print(f"warning: no CUDA device: --preset {cfg.preset} runs on the CPU, very slowly (tiny is the CPU demo)")
    online = hub_reachable(cfg.model, cfg.dataset)
    datasets.config.HF_HUB_OFFLINE = not online  # no minute of retries when the hub cannot be reached
    return device, online


def setup(cfg):
    """Model, tokenizer, train and eval data; every user-input problem surfaces here as a ValueError."""
    if cfg.resume and not checkpoints(cfg.out):
        raise ValueError(f"--resume: {cfg.out!r} has no checkpoint to resume from")
    if os.path.exists(os.path.join(cfg.out, "metrics.jsonl")) and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"--out {cfg.out!r} holds another run's metrics; add --resume to continue it or "
                         "--overwrite to start over")
    device, online = prepare(cfg)
    # on --resume, weights and tokenizer come from the checkpoint (the config from OUT/config.json, see main)
    model, tokenizer = load_model_and_tokenizer(checkpoints(cfg.out)[-1] if cfg.resume else cfg.model, device, online)
    if cfg.gradient_checkpointing:  # transformers 5 renamed gradient_checkpointing_enable
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    eval_data = load_data(cfg, tokenizer, split="test") if cfg.eval_every else None
    return model, tokenizer, load_data(cfg, tokenizer), eval_data


def train(cfg, model, tokenizer, data, eval_data=None, stop=()):
    """The loop: train_step on each batch of prompts, and the plumbing around it. `stop` becomes non-empty when
    the run should save and return (main's signal handler)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (cfg.warmup_steps + 1)))
    start, order, history = start_or_resume(cfg, optimizer, scheduler)
    sampler, report = make_sampler(model, cfg.bf16), make_reporter(cfg)
    bad_steps, t_start = 0, time.time()
    progress = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=cfg.algo + "+erc" * cfg.erc)
    for step in progress:
        while len(order) < cfg.prompts_per_step:  # epochs of shuffled prompts
            order += torch.randperm(len(data)).tolist()
        rows = data[[order.pop() for _ in range(cfg.prompts_per_step)]]
        record = dict(step=step, **train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows),
                      lr=scheduler.get_last_lr()[0])
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            record.update(evaluate(sampler, tokenizer, eval_data, cfg))
        history.append(record)
        log_step(cfg, record, progress, report)
        bad_steps = bad_steps + 1 if record.get("nonfinite_updates") else 0
        if bad_steps == 1:
            tqdm.write(f"warning: step {step}: non-finite loss or gradient, updates skipped")
        if bad_steps >= cfg.max_bad_steps:
            raise SystemExit(f"erc_minimal: stopped at step {step}: {bad_steps} consecutive steps with a non-finite "
                             "loss or gradient (try a lower --lr)")
        if stop or step + 1 == cfg.steps or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            path = save_checkpoint(cfg, step + 1, model, tokenizer, optimizer, scheduler, order)
        if stop:
            print(f"interrupted after step {step}: saved {path}; continue with --out {cfg.out} --resume")
            return history
    progress.close()
    if history:  # the end-of-run summary
        print(f"done: {cfg.steps} steps, {time.time() - t_start:.0f} s this session, metrics and checkpoints in "
              f"{cfg.out}")
        for key in ("reward", "entropy", "erc_clip_frac"):
            first, last = ([r[key] for r in rows if key in r] for rows in (history[:10], history[-10:]))
            if first and last:
                print(f"  {key}: {sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f}")
        for key, value in history[-1].items():
            if key.startswith("eval_"):
                print(f"  {key}: {value:.3f}")
    return history


# ================================================================== main
def parse_args(argv):
    """Only the flags actually given (so that --resume can tell them from OUT/config.json's values)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(Config):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type is bool:
            action = "store_true" if f.default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, help=help)
        else:
            default = f" (default: {f.default})" if f.default is not None else ""
            parser.add_argument(flag, type=f.type, help=help + default)

    def one_line_error(message):  # argparse's own errors too: main prints them as one line, exit 2
        raise ValueError(f"{message} (see --help)")

    parser.error = one_line_error
    return vars(parser.parse_args(argv))


def evaluate_only(argv):
    """`eval CHECKPOINT_OR_MODEL`: held-out accuracy, printed and written to CHECKPOINT/eval.json (OUT/eval.json
    for a hub model). A checkpoint of this script evaluates with its run's config.json; flags override it."""
    if not argv or argv[0].startswith("-"):
        raise ValueError("usage: erc_minimal.py eval CHECKPOINT_OR_MODEL [flags]")
    run_config = Path(argv[0]).parent / "config.json"
    given = {**(json.loads(run_config.read_text()) if run_config.exists() else {}), **parse_args(argv[1:])}
    cfg = Config(**{**given, "model": argv[0], "resume": False, "overwrite": False})
    model, tokenizer = load_model_and_tokenizer(cfg.model, *prepare(cfg))
    result = evaluate(make_sampler(model, cfg.bf16), tokenizer, load_data(cfg, tokenizer, split="test"), cfg)
    path = Path(cfg.model if os.path.isdir(cfg.model) else cfg.out, "eval.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    print("  ".join(f"{k} {v:.3f}" for k, v in result.items()) + f"  ({path})")
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    datasets.disable_progress_bars()  # datasets' per-map bars; the training bar is ours
    transformers.logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    try:
        if argv[:1] == ["eval"]:  # python erc_minimal.py eval CHECKPOINT_OR_MODEL [flags]: accuracy, no training
            return evaluate_only(argv[1:])
        given = parse_args(argv)
        saved = Path(given.get("out", Config.out), "config.json")
        if given.get("resume") and saved.exists():
            given = {**json.loads(saved.read_text()), **given, "overwrite": False}
        cfg = Config(**given)
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
