"""Which addresses a service may listen on without an explicit opt-in.

The dashboard (``ner ui``) has no login: anyone who reaches it reads every dataset, prediction and run
and can run read-only SQL. It listens on loopback by default; another address needs ``--allow-remote``,
and then it says so on every start (:func:`check_bind`).
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["check_bind", "is_loopback"]


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
    """``None`` for a loopback ``host``; the warning to print for another one when ``allow_remote``;
    ``ValueError`` (one line) for another one without it."""
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
