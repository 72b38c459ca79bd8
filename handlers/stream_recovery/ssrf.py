"""SSRF guard for webhook targets: validate the URL, resolve its host once, check every address.

A webhook URL is chosen by a tenant, so a POST to it must never reach something inside our
network: the instance metadata service (169.254.169.254, fd00:ec2::254), a VPC endpoint, a
database, localhost. The guard is the only place a webhook host is resolved:

1. ``parse_target(url, ...)`` validates the URL's form (below) and returns a ``Target``;
2. ``resolve_checked(target, ...)`` resolves the host ONCE (the resolver is a parameter,
   defaulting to ``socket.getaddrinfo``) and checks EVERY address it returned: one internal
   address among public ones refuses the whole target (a DNS answer mixing both is an attack,
   not a load balancer);
3. the delivery module then connects to one of these checked addresses itself, keeping the
   original host name for the Host header, the TLS server name (SNI) and certificate
   verification. There is no second lookup, so a DNS rebind between check and connect (a
   TTL-0 answer that turns into 127.0.0.1) cannot reach an internal address.

URL rules (``InvalidTargetError.reason`` names the rule broken):
- scheme ``https``; ``http`` only with ``allow_http`` (development) -> reason ``insecure_scheme``;
  any other scheme -> ``unsupported_scheme``;
- no user-info (``https://user:pass@host``): credentials in a URL leak into logs and are not
  how a receiver authenticates us (the config's auth token is) -> ``credentials_in_url``;
- a host is required; IDNA names are encoded to their ASCII form; IP literals are checked
  like resolved addresses (no lookup) -> ``missing_host`` / ``invalid_host``;
- any port 1-65535 is accepted: the address check is what keeps us out of internal
  networks, and receivers legitimately listen on 8443 and the like. A deployment that wants
  to restrict ports passes ``allowed_ports`` -> ``port_not_allowed`` / ``invalid_port``;
- no control characters or whitespace anywhere (request splitting), at most 2048 characters
  -> ``invalid_url``; the fragment is never sent.

Address rules (``classify_address``): refused unless globally routable, i.e. refused when
unspecified, loopback, private (RFC 1918, IPv6 unique-local fc00::/7), link-local
(169.254.0.0/16 incl. the metadata address, fe80::/10), shared/CGNAT (100.64.0.0/10),
multicast, reserved or otherwise not global (benchmarking, documentation, Teredo...). An IPv6
address that embeds an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by the IPv4 address it
carries, so ``::ffff:127.0.0.1`` is loopback and ``64:ff9b::808:808`` (DNS64 in an IPv6-only
subnet) is as public as 8.8.8.8.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# socket.getaddrinfo's shape: (host, port, family, type) -> [(family, type, proto, canonname, sockaddr)]
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048
_METADATA_V4 = ipaddress.IPv4Address("169.254.169.254")
_METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


class InvalidTargetError(ValueError):
    """The URL itself is unacceptable (before any lookup). ``reason`` is a short machine name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BlockedAddressError(Exception):
    """The host is (or resolves to) an address we must not connect to."""

    def __init__(self, host: str, address: str, category: str) -> None:
        super().__init__(f"{host} resolves to {address} ({category}): refused")
        self.host = host
        self.address = address
        self.category = category


class ResolutionError(Exception):
    """The host could not be resolved (retryable: DNS failures are often transient)."""


@dataclass(frozen=True)
class Target:
    scheme: str  # "https" or (development only) "http"
    host: str  # ASCII host name, or the IP literal without brackets
    port: int
    path: str  # path + query, at least "/"; never the fragment

    @property
    def is_ip_literal(self) -> bool:
        return _parse_ip(self.host) is not None


