"""The command that runs a run of erc_minimal.py at scale with the authors' verl fork (Kwai-Klear/ERC, its
recipe/dapo launch): the same algorithm and hyperparameters as Hydra overrides, model and data paths left as
placeholders, then each setting that has no counterpart there and the fork's known traps.

    python tools/to_verl.py runs/gppo_erc                  # a run folder: its config.json
    python tools/to_verl.py --algo dapo --erc --sft-coef 0.1   # or erc_minimal flags (gsm8k preset sizes)

The keys are those the fork's own recipe scripts pass (recipe/dapo/*_erc_1_05.sh); the batch sizes are counted
as there, in prompts. Prepare the data as verl wants it (parquet or json with a `prompt` column) before running.
"""
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import erc_minimal as E  # noqa: E402

# The Config fields this tool knows: carried into the command, or named below it; any other field (a fork's own)
# is named as not carried over.
KNOWN = set("""max_new_tokens prompts_per_step oversample dynamic_sampling group_size eps_low eps_high clip_c sft_coef
algo erc erc_low erc_high gradient_checkpointing lr warmup_steps weight_decay num_minibatches max_grad_norm temperature
eval_temperature eval_top_p eval_samples eval_every save_every beta1 beta2 steps seed micro_batch_size logprob_chunk
threads reward instruction chat_template_args eval_prompts model dataset eval_dataset prompt_field answer_field preset bf16 out resume
overwrite log_every save_total_limit static_cache""".split())

# erc_minimal's (--algo, --erc) -> the fork's actor.policy_loss.loss_mode
LOSS_MODES = {("grpo", True): "grpo_erc", ("dapo", True): "grpo_erc", ("gppo", True): "gppo_erc",
              ("grpo", False): "vanilla", ("dapo", False): "vanilla", ("gspo", False): "gspo"}


