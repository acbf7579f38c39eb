"""RangeReader: many GETRANGE replies of one Redis server read straight from its socket into one buffer.

Sampling a batch is a thousand or so GETRANGEs of 16 KB each (a state and its successor at 4096-d). Read
through redis-py, every reply pays a Python call, a bytes object and a join; here the pipelined replies
are received with `recv_into` into one reused buffer, and only their RESP headers are parsed in Python, so a
batch costs one kernel copy, and the states are converted to tensors from a strided view of that buffer.

The reader owns a connection of its own (made by the client's pool, so password, TLS and unix sockets
work as for every other call) and uses it for nothing else; any error drops it, so a later call starts
in step on a fresh one. Socket errors come out as redis.ConnectionError / redis.TimeoutError, which the
buffer treats as a shard that went away.
"""
from __future__ import annotations

import mmap
import socket
from dataclasses import dataclass

import numpy as np
import redis

RECV_BYTES = 1 << 22  # largest single recv_into; bigger requests buy nothing on loopback


@dataclass
class Ranges:
    """The replies to one read_ranges call."""

    buffer: mmap.mmap
    """Every reply byte received, RESP headers included (the reader's own buffer, reused by its next call)."""
    offsets: np.ndarray
    """(n,) int64 offset in `buffer` of each range's first data byte (-1 where it was not read)."""
    read: np.ndarray
    """(n,) bool: the range came back whole (its chunk was not evicted and nothing else stood in its place)."""
    errors: dict[int, str]
    """Range index → the server's error reply (the key held another type)."""

    def rows(self, length: int) -> np.ndarray:
        """The data of the read ranges, each `length` bytes, as an (m, length) uint8 array.

        When the replies lie at one stride (every range read, equal lengths) this is a strided view of the
        buffer with no copy; otherwise the ranges are copied out one by one.
        """
        offsets = self.offsets[self.read]
        data = np.frombuffer(self.buffer, dtype=np.uint8)
        if len(offsets) == 0:
            return np.empty((0, length), dtype=np.uint8)
        strides = np.diff(offsets)
        stride = int(strides[0]) if len(strides) else length
        if (strides == stride).all() and stride % 2 == 0 and offsets[0] % 2 == 0:
            # Even offsets keep float16 views of the rows aligned.
            return np.lib.stride_tricks.as_strided(data[offsets[0]:], shape=(len(offsets), length), strides=(stride, 1))
        return np.stack([data[o: o + length] for o in offsets.tolist()])

    def joined(self, lengths: np.ndarray) -> np.ndarray:
        """The data of every range (all must have been read), one after another, as one uint8 array."""
        data = np.frombuffer(self.buffer, dtype=np.uint8)
        return np.concatenate([data[o: o + n] for o, n in zip(self.offsets.tolist(), lengths.tolist())])


def _allocate(size: int, keep: mmap.mmap | None = None) -> mmap.mmap:
    """An anonymous mapping of `size` bytes holding `keep`'s bytes first.

    A batch's replies are ~16 MB, reused from call to call; mapped apart from the malloc heap, the buffer
    does not pin the heap's top, which the learner's freshly allocated batch tensors are served from.
    """
    buffer = mmap.mmap(-1, size)
    if keep is not None:
        buffer[: len(keep)] = keep
    return buffer


