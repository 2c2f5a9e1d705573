"""Will it fit on my card, and how fast? A few real training steps of erc_minimal.py at the default preset's exact
shapes (Qwen2.5-0.5B-Instruct's configuration, random weights, ragged prompts of 100 to 250 tokens as GSM8K's are
in the chat template, so left padding and its mask are built), with no download.

    python tools/gpu_check.py                              # the README's command for the card found, 3 steps
    python tools/gpu_check.py --micro-batch-size 8         # erc_minimal.py flags, after (and over) those
    python tools/gpu_check.py --small                      # a 2-layer model and short responses: checks the tool

Random weights almost never emit EOS (1 token in 151,936), so every response runs to --max-new-tokens: the worst
case of a real run, in memory and in time. The reward is a seeded coin (random weights never answer right), so
advantages, gradients and ERC's masks are real. Each step goes through the script's own functions (train_step,
with rollout, score_old_policy and train_on_batch timed where they are called). Printed: per step, the seconds of
each phase (the rollout, also per decoding step; the old-policy scoring; the updates), the peak memory of each
phase (on a GPU, allocated by torch; on a CPU, the process's peak so far), the noise floor (first_mb_*: max |r - 1|
and ERC's clip share before any update; not ~0 means ERC clips numerics) and whether every loss and gradient was
finite; then one line: does the command fit this card, with what headroom. The first step includes warm-up
(allocator, kernels): read the last. Beside the decoding step's time stands its floor: the bytes one step must move
(the bf16 weights, the KV cache at the mean context, the logits) at the bandwidth a plain copy reaches on the same
device, and the measured time as a multiple of it. Then both KV cache paths of generate (static: the CUDA
default, compiled there; dynamic) on the same prompts and seed: the time of a decoding step and its multiple of
the floor, how far generate's own log-probs are from the trainer's scoring of the same sequences, the static
bucket's columns of padding, and the share of rows where the two paths sampled the same response.
"""
import argparse
import os
import resource
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import erc_minimal as E  # noqa: E402

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)
SMALL = dict(QWEN25_05B, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=4096)
GiB = 2 ** 30


