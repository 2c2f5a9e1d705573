"""A CPU lab where ERC's claims can show: Countdown-3 with a warm-started policy, RL through erc_minimal's own main,
and controls that tell ERC apart from a smaller step.

    python labs/countdown/countdown.py build            # task, tokenizer, warm-started model (once, <= 5 min)
    python labs/countdown/countdown.py grid --quick     # the lab's quick subset (<= 15 min on 2 cores)
    python labs/countdown/countdown.py grid             # the whole grid (runs are reused: it resumes)
    python labs/countdown/countdown.py report           # labs/countdown/README.md table and labs/countdown/countdown_lr*.png figure

The task: three digits 1-9 and a target reachable with +, -, * and at most one pair of brackets; the answer is an
expression using each number once. A completion is a "thought" of 1-5 filler words (200 of them, drawn Zipf-like,
so the next-token distribution has a real tail), then "=", then the expression. The verifier gives 1 only to a
well-formed expression over exactly the given numbers that equals the target, and nothing after it.
Everything runs through erc_minimal's functions: the verifier is registered in E.REWARDS, RL runs are E.main(argv),
and the controls replace the ERC gate function E.erc_band_exits, as a forker would."""
import argparse
import ast
import itertools
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # erc_minimal, and the tools diagnostics.py and compare.py
import erc_minimal as E  # noqa: E402
import diagnostics  # noqa: E402
from compare import differs, run_summary  # noqa: E402

LAB = ROOT / "runs" / "countdown"  # model folder, data files and runs (not committed)
CORE = ["<|endoftext|>", "nums", "target", ".", "=", "+", "-", "*", "(", ")"] + [str(d) for d in range(10)]
FILLERS = [f"w{i}" for i in range(200)]
OPS = ("+", "-", "*")


# ------------------------------------------------------------------ the task
def expressions(numbers):
    """Every expression over a permutation of the three numbers with two operators and at most one pair of
    brackets, as token lists, with their values."""
    out = []
    for a, b, c in itertools.permutations(numbers):
        for op1, op2 in itertools.product(OPS, repeat=2):
            for tokens in ([a, op1, b, op2, c], ["(", a, op1, b, ")", op2, c], [a, op1, "(", b, op2, c, ")"]):
                tokens = [str(t) for t in tokens]
                out.append((tokens, eval(" ".join(tokens))))  # only digits and + - * ( ): safe
    return out


def make_instances(seed):
    """Every (three digits, target in 0..99 some expression reaches) instance, 1,963 in all, shuffled; the digits
    in a random order."""
    rng, out = random.Random(seed), []
    for numbers in itertools.combinations_with_replacement(range(1, 10), 3):
        for target in sorted({v for _, v in expressions(numbers) if 0 <= v <= 99}):
            out.append((tuple(rng.sample(numbers, 3)), target))
    rng.shuffle(out)
    return out


def prompt_of(numbers, target):
    return f"nums {' '.join(map(str, numbers))} target {' '.join(str(target))} ."


def answer_of(numbers, target):
    return f"{' '.join(map(str, numbers))} {target}"  # what the verifier gets as the gold answer


def verify(completion, answer):
    """1.0 if the text after the only '=' is a well-formed expression (+, -, * and brackets over single digits) that
    uses exactly the given numbers and equals the target; 0.0 for anything else (no '=', a number reused, missing
    or not given, '/', an unknown symbol, a unary minus, text after the expression)."""
    *numbers, target = answer.split()
    if completion.count("=") != 1:
        return 0.0
    tokens = completion.split("=")[1].split()
    if not tokens or any(t not in ("+", "-", "*", "(", ")") and not (t.isdigit() and len(t) == 1) for t in tokens):
        return 0.0
    try:
        tree = ast.parse(" ".join(tokens), mode="eval").body
    except SyntaxError:
        return 0.0
    used = []

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(str(node.value))
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left - right if isinstance(node.op, ast.Sub) \
                else left * right
        raise ValueError("not + - * over digits")

    try:
        result = value(tree)
    except ValueError:
        return 0.0
    return float(Counter(used) == Counter(numbers) and result == int(target))


