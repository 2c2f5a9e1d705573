"""The run around the method: the command line, end-to-end learning, bad input, interruption and resume,
checkpoints, the real-data path offline, evaluation."""
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import erc_minimal as E
from helpers import ROOT, comparable, load_tool, readme_gpu_commands
from test_erc_minimal import recording_reward, spy_on_generate, tiny_argv, tiny_model_and_tokenizer


def test_cli_bad_algo_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--preset", "tiny", "--eps-low", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "eps-low" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ end to end
def test_tiny_preset_learns_gppo_erc(tmp_path):
    """The README's tiny command: reward climbs from near 0 to >= 0.8 and metrics.jsonl has every field."""
    E.main(["--preset", "tiny", "--algo", "gppo", "--erc", "--out", str(tmp_path)])
    rows = E.read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == E.PRESETS["tiny"]["steps"]
    for key in ("step", "reward", "entropy", "clip_frac", "erc_clip_frac", "grad_norm", "response_len",
                "gen_time", "train_time"):
        assert all(key in row for row in rows)
    first = sum(r["reward"] for r in rows[:10]) / 10
    last = sum(r["reward"] for r in rows[-20:]) / 20
    assert first < 0.2 and last >= 0.8
    assert any(r["erc_clip_frac"] > 0 for r in rows)  # ERC really acted after the first mini-batch
    assert all(r["first_mb_max_ratio_err"] <= 1e-6 and r["first_mb_erc_clip_frac"] == 0 for r in rows)


def test_tiny_preset_learns_with_bf16_on_cpu(tmp_path):
    """The GPU precision path (bf16 autocast, bf16 sampler refreshed after every update) on a CPU: 40 steps at
    lr 1e-3 lift the reward from ~0.05 (a stale sampler stays there) and the noise floor stays at 0."""
    rows = E.main(tiny_argv(tmp_path, "--algo", "gppo", "--erc", "--bf16", "--steps", "40", "--lr", "1e-3",
                            "--prompts-per-step", "16"))
    first = sum(r["reward"] for r in rows[:10]) / 10
    last = sum(r["reward"] for r in rows[-10:]) / 10
    assert first < 0.08 and last > 0.12 and last > 2 * first
    assert all(r["first_mb_max_ratio_err"] <= 1e-6 and r["first_mb_erc_clip_frac"] == 0 for r in rows)


