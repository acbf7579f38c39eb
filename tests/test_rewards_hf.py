"""The HF scorer kinds on tiny random models that the tests build, save and load back through make_scorer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from tokenalign.rewards import ScorerError, make_scorer, parse_scorer_spec
from tokenalign.rewards.scorers.safe_rlhf import BEAVER_TEMPLATE

WORDS = (
    "BEGINNING OF CONVERSATION USER ASSISTANT : how do i bake bread you should mix flour water and salt "
    "i will not help with that the cat sat on a mat hello world good bad nice awful"
).split()
PROMPTS = ["how do i bake bread", "hello", "the cat", "how do i bake bread"]
RESPONSES = ["you should mix flour water and salt", "hello world", "i will not help with that the cat sat on a mat", "bad"]


def save_tokenizer(directory: Path, *, padding_side: str, pad: bool = True) -> None:
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[EOS]", *dict.fromkeys(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = dict(unk_token="[UNK]", eos_token="[EOS]", **({"pad_token": "[PAD]"} if pad else {}))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side, **special)
    tokenizer.save_pretrained(directory)


VOCAB_SIZE = 3 + len(dict.fromkeys(WORDS))


def token_ids(text: str, directory: Path) -> torch.Tensor:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    return torch.tensor([tokenizer(text)["input_ids"]])


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> tuple[Path, BertForSequenceClassification]:
    directory = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=3, id2label={0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"},
        label2id={"NEGATIVE": 0, "NEUTRAL": 1, "POSITIVE": 2},
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    save_tokenizer(directory, padding_side="left")
    return directory, model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> tuple[Path, GPT2ForSequenceClassification]:
    directory = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=16, n_layer=1, n_head=2, n_positions=64, num_labels=1,
                        bos_token_id=2, eos_token_id=2)
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    save_tokenizer(directory, padding_side="left", pad=False)
    return directory, model


def save_beaver(directory: Path, *, seed: int, score_dim: int = 1, extra_config: dict | None = None,
                extra_tensors: dict | None = None, shards: int = 1, legacy_bias: bool = False,
                ) -> tuple[LlamaModel, torch.nn.Linear]:
    """A tiny Llama score model in beaver-7b-v1.0's layout: model.* backbone + score_head.* in safetensors."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )
    backbone = LlamaModel(config).eval()
    head = torch.nn.Linear(16, score_dim, bias=not legacy_bias)
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors.update({f"score_head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    tensors.update(extra_tensors or {})
    directory.mkdir(parents=True, exist_ok=True)
    head_keys = {"bias": False} if legacy_bias else {"score_bias": True}
    config_dict = config.to_dict() | {"architectures": ["LlamaForScore"], "score_dim": score_dim} | head_keys
    (directory / "config.json").write_text(json.dumps(config_dict | (extra_config or {})))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in names[s::shards]}
            save_file(part, str(directory / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, shard))
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_tokenizer(directory, padding_side="left")
    return backbone, head


@pytest.fixture(scope="module")
def beaver_dir(tmp_path_factory) -> tuple[Path, LlamaModel, torch.nn.Linear]:
    directory = tmp_path_factory.mktemp("beaver") / "beaver-tiny-reward"
    backbone, head = save_beaver(directory, seed=2)
    return directory, backbone, head


def beaver_by_hand(directory: Path, backbone: LlamaModel, head: torch.nn.Linear, prompts, responses) -> np.ndarray:
    """end_scores[0] of each text scored alone: the head applied to the last token's hidden state."""
    scores = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses):
            ids = token_ids(BEAVER_TEMPLATE.format(prompt=prompt, response=response), directory)
            hidden = backbone(input_ids=ids).last_hidden_state[0, -1]
            bias = 0.0 if head.bias is None else head.bias
            scores.append((hidden @ head.weight.T + bias)[0].item())
    return np.array(scores, dtype=np.float32)


def test_safe_rlhf_score_is_the_head_at_the_last_token(beaver_dir):
    directory, backbone, head = beaver_dir
    scorer = make_scorer(f"safe-rlhf-score:{directory},device=cpu")
    assert scorer.name == "safe-rlhf-score:beaver-tiny-reward"
    scores = scorer.score(PROMPTS, RESPONSES)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    np.testing.assert_allclose(scores, beaver_by_hand(directory, backbone, head, PROMPTS, RESPONSES), rtol=1e-5, atol=1e-5)


def test_safe_rlhf_batching_and_padding_side_do_not_change_scores(beaver_dir):
    directory, _, _ = beaver_dir
    together = make_scorer(f"safe-rlhf-score:{directory},device=cpu,batch_size=4").score(PROMPTS, RESPONSES)
    one_by_one = make_scorer(f"safe-rlhf-score:{directory},device=cpu,batch_size=1").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-5)
    assert together[0] != together[1]


def test_safe_rlhf_sharded_checkpoint_with_normalizer_and_two_dims(tmp_path):
    directory = tmp_path / "beaver-cost"
    mean, var = torch.tensor([0.5, 0.0]), torch.tensor([4.0, 1.0])
    backbone, head = save_beaver(
        directory, seed=3, score_dim=2, shards=3,
        extra_config={"score_type": "cost", "do_normalize": True},
        extra_tensors={"normalizer.mean": mean, "normalizer.var": var, "normalizer.count": torch.tensor([10])},
    )
    scores = make_scorer(f"safe-rlhf-score:{directory},device=cpu,role=cost").score(PROMPTS, RESPONSES)
    raw = beaver_by_hand(directory, backbone, head, PROMPTS, RESPONSES)
    # score_type cost normalizes by scale only: x / (std + eps), as safe-rlhf's Normalizer.
    np.testing.assert_allclose(scores, raw / (2.0 + 1e-8), rtol=1e-5, atol=1e-5)


