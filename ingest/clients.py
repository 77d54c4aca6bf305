"""Who a request comes from, for the per-address limits.

The client is the socket's peer, unless that peer is a proxy listed in `VAXLINE_TRUSTED_PROXIES`: then
it is the right-most address of `X-Forwarded-For` that is not a trusted proxy (each proxy appends the
peer it saw, so everything left of that is whatever the client chose to write). A peer that is not
trusted cannot move its limit by writing the header.

A limit counts an address's key: an IPv4 address as it is, an IPv6 address by its /64 (one subscriber's
prefix: a host picks any of its 2^64 addresses at will), an IPv4-mapped IPv6 address as the IPv4 one.

The setting is read once, when the process starts (`TRUSTED_PROXIES`, set by ingest.server): a malformed
entry stops the start with its name, instead of failing every lookup and filing later.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

IPV6_PREFIX = 64
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple)  # the parsed setting: tuple[_Network, ...]


def trusted_networks(setting: str) -> tuple[_Network, ...]:
    """`VAXLINE_TRUSTED_PROXIES` read: addresses and CIDRs, comma-separated (ValueError names a bad one)."""
    networks = []
    for part in (p.strip() for p in setting.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as e:
                raise ValueError(f"VAXLINE_TRUSTED_PROXIES: {part!r} is not an address or a CIDR"
                                 " (the setting lists proxies' addresses or CIDRs, comma-separated)") from e
    return tuple(networks)


def _address(text: str) -> _Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: _Address | None, networks: tuple[_Network, ...]) -> bool:
    return address is not None and any(address.version == n.version and address in n for n in networks)


def client_of(peer: str | None, forwarded: list[str], networks: tuple[_Network, ...]) -> str:
    """The client's address, from the peer and the X-Forwarded-For headers (in order)."""
    if not peer:
        return "unknown"
    if not forwarded or not _trusted(_address(peer), networks):
        return peer
    hops = [hop.strip() for header in forwarded for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(_address(hop), networks):
            return hop
    return hops[0] if hops else peer  # every hop a proxy of ours: the first one is as far as the chain goes


def client_address(request: web.Request) -> str:
    """The client of this request (see the module's docstring)."""
    return client_of(request.remote, request.headers.getall("X-Forwarded-For", []), request.app[TRUSTED_PROXIES])


def limit_key(client: str) -> str:
    """What a per-address limit counts for this client: the IPv4 address, or the IPv6 /64; anything that is
    not an address (a unix socket's peer, another limiter's key) as it is."""
    address = _address(client)
    if address is None:
        return client or "unknown"
    if address.version == 6:
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)
