"""Who may reach the page: the loopback by default; any other address only with a user and
password, since the page starts trainings and reads and writes files. No gradio here, so that
a refusal comes before anything heavy loads."""
from __future__ import annotations

import ipaddress

from ..errors import LeantuneError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise LeantuneError("--auth: give it as USER:PASSWORD (both non-empty)")
    return user, password


def check_exposure(host: str, auth: tuple[str, str] | None) -> None:
    """Any address but the loopback needs a user and password: the page starts trainings and
    reads and writes files."""
    if not is_local(host) and auth is None:
        raise LeantuneError(f"--host {host}: the page would be open to the network without a password, and it "
                            f"starts trainings and writes files; add --auth USER:PASSWORD (or set "
                            f"LEANTUNE_WEBUI_AUTH), or keep the default --host 127.0.0.1")
