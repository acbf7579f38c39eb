"""RangeReader against a real embedded Redis: whole, empty and refused ranges in one pipeline, any recv size."""
from __future__ import annotations

import numpy as np
import pytest
import redis
from test_buffer_support import fleet  # noqa: F401

from tokenalign.buffers import range_reader
from tokenalign.buffers.range_reader import RangeReader
from tokenalign.buffers.redis_client import connect
from tokenalign.cluster.redis_fleet import RedisFleet

VALUE = bytes(range(256)) * 64  # 16 KiB, every byte value, CR and LF included


@pytest.fixture()
def client(fleet: RedisFleet) -> redis.Redis:  # noqa: F811
    client = connect(fleet.urls[0], password=fleet.password)
    client.set("rr:value", VALUE)
    client.rpush("rr:list", "not a string")
    yield client
    client.delete("rr:value", "rr:list")
    client.close()


@pytest.mark.parametrize("recv_bytes", [range_reader.RECV_BYTES, 3])
def test_whole_empty_and_error_replies_in_one_pipeline(client: redis.Redis, monkeypatch, recv_bytes: int) -> None:
    # 3-byte receives split every header and every data run, so each parsing branch meets a partial reply.
    monkeypatch.setattr(range_reader, "RECV_BYTES", recv_bytes)
    reader = RangeReader(client)
    keys = ["rr:value", "rr:value", "rr:missing", "rr:value", "rr:list", "rr:value"]
    starts = np.array([len(VALUE) - 10, 0, 0, 100, 0, 4000])
    lengths = np.full(6, 512)
    ranges = reader.read_ranges(keys, starts, lengths)
    assert ranges.read.tolist() == [False, True, False, True, False, True]  # near the end: short; missing: empty
    assert list(ranges.errors) == [4] and "WRONGTYPE" in ranges.errors[4]
    rows = ranges.rows(512)
    assert [bytes(r) for r in rows] == [VALUE[0:512], VALUE[100:612], VALUE[4000:4512]]
    reader.close()


@pytest.mark.parametrize("length", [512, 1024])
def test_rows_are_an_aligned_strided_view_of_the_buffer(client: redis.Redis, length: int) -> None:
    # "$512\r\n" puts rows at even offsets by itself; "$1024\r\n" needs the one-byte shift and padding.
    reader = RangeReader(client)
    starts = np.array([0, 2048, 4096, 8000])
    rows, ranges = reader.read_rows(["rr:value"] * 4, starts, length)
    assert np.shares_memory(rows, np.frombuffer(ranges.buffer, dtype=np.uint8))
    assert rows.view(np.float16).flags.aligned
    assert [bytes(r) for r in rows] == [VALUE[s: s + length] for s in starts.tolist()]
    reader.close()


def test_ranges_of_any_length_one_after_another(client: redis.Redis) -> None:
    reader = RangeReader(client)
    ranges = reader.read_ranges(["rr:value"] * 3, np.array([0, 300, 5]), np.array([10, 20, 1024]))
    assert bytes(ranges.joined(np.array([10, 20, 1024]))) == VALUE[0:10] + VALUE[300:320] + VALUE[5:1029]
    reader.close()


def test_a_dropped_connection_is_a_connection_error_then_the_next_call_reconnects(client: redis.Redis) -> None:
    reader = RangeReader(client)
    assert reader.read_ranges(["rr:value"], np.array([0]), np.array([8])).read.all()
    client.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(redis.ConnectionError):
        reader.read_ranges(["rr:value"], np.array([0]), np.array([8]))
    ranges = reader.read_ranges(["rr:value"], np.array([8]), np.array([8]))
    assert bytes(ranges.rows(8)[0]) == VALUE[8:16]
    reader.close()
