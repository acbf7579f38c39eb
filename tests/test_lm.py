"""Tests for the bundled tiny LM, the demo prompts and ``tokenalign.lm.loader.load_lm``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tokenalign.lm.loader import BUILTIN_MODELS, load_lm

EOS = "<|endoftext|>"
TINY_DIR = BUILTIN_MODELS["tiny"]()
PROMPTS_DIR = TINY_DIR.parent / "prompts"


def read_prompts(name: str) -> list[str]:
    lines = (PROMPTS_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines]


@pytest.fixture(scope="module")
def tiny() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_lm("builtin:tiny")


def test_bundled_files_are_small_fp16() -> None:
    total = sum(f.stat().st_size for f in TINY_DIR.iterdir() if f.is_file())
    assert total <= 25 * 2**20
    with safe_open(str(TINY_DIR / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (TINY_DIR / name).is_file(), name


def test_builtin_is_frozen_with_eos_pad(tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tok = tiny
    assert tok.is_fast
    assert len(tok) == model.config.vocab_size == 8192
    assert tok.eos_token == tok.pad_token == EOS
    assert tok.eos_token_id == tok.pad_token_id == model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.padding_side == "left"
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 3_000_000 < model.num_parameters() < 10_000_000


def test_builtin_generates_text(tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tok = tiny
    batch = tok(["The meaning of life is", "A penny saved"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    new = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.shape[1] > batch["input_ids"].shape[1]
    assert any(text.strip() for text in new)


def test_heldout_prompt_perplexity_is_reasonable(tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tok = tiny
    nll, n_tokens = 0.0, 0
    for prompt in read_prompts("test.jsonl")[:30]:
        # Training fortunes always follow an EOS, so score the opening in that context.
        ids = torch.tensor([[tok.eos_token_id, *tok(prompt)["input_ids"]]])
        with torch.no_grad():
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        n_tokens += ids.shape[1] - 1
    ppl = math.exp(nll / n_tokens)
    # Openings are harder than average text, but a trained model must beat uniform (8192) by far.
    assert math.isfinite(ppl) and ppl < 1000, ppl


def test_prompt_files() -> None:
    train, test = read_prompts("train.jsonl"), read_prompts("test.jsonl")
    assert len(train) >= 300 and len(test) >= 100
    for prompt in train + test:
        assert prompt and prompt == " ".join(prompt.split()) and not prompt.endswith("%")
        assert 3 <= len(prompt.split()) <= 8
    assert len(set(train)) == len(train) and len(set(test)) == len(test)


def test_local_dir_loads_with_pad_fallback(tmp_path: Path) -> None:
    # A tokenizer with no pad token exercises the eos fallback.
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(TINY_DIR / "tokenizer.json")), eos_token=EOS)
    assert tok.pad_token is None
    tok.save_pretrained(tmp_path)
    config = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)

    model, loaded = load_lm(str(tmp_path), dtype=torch.bfloat16)
    assert loaded.pad_token == EOS and loaded.padding_side == "left"
    assert model.generation_config.pad_token_id == loaded.eos_token_id
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_missing_path_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_lm(str(missing))
    assert str(missing) in str(err.value) and "builtin:tiny" in str(err.value)


def test_dir_without_config_is_clear(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no config.json") as err:
        load_lm(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_unknown_builtin_lists_known() -> None:
    with pytest.raises(ValueError, match="builtin:tiny") as err:
        load_lm("builtin:huge")
    assert "builtin:huge" in str(err.value)