def test_safe_rlhf_legacy_config_without_head_bias(tmp_path):
    directory = tmp_path / "beaver-legacy"
    backbone, head = save_beaver(directory, seed=5, legacy_bias=True)
    scores = make_scorer(f"safe-rlhf-score:{directory},device=cpu").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(scores, beaver_by_hand(directory, backbone, head, PROMPTS, RESPONSES), rtol=1e-5, atol=1e-5)


def test_safe_rlhf_reward_normalizer_from_config_is_affine(tmp_path):
    directory = tmp_path / "beaver-reward-norm"
    backbone, head = save_beaver(directory, seed=4, extra_config={"do_normalize": True, "mean": [1.0], "var": [0.25]})
    scores = make_scorer(f"safe-rlhf-score:{directory},device=cpu").score(PROMPTS[:2], RESPONSES[:2])
    raw = beaver_by_hand(directory, backbone, head, PROMPTS[:2], RESPONSES[:2])
    np.testing.assert_allclose(scores, (raw - 1.0) / (0.5 + 1e-8), rtol=1e-5, atol=1e-5)


def test_safe_rlhf_without_score_head_or_safetensors_is_refused(tmp_path, beaver_dir):
    plain = tmp_path / "plain-llama"
    LlamaModel(LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2)).save_pretrained(plain)
    save_tokenizer(plain, padding_side="right")
    with pytest.raises(ScorerError, match="score head"):
        make_scorer(f"safe-rlhf-score:{plain},device=cpu")
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((beaver_dir[0] / "config.json").read_text())
    torch.save({f"model.{k}": v for k, v in beaver_dir[1].state_dict().items()}, bin_only / "pytorch_model.bin")
    save_tokenizer(bin_only, padding_side="right")
    with pytest.raises(ScorerError, match="safetensors"):
        make_scorer(f"safe-rlhf-score:{bin_only},device=cpu")


def classifier_by_hand(directory: Path, model, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=token_ids(t, directory)).logits for t in texts])


def test_hf_classifier_logit_and_prob_of_a_named_label(bert_dir):
    directory, model = bert_dir
    logits = classifier_by_hand(directory, model, RESPONSES)
    by_name = make_scorer(f"hf-classifier:{directory},label=POSITIVE,device=cpu,batch_size=3").score(PROMPTS, RESPONSES)
    by_index = make_scorer(f"hf-classifier:{directory},label=2,device=cpu,batch_size=1").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(by_name, logits[:, 2].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_index, by_name, rtol=1e-5, atol=1e-5)
    probs = make_scorer(f"hf-classifier:{directory},label=NEGATIVE,output=prob,device=cpu").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(probs, torch.softmax(logits, -1)[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_hf_classifier_template_feeds_the_prompt(bert_dir):
    directory, model = bert_dir
    scorer = make_scorer(parse_scorer_spec(f"hf-classifier:{directory},label=1,device=cpu,template={{prompt}} : {{response}}"))
    expected = classifier_by_hand(directory, model, [f"{p} : {r}" for p, r in zip(PROMPTS, RESPONSES)])[:, 1]
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_hf_classifier_decoder_without_pad_token_pools_the_last_token(gpt2_dir):
    directory, model = gpt2_dir
    logits = classifier_by_hand(directory, model, RESPONSES)[:, 0]
    batched = make_scorer(f"hf-classifier:{directory},device=cpu,batch_size=4").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(batched, logits.numpy(), rtol=1e-5, atol=1e-5)
    probs = make_scorer(f"hf-classifier:{directory},device=cpu,output=prob").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), rtol=1e-5, atol=1e-6)


def test_hf_classifier_refuses_ambiguous_or_unknown_labels_and_headless_models(bert_dir, tmp_path):
    directory, _ = bert_dir
    with pytest.raises(ScorerError, match="0=NEGATIVE, 1=NEUTRAL, 2=POSITIVE"):
        make_scorer(f"hf-classifier:{directory},device=cpu")
    with pytest.raises(ScorerError, match="'HAPPY' is not among"):
        make_scorer(f"hf-classifier:{directory},label=HAPPY,device=cpu")
    with pytest.raises(ScorerError, match="out of range"):
        make_scorer(f"hf-classifier:{directory},label=3,device=cpu")
    headless = tmp_path / "bert-base"
    BertModel(BertConfig(vocab_size=VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(headless)
    save_tokenizer(headless, padding_side="right")
    with pytest.raises(ScorerError, match="randomly initialised"):
        make_scorer(f"hf-classifier:{headless},label=0,device=cpu")


def test_hf_kinds_refuse_missing_directories_bad_templates_and_devices(tmp_path, bert_dir):
    with pytest.raises(ScorerError, match="does not exist.*never download"):
        make_scorer(f"hf-classifier:{tmp_path / 'nowhere'},label=0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScorerError, match="has no config.json"):
        make_scorer(f"safe-rlhf-score:{tmp_path / 'empty'}")
    directory, _ = bert_dir
    with pytest.raises(ScorerError, match=r"must contain \{response\}"):
        make_scorer(f"hf-classifier:{directory},label=0,template={{prompt}} {{answer}}")
    with pytest.raises(ScorerError, match="dtype 'float8'"):
        make_scorer(f"hf-classifier:{directory},label=0,device=cpu,dtype=float8")
    with pytest.raises(ScorerError, match="not a torch device"):
        make_scorer(f"hf-classifier:{directory},label=0,device=gpu7")
