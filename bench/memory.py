"""Peak GPU memory per phase of a training step at the gsm8k preset, estimated on a CPU.

    python bench/memory.py            # ~2 minutes on 2 CPU cores; needs ~6 GB of RAM

Method (no GPU needed): a randomly initialised model with Qwen2.5-0.5B-Instruct's exact configuration runs the
update's forward (erc_minimal.logp_and_entropy under bf16 autocast, as with --bf16 on a GPU) on one sequence of
128 and of 256 tokens. torch.autograd.graph.saved_tensors_hooks adds up the bytes autograd keeps for backward
(each storage once); the difference between the two lengths gives the bytes per token, the rest is per-forward
(bf16 copies of the weights that autocast keeps for backward). That is scaled to the tokens of one forward.
The rest comes from the shapes: fp32 weights, gradients and AdamW's two moments, the bf16 sampler, the
rollout's bf16 KV cache, and the output layer's [chunk, vocab] fp32 blocks. The allocator's caching and
fragmentation are not counted: leave 10-20% headroom.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import erc_minimal as E  # noqa: E402

GiB = 2 ** 30
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)


def saved_bytes(model, length, cfg):
    """Bytes autograd saves in the update forward of one sequence: `length` tokens, the last half the response."""
    seen, total = set(), [0]

    def pack(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += key[1]
        return tensor

    ids = torch.randint(0, 151000, (1, length))
    response_mask = torch.ones(1, length // 2, dtype=torch.long)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=response_mask)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # cfg.bf16: the forward under bf16 autocast
        logp, _ = E.logp_and_entropy(model, batch, cfg)
    del logp
    return total[0]


def main():
    torch.manual_seed(0)
    cfg = E.Config(bf16=True)  # the gsm8k preset's sizes
    model = E.transformers.Qwen2ForCausalLM(E.transformers.Qwen2Config(**QWEN25_05B)).train()
    n_params = sum(p.numel() for p in model.parameters())
    prompt = 200  # GSM8K question in Qwen's chat template with the \boxed{} instruction: ~120-200 tokens
    responses = cfg.prompts_per_step * cfg.group_size
    per_forward = responses // cfg.num_minibatches  # --micro-batch-size unset: a whole mini-batch per forward
    tokens = per_forward * (prompt + cfg.max_new_tokens)  # worst case: every response runs to max_new_tokens
    rows = {}
    for checkpointing in (False, True):
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        short, long = saved_bytes(model, 128, cfg), saved_bytes(model, 256, cfg)
        rows[checkpointing] = ((long - short) / 128, short - (long - short))  # bytes per token, fixed
    static = n_params * (4 + 4 + 8)  # fp32 weights, gradients, AdamW moments
    sampler = n_params * 2
    kv_per_token = QWEN25_05B["num_hidden_layers"] * 2 * QWEN25_05B["num_key_value_heads"] * 64 * 2  # K, V in bf16
    chunk_blocks = 2 * cfg.logprob_chunk * QWEN25_05B["vocab_size"] * 4  # logits + exp (forward), [chunk, V] fp32
    rollout = responses * (prompt + cfg.max_new_tokens) * kv_per_token + 3 * responses * QWEN25_05B["vocab_size"] * 4
    print(f"Qwen2.5-0.5B: {n_params / 1e6:.0f} M parameters; gsm8k preset: {responses} responses, "
          f"{cfg.num_minibatches} mini-batches of {per_forward}, up to {prompt} + {cfg.max_new_tokens} tokens each")
    print(f"fixed: fp32 weights + grads + AdamW {static / GiB:.2f} GiB, bf16 sampler {sampler / GiB:.2f} GiB")
    print(f"rollout (KV cache {kv_per_token} B/token + logits): {rollout / GiB:.2f} GiB on top of the fixed part")
    print(f"old-policy scoring (no grad, one forward of {tokens} tokens): ~{chunk_blocks / GiB:.2f} GiB of "
          f"[chunk, vocab] blocks + one layer's activations")
    for checkpointing, (per_token, fixed) in rows.items():
        for micro in (per_forward, 8, 4):
            part = per_token * micro * (prompt + cfg.max_new_tokens) + fixed + chunk_blocks
            print(f"update, gradient checkpointing {'on ' if checkpointing else 'off'}: {per_token / 1024:.1f} KiB "
                  f"saved per token + {fixed / GiB:.2f} GiB per forward; --micro-batch-size {micro}: "
                  f"activations {part / GiB:.1f} GiB, peak ~{(static + sampler + part) / GiB:.1f} GiB")


if __name__ == "__main__":
    main()
