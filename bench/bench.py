"""Benchmark: erc_minimal's training step against TRL's GRPOTrainer on the same model, prompts and batch.

    pip install -r requirements.txt -r bench/requirements.txt
    python bench/bench.py                                   # tiny-cpu and wide-cpu, 16 to 19 minutes on 2 cores
    python bench/bench.py --json --configs tiny-cpu,wide-cpu  # the same, ending with one JSON line
    python bench/bench.py --configs gpu                     # Qwen2.5-0.5B shapes, 128 x 512, bf16, on a CUDA GPU
    python bench/bench.py --configs gpu --static-cache      # the same with a static KV cache (compiled decoding)

Both sides get the same randomly initialised Qwen2 model (same seed), the same tokenizer, prompts, group size,
completion length, loss (DAPO's token mean with clip-higher 0.2 / 0.28, no KL, no dynamic sampling),
updates per rollout batch (4 mini-batches, one epoch), optimizer (AdamW, lr 1e-6, weight decay 0.1, grad clip
1.0), gradient checkpointing and KV-cache settings. Every measurement runs in a fresh process: peak memory is
that process's peak resident memory on CPU and torch.cuda.max_memory_allocated on GPU, measured the same way
for both sides. Times are means over the measured rollout batches after the warm-up batches: rollout =
generation (+ reward), update = old log-probs + the mini-batch updates, step = the two together. tiny-cpu runs
3 processes per side, alternately, and reports the median one.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import erc_minimal as E  # noqa: E402

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True)
CONFIGS = {  # model shape, batch, completion length, device
    "tiny-cpu": dict(model=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=None, max_position_embeddings=64),
                     prompts=32, group=8, length=2, erc=False, device="cpu", warmup=1, measured=20, repeats=3),
    "wide-cpu": dict(model=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=1024),
                     prompts=8, group=8, length=256, erc=True, device="cpu", warmup=0, measured=1, repeats=1),
    "gpu": dict(model=QWEN25_05B, prompts=16, group=8, length=512, erc=True, device="cuda", warmup=1, measured=2,
                repeats=1),
}
MINIBATCHES = 4  # optimizer steps per rollout batch; config['warmup'] + config['measured'] rollout batches
# config['repeats']: fresh processes per side, alternating ours / TRL; the table shows the median-step run


def build(config, seed=0):
    """Model, tokenizer (the tiny character tokenizer, its vocabulary padded with filler tokens to the model's)
    and a prompt dataset with columns prompt / answer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    shape = dict(config["model"])
    vocab = ["<|endoftext|>", *E.TINY_CHARS]
    vocab += [f"<filler{i}>" for i in range((shape["vocab_size"] or len(vocab)) - len(vocab))]
    shape["vocab_size"] = len(vocab)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = E.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                          padding_side="left")
    torch.manual_seed(seed)
    model = E.transformers.Qwen2ForCausalLM(E.transformers.Qwen2Config(**shape, bos_token_id=0, eos_token_id=0, pad_token_id=0))
    data = E.make_tiny_dataset(1000, seed=seed).rename_column("question", "prompt")
    return model.to(config["device"]), tokenizer, data


def peak_memory(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_ours(config, length, erc, gradient_checkpointing, static_cache):
    model, tokenizer, data = build(config)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    with tempfile.TemporaryDirectory() as out:
        cfg = E.Config(preset="tiny", algo="dapo", dynamic_sampling=False, erc=erc, lr=1e-6, out=out,
                          static_cache=static_cache,
                          steps=config["warmup"] + config["measured"], prompts_per_step=config["prompts"],
                          group_size=config["group"], num_minibatches=MINIBATCHES, max_new_tokens=length)
        history = E.train(cfg, model, tokenizer, data)
    rows = history[config["warmup"]:]
    rollout = sum(r["gen_time"] for r in rows) / len(rows)
    update = sum(r["train_time"] for r in rows) / len(rows)
    decode_steps = sum(r["response_len"] for r in rows) / len(rows)  # mean; generation runs to the longest
    return dict(rollout=rollout, update=update, step=rollout + update, peak_mem=peak_memory(config["device"]),
                tokens=config["prompts"] * config["group"] * decode_steps,
                weights=sum(p.numel() for p in model.parameters()))


def run_trl(config, length, erc, gradient_checkpointing, static_cache):
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    model, tokenizer, data = build(config)
    batch = config["prompts"] * config["group"]

    def reward(prompts, completions, answer, **kwargs):
        return [E.reward_fn(c, a) for c, a in zip(completions, answer)]

    step_ends, rollout_times = [], []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.time())

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=batch // MINIBATCHES,
                          gradient_accumulation_steps=1, steps_per_generation=MINIBATCHES,
                          num_generations=config["group"], num_iterations=1,
                          max_completion_length=length, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0,
                          scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                          learning_rate=1e-6, weight_decay=0.1, max_grad_norm=1.0, lr_scheduler_type="constant",
                          warmup_steps=0, max_steps=MINIBATCHES * (config["warmup"] + config["measured"]),
                          gradient_checkpointing=gradient_checkpointing, use_cpu=config["device"] == "cpu",
                          cache_implementation="static" if static_cache else None,
                          bf16=config["device"] == "cuda", report_to="none", save_strategy="no", logging_steps=1,
                          disable_tqdm=True, seed=0, shuffle_dataset=True)
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=args,
                              train_dataset=data, callbacks=[StepTimer()])
        generate = trainer._generate

        def timed_generate(*a, **kw):
            t0 = time.time()
            result = generate(*a, **kw)
            rollout_times.append(time.time() - t0)
            return result

        trainer._generate = timed_generate
        t_start = time.time()
        trainer.train()
    # one rollout batch = MINIBATCHES optimizer steps; its time runs from the previous batch's last step end
    ends = [t_start] + step_ends[MINIBATCHES - 1::MINIBATCHES]
    steps = [b - a for a, b in zip(ends, ends[1:])][config["warmup"]:]
    rollout = sum(rollout_times[config["warmup"]:]) / config["measured"]
    step = sum(steps) / len(steps)
    return dict(rollout=rollout, update=step - rollout, step=step, peak_mem=peak_memory(config["device"]),
                tokens=batch * length)


