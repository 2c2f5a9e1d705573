"""Could the hand-written backward of the chunked output layer be a plain function under torch.utils.checkpoint?

    python bench/logp_plain.py            # 4 fresh processes, about 15 minutes on 2 CPU cores

Both versions apply the output layer to response tokens only, `--logprob-chunk` tokens at a time, in fp32, and
recompute each chunk in backward. "custom" is erc_minimal's own `TokenLogpAndEntropy` (softmax by hand, in-place,
its gradient written out); "plain" is the plain chunk function below under `torch.utils.checkpoint`: a
log-softmax, a gather and the entropy, differentiated by autograd. Each process runs bench.py's wide-cpu step
(vocabulary 151,936, hidden 64, 2 layers, 8 prompts x 8 samples x 256 tokens, ERC on, 4 updates) with one
version, alternating custom / plain, twice; it prints the step time (rollout + update) and the peak resident
memory of every run, and the ratios plain / custom of the means.
"""
import json
import os
import statistics
import subprocess
import sys

import torch
from torch.utils.checkpoint import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import bench  # noqa: E402
import erc_minimal as E  # noqa: E402


def plain_chunk(hidden, weight, targets, temperature, dtype):
    """log p(target) and the entropy of softmax(hidden @ weight.T / T) for one chunk, [chunk] each."""
    logits = (hidden.to(dtype) @ weight.to(dtype).T).float() / temperature  # [chunk, V]
    log_probs = logits.log_softmax(-1)  # [chunk, V]
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # [chunk]
    return log_probs.gather(-1, targets[:, None]).squeeze(-1), entropy


def plain_logp_and_entropy(model, batch, cfg):
    """erc_minimal.logp_and_entropy with the plain chunk function in place of TokenLogpAndEntropy."""
    mask = batch["response_mask"]  # [B, T]
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        hidden, targets = E.response_hidden(model, batch["input_ids"], batch["attention_mask"], mask)  # [N, H]
    weight = model.get_output_embeddings().weight  # [V, H]
    parts = [checkpoint(plain_chunk, h, weight, y, cfg.temperature, torch.float32, use_reentrant=False)
             for h, y in zip(hidden.split(cfg.logprob_chunk), targets.split(cfg.logprob_chunk))]
    logp, entropy = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    zeros = torch.zeros(mask.shape, device=mask.device)
    return zeros.masked_scatter(mask.bool(), logp), zeros.masked_scatter(mask.bool(), entropy)


def main():
    if sys.argv[1:2] == ["--worker"]:
        if sys.argv[2] == "plain":
            E.logp_and_entropy = plain_logp_and_entropy
        print(json.dumps(bench.run_ours(bench.CONFIGS["wide-cpu"], 256, True, False, False)))
        return
    runs = {"custom": [], "plain": []}
    for _ in range(2):
        for version in runs:
            out = subprocess.run([sys.executable, __file__, "--worker", version], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs[version].append(run)
            print(f"{version}: rollout {run['rollout']:.1f} s, update {run['update']:.1f} s, step {run['step']:.1f} s, "
                  f"peak {run['peak_mem'] / 2**30:.2f} GiB", flush=True)
    mean = {v: {k: statistics.mean(r[k] for r in rs) for k in ("update", "step", "peak_mem")} for v, rs in runs.items()}
    print("plain / custom: " + ", ".join(f"{k} {mean['plain'][k] / mean['custom'][k]:.2f}x"
                                         for k in ("update", "step", "peak_mem")))


if __name__ == "__main__":
    main()
