"""Who may call `slm serve`: protection against DNS rebinding and cross-site requests.

Bound to a loopback address (the default), only requests addressed to this machine by name (Host: localhost,
127.0.0.1 or [::1] at the bound port) are served; a browser request's Origin must be the server's own (its chat
page) or one allowed with `--allow-origin`; others get a 403 with an OpenAI-style body (`--allow-host` to allow).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from slmkit.base.errors import SlmError
from slmkit.ship.serve.protocol import APIError, show

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only: localhost, 127.0.0.0/8 or ::1."""
    h = host.strip().lower().strip("[]")
    try:
        return h == "localhost" or ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port or None) of a Host header or an --allow-host entry ("name", "name:port", "[v6]:port"); None when
    malformed. Names are lower-cased; IPv6 addresses keep their brackets."""
    v = value.strip().lower()
    if v.startswith("["):
        name, sep, rest = v.partition("]")
        name, port = name + sep, rest[1:] if rest.startswith(":") else None
        if not sep or (rest and port is None):
            return None
    else:
        name, sep, port = v.partition(":")
        port = port if sep else None
    if not name or name == "[]" or any(c in name for c in "/\\@?#% \t"):
        return None
    if port is None:
        return name, None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return None
    return name, int(port)


def _origin(value: str) -> str | None:
    """An Origin header or --allow-origin entry in the form browsers send (scheme://host[:port], lower case, no
    default port, no path), or None when it is not one. "null" (a sandboxed or file:// page) is kept as is."""
    v = value.strip().lower().removesuffix("/")
    if v == "null":
        return v
    scheme, sep, netloc = v.partition("://")
    ok_scheme = scheme[:1].isalpha() and scheme.isascii() and all(c.isalnum() or c in "+.-" for c in scheme)
    hp = _split_host(netloc) if sep and ok_scheme else None
    if hp is None:
        return None
    name, port = hp
    return f"{scheme}://{name}" + ("" if port in (None, DEFAULT_PORTS.get(scheme)) else f":{port}")


@dataclass(frozen=True)
class Access:
    """Who may call the server (`slm serve --host/--allow-host/--allow-origin`).

    Bound to a loopback address (the default), a request's Host header must name this machine (localhost, 127.0.0.1
    or [::1], at the bound port) or match `hosts` ("name" at any port, "name:port" exactly): a page on a domain that
    an attacker re-points at 127.0.0.1 (DNS rebinding) still sends its own name, and is refused. Bound elsewhere
    (0.0.0.0, a LAN address), Host is checked only when `hosts` is given (the bound address then counts too).
    A request with an Origin header (a browser's fetch or form post) must come from a page of this server (same
    host and port as its Host header) or from one of `origins`, which are also answered with CORS headers so
    their pages can call the API. "*" in `hosts` or `origins` allows any. Refusals are 403s with an OpenAI error body
    that says which flag allows the request."""

    bind: str = "127.0.0.1"
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for h in self.hosts:
            if h != "*" and _split_host(h) is None:
                raise SlmError(f"--allow-host {h!r} is not a host: give a name or address with an optional port, e.g. "
                               "example.com, example.com:8443, 192.168.1.5 or '*' (any)")  # fmt: skip
        for o in self.origins:
            if o != "*" and _origin(o) is None:
                raise SlmError(f"--allow-origin {o!r} is not an origin: give scheme://host[:port] as a browser sends "
                               "it, e.g. http://localhost:3000 or https://example.com, or '*' (any)")  # fmt: skip

    @property
    def checks_host(self) -> bool:
        return "*" not in self.hosts and (is_loopback(self.bind) or bool(self.hosts))

    @property
    def cors_origins(self) -> list[str]:
        """The origins other sites' pages call from, normalized (["*"] for any); empty: same-origin only."""
        return ["*"] if "*" in self.origins else [o for o in map(_origin, self.origins) if o]

    def own_names(self) -> tuple[str, ...]:
        """Host names accepted at the bound port: the loopback names, and the bound address when it is one."""
        bind = self.bind.strip().lower()
        bind = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
        wildcard = bind in ("", "0.0.0.0", "[::]")
        return LOOPBACK_NAMES + (() if wildcard or bind in LOOPBACK_NAMES else (bind,))

    def host_ok(self, host: str | None, port: int | None) -> bool:
        if not self.checks_host:
            return True
        hp = _split_host(host) if host is not None else None
        if hp is None:
            return False
        name, hport = hp
        hport = DEFAULT_PORTS["http"] if hport is None else hport
        if name in self.own_names() and (port is None or hport == port):
            return True
        entries = (_split_host(h) for h in self.hosts)
        return any(e is not None and e[0] == name and e[1] in (None, hport) for e in entries)

    def origin_ok(self, origin: str, host: str | None) -> bool:
        """The page at `origin` may call: it is this server's own (same host and port as the request's Host header,
        which `host_ok` checked) or an allowed one."""
        o = _origin(origin)
        if o is None:
            return False
        if "*" in self.origins or o in self.cors_origins:
            return True
        scheme, _, netloc = o.partition("://")
        ours, theirs = (_split_host(host) if host is not None else None), _split_host(netloc)
        if scheme not in DEFAULT_PORTS or ours is None or theirs is None:
            return False
        default = DEFAULT_PORTS[scheme]
        return ours[0] == theirs[0] and (ours[1] or default) == (theirs[1] or default)

    def refusal(self, scope: dict) -> APIError | None:
        """The 403 for an HTTP request that may not be served; None when it may."""
        headers = scope.get("headers") or []
        hosts = [v.decode("latin-1") for k, v in headers if k == b"host"]
        origins = [v.decode("latin-1") for k, v in headers if k == b"origin"]
        server = scope.get("server")
        port = server[1] if server else None
        host = hosts[0] if len(hosts) == 1 else None
        if not self.host_ok(host, port):
            named = ", ".join(self.own_names()) + (f" at port {port}" if port else "")
            extra = [h for h in self.hosts if h != "*"]
            got = "no Host header" if not hosts else f"{len(hosts)} Host headers" if len(hosts) > 1 else \
                f"Host {show(host)}"  # fmt: skip
            how = f"--allow-host {_split_host(host)[0]}" if host and _split_host(host) else "--allow-host NAME"
            return APIError(f"refused: this server (bound to {self.bind}) answers only requests addressed to "
                            f"{named}{', ' + ', '.join(extra) if extra else ''}; this one has {got} (protection "
                            f"against DNS rebinding). To reach it under that name (a proxy, a port forward, another "
                            f"machine), start it with `slm serve ... {how}`", code="host_not_allowed", status=403,
                            type="permission_error")  # fmt: skip
        for origin in origins:
            if not self.origin_ok(origin, host):
                return APIError(f"refused: a web page at {show(origin)} may not call this server from a browser; "
                                "only its own pages (same origin) may (cross-site protection). To allow that site, "
                                f"start it with `slm serve ... --allow-origin {_origin(origin) or 'ORIGIN'}`",
                                code="origin_not_allowed", status=403, type="permission_error")  # fmt: skip
        return None

    def describe(self, port: int) -> str:
        """Who may call, for the start-up line."""
        if self.checks_host:
            hosts = ", ".join(f"{n}:{port}" for n in self.own_names()) + "".join(f", {h}" for h in self.hosts)
        elif "*" in self.hosts:
            hosts = "any (--allow-host '*')"
        else:
            hosts = f"any (bound to {self.bind}: Host not checked; --allow-host NAME restricts it)"
        origins = "any (--allow-origin '*')" if "*" in self.origins else \
            "same-origin" + "".join(f", {o}" for o in self.cors_origins)  # fmt: skip
        return f"allowed hosts: {hosts}; allowed origins: {origins}"


class AccessGuard:
    """ASGI middleware applying an `Access` before anything else (routes, CORS) sees an HTTP request. Pure ASGI, so
    request bodies, streaming and disconnect detection pass through untouched."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refused = self.access.refusal(scope)
            if refused is not None:
                await refused.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