def measure(side, config_name, length, erc, options):
    """Run one measurement in a fresh process; returns its dict."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--configs", config_name,
           "--length", str(length), "--erc", str(int(erc)), "--gc", str(int(options.gradient_checkpointing)),
           "--sc", str(int(options.static_cache))]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{side} {config_name} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure_both(name, config, options):
    """ours and TRL, alternating, config['repeats'] fresh processes each; per side, the run with the median step
    time (the tiny config's steps are ~0.1 s, and one process's mean moves by 30% from run to run)."""
    runs = {"ours": [], "trl": []}
    for _ in range(config["repeats"]):
        for side in runs:
            runs[side].append(measure(side, name, config["length"], config["erc"], options))
    if config["repeats"] > 1:
        print(f"\n{name} step times of the {config['repeats']} runs: " + "; ".join(
            f"{side} " + ", ".join(f"{r['step']:.3f}" for r in side_runs) for side, side_runs in runs.items()))
    return [sorted(side_runs, key=lambda r: r["step"])[len(side_runs) // 2] for side_runs in runs.values()]


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny-cpu,wide-cpu", help=f"comma-separated, from {list(CONFIGS)}")
    parser.add_argument("--json", action="store_true", help="end with one line holding a JSON object")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--static-cache", action="store_true", help="generate with a static KV cache (compiled on "
                        "GPU by transformers) on both sides")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--erc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sc", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # inside a fresh process: one measurement, printed as JSON
        config = CONFIGS[args.configs]
        run = {"ours": run_ours, "trl": run_trl}[args.worker]
        print(json.dumps(run(config, args.length, bool(args.erc), bool(args.gc), bool(args.sc))))
        return

    summary = {}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores"
          f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}; gradient checkpointing "
          f"{args.gradient_checkpointing}, static cache {args.static_cache}")
    for name in args.configs.split(","):
        config = CONFIGS[name]
        if config["device"] == "cuda" and not torch.cuda.is_available():
            print(f"{name}: skipped, no CUDA device")
            continue
        ours, trl = measure_both(name, config, args)
        print(f"\n{name}: {config['prompts']} prompts x {config['group']} samples x {config['length']} tokens, "
              f"vocab {config['model']['vocab_size'] or len(E.TINY_CHARS) + 1}, ERC {'on' if config['erc'] else 'off'}")
        print(f"| {'':22} | {'erc_minimal':>12} | {'TRL':>12} | {'ratio':>6} |")
        for key, unit in (("rollout", "s"), ("update", "s"), ("step", "s"), ("peak_mem", "")):
            a, b = ours[key], trl[key]
            fa, fb = (gib(a), gib(b)) if key == "peak_mem" else (f"{a:.3f} s", f"{b:.3f} s")
            print(f"| {key + (' time' if unit else ''):22} | {fa:>12} | {fb:>12} | {a / b:6.2f} |")
        entry = dict(step_time_ratio=ours["step"] / trl["step"], peak_mem_ratio=ours["peak_mem"] / trl["peak_mem"])
        if name == "wide-cpu":
            no_erc = measure("ours", name, config["length"], False, args)
            entry["erc_mem_overhead"] = ours["peak_mem"] / no_erc["peak_mem"]
            print(f"ERC on / off (erc_minimal): peak memory {entry['erc_mem_overhead']:.3f}x, "
                  f"step time {ours['step'] / no_erc['step']:.3f}x")
            by_len = {str(n): ours if n == config["length"] else measure("ours", name, n, True, args)
                      for n in (128, 256, 512)}
            entry["peak_mem_by_len"] = {k: v["peak_mem"] for k, v in by_len.items()}
            print("erc_minimal by completion length: " + ", ".join(
                f"{k} tokens: {gib(v['peak_mem'])}, step {v['step']:.2f} s" for k, v in by_len.items()))
        if name == "gpu":
            weight_bytes = ours["weights"] * 2  # the bf16 sampling copy, read once per decoded token
            bandwidth = 3.35e12 if "H100" in torch.cuda.get_device_name() else 4.8e12  # H100 SXM / H200 HBM3(e)
            entry["rollout_tokens_per_s"] = ours["tokens"] / ours["rollout"]
            entry["decode_bw_fraction"] = weight_bytes * config["length"] / ours["rollout"] / bandwidth
            print(f"rollout {entry['rollout_tokens_per_s']:.0f} tokens/s; decoding at "
                  f"{entry['decode_bw_fraction']:.1%} of the {bandwidth / 1e12:.2f} TB/s bandwidth limit")
        summary[name] = entry if name != "tiny-cpu" else dict(step_time_ratio=entry["step_time_ratio"])
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
