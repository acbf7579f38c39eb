"""Run checkpoints written by the driver and read back newest-intact-first."""
from __future__ import annotations

import logging

import pytest
import torch

from tokenalign.run.checkpoints import CheckpointError, prune_checkpoints, read_newest, write_checkpoint


def write(root, step):
    return write_checkpoint(root, step=step, learner={"learner": {"num_updates": step}, "w": torch.full((3,), float(step))},
                            policy={"state_dict": {}}, progress={"updates": step, "episodes": 10 * step})


def test_the_newest_checkpoint_is_read_back_exactly(tmp_path):
    write(tmp_path, 2)
    write(tmp_path, 4)
    ckpt = read_newest(tmp_path)
    assert ckpt.path.name == "step-00000004" and ckpt.progress == {"updates": 4, "episodes": 40}
    assert torch.equal(ckpt.learner["w"], torch.full((3,), 4.0))
    assert (tmp_path / "latest").read_text() == "step-00000004"
    assert (ckpt.path / "learner.pt").stat().st_mode & 0o077 == 0  # owner-only


@pytest.mark.parametrize("damage", ["truncated learner", "corrupt progress", "latest names a missing step"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_saying_so(tmp_path, caplog, damage):
    write(tmp_path, 2)
    newest = write(tmp_path, 4)
    if damage == "truncated learner":
        data = (newest / "learner.pt").read_bytes()
        (newest / "learner.pt").write_bytes(data[: len(data) // 2])
    elif damage == "corrupt progress":
        (newest / "progress.json").write_text("{not json")
    else:
        (tmp_path / "latest").write_text("step-00000009")
    with caplog.at_level(logging.WARNING, logger="tokenalign.run.checkpoints"):
        ckpt = read_newest(tmp_path)
    expected = "step-00000004" if damage == "latest names a missing step" else "step-00000002"
    assert ckpt.path.name == expected
    assert "newer checkpoints do not load" in caplog.text


def test_no_readable_checkpoint_is_one_error_naming_each_failure(tmp_path):
    only = write(tmp_path, 2)
    (only / "learner.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* loads \(step-00000002/learner.pt: .*\); .*start a new run"):
        read_newest(tmp_path)


def test_pruning_keeps_the_newest_the_latest_and_the_protected_and_a_resume_reads_them(tmp_path):
    for step in range(1, 7):
        write(tmp_path, step)
    (tmp_path / "latest").write_text("step-00000005")  # a crash between a step's write and its pointer
    deleted = prune_checkpoints(tmp_path, keep=2, protect=frozenset({"step-00000001"}))
    assert deleted == ["step-00000002", "step-00000003", "step-00000004"]
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000001", "step-00000005", "step-00000006"]
    assert read_newest(tmp_path).path.name == "step-00000005"
    write(tmp_path, 7)
    assert prune_checkpoints(tmp_path, keep=2) == ["step-00000001", "step-00000005"]
    assert read_newest(tmp_path).progress == {"updates": 7, "episodes": 70}