class RangeReader:
    """Pipelined GETRANGEs over a dedicated connection; see the module docstring."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: redis.connection.AbstractConnection | None = None
        self._buffer = _allocate(1 << 16)

    def read_ranges(self, keys: list[str], starts: np.ndarray, lengths: np.ndarray) -> Ranges:
        """GETRANGE keys[i] starts[i] .. starts[i] + lengths[i] - 1 for every i, in one round trip.

        The result views this reader's buffer: copy what you keep before the next call.
        """
        return self._read(keys, starts, lengths, base=0)

    def read_rows(self, keys: list[str], starts: np.ndarray, length: int) -> tuple[np.ndarray, Ranges]:
        """`length` bytes at every start, as an (m, length) uint8 array of the ranges read, and the Ranges.

        Each reply is `$<length>\\r\\n<data>\\r\\n`; to keep every row at an even offset (so float16 views of
        them need no copy), the buffer may start one byte in and each range may ask for one byte more,
        which the caller must guarantee exists after every range (a states value ends with a zero row and
        Arrow's end-of-stream marker).
        """
        header = len(str(length)) + 3
        pad = (header + length + 2) % 2
        ranges = self._read(keys, starts, np.full(len(keys), length + pad, dtype=np.int64), base=header % 2)
        return ranges.rows(length), ranges

    def _read(self, keys: list[str], starts: np.ndarray, lengths: np.ndarray, *, base: int) -> Ranges:
        if self._connection is None:
            self._connection = self._pool.make_connection()
        connection = self._connection
        ends = (starts + lengths - 1).tolist()
        packed = "".join([
            f"*4\r\n$8\r\nGETRANGE\r\n${len(key)}\r\n{key}\r\n${len(s)}\r\n{s}\r\n${len(e)}\r\n{e}\r\n"
            for key, s, e in zip(keys, map(str, starts.tolist()), map(str, ends))
        ]).encode()
        try:
            connection.send_packed_command([packed])
            return self._receive(connection._sock, lengths.tolist(), base)
        except BaseException as err:
            self.close()
            if isinstance(err, socket.timeout):
                raise redis.TimeoutError(f"reading sampled states: {err}") from err
            if isinstance(err, OSError):
                raise redis.ConnectionError(f"reading sampled states: {err}") from err
            raise

    def _receive(self, sock: socket.socket, lengths: list[int], base: int) -> Ranges:
        n = len(lengths)
        headers = [b"$%d\r\n" % length for length in lengths]
        sizes = [len(h) + length + 2 for h, length in zip(headers, lengths)]
        needed = base + sum(sizes) + 256  # room for an error line where a short range was expected
        if len(self._buffer) < needed:
            self._buffer = _allocate(needed)
        buffer = self._buffer
        view = memoryview(buffer)
        offsets = np.full(n, -1, dtype=np.int64)
        errors: dict[int, str] = {}
        got = pos = base
        i = 0
        while i < n:
            # Parse every reply already received; a whole reply of the expected length is the common case.
            while i < n:
                header, end = headers[i], pos + sizes[i]
                whole = view[pos: pos + len(header)] == header
                if whole and end <= got and view[end - 2: end] == b"\r\n":
                    offsets[i] = pos + len(header)
                    pos, i = end, i + 1
                    continue
                if whole:
                    break  # the rest of a whole reply is still on its way
                line_end = buffer.find(b"\r\n", pos, got)
                if line_end < 0:
                    break  # its header is still on its way
                after = self._short_reply(buffer, pos, line_end, got, i, errors)
                if after is None:
                    break  # its data is still on its way
                pos, i = after, i + 1
            if i == n:
                break
            if got == len(buffer):
                buffer = self._buffer = _allocate(2 * len(buffer), keep=buffer)
                view = memoryview(buffer)
            received = sock.recv_into(view[got:], min(len(buffer) - got, RECV_BYTES))
            if received == 0:
                raise ConnectionError("the Redis server closed the connection mid-reply")
            got += received
        return Ranges(buffer=buffer, offsets=offsets, read=offsets >= 0, errors=errors)

    @staticmethod
    def _short_reply(buffer: mmap.mmap, pos: int, line_end: int, got: int, i: int, errors: dict[int, str]) -> int | None:
        """Consume reply i, which is not a whole range: the position after it, or None while it is incomplete."""
        kind, line = buffer[pos:pos + 1], bytes(buffer[pos + 1: line_end])
        if kind == b"-":
            errors[i] = line.decode(errors="replace")
            return line_end + 2
        if kind == b"$":
            if int(line) < 0:  # a null reply carries no data
                return line_end + 2
            end = line_end + 2 + int(line) + 2
            # Shorter than asked: the chunk was evicted (empty) or the value is not ours; the caller decides.
            return end if end <= got else None
        raise ConnectionError(f"unexpected reply {bytes(buffer[pos: line_end])[:40]!r} to GETRANGE")

    def close(self) -> None:
        """Drop the connection (a later call opens a new one); the buffer is kept for reuse."""
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None
