"""Knowing quickly whether the Hugging Face Hub can be reached.

``huggingface_hub`` retries a failing request for tens of seconds before it gives up, which is
what an offline laptop or a cluster node without internet sees on every command. One TCP probe
of the Hub's endpoint (a few seconds at most) answers the question first; when it fails, the
process switches the hub library to its own offline mode, so cached files still load and
missing ones fail at once with our sentence instead of a retry loop.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=4)
def _reachable(url: str, timeout: float) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    return _reachable(endpoint(), timeout)


def set_offline() -> None:
    """Put huggingface_hub (and transformers/diffusers, which ask it) into offline mode for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - a dependency of transformers and diffusers
        pass


def ensure_offline_if_unreachable(offline: bool) -> bool:
    """``True`` when downloads must not be tried: offline asked for, or the Hub cannot be reached now."""
    if offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        set_offline()
        return True
    if not hub_reachable():
        set_offline()
        return True
    return False


def unreachable_hint() -> str:
    return f"the Hugging Face Hub ({urlparse(endpoint()).hostname}) cannot be reached from here"