def build(shape, device, prompt_tokens, n_prompts, seed=0):
    """A random Qwen2 model of `shape`, a character tokenizer padded with filler tokens to its vocabulary (id 0 is
    EOS and padding), and n_prompts prompts of digits and signs: prompt_tokens each, or, for a (shortest, longest)
    pair, lengths spread evenly between them (ragged, as real prompts are: left padding and its mask)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    vocab = ["<|endoftext|>", *E.TINY_CHARS] + [f"<filler{i}>" for i in range(shape["vocab_size"] - 13)]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split(Regex("."), "isolated"), decoders.Fuse()
    tokenizer = E.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                          pad_token="<|endoftext|>", padding_side="left")
    torch.manual_seed(seed)
    config = E.transformers.Qwen2Config(**shape, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = E.transformers.Qwen2ForCausalLM(config).to(device)
    g = torch.Generator().manual_seed(seed)
    lengths = [prompt_tokens] * n_prompts if isinstance(prompt_tokens, int) else \
        torch.linspace(*prompt_tokens, n_prompts).round().int().tolist()
    prompts = ["".join(E.TINY_CHARS[i] for i in torch.randint(0, 12, (n,), generator=g).tolist()) for n in lengths]
    return model, tokenizer, prompts


class Phases:
    """Times and peak memory of the phases of a step, measured around erc_minimal's own functions."""

    def __init__(self, device):
        self.device, self.now = device, {}

    def wrap(self, name, function):
        def timed(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = function(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            previous = self.now.get(name, (0.0, 0, 0))
            self.now[name] = (previous[0] + seconds, max(previous[1], self.peak()), previous[2] + 1)
            if name == "rollout":
                self.now["decode_steps"] = result[2].shape[1]  # response_mask [B, T]: T tokens decoded
                self.now["attention"] = result[1]  # [B, P+T]: zeros where a prompt was left-padded
            return result
        return timed

    def peak(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def bandwidth(device, gib=1.0):
    """The memory bandwidth this device reaches on a plain copy, in bytes per second (reads plus writes)."""
    x = torch.empty(int(gib * GiB) // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        y.copy_(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    moved = 2 * x.numel() * 4
    del x, y
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the 2 GiB go back to the card before the run is measured
    return moved / best


def decode_floor_bytes(shape, rows, context):
    """Bytes one decoding step must move at least: the bf16 weights once, the bf16 KV cache of `rows` rows of
    `context` tokens, and the logits (bf16 out of the model, fp32 for sampling)."""
    h, f, v, n = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], shape["num_hidden_layers"]
    kv_dim = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    layer = 2 * h * h + 2 * h * kv_dim + 3 * h * f  # q and o, k and v, the MLP's three matrices
    params = v * h + n * layer  # the tied embedding and the layers: 494M at Qwen2.5-0.5B's shapes
    kv_cache = 2 * n * 2 * kv_dim * rows * context  # bf16 K and V of every layer
    return 2 * params + kv_cache + rows * v * (2 + 4)


def readme_command(card_gib):
    """The README's flags for a card of card_gib GiB (erc_minimal's CARD_FLAGS, beyond --algo gppo --erc), and the
    card size it names."""
    for least, flags in E.CARD_FLAGS.items():
        if card_gib >= least:
            return ["--algo", "gppo", "--erc", *flags.split()], least


class SampledLogps:
    """A logits processor that keeps generate's own log p (at temperature T) of every token it samples, holding
    one step's [rows, vocabulary] block at a time; `logps(sequences)` [rows, decoded] once generate returns."""

    def __init__(self, temperature):
        self.temperature, self.last, self.kept = temperature, None, []

    def __call__(self, input_ids, scores):  # scores: the step's logits, before temperature and sampling
        if self.last is not None:  # the token sampled at the previous step is input_ids' last column
            self.kept.append(self.last.gather(-1, input_ids[:, -1:]))
        self.last = (scores.float() / self.temperature).log_softmax(-1)
        return scores

    def logps(self, sequences):
        return torch.cat([*self.kept, self.last.gather(-1, sequences[:, -1:])], 1)


def cache_paths(cfg, model, sampler, tokenizer, prompts, floor_ms, device):
    """Each KV cache path of generate (static, dynamic) on the same prompts and seed: the time of a decoding step
    (the second rollout: the first compiles), how far generate's own log-probs are from the trainer's scoring of
    the same sequences, and whether the two paths sampled the same sequences."""
    from transformers import LogitsProcessorList
    generate, out, timer = sampler.generate, {}, Phases(device)
    rollout = timer.wrap("rollout", E.rollout)
    try:
        for static in (True, False):
            for _ in range(2):  # warm-up (the static cache compiles on a GPU), then the measured one
                recorder = SampledLogps(cfg.temperature)
                sampler.generate = lambda **kw: generate(**kw, logits_processor=LogitsProcessorList([recorder]))
                torch.manual_seed(cfg.seed)
                timer.now = {}
                ids, attention, response_mask = rollout(sampler, tokenizer, prompts, cfg.group_size,
                                                        cfg.temperature, cfg.max_new_tokens, static)
            seconds = timer.now["rollout"][0]
            batch = dict(input_ids=ids, attention_mask=attention, response_mask=response_mask)
            scored, _ = E.score_old_policy(model, batch, E.plan_minibatches(len(ids), cfg), cfg)  # as a step does
            gap = (recorder.logps(ids) - scored).abs()[response_mask.bool()]  # response tokens only
            out["static" if static else "dynamic"] = dict(
                ms_per_decode_step=1000 * seconds / response_mask.shape[1], gap_max=gap.max().item(),
                gap_mean=gap.mean().item(), responses=ids[:, -response_mask.shape[1]:] * response_mask,
                padded_columns=int((attention == 0).all(0).sum()))
    finally:
        sampler.generate = generate
    same = (out["static"]["responses"] == out["dynamic"]["responses"]).all(1).float().mean().item()
    for name, r in out.items():
        print(f"{name} cache: {r['ms_per_decode_step']:.1f} ms a decoding step (x {r['ms_per_decode_step'] / floor_ms:.1f} "
              f"the floor); generate's log p against the scoring's: max {r['gap_max']:.1e}, mean {r['gap_mean']:.1e}; "
              f"{r['padded_columns']} columns of padding in every row")
    print(f"the two paths sampled the same response in {same:.0%} of the rows (same prompts, same seed)")
    return out, same


def run(argv=None):
    """Parse, build, run --steps steps, print the table; returns the per-step measurements and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="training steps to run (default 3)")
    parser.add_argument("--small", action="store_true", help="a 2-layer model, 4 x 4 responses of 16 tokens")
    parser.add_argument("--prompt-tokens", type=int, help="tokens in every prompt (default: ragged, 100 to 250 "
                        "tokens as GSM8K's prompts in the chat template; --small: 12 to 28)")
    own, rest = parser.parse_known_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card_gib = torch.cuda.get_device_properties(0).total_memory / GiB if device.type == "cuda" else None
    chosen, least = readme_command(card_gib if card_gib is not None else 80)
    flags = chosen + rest  # given flags come last: they win
    if own.small:  # sizes for a quick CPU check, unless given
        flags = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "16", "--num-minibatches", "2",
                 *flags]
    given = E.parse_args(flags)
    E.REWARDS.setdefault("coin", lambda completion, answer: float(torch.rand(()) < 0.5))  # per-step seeded stream
    cfg = E.Config(**{"reward": "coin", **given}, given=given)
    torch.set_float32_matmul_precision("highest")  # as erc_minimal's setup does
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    shape = SMALL if own.small else QWEN25_05B
    lengths = own.prompt_tokens or ((12, 28) if own.small else (100, 250))
    model, tokenizer, prompts = build(shape, device, lengths, cfg.prompts_per_step)
    bytes_per_second = bandwidth(device, 0.125 if own.small else 1.0)
    if cfg.gradient_checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sampler = E.frozen_copy(model, torch.bfloat16) if cfg.bf16 else model
    phases = Phases(device)
    saved = E.rollout, E.score_old_policy, E.train_on_batch
    E.rollout, E.score_old_policy, E.train_on_batch = (phases.wrap(name, f) for name, f in
                                                        zip(("rollout", "scoring", "update"), saved))
    rows = dict(prompt=prompts, answer=["0"] * len(prompts))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"gpu_check: {name}" + (f" ({card_gib:.1f} GiB)" if card_gib else "") + f"; torch {torch.__version__}, "
          f"transformers {E.transformers.__version__}; {'small shapes' if own.small else 'Qwen2.5-0.5B shapes'}, "
          f"random weights; bf16 {cfg.bf16}, static KV cache {cfg.static_cache}")
    print("flags: " + " ".join(flags) + f"  (the README's command for a card of {least} GiB or more: "
          f"{' '.join(chosen)})")
    print(f"{cfg.prompts_per_step} prompts of {lengths if isinstance(lengths, int) else '%d to %d' % lengths} "
          f"tokens x {cfg.group_size} responses of up to {cfg.max_new_tokens} tokens, {cfg.num_minibatches} "
          f"mini-batches, micro-batches of {cfg.micro_batch_size or 'a whole mini-batch'}")
    rows_total = cfg.prompts_per_step * cfg.group_size
    longest = lengths if isinstance(lengths, int) else lengths[1]
    floor_bytes = decode_floor_bytes(shape, rows_total, longest + cfg.max_new_tokens // 2)  # the mean context
    floor_ms = 1000 * floor_bytes / bytes_per_second
    print(f"decoding floor: {floor_ms:.2f} ms a step ({floor_bytes / 1e9:.2f} GB: bf16 weights, the KV cache at the "
          f"mean context, the logits; at the {bytes_per_second / 1e9:.0f} GB/s a plain copy reaches on this device)")
    header = ("step", "rollout s", "ms/decode", "x floor", "scoring s", "update s", "peak GiB: rollout", "scoring", "update",
              "max|r-1|", "ERC first", "finite")
    print(" | ".join(header))
    results = []
    try:
        for step in range(1, own.steps + 1):
            torch.manual_seed(cfg.seed * 1_000_000 + step)
            phases.now = {}
            record = E.train_step(cfg, model, sampler, optimizer, scheduler, tokenizer, rows)
            finite = not record.get("nonfinite_updates") and all(
                p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
            result = dict(step=step, rollout_s=phases.now["rollout"][0],
                          ms_per_decode_step=1000 * phases.now["rollout"][0] / phases.now["decode_steps"],
                          decode_steps=phases.now["decode_steps"], floor_ms=floor_ms,
                          ragged=bool((phases.now.get("attention") == 0).any()) if "attention" in phases.now else None,
                          scoring_s=phases.now["scoring"][0],
                          update_s=phases.now["update"][0],
                          peak=max(phases.now[k][1] for k in ("rollout", "scoring", "update")),
                          peaks={k: phases.now[k][1] for k in ("rollout", "scoring", "update")},
                          first_mb_max_ratio_err=record["first_mb_max_ratio_err"],
                          first_mb_erc_clip_frac=record.get("first_mb_erc_clip_frac"), finite=bool(finite))
            results.append(result)
            erc = "-" if result["first_mb_erc_clip_frac"] is None else f"{result['first_mb_erc_clip_frac']:.4f}"
            print(" | ".join([str(step), f"{result['rollout_s']:.2f}", f"{result['ms_per_decode_step']:.1f}",
                              f"{result['ms_per_decode_step'] / floor_ms:.1f}",
                              f"{result['scoring_s']:.2f}", f"{result['update_s']:.2f}",
                              *(f"{result['peaks'][k] / GiB:.2f}" for k in ("rollout", "scoring", "update")),
                              f"{result['first_mb_max_ratio_err']:.2e}", erc, "yes" if finite else "NO"]),
                  flush=True)
    finally:
        E.rollout, E.score_old_policy, E.train_on_batch = saved
    paths, same = cache_paths(cfg, model, sampler, tokenizer, prompts, floor_ms, device)
    peak = max(r["peak"] for r in results) / GiB
    if card_gib:
        verdict = (f"fits: peak {peak:.1f} GiB of {card_gib:.1f} GiB, headroom {card_gib - peak:.1f} GiB "
                   f"({(card_gib - peak) / card_gib:.0%}); leave 10-20% for the allocator's fragmentation")
    else:
        verdict = f"no CUDA device: process peak {peak:.2f} GiB of RAM (shapes {'small' if own.small else 'full'})"
    print(verdict)
    return results, verdict, paths, same


def main(argv=None):
    try:
        return run(argv)
    except ValueError as e:  # a bad erc_minimal flag: one line, exit 2, as erc_minimal.py does
        E.fail(e)


if __name__ == "__main__":
    main()
