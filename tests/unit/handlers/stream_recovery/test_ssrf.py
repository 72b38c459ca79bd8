"""SSRF guard: address classification (IPv4, IPv6, embedded IPv4), URL rules, resolve-once checks."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from handlers.stream_recovery.ssrf import (
    BlockedAddressError,
    InvalidTargetError,
    ResolutionError,
    Target,
    classify_address,
    parse_target,
    resolve_checked,
)


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.1", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("224.0.1.1", "multicast"),  # multicast that ipaddress calls "global"
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("198.18.0.1", "private"),  # benchmarking
        ("192.0.2.1", "private"),  # documentation
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique-local"),
        ("fc00::1", "unique-local"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),  # documentation
        ("::ffff:127.0.0.1", "ipv4-embedded loopback"),
        ("::ffff:169.254.169.254", "ipv4-embedded metadata"),
        ("::ffff:10.0.0.1", "ipv4-embedded private"),
        ("::ffff:7f00:1", "ipv4-embedded loopback"),  # the same, written in hex
        ("::127.0.0.1", "ipv4-embedded loopback"),  # IPv4-compatible (deprecated) form
        ("64:ff9b::a00:1", "ipv4-embedded private"),  # NAT64 of 10.0.0.1
        ("2002:a00:1::", "ipv4-embedded private"),  # 6to4 of 10.0.0.1
    ],
)
def test_internal_addresses_are_refused_with_their_category(address: str, category: str) -> None:
    assert classify_address(address) == category


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "52.94.236.248", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert classify_address(address) is None


def test_a_valid_https_url_is_split_into_a_target() -> None:
    assert parse_target("https://Hooks.Example.com/a/b?x=1#frag") == Target(
        "https", "hooks.example.com", 443, "/a/b?x=1"
    )
    assert parse_target("https://hooks.example.com") == Target("https", "hooks.example.com", 443, "/")
    assert parse_target("https://hooks.example.com:8443/x").port == 8443
    assert parse_target("https://[2606:4700::1]/x").host == "2606:4700::1"
    assert parse_target("https://bücher.example/").host == "xn--bcher-kva.example"
    assert parse_target("http://127.0.0.1:9000/x", allow_http=True) == Target("http", "127.0.0.1", 9000, "/x")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/", "insecure_scheme"),
        ("ftp://hooks.example.com/", "unsupported_scheme"),
        ("file:///etc/passwd", "unsupported_scheme"),
        ("hooks.example.com/path", "unsupported_scheme"),
        ("https://user:pass@hooks.example.com/", "credentials_in_url"),
        ("https://user@hooks.example.com/", "credentials_in_url"),
        ("https:///path", "missing_host"),
        ("https://hooks.example.com:0/", "invalid_port"),
        ("https://hooks.example.com:99999/", "invalid_port"),
        ("https://hooks.example.com:abc/", "invalid_port"),
        ("https://hooks.example.com/a\r\nX-Injected: 1", "invalid_url"),
        ("https://hooks.example.com/a b", "invalid_url"),
        ("https://" + "a" * 2050 + ".com/", "invalid_url"),
        ("https://bad_host!.example/", "invalid_host"),
        ("https://[fe80::1%25eth0]/", "invalid_host"),
        ("", "invalid_url"),
    ],
)
def test_unacceptable_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_target(url)
    assert info.value.reason == reason


def test_ftp_stays_unsupported_even_with_the_http_flag() -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_target("ftp://hooks.example.com/", allow_http=True)
    assert info.value.reason == "unsupported_scheme"


def test_ports_can_be_restricted() -> None:
    assert parse_target("https://hooks.example.com/", allowed_ports={443}).port == 443
    with pytest.raises(InvalidTargetError) as info:
        parse_target("https://hooks.example.com:8443/", allowed_ports={443})
    assert info.value.reason == "port_not_allowed"


class FakeResolver:
    """getaddrinfo's shape; records every lookup."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0) -> list[tuple[Any, ...]]:
        self.calls.append((host, port, family, type))
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.addresses
        ]


def test_every_resolved_address_is_checked() -> None:
    target = parse_target("https://hooks.example.com/")
    resolver = FakeResolver("8.8.8.8", "2606:4700::1", "10.0.0.7")  # one internal address among public ones
    with pytest.raises(BlockedAddressError, match=r"hooks\.example\.com resolves to 10\.0\.0\.7 \(private\)"):
        resolve_checked(target, resolver=resolver)
    assert resolver.calls == [("hooks.example.com", 443, 0, socket.SOCK_STREAM)]


def test_public_answers_come_back_deduplicated_in_order() -> None:
    target = parse_target("https://hooks.example.com:8443/")
    checked = resolve_checked(target, resolver=FakeResolver("8.8.8.8", "8.8.8.8", "2606:4700::1"))
    assert [(c.family, c.sockaddr) for c in checked] == [
        (socket.AF_INET, ("8.8.8.8", 8443)),
        (socket.AF_INET6, ("2606:4700::1", 8443, 0, 0)),
    ]


def test_the_development_flag_allows_internal_addresses() -> None:
    checked = resolve_checked(parse_target("https://evil.example/"), allow_private=True, resolver=FakeResolver("::1"))
    assert checked[0].ip == "::1"


def test_ip_literals_are_checked_without_a_lookup() -> None:
    resolver = FakeResolver("8.8.8.8")
    with pytest.raises(BlockedAddressError, match="metadata"):
        resolve_checked(parse_target("https://169.254.169.254/latest/meta-data"), resolver=resolver)
    with pytest.raises(BlockedAddressError, match="ipv4-embedded loopback"):
        resolve_checked(parse_target("https://[::ffff:127.0.0.1]/"), resolver=resolver)
    assert resolve_checked(parse_target("https://8.8.4.4/"), resolver=resolver)[0].sockaddr == ("8.8.4.4", 443)
    assert resolver.calls == []


def test_lookup_failures_and_empty_answers_are_resolution_errors() -> None:
    def failing(*_: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ResolutionError, match="could not resolve"):
        resolve_checked(parse_target("https://nowhere.example/"), resolver=failing)
    with pytest.raises(ResolutionError, match="did not resolve"):
        resolve_checked(parse_target("https://nowhere.example/"), resolver=FakeResolver())
