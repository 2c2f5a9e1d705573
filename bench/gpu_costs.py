"""Two costs behind a GPU step of erc_minimal.py, measured at Qwen2.5-0.5B-Instruct's shapes (random weights):

    python bench/gpu_costs.py            # on a CUDA card, about a minute
    python bench/gpu_costs.py --small    # tiny shapes on a CPU: checks the tool

1. The output layer in fp32 (the script's TokenLogpAndEntropy: forward, recomputation and backward of the
   [tokens, 896] x [896, 151,936] logits, chunked) per response token, against the same three matmuls in bf16.
2. One eager decoding step of `generate` (128 rows after 200-token prompts): its wall time against the time the
   GPU spent in kernels (torch.profiler), i.e. how host-bound decoding is.
"""
import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tools")]  # gpu_check.py
import erc_minimal as E  # noqa: E402
from gpu_check import QWEN25_05B, SMALL, build  # noqa: E402


def timed(function, device, repeats=3):
    """Seconds per call, the best of `repeats` after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def output_layer(shape, device, tokens, chunk=512):
    """Microseconds per token: the script's fp32 output layer (forward + backward), and three bf16 matmuls."""
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(tokens, shape["hidden_size"], generator=g).to(device).requires_grad_()
    weight = (torch.randn(shape["vocab_size"], shape["hidden_size"], generator=g) * 0.02).to(device)
    weight.requires_grad_()
    targets = torch.randint(0, shape["vocab_size"], (tokens,), generator=g).to(device)

    def script():
        logp, entropy = E.TokenLogpAndEntropy.apply(hidden, weight, targets, 1.0, chunk)  # [N] each
        logp.sum().backward()

    h16, w16 = hidden.detach().bfloat16(), weight.detach().bfloat16()

    def bf16():
        for start in range(0, tokens, chunk):
            h = h16[start:start + chunk]
            logits = h @ w16.T  # [chunk, V]: the forward (and its recomputation costs the same)
            _ = logits @ w16, logits.T @ h  # the two backward matmuls
    return (1e6 * timed(script, device) / tokens, 1e6 * timed(bf16, device) / tokens)


def decode_step(shape, device, rows, prompt_tokens, new_tokens):
    """(wall ms, GPU-kernel ms) per decoding step of generate, from a profiled run of new_tokens steps."""
    model, tokenizer, prompts = build(shape, device, prompt_tokens, rows)
    model = E.frozen_copy(model, torch.bfloat16) if device.type == "cuda" else model
    E.rollout(model, tokenizer, prompts[:2], 1, 1.0, 4)  # warm-up
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        ids, _, response_mask = E.rollout(model, tokenizer, prompts, 1, 1.0, new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    steps = response_mask.shape[1]
    kernels = sum(e.self_device_time_total for e in profiler.key_averages()) / 1e3 if device.type == "cuda" else 0.0
    return 1e3 * wall / steps, kernels / steps, steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shapes (a CPU check of the tool)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("highest")  # as erc_minimal's setup does
    shape = SMALL if args.small else QWEN25_05B
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"gpu_costs: {name}; torch {torch.__version__}; {'small' if args.small else 'Qwen2.5-0.5B'} shapes")
    fp32, bf16 = output_layer(shape, device, 256 if args.small else 8192)
    print(f"output layer per response token: fp32 (the script, forward + recompute + backward) {fp32:.2f} us; "
          f"the same three matmuls in bf16 {bf16:.2f} us ({fp32 / bf16:.1f}x)")
    wall, gpu, steps = decode_step(shape, device, 8 if args.small else 128, 20 if args.small else 200,
                                   8 if args.small else 64)
    print(f"one decoding step of generate ({steps} steps profiled): wall {wall:.2f} ms, GPU kernels {gpu:.2f} ms"
          + (f" (the GPU busy {100 * gpu / wall:.0f}% of the time)" if gpu else " (no CUDA: kernels not timed)"))
    return dict(fp32_us=fp32, bf16_us=bf16, decode_wall_ms=wall, decode_gpu_ms=gpu)


if __name__ == "__main__":
    main()
