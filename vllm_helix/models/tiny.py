"""A tiny Llama-architecture model made locally: a locally trained tokenizer, and random or trained weights.

The README's main job serves the *trained* model (``trained_tiny_llama``): about 30 CPU-seconds of
training on the bundled text ``tiny_corpus.txt`` (written for this project), cached under a key of
everything that goes into it, so its greedy answers are readable sentences of that text. The tests'
greedy-equality checks use the *random* model (``build_tiny_llama``): it never emits end-of-sequence
early, so every comparison covers the full number of tokens. No model hub is needed for either.

The tokenizer is a byte-level BPE whose alphabet is printable ASCII and the newline only, so no token
decodes to a control character or half a UTF-8 sequence, whatever the weights emit. The same arguments
give byte-identical files (training runs single-threaded with deterministic algorithms).

    python -m vllm_helix.models.tiny OUT_DIR [--num-layers 8]       # random weights
    python -m vllm_helix.models.tiny --trained [--cache DIR]        # trained, cached; prints its path
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CORPUS = Path(__file__).with_name("tiny_corpus.txt")
TRAIN_STEPS = 60  # ~30 CPU-seconds; the loss is ~0.05 after 40
TRAINING_RECIPE = 1  # bump when the training code changes: it is part of the cache key

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
_ALPHABET = [chr(c) for c in range(0x20, 0x7F)] + ["\n"]  # printable ASCII and the newline


def corpus_documents(text: str | None = None) -> list[str]:
    """The training documents: prose paragraphs, and user/assistant pairs in the chat template."""
    text = CORPUS.read_text() if text is None else text
    bad = sorted({c for c in text if c not in _ALPHABET})
    if bad:
        raise ValueError(f"{CORPUS}: only printable ASCII is allowed, found {bad!r}")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    documents = []
    for paragraph in (p.strip() for p in body.split("\n\n")):
        if paragraph.startswith("user: "):
            question, answer = paragraph.removeprefix("user: ").split("\nassistant: ")
            documents.append(f"<|user|>\n{question}</s>\n<|assistant|>\n{answer}</s>\n")
        elif paragraph:
            documents.append(" ".join(paragraph.splitlines()) + "</s>")
    return documents


def _train_tokenizer(vocab_size: int, documents: list[str]):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    alphabet = [byte_level.pre_tokenize_str(c)[0][0] for c in _ALPHABET]  # byte-level symbols, e.g. "\n" -> "Ċ"
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL, initial_alphabet=alphabet,
                                  limit_alphabet=len(alphabet), show_progress=False)
    tok.train_from_iterator(documents, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    path: str | Path,
    *,
    num_layers: int = 8,
    hidden_size: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 512,
    vocab_size: int = 2048,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.05,
    seed: int = 0,
    train_steps: int = 0,
) -> Path:
    """Write a Hugging Face Llama directory (config, safetensors, tokenizer) to ``path``; return it.

    head_dim is ``hidden_size // heads`` (64 by default: a size vLLM's CPU attention supports).
    Weights are float32 so greedy decoding is robust to batch-shape rounding differences; they are
    random unless ``train_steps`` > 0. ``vocab_size`` is the BPE training target; the bundled text
    yields ~470 tokens, and the model's vocabulary is the tokenizer's actual size so every id it can
    emit decodes.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    documents = corpus_documents()
    tokenizer = _train_tokenizer(vocab_size, documents)
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # every id the model can emit decodes
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    with _deterministic():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        if train_steps > 0:
            _train(model, [tokenizer(d)["input_ids"] for d in documents], train_steps, seed,
                   tokenizer.eos_token_id)
    with _quiet_progress_bars():
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    _write_generation_config(path, tokenizer.eos_token_id)
    return path


def trained_tiny_llama(cache_dir: str | Path | None = None, *, steps: int = TRAIN_STEPS, seed: int = 0,
                       **model_args: int) -> Path:
    """The tiny model trained on the bundled text, built once and cached (see ``cached_tiny_llama_path``)."""
    target = cached_tiny_llama_path(cache_dir, steps=steps, seed=seed, **model_args)
    if (target / "config.json").exists():
        return target
    cache = target.parent
    model = {**model_args, "seed": seed, "train_steps": steps}
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        build_tiny_llama(scratch, **model)
        scratch.rename(target)  # atomic: a concurrent build of the same key leaves one complete copy
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def cached_tiny_llama_path(cache_dir: str | Path | None = None, *, steps: int = TRAIN_STEPS, seed: int = 0,
                           **model_args: int) -> Path:
    """``<cache_dir>/tiny-llama-<key>``, the key a hash of everything training reads (text, recipe version,
    steps, seed, model arguments, torch version). ``cache_dir`` defaults to ``$VLLM_HELIX_CACHE`` or
    ``~/.cache/vllm-helix``."""
    import torch

    cache = Path(cache_dir or os.environ.get("VLLM_HELIX_CACHE") or Path.home() / ".cache" / "vllm-helix")
    defaults = {k: v.default for k, v in inspect.signature(build_tiny_llama).parameters.items() if v.default != v.empty}
    model = {**defaults, **model_args, "seed": seed, "train_steps": steps}
    inputs = {"corpus": CORPUS.read_text(), "recipe": TRAINING_RECIPE, "model": model, "torch": torch.__version__}
    return cache / f"tiny-llama-{hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]}"


def _train(model, documents: list[list[int]], steps: int, seed: int, pad_id: int) -> None:
    """Next-token training on every document (from its start, as prompts are seen) plus windows of
    the concatenated text at random offsets; AdamW, warm-up then cosine decay."""
    import torch

    length = max(map(len, documents))
    stream = [t for d in documents for t in d]
    whole = torch.tensor([d + [pad_id] * (length - len(d)) for d in documents])
    whole_labels = torch.tensor([d + [-100] * (length - len(d)) for d in documents])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, max(1, len(stream) - length), (len(documents),), generator=generator)
        windows = torch.tensor([stream[s:s + length] for s in starts.tolist()])
        inputs, labels = torch.cat([whole, windows]), torch.cat([whole_labels, windows])
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """One thread and deterministic kernels: the same seed gives the same weights, bit for bit."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _write_generation_config(path: Path, eos_token_id: int) -> None:
    # Sampling defaults off: vLLM would otherwise take them from generation_config.json.
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": eos_token_id}, indent=2) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", help="where to write the random-weight model")
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained", action="store_true", help="build (or reuse) the trained model in the cache")
    parser.add_argument("--cache", help="cache folder for --trained (default $VLLM_HELIX_CACHE or ~/.cache/vllm-helix)")
    args = parser.parse_args(argv)
    if args.trained:
        print(trained_tiny_llama(args.cache, seed=args.seed, num_layers=args.num_layers))
    elif args.out_dir:
        print(build_tiny_llama(args.out_dir, num_layers=args.num_layers, seed=args.seed))
    else:
        parser.error("give OUT_DIR (random weights) or --trained")


if __name__ == "__main__":
    main()
