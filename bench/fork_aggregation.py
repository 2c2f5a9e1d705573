"""How far the authors' fork's loss aggregation under use_dynamic_bsz is from this script's mini-batch token mean,
in a simulation (no model needed; seconds).

The fork (Kwai-Klear/ERC, verl/workers/actor/dp_actor.py, every released recipe sets use_dynamic_bsz=True) packs a
mini-batch's responses into micro-batches under a token budget, takes each micro-batch's own token mean and scales it
by (its responses / the mini-batch's responses). A token's weight is then (b_m / B) / T_m instead of 1 / T (this
script). Its SFT term (postive_loss_coeff) is a token mean over the correct responses *of each micro-batch*, scaled the
same way, so micro-batches without a correct response contribute nothing.

Assumptions (change them below): a mini-batch of B = 128 responses (16 prompts x 8, the recipes'), split evenly over
RANKS = 16 data-parallel ranks (64 GPUs / Ulysses sequence-parallel size 4; 8 responses per rank), each rank packing
its responses in order under ppo_max_token_len_per_gpu x sp = 5120 x 4 tokens; the ranks' gradients are averaged;
response lengths log-normal with median 4,000 tokens (sigma 0.8, cut to 16,384), prompts 300 tokens. Prints the spread of a token's
weight relative to this script's, and the SFT term's effective weight relative to this script's at several
accuracies.

    python bench/fork_aggregation.py
"""
import random
import statistics

B, RANKS, BUDGET, TRIALS = 128, 16, 5120 * 4, 2000


def micro_batches(lengths):
    """The fork's packing: responses dealt to ranks in order, then packed greedily under the token budget."""
    per_rank = len(lengths) // RANKS
    out = []
    for r in range(RANKS):
        current, tokens = [], 0
        for i in range(r * per_rank, (r + 1) * per_rank):
            if current and tokens + lengths[i] + 300 > BUDGET:
                out.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += lengths[i] + 300
        out.append(current)
    return out


def main():
    rng = random.Random(0)
    spreads, sft = [], {0.25: [], 0.5: [], 0.75: []}
    for _ in range(TRIALS):
        lengths = [min(16384, int(rng.lognormvariate(8.29, 0.8))) for _ in range(B)]
        total = sum(lengths)
        groups = micro_batches(lengths)
        weights = [(len(m) / B) / sum(lengths[i] for i in m) * total for m in groups]  # relative to 1 / T
        spreads.append(max(weights) / min(weights))
        for accuracy in sft:
            correct = [rng.random() < accuracy for _ in range(B)]
            ours = 1.0  # one token mean over all correct tokens, with -log p = 1 per token
            fork = sum(len(m) / B for m in groups if any(correct[i] for i in m))
            sft[accuracy].append(fork / ours if any(correct) else 1.0)
    print(f"a token's weight, fork / this script, within a mini-batch: max / min median "
          f"{statistics.median(spreads):.2f}, 90th percentile {sorted(spreads)[int(0.9 * TRIALS)]:.2f}")
    for accuracy, ratios in sft.items():
        print(f"SFT term's effective weight, fork / this script, at accuracy {accuracy:.0%}: "
              f"{statistics.mean(ratios):.2f}")


if __name__ == "__main__":
    main()
