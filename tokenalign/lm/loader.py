"""Load the frozen causal LM that tokenalign steers at decoding time.

tokenalign never fine-tunes the LLM: an accept/reject agent acts on its
proposals. So every model comes back in eval mode with gradients switched off.
No model hub is reachable where tokenalign runs, hence two sources only:

* ``"builtin:tiny"`` -- the model bundled in ``tokenalign/assets`` (see
  ``scripts/train_tiny_lm.py`` for how it was made); ``"builtin:gemma3-270m"`` -- Gemma 3 270M from
  the optional ``gemma`` extra (``tokenalign/lm/gguf.py``);
* a path ending in ``.gguf`` -- a local GGUF file, converted once into a cached HF copy;
* any other string -- a local Hugging Face directory, loaded offline.

Tokenizers are returned with a pad token and left padding, because batched
generation appends tokens on the right and needs prompts flush against them.

Weights load straight onto their device (`device_map`, through accelerate): a 7B model never passes
through host RAM, which several actors per node could not afford. `dtype="auto"` is bf16 on a GPU that
supports it (fp16 on one that does not) and fp32 on a CPU, where half-precision matmuls are slow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tokenalign.lm.gguf import builtin_gemma3_270m, hf_copy_of_gguf

BUILTIN_PREFIX = "builtin:"
_ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUILTIN_MODELS: dict[str, Callable[[], Path]] = {
    "tiny": lambda: _ASSETS / "tiny_lm",
    "gemma3-270m": builtin_gemma3_270m,  # the optional `gemma` extra (tokenalign/lm/gguf.py)
}


def resolve_lm_path(path: str) -> Path:
    """Map ``builtin:<name>``, a local directory or a local ``.gguf`` file to a checked model directory."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_PREFIX + k for k in sorted(BUILTIN_MODELS))
            raise ValueError(f"unknown built-in model {path!r}; known built-in models: {known}")
        model_dir = BUILTIN_MODELS[name]()
        hint = "the package install is incomplete; reinstall tokenalign or rerun scripts/train_tiny_lm.py"
    elif path.endswith(".gguf"):
        model_dir = hf_copy_of_gguf(Path(path).expanduser())
        hint = "delete the cached copy to convert the GGUF file again"
    else:
        model_dir = Path(path).expanduser()
        hint = (
            "pass a local directory saved with save_pretrained() (config.json, weights, tokenizer files), a .gguf "
            f"file or one of: {', '.join(BUILTIN_PREFIX + k for k in sorted(BUILTIN_MODELS))}"
        )
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {str(model_dir)!r} (from {path!r}) does not exist: {hint}")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(model_dir)!r} (from {path!r}) has no config.json, so it is not a Hugging Face model directory: {hint}"
        )
    return model_dir


LMDtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The weights dtype for `device`: `auto` is bf16 on a CUDA device that supports it, fp16 on one that does
    not, fp32 on a CPU (the bundled weights are stored in fp16, whose matmuls are slow on CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def pick_device(device: str) -> str:
    """`auto` is CUDA when torch sees a GPU, else the CPU; any other name is returned as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_lm(
    path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    spread: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer onto `device`, without any network access.

    `spread` places the layers over every visible GPU (accelerate's `device_map="auto"`): a policy LM
    larger than one GPU, on an actor given several. Inputs go to the first layer's device; the engine
    brings outputs back to it.
    """
    model_dir = resolve_lm_path(path)
    dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer in {str(model_dir)!r} has neither a pad nor an eos token; add one and re-save")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype,
                                                 device_map="auto" if spread else torch.device(device))
    model.eval()
    model.requires_grad_(False)
    if model.generation_config.pad_token_id is None:
        # Otherwise generate() warns on every call and guesses the pad id itself.
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