def overrides(cfg, unknown=()):
    """(the Hydra overrides as (key, value) pairs, the lines on what does not carry over) for a Config; `unknown`:
    fields of the run's config.json that this erc_minimal.py's Config does not have."""
    actor, rollout = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout."
    no_erc_gppo = cfg.algo == "gppo" and not cfg.erc  # the fork has GPPO only as gppo_erc: a band keeping all
    mode = LOSS_MODES.get((cfg.algo, cfg.erc)) or ("gppo_erc" if no_erc_gppo else None)
    notes = []
    if mode is None:
        notes.append(f"--algo {cfg.algo}{' --erc' * cfg.erc}: the fork has no such loss (its ERC losses are "
                     "grpo_erc for grpo / dapo and gppo_erc for gppo); the command below uses vanilla")
        mode = "vanilla"
    pairs = [
        ("data.train_files", "<TRAIN_FILE>"), ("data.val_files", "<VAL_FILE>"), ("data.prompt_key", "prompt"),
        ("data.max_prompt_length", "<MAX_PROMPT_TOKENS>"), ("data.max_response_length", cfg.max_new_tokens),
        ("data.gen_batch_size", cfg.prompts_per_step * (cfg.oversample if cfg.dynamic_sampling else 1)),
        ("data.train_batch_size", cfg.prompts_per_step), (rollout + "n", cfg.group_size),
        ("algorithm.adv_estimator", "grpo"), ("algorithm.use_kl_in_reward", False), ("algorithm.kl_ctrl.kl_coef", 0.0),
        (actor + "use_kl_loss", False), (actor + "kl_loss_coef", 0.0),
        (actor + "clip_ratio_low", cfg.eps_low), (actor + "clip_ratio_high", cfg.eps_high),
    ]
    if cfg.clip_c is not None:
        pairs.append((actor + "clip_ratio_c", cfg.clip_c))
    pairs += [(actor + "postive_loss_coeff", cfg.sft_coef), (actor + "policy_loss.loss_mode", mode)]
    if mode.endswith("_erc"):  # the band; for gppo without ERC one no token leaves: every gradient kept
        pairs += [(actor + "entropy_mask_high", 1e9 if no_erc_gppo else cfg.erc_high),
                  (actor + "entropy_mask_low", 0.0 if no_erc_gppo else cfg.erc_low)]
    pairs += [
        ("algorithm.filter_groups.enable", bool(cfg.dynamic_sampling)), ("algorithm.filter_groups.metric", "acc"),
        ("algorithm.filter_groups.max_num_gen_batches", 1),
        ("actor_rollout_ref.model.path", "<MODEL_PATH>"),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", cfg.gradient_checkpointing),
        (actor + "optim.lr", cfg.lr), (actor + "optim.lr_warmup_steps", cfg.warmup_steps),
        (actor + "optim.weight_decay", cfg.weight_decay),
        (actor + "ppo_mini_batch_size", cfg.prompts_per_step // cfg.num_minibatches),
        (actor + "entropy_coeff", 0), (actor + "grad_clip", cfg.max_grad_norm),
        (actor + "loss_agg_mode", "seq-mean-token-mean" if cfg.algo == "gspo" else "token-mean"),
        (rollout + "temperature", cfg.temperature), (rollout + "top_p", 1.0), (rollout + "top_k", -1),
        (rollout + "val_kwargs.temperature", cfg.eval_temperature), (rollout + "val_kwargs.top_p", cfg.eval_top_p),
        (rollout + "val_kwargs.top_k", -1), (rollout + "val_kwargs.do_sample", True),
        (rollout + "val_kwargs.n", cfg.eval_samples), ("trainer.test_freq", cfg.eval_every or -1),
        ("trainer.save_freq", cfg.save_every or -1), ("trainer.default_local_dir", "<CHECKPOINT_DIR>"),
    ]
    if cfg.prompts_per_step % cfg.num_minibatches:
        notes.append(f"--num-minibatches {cfg.num_minibatches} does not divide --prompts-per-step "
                     f"{cfg.prompts_per_step}: the fork counts mini-batches in prompts (rounded down above)")
    if cfg.algo == "cegppo" or (cfg.algo == "gppo" and (cfg.beta1, cfg.beta2) != (1.0, 1.0)):
        notes.append("--beta1 / --beta2: no counterpart in this fork (the CE-GPPO fork, Kwai-Klear/CE-GPPO, has them)")
    unknown = [*unknown, *(f.name for f in dataclasses.fields(cfg) if f.name not in KNOWN)]
    notes += [f"--{name.replace('_', '-')}: a setting this tool does not know (a fork's?), not carried over: set "
              "its counterpart by hand" for name in unknown]
    notes += [
        "the cluster's keys (nodes, GPUs, sequence parallel, offload, vLLM, dynamic batch sizes): as the fork's "
        "recipe scripts set them",
        f"--steps {cfg.steps}: the recipes set trainer.total_epochs=10 instead, an epoch being a pass over the data",
        f"--seed {cfg.seed}, --micro-batch-size, --logprob-chunk, --threads: no counterpart (the fork packs "
        "micro-batches by tokens, use_dynamic_bsz, and computes full-vocabulary logits per micro-batch)",
        f"--reward {cfg.reward}, --instruction, --chat-template-args: the fork's reward manager (dapo: math_verify, "
        "+1 / -1) and the prompts as written in the data files",
        f"--eval-prompts {cfg.eval_prompts}: the fork validates on the whole val file",
        f"--model, --dataset, --eval-dataset, --prompt-field {cfg.prompt_field}, --answer-field {cfg.answer_field}: "
        "placeholders above; write the data files with a `prompt` column (the question in the chat format) and the "
        "gold answer where the fork's reward manager reads it",
        f"--bf16 {cfg.bf16}: the fork always trains under FSDP bf16 mixed precision",
        f"--static-cache {cfg.static_cache}: the fork samples with vLLM (its own KV cache), not with generate",
        "trap: the fork takes log-probs and entropies from bf16 logits (FSDP mixed precision), so its ERC band "
        "also clips rounding; this script's fp32 logits do not (patches/bf16_logits.patch is theirs)",
        "trap: the fork's dp_actor.py torch.saves old and new log-probs, entropies, advantages and masks of every "
        "micro-batch to a hard-coded absolute path: remove that line or make the path writable and large",
        "trap: with use_dynamic_bsz (every recipe) a token's weight is its micro-batch's share, not 1 / the "
        "mini-batch's tokens; the warm-up starts at 0; mini-batches are split in order (docs/equations.md §7)",
    ]
    return pairs, notes


def command(cfg, unknown=()):
    """The launch command and its notes, as text."""
    pairs, notes = overrides(cfg, unknown)
    lines = ["python -m recipe.dapo.main_dapo \\"] + [f"    {k}={v} \\" for k, v in pairs]
    lines[-1] = lines[-1][:-2]
    return "\n".join(lines + ["", "# what does not carry over:"] + [f"# - {n}" for n in notes])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and not argv[0].startswith("-"):  # a run folder
            saved = Path(argv[0], "config.json")
            if not saved.exists():
                raise ValueError(f"{argv[0]} has no config.json (a run folder of erc_minimal.py)")
            saved = json.loads(saved.read_text())
            unknown = [k for k in saved if k not in E.Config.__dataclass_fields__]
            config = {k: v for k, v in saved.items() if k not in unknown}
            cfg = E.Config(**{**config, "resume": False, "overwrite": False})
        else:
            given, unknown = E.parse_args(argv, prog="to_verl.py RUN_DIR, or", description=__doc__), []
            cfg = E.Config(**given, given=given)
    except ValueError as e:
        E.fail(e)
    text = command(cfg, unknown)
    print(text)
    return text


if __name__ == "__main__":
    main()
