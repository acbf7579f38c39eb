"""Session-wide fixtures: one bundled LM, small random HF models saved and loaded back for real."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every model in the tests is tiny: its matmuls are too small to split, and on a shared 2-core machine a
# second OpenMP thread spins against the Ray actors and Redis servers (measured 2-7x slower).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_lm():
    """The bundled tiny LM and its tokenizer, loaded once per session (fp32)."""
    from tokenalign.lm.loader import load_lm

    return load_lm("builtin:tiny")


@pytest.fixture(scope="session")
def random_llama_dir(tmp_path_factory, tiny_lm):
    """A randomly initialised tiny Llama (rotary positions, GQA) with the bundled tokenizer, saved to disk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("random_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_gemma3_dir(tmp_path_factory, tiny_lm):
    """A randomly initialised tiny Gemma 3 (sliding-window and full layers, scaled embeddings, soft-capping off),
    with a window of 4 so that every prompt reaches past it; the bundled tokenizer, saved to disk."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention"] * 3 + ["full_attention"], max_position_embeddings=256,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("random_gemma3")
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session, with 2 fake GPUs so GPU placement can be tested on a CPU box."""
    import ray

    ray.init(num_cpus=6, num_gpus=2, include_dashboard=False, namespace="tokenalign-tests", log_to_driver=False)
    yield ray
    ray.shutdown()
