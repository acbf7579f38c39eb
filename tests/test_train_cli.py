"""`tokenalign train` as users run it: a subprocess killed with SIGKILL and resumed, and `ray job submit`."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SHORT = ["learner.name=sac", "learner.params={}", "run.eval_prompts=4", "rollout.episodes_per_batch=4", "engine.max_new_tokens=8",
         "buffer.min_size_to_sample=64", "learner.params.batch_size=32", "learner.params.update_time=1",
         "learner.params.learning_starts_factor=1"]


def env() -> dict[str, str]:
    # A user's fresh shell: no Ray address, and not this test process's wandb service (trainer tests in the
    # same session start one; a child sharing it would see the killed driver's run id still in use).
    return {k: v for k, v in dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1").items()
            if k not in ("RAY_ADDRESS", "WANDB_SERVICE")}


def wait_for(predicate, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_resume_after_sigkill_of_the_driver(tmp_path):
    runs = tmp_path / "runs"
    cmd = [str(BIN / "tokenalign"), "train", *SHORT, f"run.runs_dir={runs}", "run.total_episodes=400",
           "run.checkpoint_every=2"]
    driver = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        wait_for(lambda: any(runs.glob("*/checkpoints/latest")), timeout_s=240, what="a first checkpoint")
        run_dir = next(runs.iterdir())
        wait_for(lambda: len((run_dir / "checkpoints" / "latest").read_text()) > 0, timeout_s=30, what="latest")
        ports = redis_ports(run_dir)
        time.sleep(2)
    finally:
        driver.kill()  # the driver alone, as the OOM killer would: what it started must not outlive it
        driver.wait()
    # Ray's processes (in the driver's group: the watchdog ends it) and the Redis servers (their own sessions,
    # dying with their starter) are all gone.
    wait_for(lambda: not session_processes(driver.pid) and not any(_listening(p) for p in ports), timeout_s=30,
             what=f"the run's processes to exit (left: {session_processes(driver.pid)})")
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    saved = json.loads((ckpt / "progress.json").read_text())
    assert saved["updates"] >= 2
    assert not (run_dir / "summary.json").exists()

    # The resumed run keeps its counters and finishes the remaining episodes only.
    training = resume(run_dir, total_episodes=(400, saved["episodes"] + 16))
    assert saved["episodes"] + 16 <= training["episodes"] <= saved["episodes"] + 16 + 8
    assert training["updates"] >= saved["updates"]
    assert (run_dir / "summary.json").is_file()
    # Nothing counted twice: the buffer's counts are what it holds, the metrics run forwards.
    buffer = training["buffer"]
    for shard in range(2):
        assert (buffer[f"shard{shard}/size"]
                == buffer[f"shard{shard}/inserted"] - buffer[f"shard{shard}/evicted"]), buffer
    episodes = [json.loads(line)["episodes"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert episodes == sorted(episodes)


def resume(run_dir: Path, *, total_episodes: tuple[int, int]) -> dict:
    """`tokenalign train --resume` of `run_dir` with its episode budget moved from one total to another;
    the resumed run's training.json."""
    old, new = total_episodes
    config = (run_dir / "config.yaml").read_text().replace(f"total_episodes: {old}", f"total_episodes: {new}")
    (run_dir / "config.yaml").write_text(config)
    resumed = subprocess.run([str(BIN / "tokenalign"), "train", "--resume", str(run_dir)], env=env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return json.loads((run_dir / "training.json").read_text())


def redis_ports(run_dir: Path) -> list[int]:
    return [int(line.split()[1]) for conf in (run_dir / "buffer").glob("*/redis.conf")
            for line in conf.read_text().splitlines() if line.startswith("port ")]


def session_processes(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    found.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid`: the head and all it started (Ray renames its processes,
    so names and command lines cannot find them; `ray stop` would also stop the test session's cluster)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_ray_job_submit_against_a_local_head(tmp_path):
    ray_bin = str(BIN / "ray")
    dash = _free_port()
    # Token authentication, as a real cluster should run: the head and the submitting client share the token.
    job_env = dict(env(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="tajob", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=2", "--include-dashboard=true",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={_free_port()}",
         f"--ray-client-server-port={_free_port()}", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=job_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        workdir = tmp_path / "job"
        workdir.mkdir()
        shutil.copy(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", workdir / "demo.yaml")
        submit = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(workdir), "--",
                  str(BIN / "tokenalign"), "train", "--config", "demo.yaml", *SHORT, "run.total_episodes=16",
                  f"run.runs_dir={tmp_path / 'runs'}", "run.max_minutes=null"]
        for _ in range(60):  # the head's dashboard and job agent come up a little after it starts
            job = subprocess.run(submit, env=job_env, capture_output=True, text=True, timeout=600)
            if not any(s in job.stderr + job.stdout for s in ("No available agent", "Failed to connect", "Connection refused")):
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "succeeded" in job.stdout.lower()
        assert any((tmp_path / "runs").glob("*/summary.json"))
    finally:
        _kill_session(head.pid)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("argv, message", [
    (["train", "rollout.num_actor=3"], "unknown key 'rollout.num_actor'"),
    (["train", "--config", "does-not-exist.yaml"], "does not exist"),
    (["train", "--resume", "no-such-run"], "not a tokenalign run directory"),
    (["train", "learner.name=sac", "learner.params.bogus=1"], "unknown key 'learner.params.bogus'"),
])
def test_bad_input_is_one_clear_error(tmp_path, argv, message):
    out = subprocess.run([str(BIN / "tokenalign"), *argv, f"run.runs_dir={tmp_path}"] if "--resume" not in argv
                         else [str(BIN / "tokenalign"), *argv], env=env(), capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def _scorer_module(tmp_path: Path) -> None:
    (tmp_path / "my_scores.py").write_text("def as_text(prompts, responses):\n    return ['1.5'] * len(responses)\n")


def _broken_model(tmp_path: Path) -> str:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "gpt2", ')
    return str(tmp_path / "broken")


def _non_utf8_config(tmp_path: Path) -> str:
    (tmp_path / "latin1.yaml").write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    return str(tmp_path / "latin1.yaml")


BEFORE_A_RUN = {
    "non-UTF-8 config": (lambda t: ["--config", _non_utf8_config(t)], "cannot read it as UTF-8 text"),
    "too many new tokens": (lambda t: ["engine.max_new_tokens=300"],
                            "engine.max_new_tokens=300 leaves no room for a prompt in the model's 256 positions"),
    "broken model config": (lambda t: [f"lm.path={_broken_model(t)}"], "lm.path: "),
    "missing scorer module": (lambda t: ['reward.scorers=["python:no_such_module:f"]'],
                              "python scorer cannot import module 'no_such_module'"),
    "missing scorer function": (lambda t: ['reward.scorers=["python:math:no_such_fn"]'],
                                "module 'math' has no attribute 'no_such_fn'"),
    "scorer that raises": (lambda t: ['reward.scorers=["python:math:fsum"]'], "scorer 'python:math:fsum' raised TypeError"),
    "scorer returning text": (lambda t: _scorer_module(t) or ['reward.scorers=["python:my_scores:as_text"]'],
                              "scorer 'python:my_scores:as_text'"),
    "unknown scorer kind": (lambda t: ['reward.scorers=["nokind"]'], "unknown scorer kind 'nokind'"),
    "scorer option typo": (lambda t: ['reward.scorers=["vader,multipler=2"]'], "scorer kind 'vader' has no option 'multipler'"),
    "unknown role": (lambda t: ['reward.scorers=["vader,role=penalty"]'], "scorer role 'penalty' is unknown"),
    "memory buffer with actors": (lambda t: ["buffer.backend=memory"], "buffer.backend=memory keeps the buffer inside one process"),
    "closed redis port": (lambda t: [f'buffer.redis_urls=["redis://127.0.0.1:{_free_port()}"]', "buffer.num_shards=1"],
                          "buffer.redis_urls[0] (redis://127.0.0.1:"),
    "zero checkpoint interval": (lambda t: ["run.checkpoint_every=0"], "run.checkpoint_every must be ≥ 1"),
    "no actors": (lambda t: ["rollout.num_actors=0"], "rollout.num_actors must be ≥ 1"),
    "negative episodes": (lambda t: ["run.total_episodes=-5"], "run.total_episodes must be ≥ 1"),
    "empty episode batches": (lambda t: ["rollout.episodes_per_batch=0"], "rollout.episodes_per_batch must be ≥ 1"),
    "negative learner GPUs": (lambda t: ["learner.num_gpus=-1"], "learner.num_gpus must be ≥ 0"),
    # settings that are each valid but together cannot make progress (tokenalign/run/feasibility.py)
    "buffer smaller than an episode": (lambda t: ["buffer.capacity=10"],
                                       "buffer.capacity=10 over buffer.num_shards=2 holds 5 transitions a shard, but "
                                       "one episode can write 960 (engine.max_new_tokens=24 × engine.sampling.top_k=40)"
                                       ": raise buffer.capacity to at least 1920"),
    "threshold above capacity": (lambda t: ["buffer.min_size_to_sample=300000"],
                                 "buffer.min_size_to_sample waits for 300000 transitions before the first update, but "
                                 "buffer.capacity=200000 never holds that many: raise buffer.capacity to at least 300000"),
    "learning starts above capacity": (lambda t: ["learner.name=sac", "buffer.capacity=5000"],
                                       "learner.params.learning_starts_factor × learner.params.batch_size waits for "
                                       "65537 transitions"),
    "batch above capacity": (lambda t: ["buffer.capacity=2000", "learner.params.learning_starts=0",
                                        "buffer.min_size_to_sample=1", "learner.params.future_target=monte_carlo",
                                        "learner.params.batch_size=2048"],
                             "learner.params.batch_size waits for 2048 transitions before the first update"),
    "whole episodes above capacity": (lambda t: ["buffer.capacity=2000", "learner.params.learning_starts=0",
                                                 "buffer.min_size_to_sample=1"],
                                      "learner.params.episodes_per_batch=4 whole episodes per update, but "
                                      "buffer.capacity=2000 over buffer.num_shards=2 is sure to hold only 2 of up to "
                                      "960 transitions: raise buffer.capacity to at least 3840"),
    "rate limiter band": (lambda t: ["buffer.samples_per_insert=1"],
                          "buffer.error_buffer=None allows samples to drift 205 transitions from "
                          "buffer.samples_per_insert=1 × inserts, less than one rollout batch's share (1 × 7680) plus "
                          "one learner batch (3840): set buffer.error_buffer to at least 5760"),
    "eval prompts beyond the test set": (lambda t: ["run.eval_prompts=500"],
                                         "run.eval_prompts=500 but data.test holds 200 prompts: set run.eval_prompts "
                                         "to at most 200"),
    "missing test set": (lambda t: [f"data.test=[{t / 'nowhere.jsonl'}]"], "data.test: "),
    "more GPUs than the cluster": (lambda t: ["rollout.gpus_per_actor=4", "rollout.reward_service_gpus=1"],
                                   "the run asks for 9 GPUs (rollout.num_actors=2 × rollout.gpus_per_actor=4 + "
                                   "learner.num_gpus=0 + rollout.reward_service_gpus=1)"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_A_RUN))
def test_bad_input_is_one_line_before_any_run_directory(tmp_path, monkeypatch, capsys, case):
    """Every case is refused with one line naming the key or file, before a run directory is written (the
    command's own main, in this process: the subprocess cases above cover the console script)."""
    from tokenalign.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    build, message = BEFORE_A_RUN[case]
    runs = tmp_path / "runs"
    assert main(["train", *build(tmp_path), f"run.runs_dir={runs}"]) != 0
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert not runs.exists() or not any(runs.iterdir())


def test_ctrl_c_to_the_whole_process_group_checkpoints_and_resumes_exactly(tmp_path):
    """A terminal's Ctrl-C signals every process of the foreground group: the driver, Ray's processes, and
    (were they in it) the Redis servers. The run still stops with a final checkpoint, its servers stopped in
    order, and resumes from exactly there."""
    runs = tmp_path / "runs"
    driver = subprocess.Popen([str(BIN / "tokenalign"), "train", *SHORT, f"run.runs_dir={runs}", "run.total_episodes=100000",
                               "run.max_minutes=null"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    wait_for(lambda: any(m.stat().st_size > 0 for m in runs.glob("*/metrics.jsonl")), timeout_s=240,
             what="training to start")
    run_dir = next(runs.iterdir())
    ports = redis_ports(run_dir)
    assert len(ports) == 2 and all(_listening(p) for p in ports)
    os.killpg(driver.pid, signal.SIGINT)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out[-3000:]
    training = json.loads((run_dir / "training.json").read_text())
    assert training["stopped_by"] == "SIGINT"
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    saved = json.loads((latest / "progress.json").read_text())
    assert saved["episodes"] == training["episodes"] and saved["updates"] == training["updates"]
    # The embedded Redis servers are gone; their data stays in the run directory, owner-only.
    assert not any(_listening(p) for p in ports)
    data = [f for f in (run_dir / "buffer").rglob("*") if f.is_file()]
    assert any(".aof" in f.name for f in data) and all(f.stat().st_mode & 0o077 == 0 for f in data)

    after = resume(run_dir, total_episodes=(100000, saved["episodes"] + 8))
    assert saved["episodes"] + 8 <= after["episodes"] <= saved["episodes"] + 8 + 4
    assert after["updates"] >= saved["updates"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_resume_bad_input_is_one_line(tmp_path, capsys):
    """A run whose config.yaml or every checkpoint is damaged cannot resume: one line says which and why."""
    from tokenalign.cli import main
    from tokenalign.run.checkpoints import write_checkpoint

    run_dir = tmp_path / "demo-run"
    write_checkpoint(run_dir / "checkpoints", step=2, learner={}, policy={}, progress={"episodes": 8})
    (run_dir / "config.yaml").write_text("run: [unclosed\n")
    assert main(["train", "--resume", str(run_dir)]) != 0
    err = capsys.readouterr().err
    assert f"{run_dir / 'config.yaml'} cannot be read" in err and len(err.strip().splitlines()) == 1, err
    (run_dir / "config.yaml").write_text("run: {name: demo}\n")
    (run_dir / "checkpoints" / "step-00000002" / "learner.pt").write_bytes(b"truncated")
    assert main(["train", "--resume", str(run_dir)]) != 0
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "step-00000002" in err and len(err.strip().splitlines()) == 1, err


def test_a_wrong_redis_password_is_one_line_without_the_password(tmp_path, monkeypatch, capsys):
    from tokenalign.cli import main
    from tokenalign.cluster.redis_fleet import RedisFleet

    monkeypatch.chdir(tmp_path)
    with RedisFleet.start(num_servers=1, run_dir=tmp_path / "server") as server:
        port = server.urls[0].rsplit(":", 1)[1].split("/")[0]
        assert main(["train", f'buffer.redis_urls=["redis://:not-the-password@127.0.0.1:{port}/0"]',
                     "buffer.num_shards=1", f"run.runs_dir={tmp_path / 'runs'}"]) != 0
    err = capsys.readouterr().err
    assert f"buffer.redis_urls[0] (redis://127.0.0.1:{port}/0) refused the password" in err, err
    assert "not-the-password" not in err and len(err.strip().splitlines()) == 1

