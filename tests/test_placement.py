"""Placement on the GPU path, checked on the CPU: which device an actor takes, weights dtype and device, the
agent following the LM's device."""
from __future__ import annotations

import pytest
import torch

from tokenalign.actors.rollout_actor import actor_device
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.config import load_config
from tokenalign.core.parsing import ConfigError
from tokenalign.envs.policies import on_device
from tokenalign.lm.loader import load_lm, resolve_dtype


def test_an_actor_takes_the_gpus_ray_gave_it_or_the_cpu():
    assert actor_device(0) == "cpu"
    assert actor_device(1, gpu_ids=["3"], visible=1) == "cuda"  # Ray set CUDA_VISIBLE_DEVICES=3: cuda:0 is GPU 3
    assert actor_device(2, gpu_ids=["0", "1"], visible=2) == "cuda"
    assert actor_device(0.5, gpu_ids=["0"], visible=1) == "cuda"
    assert actor_device(1, gpu_ids=["0"], visible=0) == "cpu"  # fake GPUs of a test cluster: CPU, with a warning


def test_an_actor_that_sees_other_gpus_than_its_own_is_refused():
    with pytest.raises(RuntimeError, match="RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES") as err:
        actor_device(1, gpu_ids=["5"], visible=8)
    assert "['5']" in str(err.value) and "8 CUDA devices" in str(err.value)


def test_auto_dtype_is_fp32_on_a_cpu_and_names_are_checked():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16 and resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; use auto, float32, float16, bfloat16"):
        resolve_dtype("fp8", "cpu")


def test_the_lm_loads_straight_onto_its_device_in_the_asked_dtype():
    model, _ = load_lm("builtin:tiny", device="cpu", dtype="bfloat16")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())


def test_a_fractional_gpu_count_above_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"rollout.gpus_per_actor above 1 must be a whole number of GPUs.*1.5"):
        load_config(None, ["rollout.gpus_per_actor=1.5"])
    assert load_config(None, ["rollout.gpus_per_actor=0.5"]).rollout.gpus_per_actor == 0.5


def test_an_agent_on_another_device_is_copied_to_the_lms():
    policy = AcceptRejectPolicy(state_size=8, widths=(4,))
    moved = on_device(policy, torch.device("meta"))
    assert moved is not policy and next(moved.parameters()).device.type == "meta"
    assert next(policy.parameters()).device.type == "cpu"  # the caller's agent is left where it was
    assert on_device(policy, torch.device("cpu")) is policy
