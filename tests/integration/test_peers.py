"""The test harness's port allocator: ports a peer can bind, never handed out twice."""

from __future__ import annotations

import socket

from tests.integration.peers import _ephemeral_range, free_port


def test_free_port_is_bindable_unique_and_outside_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low or p > high for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # a peer can take it


def test_free_port_skips_a_port_that_is_held() -> None:
    first = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first + 1))
        holder.listen(1)
        # the next port in line is held: the allocator passes over it
        assert free_port() not in (first, first + 1)
