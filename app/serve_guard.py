"""What stands between the network and the prediction service (:mod:`app.serve`): the API key, the
request body (size, read deadline, nesting, text that is not valid Unicode), idle connections and the
uvicorn server that stops gracefully.

- **Host.** A service on loopback is still reachable from a web page through DNS rebinding (the page's own
  name made to resolve to 127.0.0.1): the browser then sends that name in ``Host``. :class:`HostPolicy`
  answers only the names the service is bound to (its ``--host``; localhost, 127.0.0.1 and ::1 on loopback;
  any IP address and this machine's name on 0.0.0.0 / ::) and those of ``--allowed-hosts`` /
  ``$NER_ALLOWED_HOSTS`` (``*``: any); ports are not compared (an ssh tunnel or a proxy changes them, a
  rebinding attack changes the name). Any other name -> 421 Misdirected Request, on every path. A request
  without ``Host`` (HTTP/1.0 tools; every browser sends one) is answered.
- **API key.** :func:`load_api_key` reads it from ``--api-key-file FILE`` or the ``NER_API_KEY``
  environment variable (through :func:`ner_core.settings.settings`); :func:`app.exposure.check_keyed_bind`
  refuses to serve a non-loopback address without one. Clients
  send it as ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``); :class:`RequestGuard` compares it in
  constant time (:func:`hmac.compare_digest`) on every path except ``/health`` and answers 401 otherwise.
- **Bodies.** :class:`RequestGuard` reads each body itself, up to ``max_body_bytes`` however it is sent
  (``Content-Length`` or chunked): beyond -> 413, at once; a body not complete within ``body_timeout_s``
  (a client that stops sending) -> 408. Both close the connection. A body that is not UTF-8, or JSON
  nested deeper than :data:`MAX_JSON_DEPTH`, -> 422 before any parser recurses into it
  (:func:`body_problem`). :func:`text_problem` names a lone
  surrogate (``"\\ud800"``, which JSON allows and UTF-8 cannot carry) or a NUL character in a text.
- **Connections.** :class:`IdleTimeoutH11Protocol` closes a connection that has not sent a whole request
  head within the idle timeout (uvicorn only times out connections idle *between* requests, so a client
  that connects and says nothing, or sends its headers a byte at a time, would hold a slot forever).
- **Memory.** After each batch the model worker calls :func:`release_freed_memory`: glibc keeps the
  pages of freed blocks (per-thread arenas, a mmap threshold that rises after large frees), so a service
  fed 10,000-character texts by many clients kept its peak working set and crept up under varied load;
  ``malloc_trim(0)`` hands the free pages back to the system. Elsewhere (not glibc) it does nothing.
  :func:`bound_kernel_cache` caps oneDNN's cache of compiled kernels (one per operation and input shape;
  1,024 by default) at :data:`KERNEL_CACHE_CAPACITY` unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is set:
  requests of every length make new shapes for as long as the service runs, and the default cache kept
  growing with them (+15% resident memory after 3 minutes of 64 clients with a cap of 256, still rising;
  with 64 it stays between +4% and +12%, the load's own working set).
- **Stopping.** :func:`run_server` runs uvicorn with these settings; on SIGTERM or SIGINT uvicorn stops
  accepting connections, lets the requests in flight finish (at most ``graceful_timeout_s``), then the
  app's shutdown drains and stops the batcher.

Every refusal here is JSON ``{"detail": "..."}`` with one sentence saying what was wrong.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from uvicorn.protocols.http.h11_impl import H11Protocol

from app import exposure
from app.exposure import API_KEY_HINT
from ner_core.settings import ENV, Settings, settings

API_KEY_ENV = ENV["api_key"]
MIN_KEY_CHARS = 16
OPEN_PATHS = frozenset({"/health"})  # answered without the API key (load balancers, monitors)
MAX_JSON_DEPTH = 32  # a valid request nests 2 levels ({"texts": [...]})


# ----------------------------------------------------------------------------------------- Host
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
_HOST_NAME = re.compile(r"^(\*|[a-z0-9_-]+(\.[a-z0-9_-]+)*|[0-9a-f:.]+)$")


def _normal_name(name: str) -> str:
    """A host name as compared: lower case, without IPv6 brackets or a final dot."""
    return name.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host_header(value: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``), normalised; ``None``
    when it is malformed."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    else:
        name, _, port = value.partition(":")
        if ":" in port or (port and not port.isdigit()):
            return None
    name = _normal_name(name)
    return name if name and name != "*" and _HOST_NAME.match(name) else None


@dataclass(frozen=True)
class HostPolicy:
    """Which names the service answers for in ``Host`` (see the module's doc): ``names``, plus any IP
    address when ``any_ip`` (bound to every interface), or anything when ``any_name``."""

    names: frozenset[str]
    any_ip: bool = False
    any_name: bool = False

    @classmethod
    def for_bind(cls, host: str, allowed_hosts: Iterable[str] = ()) -> HostPolicy:
        """The policy of a service bound to ``host`` with the extra names ``allowed_hosts`` (``*``: any);
        a name that cannot be a host name is a ``ValueError`` (one line)."""
        extra = [_normal_name(n) for n in allowed_hosts if n.strip()]
        bad = [n for n in extra if not _HOST_NAME.match(n)]
        if bad:
            raise ValueError(
                f"--allowed-hosts: {bad[0]!r} is not a host name or address (give names such as "
                "ner.example.com or 10.0.0.5, separated by commas; * for any)"
            )
        names = {_normal_name(host), *extra}
        wildcard = _normal_name(host) in WILDCARD_BINDS
        if wildcard or exposure.is_loopback(host):
            names.update(LOOPBACK_NAMES)
        if wildcard:
            names.update(_normal_name(n) for n in (socket.gethostname(), socket.getfqdn()) if n)
        return cls(frozenset(names - {""}), any_ip=wildcard, any_name="*" in names)

    def problem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Why a request with these headers is not answered (its ``Host`` names another server), or
        ``None``."""
        if self.any_name:
            return None
        for key, value in headers:
            if key != b"host":
                continue
            shown = value.decode("latin-1")[:100]
            name = split_host_header(value.decode("latin-1"))
            if name is None:
                return f"malformed Host header {shown!r}"
            if name not in self.names and not (self.any_ip and _is_ip(name)):
                return (
                    f"this service does not answer for host {shown!r}, only for the names of the address it "
                    f"listens on; start it with --allowed-hosts {name} (or ${ENV['allowed_hosts']}) to "
                    "serve that name"
                )
        return None


# ----------------------------------------------------------------------------------------- API key
_LIBC: list = []
#: oneDNN kernels the service keeps compiled (see the module docstring)
KERNEL_CACHE_CAPACITY = 64


def bound_kernel_cache(environ: dict | None = None) -> str:
    """Cap oneDNN's kernel cache for this process unless the environment already sets it; call before the
    first tensor operation (oneDNN reads the variable once). Returns the capacity in force."""
    env = os.environ if environ is None else environ
    return env.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(KERNEL_CACHE_CAPACITY))


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the system (glibc ``malloc_trim(0)``, which also releases free
    pages inside the heap and every arena); False where there is no glibc."""
    if not _LIBC:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.append(libc.malloc_trim if hasattr(libc, "malloc_trim") else None)
        except OSError:
            _LIBC.append(None)
    trim = _LIBC[0]
    if trim is None:
        return False
    trim(0)
    return True


def load_api_key(key_file: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``key_file`` (its first line, whitespace stripped) if given, else the settings'
    ``NER_API_KEY`` (:func:`ner_core.settings.settings`; of ``environ`` instead when given, for tests);
    ``None`` when neither is set. A missing or empty file, or a key shorter than :data:`MIN_KEY_CHARS`, is
    a ``ValueError`` that says so."""
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise ValueError(f"--api-key-file {path}: no such file")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        key, where = (lines[0].strip() if lines else ""), f"--api-key-file {path}"
    else:
        secret = (settings() if environ is None else Settings.from_env(environ)).api_key
        if secret is None:
            return None
        key, where = secret.get_secret_value().strip(), f"${API_KEY_ENV}"
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(
            f"the API key in {where} has {len(key)} characters; use at least {MIN_KEY_CHARS} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return key


def _key_problem(headers: list[tuple[bytes, bytes]], key: bytes) -> str | None:
    """Why the request's key is not accepted, or ``None``; compared in constant time."""
    given = None
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
        elif name == b"x-api-key":
            given = value.strip()
    if given is None:
        return f"this service needs an API key: {API_KEY_HINT}"
    if not hmac.compare_digest(given, key):
        return "wrong API key"
    return None


# ----------------------------------------------------------------------------------------- bodies
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` (JSON text) nests arrays/objects deeper than ``limit``; brackets inside strings do
    not count. Fast for ordinary bodies: fewer brackets than ``limit`` cannot nest deeper."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for c in _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body)):
        depth += 1 if c in b"[{" else -1
        if depth > limit:
            return True
    return False


def body_problem(body: bytes) -> str | None:
    """Why ``body`` cannot be a JSON request before any parser sees it: bytes that are not UTF-8 (JSON's
    encoding), or nesting deeper than :data:`MAX_JSON_DEPTH`; ``None`` when neither."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the body is not UTF-8 (byte {exc.start}: {body[exc.start : exc.start + 1]!r})"
    if json_depth_exceeds(body):
        return f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
    return None


def text_problem(texts: list[str]) -> str | None:
    """A sentence naming the first text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``:
    JSON lets it through, UTF-8 cannot carry it) or holds a NUL character; ``None`` when all are fine."""
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"text {i}: character {exc.start} is a lone surrogate (U+{ord(t[exc.start]):04X}), not valid "
                "Unicode; send UTF-8 text (a \\uD8xx escape must be followed by its \\uDCxx pair)"
            )
        if "\x00" in t:
            return f"text {i}: character {t.index(chr(0))} is a NUL (U+0000); remove NUL characters"
    return None


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _reply(send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    """A JSON ``{"detail"}`` answer; 408/413 close the connection (the rest of the body is not read)."""
    body = json.dumps({"detail": detail}, ensure_ascii=False).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    if status in (408, 413):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: the ``Host`` (``hosts``, :class:`HostPolicy`; 421 for another name), the API key
    (when one is set; not on :data:`OPEN_PATHS`), then the body read
    whole within ``max_body_bytes`` and ``body_timeout_s`` and checked for nesting, then handed on to the
    app unchanged. ``limits_hint`` ends the 413 message (what the limit derives from)."""

    def __init__(
        self,
        app,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        api_key: str | None = None,
        limits_hint: str = "",
        hosts: HostPolicy | None = None,
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.key = api_key.encode("utf-8") if api_key is not None else None
        self.limits_hint = limits_hint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.hosts is not None and (problem := self.hosts.problem(scope["headers"])) is not None:
            return await _reply(send, 421, problem)
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            problem = _key_problem(scope["headers"], self.key)
            if problem is not None:
                return await _reply(send, 401, problem, {"WWW-Authenticate": "Bearer"})
        try:
            body = await self._read_body(scope, receive)
        except _Refused as exc:
            return await _reply(send, exc.status, exc.detail)
        if body is None:  # the client went away
            return None
        problem = body_problem(body)
        if problem is not None:
            expected = '(expected JSON {"text": "..."} or {"texts": ["...", ...]})'
            return await _reply(send, 422, f"invalid request: {problem} {expected}")
        return await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: str) -> _Refused:
        return _Refused(
            413,
            f"request body is {size} bytes; this service accepts at most {self.max_body_bytes} bytes"
            + (f" ({self.limits_hint})" if self.limits_hint else ""),
        )

    async def _read_body(self, scope, receive) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise self._too_large(str(int(value)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise _Refused(
                    408,
                    f"request body not received within {self.body_timeout_s:g} s "
                    f"({size} bytes arrived); send the whole body at once",
                ) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(f"more than {self.max_body_bytes}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A ``receive`` that hands the app the body read already, then passes on to the real one (whose next
    message is the client's disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ----------------------------------------------------------------------------------------- the server
class IdleTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline: a connection that has not sent a whole request
    head within ``timeout_keep_alive`` seconds of being made, or of its last response, is closed. (uvicorn
    alone arms its keep-alive timer only after a response and drops it on the first byte received, so a
    client that connects and says nothing, or sends its headers a byte at a time, holds a slot forever.)"""

    _head_timer = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        self._arm_head_timer()  # before: a pipelined request handled in there disarms it again
        super().on_response_complete()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.timeout_keep_alive_handler()


def run_server(
    app,
    *,
    host: str,
    port: int,
    idle_timeout_s: float = 5.0,
    max_connections: int | None = None,
    graceful_timeout_s: float = 30.0,
    log_level: str = "warning",
    access_log: bool = False,
) -> None:
    """Serve ``app`` with uvicorn until SIGTERM/SIGINT, then stop gracefully: no new connections, the
    requests in flight finish (at most ``graceful_timeout_s``), then the app's shutdown runs.
    ``max_connections``: connections and requests at once before uvicorn answers 503."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        http=IdleTimeoutH11Protocol,
        timeout_keep_alive=idle_timeout_s,  # type: ignore[arg-type]  (an int in the hints; any number works)
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=graceful_timeout_s,  # type: ignore[arg-type]
        log_level=log_level,
        access_log=access_log,
    )