def make_tokenizer():
    """Word-level: the 20 core tokens and 200 filler words; tokens joined by single spaces, so text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CORE + FILLERS)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece(cleanup=False)
    return E.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def lab_main(argv, gate=None):
    """E.main as the lab runs it: with tools/diagnostics.py's per-step diagnostics, and ERC's gate
    E.erc_band_exits replaced by `gate` (a control); erc_minimal's own functions are put back afterwards."""
    saved = E.train_on_batch, E.policy_loss, E.erc_band_exits
    diagnostics.install()
    E.erc_band_exits = gate or E.erc_band_exits
    try:
        return E.main(argv)
    finally:
        E.train_on_batch, E.policy_loss, E.erc_band_exits = saved


def thought(rng):
    """1-5 filler words, Zipf-like (word i drawn with weight 1 / (i + 1))."""
    return rng.choices(FILLERS, weights=[1 / (i + 1) for i in range(len(FILLERS))], k=rng.randint(1, 5))


def teacher(numbers, target, rng):
    """The noisy teacher: half the time a valid solution, half a near miss (a valid solution with one operator
    changed, usually wrong)."""
    solutions = [t for t, v in expressions(numbers) if v == target]
    tokens = list(rng.choice(solutions))
    if rng.random() < 0.5:
        i = rng.choice([i for i, t in enumerate(tokens) if t in OPS])
        tokens[i] = rng.choice([op for op in OPS if op != tokens[i]])
    return " ".join(thought(rng) + ["="] + tokens)


