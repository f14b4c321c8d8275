"""Which addresses a service may listen on, and what it needs to listen anywhere else.

One rule decides what is loopback (:func:`is_loopback`: every address the host resolves to reaches only
this machine); two checks apply it to the two services:

- :func:`check_bind`, for a service without a login (the dashboard, ``ner ui``): anyone who reaches it
  reads every dataset, prediction and run and can run read-only SQL. Loopback by default; another address
  needs ``--allow-remote``, and then a warning is said on every start.
- :func:`check_keyed_bind`, for the prediction service (``ner serve``), which can ask for an API key: off
  loopback it refuses to start without one (``NER_API_KEY`` or ``--api-key-file``).
"""

from __future__ import annotations

import ipaddress
import socket

from ner_core.settings import ENV

__all__ = ["API_KEY_HINT", "check_bind", "check_keyed_bind", "is_loopback"]

#: how clients send the prediction service's API key
API_KEY_HINT = "send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches only this machine: every address it resolves to is a
    loopback address. ``0.0.0.0`` / ``::`` (every interface) and names that do not resolve are not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0].split("%", 1)[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_bind(
    host: str, port: int, *, allow_remote: bool, what: str, flag: str = "--allow-remote"
) -> str | None:
    """For a service without a login (``what``, e.g. "the dashboard"): ``None`` for a loopback ``host``;
    the warning to print for another one when ``allow_remote``; ``ValueError`` (one line) for another one
    without it."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ValueError(
            f"{host} is not a loopback address and {what} has no login: anyone who can reach "
            f"{host}:{port} could read the whole database. Pass {flag} to listen there anyway (put it behind "
            "an authenticating proxy), or keep the default 127.0.0.1"
        )
    return (
        f"warning: {what} listens on {host}:{port} and has no login: anyone who can reach it reads every "
        "dataset, prediction and run and can run read-only SQL; put an authenticating proxy in front of it"
    )


def check_keyed_bind(host: str, api_key: str | None) -> None:
    """For the prediction service: refuse (``ValueError``, one line) to serve a non-loopback ``host``
    without an API key."""
    if api_key is None and not is_loopback(host):
        raise ValueError(
            f"--host {host} is reachable from other machines: set an API key in ${ENV['api_key']} or "
            f"--api-key-file FILE (clients {API_KEY_HINT}), or serve on 127.0.0.1 behind a proxy"
        )
