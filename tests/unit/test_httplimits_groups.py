"""Which connections count as one client for the HTTP servers' per-client share."""

from __future__ import annotations

import pytest

from voxgate.httplimits import LOOPBACK_GROUP, client_group


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.2", "127.255.3.4", "::1", "::ffff:127.0.0.9", "::ffff:7f00:5"],
)
def test_all_of_loopback_is_one_client(host: str) -> None:
    # A local user took every slot with 127.0.0.2, 127.0.0.3, ... (one share each).
    assert client_group(host) == LOOPBACK_GROUP


def test_an_ipv6_host_counts_once_for_its_whole_slash_64() -> None:
    # Any host given a /64 picks a new source address per connection: each one counted as
    # a client of its own, so one host filled every shared slot.
    rotated = {client_group(f"2001:db8:1:2::{i:x}") for i in range(1, 500)}
    rotated |= {client_group("2001:db8:1:2:ffff:ffff:ffff:ffff")}
    assert rotated == {"2001:db8:1:2::/64"}
    assert client_group("2001:db8:1:3::1") == "2001:db8:1:3::/64"  # the next /64: another


def test_ipv4_mapped_addresses_count_as_the_ipv4_address() -> None:
    # A dual-stack server sees IPv4 clients as ::ffff:a.b.c.d: not grouped by /64
    # (::ffff:0:0/64 would be all of IPv4), each its own address.
    assert client_group("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_group("::ffff:192.0.2.8") == client_group("192.0.2.8") == "192.0.2.8"


def test_clients_on_the_doors_own_network_count_per_address() -> None:
    # With SLAAC every device of the LAN shares the door's /64: grouped by it, a browser's
    # three connections had Home Assistant and the admin laptop refused.
    door = "2001:db8:1:2::10"
    assert client_group("2001:db8:1:2::20", door) != client_group("2001:db8:1:2::21", door)
    assert client_group("2001:db8:1:2::20", door) == "2001:db8:1:2::20"
    # Another network is still one client per /64, whatever address the door has.
    assert client_group("2001:db8:9:9::1", door) == client_group("2001:db8:9:9::2", door)
    # Link-local addresses are all on the door's link: one each, per interface.
    assert client_group("fe80::1%eth0") != client_group("fe80::abcd%eth0")
    assert client_group("fe80::1%wlan0") != client_group("fe80::1%eth0")
    # An IPv4 (or no) local address says nothing about an IPv6 client's network.
    assert client_group("2001:db8:1:2::20", "192.0.2.1") == "2001:db8:1:2::/64"


def test_ipv4_addresses_stay_one_each_and_junk_is_itself() -> None:
    assert client_group("192.0.2.1") != client_group("192.0.2.2")
    assert client_group("") == ""
    assert client_group("not-an-address") == "not-an-address"