@pytest.mark.parametrize("extra,expected", [
    (["--algo", "ppo"], "--algo: invalid choice: 'ppo'"),
    (["--eps-low", "0"], "--eps-low"),
    (["--eps-low", "1.5"], "--eps-low"),
    (["--eps-high", "-0.1"], "--eps-high"),
    (["--clip-c", "1"], "--clip-c"),
    (["--erc", "--erc-low", "1.1", "--erc-high", "1.05"], "--erc-low"),
    (["--erc-low", "0"], "--erc-low"),
    (["--beta2", "-1"], "--beta2 must be >= 0"),
    (["--group-size", "1"], "--group-size"),
    (["--steps", "0"], "must be > 0"),
    (["--prompts-per-step", "-4"], "must be > 0"),
    (["--max-new-tokens", "0"], "must be > 0"),
    (["--num-minibatches", "3"], "must divide the rollout batch"),
    (["--dataset", "/nonexistent/data.jsonl"], "cannot load dataset '/nonexistent/data.jsonl'"),
    (["--model", "/nonexistent/model"], "cannot load model '/nonexistent/model'"),
    (["--steps", "abc"], "invalid int value"),
    (["--ercc"], "unrecognized arguments"),
    (["--erc-high", "1.1"], "--erc-high acts only with --erc"),
    (["--erc", "--erc-low", "1.01", "--erc-high", "1.2"], "the ERC band must hold 1"),
    (["--beta1", "0.5"], "--beta1 acts only with --algo gppo or cegppo"),
    (["--erc-low", "0.95"], "--erc-low acts only with --erc"),
    (["--oversample", "1"], "--oversample acts only with --dynamic-sampling"),
    (["--lr", "-1"], "--lr"),
    (["--log-every", "0"], "--log-every"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path / "run", *extra))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing half-written


def test_dataset_without_the_field_names_its_fields(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"problem": "1+1=", "solution": "2"}\n')
    with pytest.raises(SystemExit):
        E.main(tiny_argv(tmp_path / "run", "--dataset", str(data), "--prompt-field", "problem"))
    err = capsys.readouterr().err
    assert "no field 'answer'" in err and "problem" in err and "solution" in err


@pytest.mark.parametrize("from_checkpoint", [False, True])
def test_prompts_the_tokenizer_cannot_reproduce_stop_the_run(tmp_path, capsys, from_checkpoint):
    """Every prompt must decode back to itself through the tokenizer in use, the tiny one or a tiny checkpoint's
    passed as --model: English text (whose letters the tiny tokenizer maps to EOS) is one line, exit 2, before
    anything is written."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "What is 4 plus 2?", "answer": "6"}\n')
    model = ["--model", str(tmp_path / "ckpt" / "checkpoint-1")] if from_checkpoint else []
    if from_checkpoint:
        E.main(tiny_argv(tmp_path / "ckpt", "--steps", "1"))
        capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path / "run", "--dataset", str(data), *model))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    assert "'What is 4 plus 2?'" in err and "knows only" in err


def test_local_dataset_file_trains(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"q": "{a}+{b}=", "a": "#### {a + b}"}}\n' for a in range(5) for b in range(5)))
    rows = E.main(tiny_argv(tmp_path / "run", "--dataset", str(data), "--prompt-field", "q", "--answer-field", "a",
                            "--steps", "2"))
    assert len(rows) == 2 and rows[0]["reward"] > 0  # '#### 7' was parsed to the gold answer '7'


def test_out_with_another_run_is_refused(tmp_path, capsys):
    E.main(tiny_argv(tmp_path, "--steps", "1"))
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path, "--steps", "1"))
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert len(E.main(tiny_argv(tmp_path, "--steps", "2", "--overwrite"))) == 2


def start_cli(*argv):
    """erc_minimal.py as a user runs it, in its own process."""
    return subprocess.Popen([sys.executable, E.__file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition, process):
    while not condition():
        assert process.poll() is None, process.communicate()
        time.sleep(0.001)


def test_killed_and_interrupted_runs_resume_to_the_uninterrupted_run(tmp_path, capsys):
    """Faults at varied moments, each followed by --resume; at the end metrics.jsonl holds every step exactly once
    and equals (all but timings) an uninterrupted run of the same seed, and the final weights are bit for bit the
    same: (1) a real SIGINT (Ctrl-C) to this process mid-run: the step finishes, a checkpoint is saved, main
    returns; (2) SIGKILL to a resumed run while it writes a checkpoint (its .tmp folder exists); (3) then the
    damage a kill inside a metrics write leaves: a torn last line."""
    argv = ["--steps", "30", "--save-every", "2", "--eval-every", "10", "--eval-prompts", "8"]
    whole = E.main(tiny_argv(tmp_path / "whole", *argv))
    out = tmp_path / "cut"
    metrics = out / "metrics.jsonl"

    def lines():
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    def interrupt_after_six_steps():
        while lines() < 6:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_six_steps, daemon=True).start()
    cut = E.main(tiny_argv(out, *argv))
    assert 6 <= len(cut) < 30 and "interrupted after step" in capsys.readouterr().out
    resume = ["--out", str(out), "--resume"]
    process = start_cli(*resume)
    wait_for(lambda: any(p.suffix == ".tmp" and p.is_dir() for p in out.iterdir()), process)
    process.kill()
    assert process.wait() == -signal.SIGKILL
    with open(metrics, "a") as f:
        f.write('{"step": 99, "rew')
    resumed = E.main(resume)
    assert "dropped a torn last line" in capsys.readouterr().out
    assert comparable(resumed) == comparable(whole)
    assert [r["step"] for r in E.read_jsonl(metrics)] == list(range(1, 31))  # steps count from 1
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]
    a = E.AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "checkpoint-30")
    b = E.AutoModelForCausalLM.from_pretrained(out / "checkpoint-30")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path):
    """A SIGTERM (a cluster's pre-emption, `kill PID`) to the command-line run: the step in progress finishes, a
    checkpoint of that step is saved, the resume line is printed, exit code 0; --resume then completes the run."""
    out = tmp_path / "run"
    process = start_cli(*tiny_argv(out, "--steps", "300"))
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    steps = [r["step"] for r in E.read_jsonl(metrics)]
    assert 3 <= len(steps) < 300 and steps == list(range(1, len(steps) + 1))
    assert E.checkpoints(str(out))[-1].endswith(f"checkpoint-{steps[-1]}")
    assert f"interrupted after step {steps[-1]}" in stdout and "--resume" in stdout
    rows = E.main(["--out", str(out), "--resume", "--steps", str(steps[-1] + 2)])
    assert [r["step"] for r in rows] == list(range(1, steps[-1] + 3))


def test_the_last_step_is_evaluated_when_steps_is_not_a_multiple_of_eval_every(tmp_path):
    rows = E.main(tiny_argv(tmp_path, "--steps", "7", "--eval-every", "3", "--eval-prompts", "8"))
    assert [r["step"] for r in rows if "eval_greedy" in r] == [3, 6, 7]


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """An OSError (here ENOSPC from torch.save on the second checkpoint): one line naming the folder and the
    error, exit 2; checkpoint-1 intact and still the newest; no .tmp folder left behind."""
    save, calls = torch.save, []

    def save_then_disk_full(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_disk_full)
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path, "--steps", "3", "--save-every", "1"))
    errors = [line for line in capsys.readouterr().err.splitlines() if "erc_minimal: error" in line]
    assert exit_info.value.code == 2 and len(errors) == 1  # beside the progress bar
    assert "checkpoint-2.tmp" in errors[0] and "No space left on device" in errors[0]
    assert E.checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-1")]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage,named", [("truncate weights", "checkpoint-2"),
                                          ("remove trainer state", "trainer_state.pt")])
def test_unloadable_checkpoint_is_one_line(tmp_path, capsys, damage, named):
    E.main(tiny_argv(tmp_path, "--steps", "2"))
    if damage == "truncate weights":
        weights = tmp_path / "checkpoint-2" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (tmp_path / "checkpoint-2" / "trainer_state.pt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--out", str(tmp_path), "--resume", "--steps", "4"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "erc_minimal: error" in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and named in errors[0], errors


def test_malformed_metrics_line_names_file_and_line(tmp_path, capsys):
    E.main(tiny_argv(tmp_path, "--steps", "3"))
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([rows[0], "{oops", rows[2]]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--out", str(tmp_path), "--resume", "--steps", "4"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "erc_minimal: error" in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and "metrics.jsonl, line 2" in errors[0]


def test_unreachable_hub_fails_fast_and_says_so(tmp_path):
    """The default preset offline (HF_HUB_OFFLINE=1, as the README says to set without network): one line naming
    the model and the variable, exit code 2, in seconds (the interpreter's start included)."""
    started = time.time()
    run = subprocess.run([sys.executable, E.__file__, "--out", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Qwen/Qwen2.5-0.5B-Instruct" in run.stderr and "HF_HUB_OFFLINE" in run.stderr
    assert time.time() - started < 30


def test_nonfinite_updates_are_skipped_then_the_run_stops(tmp_path, capsys):
    """A NaN gradient (put there by a hook on the output layer's weight) skips every update: weights unchanged,
    warm-up not advanced, one warning, and the run stops after 3 such steps in a row."""
    cfg = E.Config(preset="tiny", steps=10, warmup_steps=4, out=str(tmp_path))
    model, tokenizer, data, _ = E.setup(cfg)
    model.get_output_embeddings().weight.register_hook(lambda grad: grad * float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(SystemExit, match="3 steps in a row with a non-finite"):
        E.train(cfg, model, tokenizer, data)
    rows = E.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["nonfinite_updates"] for r in rows] == [cfg.num_minibatches] * 3
    assert [r["lr"] for r in rows] == [cfg.lr / 5] * 3  # warm-up does not advance on steps that did not update
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert capsys.readouterr().out.count("warning: step") == 1  # warned once


def test_checkpoint_loads_with_from_pretrained_and_keeps_the_newest(tmp_path, capsys):
    """Checkpoints are plain save_pretrained folders; --save-total-limit keeps the newest N by step, not by name
    (checkpoint-10 is newer than checkpoint-9), and --resume takes the newest; nothing from checkpoint saving
    reaches the console."""
    E.main(tiny_argv(tmp_path, "--steps", "10", "--save-every", "1", "--save-total-limit", "2"))
    assert "shards" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-9"]
    assert E.checkpoints(str(tmp_path))[-1] == str(tmp_path / "checkpoint-10")
    model = E.AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-10")
    tokenizer = E.transformers.AutoTokenizer.from_pretrained(tmp_path / "checkpoint-10")
    assert tokenizer.decode(tokenizer("12+3=").input_ids) == "12+3=" and model.config.vocab_size == len(tokenizer)


# ------------------------------------------------------------------ the real-data path, offline
CHATML = ("{%- if messages[0]['role'] != 'system' %}"
          "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
          "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")


def chat_tokenizer_and_model(seed=0):
    """Like a Qwen instruct model: a ChatML chat template, pad = <|endoftext|>, and a generation config with two
    EOS ids (<|im_end|>, <|endoftext|>). A character tokenizer over printable ASCII, built in code."""
    import string
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(string.printable)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = E.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                          additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHATML
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    config = E.transformers.Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=[2, 0], pad_token_id=0)
    model = E.transformers.Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = [2, 0]
    return tokenizer, model


def test_chat_template_prompt_and_two_eos_ids():
    """The prompt is what the ChatML template gives; generation stops at either EOS id, and the response mask
    ends at the first of them (formulas §1)."""
    tokenizer, model = chat_tokenizer_and_model()
    prompt = E.format_prompt("What is 2+3?", tokenizer, E.Config().instruction)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+3?\n"
                      "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
                      "<|im_start|>assistant\n")
    torch.manual_seed(3)
    ids, attention, response_mask = E.rollout(model, tokenizer, [prompt, "Hi"], num_samples=16, temperature=1.0,
                                              max_new_tokens=60)
    completions = ids[:, -response_mask.shape[1]:]
    ended_by = set()
    for row, mask in zip(completions.tolist(), response_mask.tolist()):
        stops = [t for t, token in enumerate(row) if token in (0, 2)]
        length = stops[0] + 1 if stops else len(row)
        assert mask == [1] * length + [0] * (len(row) - length)
        assert all(token == 0 for token in row[length:])  # generate stopped there: only padding follows
        ended_by |= {row[stops[0]]} if stops else set()
    assert ended_by == {0, 2}  # both EOS ids really ended responses


def test_local_gsm8k_shaped_files_train_and_evaluate(tmp_path, capsys):
    """The gsm8k code path on local files: a model folder with a chat template and two EOS ids, a GSM8K-shaped
    train file (question; rationale then '#### 72') and a held-out --eval-dataset file."""
    tokenizer, model = chat_tokenizer_and_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
            for a in range(3, 9) for b in range(2, 5)]
    for name, part in (("train.jsonl", rows[:12]), ("test.jsonl", rows[12:])):
        (tmp_path / name).write_text("".join(E.json.dumps(r) + "\n" for r in part))
    argv = ["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "train.jsonl"), "--eval-dataset",
            str(tmp_path / "test.jsonl"), "--steps", "2", "--prompts-per-step", "4", "--group-size", "2",
            "--num-minibatches", "2", "--max-new-tokens", "8", "--lr", "1e-4", "--eval-every", "2",
            "--eval-prompts", "4", "--eval-samples", "2", "--eval-temperature", "0.6", "--eval-top-p", "0.95",
            "--threads", "1", "--out", str(tmp_path / "run")]
    history = E.main(argv)
    assert len(history) == 2 and "eval_greedy" in history[-1] and "eval_avg@2" in history[-1]
    assert "eval_greedy 0." in capsys.readouterr().out  # the console line names the evaluation
    cfg = E.Config(**E.parse_args(argv))
    test_data = E.load_data(cfg, E.load_model_and_tokenizer(str(tmp_path / "model"), torch.device("cpu"))[1], "test")
    assert test_data["answer"][:2] == ["9", "10"]  # rows 12 and 13: 7 + 2 and 7 + 3, after their '####'
    assert test_data["prompt"][0].startswith("<|im_start|>system\n") and len(test_data) == 4


def test_optional_package_missing_is_one_line(tmp_path, capsys, monkeypatch):
    """--reward math-verify without the math-verify package (it registers only where installed): one line that
    says how to install it, exit code 2."""
    monkeypatch.delitem(E.REWARDS, "math-verify", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path, "--reward", "math-verify"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pip install math-verify" in err and len(err.strip().splitlines()) == 1


def test_evaluation_pass_at_k_rows_per_call_and_top_p(monkeypatch):
    """avg@k is the mean reward over k samples, pass@k the share of prompts with a correct one (rewards known by
    call order); no generate call holds more rows than a training rollout; --eval-top-p reaches generate."""
    calls = []
    monkeypatch.setitem(E.REWARDS, "pattern", recording_reward(calls, lambda i: float(i % 23 == 3)))
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=2, eval_prompts=10, eval_samples=8, eval_top_p=0.9,
                   reward="pattern")
    model, tok = tiny_model_and_tokenizer(seed=3)
    seen = []
    spy_on_generate(model, seen, lambda kw: (len(kw["input_ids"]) * kw["num_return_sequences"], kw.get("top_p")))
    result = E.evaluate(model, tok, E.load_data(cfg, tok, split="test"), cfg)
    greedy, sampled = torch.tensor(calls[:10]), torch.tensor(calls[10:]).view(10, 8)
    assert result["eval_greedy"] == pytest.approx(greedy.mean().item())
    assert result["eval_avg@8"] == pytest.approx(sampled.mean().item())
    assert result["eval_pass@8"] == pytest.approx((sampled > 0).any(1).float().mean().item())
    assert 0 < result["eval_avg@8"] < result["eval_pass@8"] < 1
    assert max(rows for rows, _ in seen) <= 8 and sum(rows for rows, _ in seen) == 10 + 80  # 4 x 2 rows per call
    assert [top_p for _, top_p in seen] == [None] * 2 + [0.9] * 10  # greedy: no sampling parameters


def test_a_word_level_tokenizer_in_a_qwen2_folder_loads_as_saved(tmp_path):
    """A generic fast tokenizer saved beside a qwen2 model (the Countdown lab's word-level one) loads as it was
    saved, where transformers' AutoTokenizer rebuilds it as Qwen2's and loses the words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    words = ["<|endoftext|>", "nums", "target", "."] + [str(i) for i in range(10)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece(cleanup=False)
    E.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    E.transformers.Qwen2ForCausalLM(E.transformers.Qwen2Config(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1)).save_pretrained(tmp_path)
    _, tokenizer = E.load_model_and_tokenizer(str(tmp_path), torch.device("cpu"))
    text = "nums 3 7 2 target 2 3 ."
    assert tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids) == text.split()
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    rebuilt = E.transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert rebuilt.decode(rebuilt(text).input_ids) != text  # what loading "as saved" avoids


# ------------------------------------------------------------------ one step numbering, OUT untouched by failures
def test_failing_or_idle_commands_leave_out_unchanged(tmp_path, capsys):
    """--resume with --steps at or below the run's step is refused in one line; neither it nor other failing
    commands on an existing run change a byte or a timestamp in OUT."""
    out = tmp_path / "run"
    E.main(tiny_argv(out, "--steps", "4", "--save-every", "2"))

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in sorted(out.rglob("*"))}

    before, resume = snapshot(), ["--out", str(out), "--resume"]
    for argv in (resume, resume + ["--steps", "3"], resume + ["--algo", "ppo"], tiny_argv(out, "--steps", "5"),
                 resume + ["--steps", "6", "--dataset", str(tmp_path / "missing.jsonl")]):
        with pytest.raises(SystemExit) as exit_info:
            E.main(argv)
        assert exit_info.value.code == 2
    assert "is at step 4 already" in capsys.readouterr().err
    assert snapshot() == before


def test_one_step_numbering(tmp_path, capsys):
    """Step N is 'step N' on the console, "step": N in metrics.jsonl and checkpoint-N."""
    rows = E.main(tiny_argv(tmp_path, "--steps", "2", "--log-every", "2"))
    assert [r["step"] for r in rows] == [1, 2] and E.checkpoints(str(tmp_path))[-1].endswith("checkpoint-2")
    assert "step    2  reward" in capsys.readouterr().out


def test_resume_in_the_middle_of_the_warm_up_continues_it(tmp_path):
    whole = E.main(tiny_argv(tmp_path / "whole", "--steps", "6", "--warmup-steps", "4"))
    E.main(tiny_argv(tmp_path / "cut", "--steps", "3", "--warmup-steps", "4"))
    resumed = E.main(["--out", str(tmp_path / "cut"), "--resume", "--steps", "6"])
    lr = E.PRESETS["tiny"]["lr"]
    assert [r["lr"] for r in whole] == pytest.approx([lr * 2 / 5, lr * 3 / 5, lr * 4 / 5, lr, lr, lr])
    assert comparable(resumed) == comparable(whole)


def test_help_takes_every_flag_from_config_and_the_eval_tool_lists_only_its_own(capsys):
    """Every Config field is a flag whose help is the comment on its line, with its default or where it comes from;
    tools/eval_checkpoint.py --help lists only the flags that act in an evaluation."""
    with pytest.raises(SystemExit):
        E.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all("--" + f.name.replace("_", "-") in out for f in dataclasses.fields(E.Config))
    assert "--eps-low EPS_LOW ratio clip: an offset, the lower bound is 1 - eps_low (per --algo)" in out
    assert "--steps STEPS training steps, one rollout batch each (per --preset)" in out
    assert ("--erc-low ERC_LOW ERC: a bound, not an offset: a token keeps its gradient if erc_low < H / H_old "
            "(default: 0.95)") in out
    with pytest.raises(SystemExit):
        load_tool("eval_checkpoint").main(["--help"])
    out = capsys.readouterr().out
    assert "--eval-samples" in out and "--eval-top-p" in out and "--preset" in out
    assert not any(flag in out for flag in ("--algo", "--erc", "--steps", "--lr", "--sft-coef", "--resume"))


def test_unsupported_dataset_file_names_the_supported_types_and_idle_terms_are_not_logged(tmp_path, capsys):
    """A .txt file is refused naming the supported extensions; with --sft-coef 0 (the default) its term is not
    logged, with a non-zero coefficient it is."""
    (tmp_path / "data.txt").write_text("1+1= 2\n")
    with pytest.raises(SystemExit):
        E.main(tiny_argv(tmp_path / "run", "--dataset", str(tmp_path / "data.txt")))
    assert ".json, .jsonl, .parquet, .csv" in capsys.readouterr().err
    idle = E.main(tiny_argv(tmp_path / "idle", "--steps", "1"))[0]
    active = E.main(tiny_argv(tmp_path / "active", "--steps", "1", "--sft-coef", "0.1"))[0]
    assert "sft_loss" not in idle and "sft_loss" in active


def test_bad_steps_count_only_in_a_row(tmp_path, monkeypatch):
    """A NaN gradient on chosen steps only (a hook that acts on those steps): two bad steps in a row, twice, never
    stop a run; three in a row do."""
    bad_steps = set()
    train_step = E.train_step

    def step_with_faults(cfg, model, *args):
        handle = model.get_output_embeddings().weight.register_hook(
            lambda grad: grad * float("nan") if len(calls) in bad_steps else grad)
        calls.append(1)
        try:
            return train_step(cfg, model, *args)
        finally:
            handle.remove()
    monkeypatch.setattr(E, "train_step", step_with_faults)
    calls, bad_steps = [], {1, 2, 4, 5}  # calls are counted before the step runs: step s is call s
    rows = E.main(tiny_argv(tmp_path / "pairs", "--steps", "6"))
    assert [r["nonfinite_updates"] > 0 for r in rows] == [True, True, False, True, True, False]
    calls, bad_steps = [], {2, 3, 4}
    with pytest.raises(SystemExit, match="stopped at step 4: 3 steps in a row"):
        E.main(tiny_argv(tmp_path / "in_a_row", "--steps", "6"))


def test_overwrite_removes_the_older_runs_checkpoints_and_resume_continues_the_new_run(tmp_path):
    """--overwrite starts over: the older run's checkpoints are gone (a later --resume would otherwise continue its
    weights), and --resume then continues the new run, as an uninterrupted new run would."""
    E.main(tiny_argv(tmp_path / "run", "--steps", "4", "--save-every", "2", "--seed", "1"))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    E.main(tiny_argv(tmp_path / "run", "--steps", "1", "--overwrite"))
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-1"]
    resumed = E.main(["--out", str(tmp_path / "run"), "--resume", "--steps", "3"])
    assert comparable(resumed) == comparable(E.main(tiny_argv(tmp_path / "whole", "--steps", "3")))


def test_save_total_limit_keeps_the_newest_and_removes_the_rest(tmp_path):
    """--save-total-limit 2 with a checkpoint every step: after each save only the two newest remain."""
    E.main(tiny_argv(tmp_path, "--steps", "3", "--save-every", "1", "--save-total-limit", "2"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluation_keeps_one_prompt_per_call_when_samples_exceed_a_rollout(monkeypatch):
    """--eval-samples larger than a training rollout's rows (4 x 2 = 8 here, 12 samples): each generate call
    takes one prompt with all its samples, never none (an endless or empty loop)."""
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=2, eval_prompts=3, eval_samples=12)
    model, tok = tiny_model_and_tokenizer(seed=3)
    seen = []
    spy_on_generate(model, seen, lambda kw: (len(kw["input_ids"]), kw["num_return_sequences"]))
    result = E.evaluate(model, tok, E.load_data(cfg, tok, split="test"), cfg)
    assert seen[-3:] == [(1, 12)] * 3 and sum(p for p, k in seen if k == 12) == 3 and "eval_pass@12" in result


def test_the_guides_links_resolve():
    """Every relative link of the README, the reference pages and the lab reports names a file or folder of the
    repository (the layout moved once; a link left behind would send a reader nowhere)."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "labs").rglob("*.md")]
    broken = [(page.relative_to(ROOT), target) for page in pages
              for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text())
              if not re.match(r"[a-z]+://|#", target) and not (page.parent / target.split("#")[0]).exists()]
    assert len(pages) > 10 and not broken, broken


