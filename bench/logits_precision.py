"""fp32 against bf16 logits in the output layer, at Qwen2.5-0.5B's output-layer shapes (896 x 151,936), on CPU.

    python bench/logits_precision.py          # ~2 minutes on 2 CPU cores, ~4 GB of RAM

1. What ERC sees. 512 tokens' hidden states, scaled per token so that their entropies run from near 0 to about
   11 nats (median 5), change by 0.2% (one small update). The script counts the tokens whose entropy ratio H_new / H_old
   leaves ERC's band (0.95, 1.05) with logits in float64 (the truth), fp32 (this script) and bf16 (the authors'
   verl numerics), hidden states and weights being the same bf16-rounded numbers in all three.
2. What fp32 costs here: the [512, 896] x [896, 151,936] logits matmul in fp32 and in bf16 on this CPU. A CPU
   without bf16 units emulates bf16, so this says nothing about a GPU, where dense bf16 runs ~14x faster than
   fp32 without TF32 (H100 datasheet figures).
"""
import time

import torch

N, H, V = 512, 896, 151936


def entropy(hidden, weight, dtype):
    """Entropies [N] of softmax(hidden @ weight.T), the matmul in `dtype`, the softmax in float64."""
    out = []
    for h in hidden.split(64):
        logits = (h.to(dtype) @ weight.to(dtype).T).double()
        out.append(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1))
    return torch.cat(out)


def main():
    torch.manual_seed(0)
    weight = (torch.randn(V, H) * 0.02).bfloat16().float()  # Qwen-style init scale, values representable in bf16
    scale = torch.logspace(0, 1.3, N)[:, None] * 1.5  # per-token sharpness: entropies from ~11 nats to near 0
    hidden = (torch.randn(N, H) * scale).bfloat16().float()
    moved = (hidden * (1 + 0.002 * torch.randn(N, H))).bfloat16().float()  # one small update
    outside = {}
    for name, dtype in (("float64", torch.float64), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ratio = entropy(moved, weight, dtype) / entropy(hidden, weight, dtype)
        outside[name] = ((ratio <= 0.95) | (ratio >= 1.05)).float().mean().item()
    h_ref = entropy(hidden, weight, torch.float64)
    print(f"entropies: min {h_ref.min():.3f}, median {h_ref.median():.3f}, max {h_ref.max():.3f} nats")
    for name, frac in outside.items():
        print(f"tokens leaving ERC's band after a 0.2% change, {name} logits: {100 * frac:.1f}%")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = hidden.to(dtype), weight.to(dtype)
        a @ b.T  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            a @ b.T
        print(f"logits matmul [{N}, {H}] x [{H}, {V}] in {name} on this CPU: {(time.perf_counter() - start) / 3:.2f} s")


if __name__ == "__main__":
    main()
