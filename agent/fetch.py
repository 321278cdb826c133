"""Fetching media URLs for chat requests (``server.fetch_urls``, off by default), safely.

Each hop resolves its host once, checks every address, and connects to the checked address
(the URL's host still goes in ``Host`` and in TLS's SNI and certificate check), so a name cannot
resolve to a public address for the check and a private one for the connection. Redirects are
followed by hand, each target checked the same way. Size and total time are capped.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from agent.errors import InvalidMedia, LimitExceeded

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = (301, 302, 303, 307, 308)


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the default resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: ``url`` with the checked address in place of the host name, which goes
    in the ``Host`` header (``host``) and in TLS's SNI and certificate check (``sni``)."""

    url: str
    host: str
    sni: str


@dataclass
class Fetcher:
    max_bytes: int
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow: Sequence[str] = ()
    """Networks (CIDR or single addresses) allowed although private, loopback or local."""
    resolver: Resolver = resolve

    def __call__(self, url: str, param: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        with httpx.Client(follow_redirects=False, trust_env=False) as client:
            for _ in range(self.max_redirects + 1):
                got = self._get(client, url, param, deadline)
                if isinstance(got, bytes):
                    return got
                url = got
        raise InvalidMedia(f"more than {self.max_redirects} redirects "
                           "(server.fetch_max_redirects)", param=param)

    def target(self, url: str, param: str) -> Target:
        """Where a request for ``url`` connects: its host resolved once and every address
        checked (``InvalidMedia`` when refused). Blocking: it may ask DNS."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidMedia(f"cannot fetch {url[:80]!r}: only http(s) URLs", param=param)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addr = self._checked_address(parts.hostname, port, param)
        host = f"[{addr}]" if addr.version == 6 else str(addr)
        return Target(parts._replace(netloc=f"{host}:{port}").geturl(),
                      parts.netloc.rpartition("@")[2], parts.hostname)

    def _get(self, client: httpx.Client, url: str, param: str, deadline: float,
             ) -> bytes | str:
        """The body, or where a redirect points."""
        to = self.target(url, param)
        timeout = httpx.Timeout(max(0.01, deadline - time.monotonic()))
        try:
            with client.stream("GET", to.url, headers={"Host": to.host}, timeout=timeout,
                               extensions={"sni_hostname": to.sni}) as response:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    return urllib.parse.urljoin(url, response.headers["location"])
                if response.status_code != 200:
                    raise InvalidMedia(f"fetching {url[:80]} gave HTTP {response.status_code}",
                                       param=param)
                return self._body(response, param, deadline)
        except httpx.HTTPError as exc:
            raise InvalidMedia(f"cannot fetch {url[:80]}: {type(exc).__name__}",
                               param=param) from None

    def _body(self, response: httpx.Response, param: str, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise LimitExceeded(f"media larger than {self.max_bytes} bytes "
                                "(server.max_message_bytes)", param=param)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise LimitExceeded(f"media larger than {self.max_bytes} bytes "
                                    "(server.max_message_bytes)", param=param)
            if time.monotonic() > deadline:
                raise LimitExceeded(f"fetching took longer than {self.timeout_s:g} s "
                                    "(server.fetch_timeout_s)", param=param)
        return bytes(body)

    def check_host(self, host: str, port: int, param: str) -> IPAddress:
        """``host``'s first address; every one it resolves to must be allowed."""
        return self._checked_address(host, port, param)

    def _checked_address(self, host: str, port: int, param: str) -> IPAddress:
        try:
            addrs = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, ValueError):
            raise InvalidMedia(f"cannot resolve {host!r}", param=param) from None
        if not addrs:
            raise InvalidMedia(f"cannot resolve {host!r}", param=param)
        for addr in addrs:  # every address must pass: the connection uses the first
            if not self._allowed(addr):
                raise InvalidMedia(f"{host!r} resolves to a private or local address; refused",
                                   param=param)
        return addrs[0]

    def _allowed(self, addr: IPAddress) -> bool:
        if any(addr in ipaddress.ip_network(net, strict=False) for net in self.allow):
            return True
        return addr.is_global and not addr.is_multicast