# ------------------------------------------------------------------ the model families the script is proven on
FAMILY_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0)
FAMILIES = {  # small random-weight configurations of the architectures users pick
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM",  # hybrid: a linear-attention and a full-attention layer
                dict(head_dim=16, layer_types=["linear_attention", "full_attention"], linear_num_value_heads=4,
                     linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_model_family_scores_what_it_samples_and_trains(family):
    """Per architecture: a left-padded row's log-probs equal the same row scored alone, unpadded; the rollout's own
    sampling log-probs (generate's scores at T = 0.7) equal the scoring's; one training step runs, with and without
    bf16 autocast, with the noise floor at 0."""
    config, causal_lm, extra = FAMILIES[family]
    if not hasattr(E.transformers, causal_lm):
        pytest.skip(f"this transformers has no {causal_lm}")
    tok = E.make_tiny_tokenizer()
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = getattr(E.transformers, causal_lm)(getattr(E.transformers, config)(vocab_size=len(tok), **FAMILY_COMMON,
                                                                               **extra)).eval()
    cfg = E.Config(preset="tiny", temperature=0.7, max_new_tokens=6, prompts_per_step=3, group_size=2,
                   num_minibatches=2, erc=True)
    scores, generate = [], model.generate

    def generate_with_scores(**kwargs):
        scores.append(generate(**kwargs, output_scores=True, return_dict_in_generate=True))
        return scores[-1].sequences
    model.generate = generate_with_scores
    torch.manual_seed(1)
    ids, attention, response_mask = E.rollout(model, tok, ["1+2=", "13+4+2=", "3="], 2, 0.7, 6)
    model.generate = generate
    batch = dict(input_ids=ids, attention_mask=attention, response_mask=response_mask)
    with torch.no_grad():
        logp, _ = E.logp_and_entropy(model, batch, cfg)
        sampled = torch.stack(scores[0].scores, 1).log_softmax(-1).gather(-1, ids[:, -response_mask.shape[1]:, None])
        torch.testing.assert_close(sampled.squeeze(-1) * response_mask, logp, atol=2e-6, rtol=0)
        assert (attention == 0).any()  # left padding really occurs
        for i in range(len(ids)):
            keep = attention[i].bool() | (torch.arange(ids.shape[1]) >= ids.shape[1] - response_mask.shape[1])
            alone = dict(input_ids=ids[i:i + 1, keep], attention_mask=attention[i:i + 1, keep],
                         response_mask=response_mask[i:i + 1])
            torch.testing.assert_close(E.logp_and_entropy(model, alone, cfg)[0][0], logp[i], atol=2e-6, rtol=0)
    rows = {"prompt": ["1+2=", "3+4=", "2+2="], "answer": ["3", "7", "4"]}
    for bf16 in (False, True):
        step_cfg = dataclasses.replace(cfg, bf16=bf16)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        sampler = E.frozen_copy(model, torch.bfloat16) if bf16 else model
        record = E.train_step(step_cfg, model, sampler, optimizer, scheduler, tok, rows)
        assert record["updates"] == 2 and math.isfinite(record["loss"]), (family, bf16)
        assert record["first_mb_max_ratio_err"] <= 1e-6 and record["first_mb_erc_clip_frac"] == 0.0, (family, bf16)


QWEN3_LIKE_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                       "{% endfor %}<|im_start|>assistant\n"
                       "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}")


def test_chat_template_arguments_reach_a_template_that_thinks(tmp_path, capsys):
    """--chat-template-args passes its JSON object to the chat template: a Qwen3-like template that thinks by
    default gets its empty think block (thinking off) in every prompt; arguments for a tokenizer without a template,
    or that are not JSON, are one line and exit code 2, never lost without a word."""
    tokenizer, model = chat_tokenizer_and_model()
    tokenizer.chat_template = QWEN3_LIKE_TEMPLATE
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(3)]
    (tmp_path / "train.jsonl").write_text("".join(E.json.dumps(r) + "\n" for r in rows))
    argv = ["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "train.jsonl"), "--instruction", ""]
    thinking, not_thinking = (E.load_data(E.Config(**E.parse_args(argv + extra)), tokenizer)["prompt"]
                              for extra in ([], ["--chat-template-args", '{"enable_thinking": false}']))
    assert all(p.endswith("assistant\n") for p in thinking)
    assert all(p.endswith("assistant\n<think>\n\n</think>\n\n") for p in not_thinking)
    capsys.readouterr()
    for extra in (["--chat-template-args", '{"enable_thinking": false}'], ["--chat-template-args", "{bad"]):
        with pytest.raises(SystemExit) as exit_info:
            E.main(tiny_argv(tmp_path / "tiny", *extra))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert ("has no chat template" if "false" in extra[1] else "Expecting property name") in err


def test_a_run_keeps_fp32_matmuls_at_full_precision(tmp_path):
    """Whatever the process set before (TF32, "high"), setup puts fp32 matmuls back to "highest": RoPE's angles and
    the fp32 output layer must not be rounded to TF32 (formulas §6.8)."""
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        E.setup(E.Config(preset="tiny", out=str(tmp_path)))
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("cuda,native,expected", [(False, False, False), (True, False, False), (True, True, True)])
def test_bf16_is_on_by_default_only_where_the_card_has_it_natively(monkeypatch, cuda, native, expected):
    """--bf16 defaults to on only with CUDA and native bf16; a card that only emulates it (T4, V100) stays in fp32,
    and a given --bf16 / --no-bf16 wins (torch.cuda stood in for)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert E.Config(preset="tiny").bf16 is expected
    assert E.Config(preset="tiny", bf16=not expected).bf16 is (not expected)


# ------------------------------------------------------------------ the GPU path, proven on a CPU
def test_static_cache_rollout_equals_dynamic():
    """The static KV cache (the CUDA default) pads prompts to a multiple of 64 and decodes with a fixed-size cache:
    once the columns no row attends to are dropped, the same sequences and masks as the dynamic cache (greedy, and
    sampled from the same seed), and the scoring of either batch gives the same log-probs."""
    model, tok = tiny_model_and_tokenizer(seed=6)
    prompts = ["1+2=", "13+4+2=", "3="]
    for temperature, num_samples in ((0.0, 1), (1.0, 2)):  # greedy takes one sample per prompt
        runs = []
        for static in (False, True):
            torch.manual_seed(2)
            runs.append(E.rollout(model, tok, prompts, num_samples, temperature, 6, static))
        (ids, attention, response_mask), (s_ids, s_attention, s_response_mask) = runs
        assert ids.shape[1] == 7 + 6 and s_ids.shape[1] == 64 + 6  # the longest prompt; its bucket of 64
        used = s_attention.any(0)  # the bucket's extra columns: padding in every row
        assert not used[:64 - 7].any() and used[64 - 7:].all()
        for static_tensor, dynamic_tensor in ((s_ids[:, used], ids), (s_attention[:, used], attention),
                                              (s_response_mask, response_mask)):
            torch.testing.assert_close(static_tensor, dynamic_tensor, rtol=0, atol=0)
        cfg = E.Config(preset="tiny", temperature=1.0)
        with torch.no_grad():
            logp = E.logp_and_entropy(model, dict(input_ids=ids, attention_mask=attention, response_mask=response_mask), cfg)[0]
            s_logp = E.logp_and_entropy(model, dict(input_ids=s_ids, attention_mask=s_attention,
                                                    response_mask=s_response_mask), cfg)[0]
        torch.testing.assert_close(s_logp, logp, atol=1e-5, rtol=0)


def test_static_cache_buckets_bound_the_compiled_shapes():
    """Prompts of every length from 1 to 200 tokens give 4 prompt widths under the static cache (64, 128, 192,
    256), against 200 under the dynamic one: a compiled decoding step is made for at most that many shapes per
    batch size."""
    _, tok = tiny_model_and_tokenizer()
    widths = {}
    for static in (False, True):
        seen = set()
        model = type("Shapes", (), {"device": torch.device("cpu"), "eval": lambda self: self,
                                    "generation_config": E.transformers.GenerationConfig()})()
        model.generate = lambda **kw: seen.add(kw["input_ids"].shape[1]) or kw["input_ids"]
        for n in range(1, 201):
            E.rollout(model, tok, ["1" * n], 1, 1.0, 0, static)
        widths[static] = seen
    assert widths[True] == {64, 128, 192, 256} and len(widths[False]) == 200


@pytest.mark.parametrize("cuda", [False, True])
def test_static_cache_is_the_cuda_default_and_reaches_every_generate(monkeypatch, tmp_path, cuda):
    """--static-cache defaults to on where CUDA is (torch.cuda stood in for), off on a CPU; --no-static-cache and
    --static-cache win; the training rollout and both evaluation passes ask generate for the cache it says."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert E.Config(preset="tiny").static_cache is cuda
    for flag, expected in (("--static-cache", True), ("--no-static-cache", False)):
        assert E.Config(**E.parse_args(["--preset", "tiny", flag])).static_cache is expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the run itself stays on this CPU
    seen, setup = [], E.setup

    def spied_setup(cfg):
        model, *rest = setup(cfg)
        spy_on_generate(model, seen, lambda kw: kw.get("cache_implementation"))
        return model, *rest
    monkeypatch.setattr(E, "setup", spied_setup)
    E.main(tiny_argv(tmp_path, "--steps", "1", "--eval-every", "1", "--eval-prompts", "2", "--static-cache"))
    assert seen == ["static"] * 3  # the step's rollout, greedy and sampled evaluation


@pytest.mark.parametrize("bf16", [False, True])
def test_the_sampler_keeps_its_storage_when_it_follows_the_policy(bf16):
    """After each update the sampler takes the policy's new weights in place: every parameter keeps its storage (a
    moved one makes CUDA graphs of the compiled decoding re-record) and holds the policy's values (bf16: rounded)."""
    model, tok = tiny_model_and_tokenizer()
    cfg = E.Config(preset="tiny", prompts_per_step=4, group_size=4, bf16=bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sampler = E.frozen_copy(model, torch.bfloat16) if bf16 else model
    storage = [p.data_ptr() for p in sampler.parameters()]
    before = [p.detach().clone() for p in sampler.parameters()]
    rows = {"prompt": ["1+2=", "3+4=", "2+2=", "0+1="], "answer": ["3", "7", "4", "1"]}
    E.REWARDS["coin"] = lambda completion, answer: float(torch.rand(()) < 0.5)
    try:
        for step in range(2):
            torch.manual_seed(step)
            record = E.train_step(dataclasses.replace(cfg, reward="coin"), model, sampler, optimizer, scheduler, tok, rows)
            assert record["updates"] > 0
    finally:
        del E.REWARDS["coin"]
    assert [p.data_ptr() for p in sampler.parameters()] == storage
    assert any(not torch.equal(p, q) for p, q in zip(sampler.parameters(), before))  # it did follow the policy
    for p, q in zip(sampler.parameters(), model.parameters()):
        assert torch.equal(p, q.detach().to(p.dtype))


def test_a_compiler_that_fails_is_one_line_naming_the_flag(tmp_path, capsys, monkeypatch):
    """Where torch.compile cannot build the static cache's decoding step (no C compiler: torch's error stood in
    for), the run stops in one line that names the error and --no-static-cache, exit code 2."""
    def no_compiler(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed(no_compiler, RuntimeError("Failed to find C compiler"), None)
    setup = E.setup

    def spied_setup(cfg):
        model, *rest = setup(cfg)
        model.generate = no_compiler
        return model, *rest
    monkeypatch.setattr(E, "setup", spied_setup)
    with pytest.raises(SystemExit) as exit_info:
        E.main(tiny_argv(tmp_path, "--steps", "2", "--static-cache"))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "Failed to find C compiler" in err and "--no-static-cache" in err


def raise_out_of_memory_in_step_2(monkeypatch, out, name, call):
    """E.name raises CUDA's out-of-memory error on its call-th call after step 1's checkpoint, as a full card does."""
    function, calls = getattr(E, name), []

    def full(*args, **kwargs):
        if (out / "checkpoint-1").exists():
            calls.append(1)
        if len(calls) == call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return function(*args, **kwargs)
    monkeypatch.setattr(E, name, full)


@pytest.mark.parametrize("phase,inside,call,card_gib,card", [
    ("rollout", "make_response_mask", 1, 79.2, "80 GB"),  # step 2's rollout
    ("score_old_policy", "logp_and_entropy", 1, 44.4, "48 GB"),  # step 2's first scoring
    ("train_on_batch", "objective", 1, 23.6, "24 GB"),  # step 2's first update
    ("evaluate", "make_response_mask", 2, 15.7, "16 GB")])  # inside step 2's evaluation rollout, after the step's
def test_out_of_memory_is_one_line_naming_the_phase_the_card_and_its_command(tmp_path, capsys, monkeypatch, phase,
                                                                             inside, call, card_gib, card):
    """CUDA running out of memory in each phase (raised where the phase allocates; the card's size stood in for):
    one line naming the phase, the card's GiB and the flags the README gives for a card that size, exit code 2;
    the checkpoint of step 1 is intact and --resume goes on from it."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (0, int(card_gib * 2**30)))
    raise_out_of_memory_in_step_2(monkeypatch, tmp_path, inside, call)
    argv = tiny_argv(tmp_path, "--steps", "3", "--save-every", "1", "--eval-every", "1", "--eval-prompts", "2")
    with pytest.raises(SystemExit) as exit_info:
        E.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    flags = " ".join(readme_gpu_commands()[card][3:]) or "no flag"  # beyond --algo gppo --erc
    assert f"out of memory in {phase} on this {card_gib:.0f} GiB card" in err and f"adds {flags};" in err, err
    assert E.checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-1")] and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    assert [r["step"] for r in E.main(["--out", str(tmp_path), "--resume"])] == [1, 2, 3]