@dataclass(frozen=True)
class CheckedAddress:
    """One address the guard accepted, with what ``socket.connect`` needs."""

    family: int
    sockaddr: tuple[Any, ...]

    @property
    def ip(self) -> str:
        return str(self.sockaddr[0])


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify_address(address: IPAddress | str) -> str | None:
    """Why ``address`` must not be connected to (a short category), or ``None`` if it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip == _METADATA_V6:
            return "metadata"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            category = classify_address(embedded)
            return None if category is None else f"ipv4-embedded {category}"
    if ip == _METADATA_V4:
        return "metadata"
    checks: list[tuple[bool, str]] = [
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared (CGNAT)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL, "unique-local"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    ]
    return next((category for blocked, category in checks if blocked), None)


def _has_forbidden_characters(url: str) -> bool:
    return any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url)


def _ascii_host(parts: SplitResult) -> str:
    host = parts.hostname  # lower-cased, brackets of an IPv6 literal removed
    if not host:
        raise InvalidTargetError("missing_host", "the webhook URL has no host")
    ip = _parse_ip(host.split("%", 1)[0])
    if ip is not None:
        if "%" in host:
            raise InvalidTargetError("invalid_host", "an IPv6 zone id is not allowed in a webhook URL")
        return str(ip)
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidTargetError("invalid_host", f"the webhook host {host!r} is not a valid host name") from exc
    labels = ascii_host.rstrip(".").split(".")
    if not all(0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels):
        raise InvalidTargetError("invalid_host", f"the webhook host {host!r} is not a valid host name")
    return ascii_host


def parse_target(url: str, *, allow_http: bool = False, allowed_ports: Collection[int] | None = None) -> Target:
    """Validate ``url`` (rules in the module docstring) and split it into a ``Target``."""
    if not isinstance(url, str) or not url:
        raise InvalidTargetError("invalid_url", "the webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidTargetError("invalid_url", f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if _has_forbidden_characters(url):
        raise InvalidTargetError("invalid_url", "the webhook URL contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise InvalidTargetError("insecure_scheme", "plain http:// webhook URLs are allowed only in development")
    if scheme not in ("https", "http"):
        raise InvalidTargetError(
            "unsupported_scheme", f"the webhook URL scheme must be https, not {scheme or 'none'!r}"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidTargetError("credentials_in_url", "the webhook URL must not carry credentials (user@host)")
    host = _ascii_host(parts)
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidTargetError("invalid_port", "the webhook URL has an invalid port") from exc
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise InvalidTargetError("invalid_port", "the webhook URL has an invalid port")
    if allowed_ports is not None and port not in allowed_ports:
        raise InvalidTargetError("port_not_allowed", f"port {port} is not an allowed webhook port")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme=scheme, host=host, port=port, path=path)


def resolve_checked(
    target: Target,
    *,
    allow_private: bool = False,
    resolver: Resolver = socket.getaddrinfo,
) -> list[CheckedAddress]:
    """Resolve ``target.host`` once and return its addresses, all of them checked.

    Raises ``BlockedAddressError`` when ANY address is internal (unless ``allow_private``, the
    development flag), ``ResolutionError`` when the lookup fails or returns nothing usable. An
    IP literal is checked without calling the resolver.
    """
    literal = _parse_ip(target.host)
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        sockaddr: tuple[Any, ...] = (
            (target.host, target.port) if family == socket.AF_INET else (target.host, target.port, 0, 0)
        )
        infos: Sequence[tuple[Any, ...]] = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
    else:
        try:
            infos = resolver(target.host, target.port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ResolutionError(f"could not resolve {target.host}: {exc}") from exc
    checked: list[CheckedAddress] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        text = str(sockaddr[0])
        ip = _parse_ip(text.split("%", 1)[0])
        if ip is None:
            raise ResolutionError(f"the resolver returned a non-address {text!r} for {target.host}")
        category = classify_address(ip)
        if category is not None and not allow_private:
            raise BlockedAddressError(target.host, text, category)
        candidate = CheckedAddress(family=family, sockaddr=(text, target.port, *tuple(sockaddr[2:])))
        if candidate not in checked:
            checked.append(candidate)
    if not checked:
        raise ResolutionError(f"{target.host} did not resolve to any IPv4 or IPv6 address")
    return checked