# ------------------------------------------------------------------ the warm-started policy
def warm_start(folder, steps, seed=0, hidden=128, layers=3, batch=64, lr=3e-3, threads=1, decay=True, wd=0.01, log=print):
    """Supervised training on the noisy teacher (loss on the completion and its EOS only); saves model, tokenizer
    and generation config in `folder`, which `--model` loads."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    tokenizer = make_tokenizer()
    tokenizer.padding_side = "left"
    config = E.transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                           pad_token_id=0)
    model = E.transformers.Qwen2ForCausalLM(config)
    train, _ = splits()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (1 - s / steps * decay))
    model.train()
    for step in range(steps):
        rows = [rng.choice(train) for _ in range(batch)]
        prompts = [prompt_of(*r) for r in rows]
        texts = [p + " " + teacher(*r, rng) for p, r in zip(prompts, rows)]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        ids = torch.cat([enc.input_ids, torch.zeros(len(texts), 1, dtype=torch.long)], 1)  # + EOS
        attention = torch.cat([enc.attention_mask, torch.ones(len(texts), 1, dtype=torch.long)], 1)
        prompt_lens = [len(tokenizer(p).input_ids) for p in prompts]
        labels = ids.clone()
        for i, n in enumerate(prompt_lens):  # left padding: the prompt is the first n real tokens
            labels[i, :ids.shape[1] - attention[i].sum() + n] = -100
        position_ids = (attention.cumsum(1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=attention, position_ids=position_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log(f"warm start step {step + 1}: loss {loss.item():.3f}")
    model.generation_config.eos_token_id = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


def splits():
    """Train and held-out instances; no (numbers, target) pair is in both."""
    instances = make_instances(seed=1234)
    return instances[:1563], instances[1563:]  # 400 held out


def write_data(folder):
    train, held_out = splits()
    for name, part in (("train.jsonl", train), ("test.jsonl", held_out)):
        Path(folder, name).write_text("".join(json.dumps(dict(question=prompt_of(*r), answer=answer_of(*r))) + "\n"
                                              for r in part))


@torch.no_grad()
def measure(model, tokenizer, instances, k=8, seed=0, max_new_tokens=16):
    """Held-out greedy accuracy, avg@k and pass@k at T 1, and distinct correct expressions per prompt."""
    torch.manual_seed(seed)
    prompts, answers = [prompt_of(*r) for r in instances], [answer_of(*r) for r in instances]
    greedy, correct, distinct = [], [], []
    for start in range(0, len(prompts), 32):
        p, a = prompts[start:start + 32], answers[start:start + 32]
        for temperature, n in ((0.0, 1), (1.0, k)):
            ids, _, mask = E.rollout(model, tokenizer, p, n, temperature, max_new_tokens)
            texts = tokenizer.batch_decode(ids[:, -mask.shape[1]:], skip_special_tokens=True)
            rewards = [verify(t, g) for t, g in zip(texts, [g for g in a for _ in range(n)])]
            if n == 1:
                greedy += rewards
            else:
                for i in range(len(p)):
                    group = range(i * n, (i + 1) * n)
                    correct.append([rewards[j] for j in group])
                    distinct.append(len({texts[j].split("=")[1].strip() for j in group if rewards[j]}))
    return dict(greedy=sum(greedy) / len(greedy), avg=sum(map(sum, correct)) / (k * len(correct)),
                pass_k=sum(max(c) for c in correct) / len(correct), distinct=sum(distinct) / len(distinct))


def build(steps=1000, log=print):
    LAB.mkdir(parents=True, exist_ok=True)
    folder = LAB / "model"
    if (folder / "model.safetensors").exists():
        log(f"reusing {folder}")
        return folder
    write_data(LAB)
    started = time.time()
    model, tokenizer = warm_start(folder, steps, log=log)
    elapsed = time.time() - started
    result = measure(model, tokenizer, splits()[1][:256])
    result.update(warm_start_seconds=elapsed, steps=steps)
    (LAB / "start.json").write_text(json.dumps(result))
    log(f"warm start: {elapsed:.0f} s; held-out (256): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return folder


# ------------------------------------------------------------------ RL runs and controls
E.REWARDS["countdown"] = verify


def base_argv(lab=LAB):
    """The flags every lab run shares: the lab's model, data and verifier, 16 prompts x 8 responses per step."""
    return ["--model", str(lab / "model"), "--dataset", str(lab / "train.jsonl"), "--eval-dataset",
            str(lab / "test.jsonl"), "--instruction", "", "--reward", "countdown", "--prompts-per-step", "16",
            "--group-size", "8", "--max-new-tokens", "16", "--warmup-steps", "10", "--eval-every", "20", "--eval-prompts", "128",
            "--eval-samples", "8", "--threads", "1", "--log-every", "1000"]


def dropout_gate(fraction):
    """Control: drop the gradient of a random `fraction` of the tokens (in place of ERC's band test)."""
    def gate(entropy, old_entropy, cfg):
        fell = torch.rand(entropy.shape) < fraction
        return fell, torch.zeros_like(fell)
    return gate


def lowest_entropy_gate(fraction):
    """Control: drop the gradient of the `fraction` of tokens with the lowest entropy (in place of ERC's band test);
    tokens with zero old entropy are padding here and never count."""
    def gate(entropy, old_entropy, cfg):
        valid = old_entropy > 0
        threshold = torch.quantile(entropy[valid].float(), fraction) if valid.any() else entropy.new_tensor(-1.0)
        low = valid & (entropy <= threshold)
        return low, torch.zeros_like(low)
    return gate


def run(out, algo, erc, minibatches, lr, seed, steps, gate=None):
    """One RL run through E.main (reused when finished). `gate` replaces E.erc_band_exits for the run."""
    if (Path(out) / f"checkpoint-{steps}").exists():
        return E.read_jsonl(Path(out) / "metrics.jsonl")
    argv = base_argv() + ["--algo", algo, "--num-minibatches", str(minibatches), "--lr", str(lr), "--seed", str(seed),
                          "--steps", str(steps), "--out", str(out), "--save-every", "20"]
    argv += ["--erc"] * erc + (["--resume"] if E.checkpoints(str(out)) else ["--overwrite"])
    return lab_main(argv, gate)


