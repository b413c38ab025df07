"""Hugging Face hub access with a fast, explicit failure when the hub cannot be reached.

huggingface_hub and transformers retry an unreachable hub for tens of seconds before giving up. varlit
first probes the endpoint once per process (a TCP connect with a short timeout); when the probe fails, or
`HF_HUB_OFFLINE` is set, every lookup is local-only (disk path or the hub cache) and a miss fails at once
with a message that names the download command and the flag that takes a local copy.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_probe_cache: dict[str, bool] = {}


class HubUnavailableError(RuntimeError):
    """A model or file that is neither on disk nor reachable on the hub."""


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds (cached per endpoint).

    Name resolution has no timeout of its own, so the probe runs in a daemon thread that is abandoned
    after `timeout`."""
    url = endpoint()
    if url in _probe_cache:
        return _probe_cache[url]
    parsed = urlparse(url)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    _probe_cache[url] = bool(result and result[0])
    return _probe_cache[url]


def local_only() -> bool:
    """Look only on disk and in the hub cache: offline by setting, or the hub does not answer."""
    return hub_offline() or not hub_reachable()


def why_unavailable() -> str:
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    return f"{endpoint()} is unreachable"


def download_command(repo: str, files: Sequence[str] = ()) -> str:
    """The `hf` command (huggingface_hub 1.x and later) that fetches `files` of `repo` into the hub cache."""
    return " ".join(["hf download", repo, *files])


def missing_error(
    repo: str, name: str, flag: str, kind: str, preset: str | None = None
) -> HubUnavailableError:
    """One line: what is missing, why it could not be fetched, how to get it, which flag takes a local copy."""
    files = [] if name == repo else [name]
    how = f"`{download_command(repo, files)}`"
    if preset:
        how = f"`varlit download --preset {preset}` or {how}"
    return HubUnavailableError(
        f"{kind} {name!r} ({repo}) is not on disk or in the Hugging Face cache and cannot be downloaded "
        f"({why_unavailable()}). Download it once with {how}, or pass a local {'folder' if flag == '--text_encoder' else 'file'} "
        f"with {flag} PATH."
    )
