"""A tiny Llama-architecture model made locally: random weights, a locally trained tokenizer.

Used by the tests (session fixture in ``tests/conftest.py``) and as the README demo model. No model
hub is needed: the tokenizer is a byte-level BPE trained with ``tokenizers`` on the built-in text
below, the weights are ``LlamaForCausalLM`` initialised from a fixed seed. The same arguments give
byte-identical files.

    python -m vllm_helix.models.tiny OUT_DIR [--num-layers 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_TEXT = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Large language models are served on clusters of graphics processors connected by networks.
Each node holds a contiguous range of layers and passes hidden states to the next node.
The coordinator tokenizes the prompt, routes the request and returns the generated text.
Heterogeneous clusters mix fast and slow machines in several regions with different links.
Placement is a maximum flow problem: nodes, links, a source and a sink with capacities.
The key value cache keeps attention keys and values of earlier tokens for every request.
Once upon a time there was a little robot who liked to count the stars in the night sky.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.
The capital of France is Paris. The capital of Japan is Tokyo. The capital of Italy is Rome.
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.
Hello! How are you today? I am fine, thank you. What would you like to talk about?
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def _train_tokenizer(vocab_size: int):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines() * 4, trainer=trainer)
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
) -> Path:
    """Write a Hugging Face Llama directory (config, safetensors, tokenizer) to ``path``; return it.

    head_dim is ``hidden_size // heads`` (64 by default: a size vLLM's CPU attention supports).
    Weights are float32 so greedy decoding is robust to batch-shape rounding differences.
    ``vocab_size`` is the BPE training target; the built-in text yields ~720 tokens, and the model's
    vocabulary is the tokenizer's actual size so every id it can emit decodes.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
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
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    _write_generation_config(path, tokenizer.eos_token_id)
    return path


def _write_generation_config(path: Path, eos_token_id: int) -> None:
    # Sampling defaults off: vLLM would otherwise take them from generation_config.json.
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": eos_token_id}, indent=2) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_llama(args.out_dir, num_layers=args.num_layers, seed=args.seed))


if __name__ == "__main__":
    main()