ALGOS, LRS, SEEDS, STEPS = ("grpo", "gppo"), (1e-4, 3e-4), (0, 1, 2), 100
CONTROLS = ("dropout", "smaller_lr", "low_entropy")


def arms(quick=False):
    """(name, algo, erc, minibatches, lr): the main grid, then the controls (which need ERC's clip fraction)."""
    if quick:
        return [(f"gppo_erc{e}_mb8_lr{LRS[1]}", "gppo", e, 8, LRS[1]) for e in (0, 1)], \
            [(f"gppo_dropout_mb8_lr{LRS[1]}", "gppo", "dropout", 8, LRS[1])]
    main = [(f"{a}_erc{e}_mb{m}_lr{lr}", a, e, m, lr) for a in ALGOS for lr in LRS for m in (1, 8) for e in (0, 1)]
    controls = [(f"{a}_{c}_mb8_lr{lr}", a, c, 8, lr) for a in ALGOS for lr in LRS for c in CONTROLS]
    return main, controls


def erc_fraction(algo, lr, seeds):
    """ERC's measured clip fraction at 8 mini-batches: the mean over its runs' steps and seeds."""
    rows = [r for s in seeds for r in E.read_jsonl(LAB / "runs" / f"{algo}_erc1_mb8_lr{lr}" / f"seed{s}" / "metrics.jsonl")
            if "erc_clip_frac" in r]
    return sum(r["erc_clip_frac"] for r in rows) / len(rows)


def one(spec):
    """A grid cell in its own process: one run, then the final held-out measurement of its last checkpoint."""
    name, algo, variant, minibatches, lr, seed, steps, fraction = spec
    out = LAB / "runs" / name / f"seed{seed}"
    started = time.time()
    erc, gate, run_lr = variant == 1, None, lr
    if variant == "dropout":
        erc, gate = True, dropout_gate(fraction)
    elif variant == "low_entropy":
        erc, gate = True, lowest_entropy_gate(fraction)
    elif variant == "smaller_lr":
        run_lr = lr * (1 - fraction)
    if not (out / "final.json").exists():
        run(out, algo, erc, minibatches, run_lr, seed, steps, gate)
        model, tokenizer = E.load_model_and_tokenizer(E.checkpoints(str(out))[-1], torch.device("cpu"))
        result = dict(measure(model, tokenizer, splits()[1][:256]), seconds=time.time() - started, fraction=fraction)
        (out / "final.json").write_text(json.dumps(result))
    return name, seed


def grid(quick=False, workers=2, seeds=SEEDS, steps=STEPS):
    from concurrent.futures import ProcessPoolExecutor
    build()
    main, controls = arms(quick)
    seeds = seeds[:2] if quick else seeds
    started = time.time()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, seed in pool.map(one, [(*arm, s, steps, None) for arm in main for s in seeds]):
            print(f"{time.time() - started:6.0f} s  {name} seed {seed}", flush=True)
        specs = [(*arm, s, steps, erc_fraction(arm[1], arm[4], seeds)) for arm in controls for s in seeds]
        for name, seed in pool.map(one, specs):
            print(f"{time.time() - started:6.0f} s  {name} seed {seed}", flush=True)
    print(f"grid: {time.time() - started:.0f} s")


def per_run(rows, final):
    """One run's numbers: compare.py's summary of its metrics (entropy stability, grad norms, the diagnostics), the
    held-out measurement of its last checkpoint, and the lab's means over steps."""
    summary, entropy = run_summary(rows), [r["entropy"] for r in rows if "entropy" in r]

    def mean_of(key):
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else float("nan")

    return dict(entropy_change_sd=summary["entropy_change_sd"], min_entropy=min(entropy),
                final_entropy=sum(entropy[-10:]) / 10, reward=mean_of("reward"), greedy=final["greedy"],
                avg8=final["avg"], pass8=final["pass_k"], distinct=final["distinct"], clip=mean_of("clip_frac"),
                erc_clip=mean_of("erc_clip_frac"), erc_low=mean_of("erc_low_frac"), erc_high=mean_of("erc_high_frac"),
                grad_norm_max=summary["grad_norm_max"], no_signal=mean_of("no_signal_frac"),
                moved_erc_only=summary.get("diag_moved_unsampled_erc_only", float("nan")),
                moved_erc_kept=summary.get("diag_moved_unsampled_erc_kept", float("nan")),
                moved_ratio_out=summary.get("diag_moved_unsampled_ratio_out", float("nan")), seconds=final["seconds"])


