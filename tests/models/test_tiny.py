"""The bundled tiny model: a tokenizer that cannot emit control characters, deterministic training, a cache."""

import unicodedata

import pytest
import torch

from vllm_helix.models.tiny import build_tiny_llama, corpus_documents, trained_tiny_llama

STEPS = 2  # enough to change every weight; the full recipe runs in the main-job test


def _control(text: str) -> set[str]:
    return {c for c in text if unicodedata.category(c)[0] == "C" and c != "\n"}


def test_no_token_decodes_to_a_control_character(tiny_llama_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    ids = list(range(len(tokenizer)))
    assert len(ids) > 400  # tests/node draw prompt ids below 400
    assert all(not _control(tokenizer.decode([i])) for i in ids)
    for seed in range(5):  # random weights emit any ids in any order: still printable
        sample = torch.randint(0, len(tokenizer), (64,), generator=torch.Generator().manual_seed(seed)).tolist()
        text = tokenizer.decode(sample, skip_special_tokens=True)
        assert not _control(text) and "\ufffd" not in text


def test_training_is_deterministic_for_a_seed(tmp_path):
    def weights(name: str, **kwargs) -> bytes:
        return (build_tiny_llama(tmp_path / name, **kwargs) / "model.safetensors").read_bytes()

    trained = weights("a", seed=0, train_steps=STEPS)
    assert trained == weights("b", seed=0, train_steps=STEPS)
    assert trained != weights("c", seed=1, train_steps=STEPS)
    assert trained != weights("random", seed=0)


def test_building_twice_reuses_the_cache(tmp_path):
    first = trained_tiny_llama(tmp_path, steps=STEPS)
    stamp = (first / "model.safetensors").stat()
    again = trained_tiny_llama(tmp_path, steps=STEPS)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp.st_mtime_ns
    other = trained_tiny_llama(tmp_path, steps=STEPS, seed=1)  # other inputs: another entry
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_corpus_has_prose_and_chat_and_refuses_non_ascii():
    documents = corpus_documents()
    assert any(d.startswith("<|user|>\nHello! How are you today?</s>\n<|assistant|>\n") for d in documents)
    assert sum(not d.startswith("<|user|>") for d in documents) >= 3
    with pytest.raises(ValueError, match="printable ASCII"):
        corpus_documents("caf\u00e9\n")
