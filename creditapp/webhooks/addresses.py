"""Which URLs an endpoint may have, and which address a delivery connects to.

An endpoint's URL is http(s), has no credentials, and resolves only to public addresses (unless
private ones are allowed: tests, a private network on purpose). The check runs when the endpoint
is saved and again at each attempt: the attempt connects to the very address it checked (the
name is resolved once, and that address is pinned for the request), so a name that resolves to a
public address at the check and to 127.0.0.1 a moment later (DNS rebinding) gets nothing.
"""
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InvalidEndpointUrl

MAX_URL_LENGTH = 2000


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as in the URL (the Host header and the TLS server name)
    port: int
    path: str  # with its query


def parse(url: str) -> Target:
    """The URL's parts; InvalidEndpointUrl for anything not http(s) without credentials."""
    if len(url) > MAX_URL_LENGTH or any(ord(ch) <= 32 or ord(ch) == 127 for ch in url):
        raise InvalidEndpointUrl("the URL is too long or has spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpointUrl(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidEndpointUrl("only http and https URLs can receive webhooks")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidEndpointUrl("the URL must not carry credentials: use the signing secret to authenticate")
    if not parts.hostname:
        raise InvalidEndpointUrl("the URL has no host")
    if parts.fragment:
        raise InvalidEndpointUrl("the URL must not have a fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def resolve(host: str, port: int) -> list[str]:
    """Every address the name resolves to (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


# IPv6 prefixes that carry an IPv4 address a gateway forwards to: NAT64 (RFC 6052 and 8215)
# and the deprecated IPv4-compatible form. The address embedded must be public too.
_EMBEDDING = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"),
              ipaddress.IPv6Network("::/96"))


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's (obfuscated) address, which the relay forwards to
    if any(ip in network for network in _EMBEDDING):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded(ip)
        if inner is not None:
            return inner.is_global and not inner.is_multicast
    return ip.is_global and not ip.is_multicast


def check_address(address: str, allow_private: bool) -> None:
    if not allow_private and not is_public(address):
        raise InvalidEndpointUrl(f"the URL resolves to {address}, a private, loopback or link-local address")


def checked_addresses(target: Target, allow_private: bool) -> list[str]:
    """The addresses of `target`, each one allowed; InvalidEndpointUrl if any is not (a name
    with one private address among public ones is refused too)."""
    try:
        addresses = resolve(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise InvalidEndpointUrl(f"the URL's host {target.host!r} does not resolve: {exc}") from None
    if not addresses:
        raise InvalidEndpointUrl(f"the URL's host {target.host!r} does not resolve")
    for address in addresses:
        check_address(address, allow_private)
    return addresses


def check_url(url: str, allow_private: bool) -> Target:
    target = parse(url)
    checked_addresses(target, allow_private)
    return target