def load(name, seeds):
    runs = []
    for seed in seeds:
        out = LAB / "runs" / name / f"seed{seed}"
        if (out / "final.json").exists():
            runs.append((E.read_jsonl(out / "metrics.jsonl"), json.loads((out / "final.json").read_text())))
    return runs


def spread(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return sum(values) / len(values), statistics.stdev(values) if len(values) > 1 else 0.0


COLUMNS = ("entropy_change_sd", "min_entropy", "reward", "greedy", "avg8", "pass8", "distinct", "clip", "erc_clip",
           "erc_low", "erc_high", "grad_norm_max", "moved_erc_only", "moved_erc_kept")


def report(quick=False):
    """labs/countdown/README.md (mean ± std over seeds per arm) and labs/countdown/countdown_lr*.png; asserts the negative control."""
    main, controls = arms(quick)
    seeds = SEEDS[:2] if quick else SEEDS
    table, curves, per_seed = {}, {}, {}
    for name, algo, variant, minibatches, lr in main + controls:
        runs = load(name, seeds)
        if not runs:
            continue
        numbers = per_seed[name] = [per_run(*r) for r in runs]
        table[name] = {k: spread([n[k] for n in numbers]) for k in COLUMNS} | dict(seeds=len(runs))
        curves[name] = [rows for rows, _ in runs]
        if minibatches == 1 and variant == 1:  # the negative control: one mini-batch, nothing for ERC to clip
            assert all(r.get("erc_clip_frac", 0) == 0 for rows, _ in runs for r in rows), f"{name}: ERC clipped"
    lines = ["| arm | seeds | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in COLUMNS)
                     + " |")
    start = json.loads((LAB / "start.json").read_text())
    text = (f"Countdown-3 lab, {STEPS} steps, seeds {list(seeds)}; mean ± std over seeds. Starting policy (256 held-out"
            f" prompts): greedy {start['greedy']:.3f}, avg@8 {start['avg']:.3f}, pass@8 {start['pass_k']:.3f}, "
            f"distinct correct {start['distinct']:.2f}.\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(verdicts(table, per_seed)) + "\n")
    (HERE / ("report_quick.md" if quick else "README.md")).write_text(text)
    print(text)
    for lr in LRS:  # one figure per learning rate; the pre-registered criteria read the higher one
        figure(curves, HERE / f"countdown{'_quick' * quick}_lr{lr}.png", lr)


def verdicts(table, per_seed):
    """The lab's four criteria (labs/README.md), answered from the table (means and standard deviations over seeds)."""
    out, hi = [], LRS[1]

    def compare(on, off, key, higher_is_better):
        """+1 if ERC beats no ERC on `key` by more than the seed spread, -1 if it loses by that much, else 0."""
        (m_on, s_on), (m_off, s_off) = table[on][key], table[off][key]
        sign = differs([r[key] for r in per_seed[on]], [r[key] for r in per_seed[off]])
        return sign * (1 if higher_is_better else -1), f"{m_on:.3f} ± {s_on:.3f} vs {m_off:.3f} ± {s_off:.3f}"

    word = {1: "for", -1: "against", 0: "inconclusive"}
    for algo in ALGOS:
        on, off = f"{algo}_erc1_mb8_lr{hi}", f"{algo}_erc0_mb8_lr{hi}"
        if on not in table or off not in table:
            continue
        sign, text = compare(on, off, "entropy_change_sd", higher_is_better=False)
        erc_mean, erc_sd = table[on]["entropy_change_sd"]
        controls = {c: table[f"{algo}_{c}_mb8_lr{hi}"]["entropy_change_sd"][0] for c in CONTROLS
                    if f"{algo}_{c}_mb8_lr{hi}" in table}
        matched = [c for c, m in controls.items() if m <= erc_mean + erc_sd]
        names = [f"{algo}_erc{e}_mb1_lr{hi}" for e in (1, 0)]
        one = [table.get(name, {}).get("entropy_change_sd") for name in names]
        absent = None not in one and not differs(*([r["entropy_change_sd"] for r in per_seed[n]] for n in names))
        verdict = 1 if sign == 1 and not matched and absent else -1 if sign == -1 else 0
        out.append(f"- {algo}, criterion 1 (entropy stable): **{word[verdict]}**. SD of step-to-step entropy changes "
                   f"with / without ERC {text}; controls {', '.join(f'{c} {m:.3f}' for c, m in controls.items())}"
                   f"{' (' + ', '.join(matched) + ' as low as ERC)' if matched else ''}; at 1 mini-batch "
                   + (f"{one[0][0]:.3f} vs {one[1][0]:.3f}" if None not in one else "not run") + ".")
        for number, keys, name in ((2, ("pass8", "distinct"), "exploration"), (3, ("greedy", "avg8"), "accuracy")):
            results = [compare(on, off, k, higher_is_better=True) for k in keys]
            signs = [r[0] for r in results]
            verdict = 1 if all(x == 1 for x in signs) else -1 if any(x == -1 for x in signs) else 0
            out.append(f"- {algo}, criterion {number} ({name}): **{word[verdict]}**. "
                       + "; ".join(f"{k} {r[1]}" for k, r in zip(keys, results)) + ".")
        seeds = per_seed.get(on, [])
        wins = sum(r["moved_erc_only"] > r["moved_erc_kept"] for r in seeds)
        verdict = 1 if seeds and wins == len(seeds) else -1 if seeds and wins == 0 else 0
        out.append(f"- {algo}, criterion 4 (mechanism): **{word[verdict]}**. Mass moved on un-sampled tokens, ERC-only "
                   f"vs kept tokens, per seed: " + ", ".join(f"{r['moved_erc_only']:.4f} vs {r['moved_erc_kept']:.4f}"
                                                              for r in seeds) + ".")
    return out


def figure(curves, path, lr):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("entropy", "old-policy entropy"), ("eval_greedy", "held-out greedy"), ("eval_pass@8", "held-out pass@8"),
              ("grad_norm_max", "largest grad norm"), ("erc_low_frac", "ERC clips: entropy fell"),
              ("erc_high_frac", "ERC clips: entropy rose"), ("diag_moved_unsampled_erc_only", "un-sampled mass moved, "
              "ERC-only tokens"), ("diag_moved_unsampled_erc_kept", "un-sampled mass moved, kept tokens")]
    shown = [n for n in curves if "mb8" in n and n.endswith(f"lr{lr}")]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    for ax, (key, title) in zip(axes.flat, panels):
        for i, name in enumerate(shown):
            if key.startswith(("erc_", "diag_")) and "erc1" not in name:  # a control's gate is not ERC's band
                continue
            for j, rows in enumerate(curves[name]):
                points = [(r["step"], r[key]) for r in rows if key in r]
                if points:
                    ax.plot(*zip(*points), color=f"C{i}", alpha=0.7, lw=1, label=name if j == 0 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Countdown-3, 8 mini-batches, lr {lr}: one line per seed (ERC panels: ERC runs only)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "grid", "report"))
    parser.add_argument("--quick", action="store_true", help="grid: the quick subset")
    parser.add_argument("--workers", type=int, default=2, help="grid: runs in parallel, one thread each")
    args = parser.parse_args()
    if args.command == "build":
        build()
    elif args.command == "grid":
        grid(args.quick, args.workers)
    else:
        report(quick=args.quick)


if __name__ == "__main__":
    main()
