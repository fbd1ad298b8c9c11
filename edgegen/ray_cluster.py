"""Joining a Ray cluster for ``--ray ADDRESS|local`` (batch generation and training share it).

Imported only when Ray is asked for: the base install never imports Ray.
"""

from __future__ import annotations

from edgegen.errors import EdgegenError

LOCAL = "local"  # a Ray instance on this machine (or the one this process already initialized)


def connect(address: str) -> bool:
    """Join the Ray instance of ``address``: "local" (the one this process already initialized, else a new
    one on this machine, reached on loopback only) or a cluster address. Returns whether this call started
    it (and so should ``ray.shutdown()`` it)."""
    try:
        import ray
    except ImportError:
        raise EdgegenError("--ray needs Ray: pip install 'edgegen[ray]'") from None
    if ray.is_initialized():
        return False
    try:
        if address == LOCAL:
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise EdgegenError(f"cannot reach the Ray cluster at {address}: {e}") from None
    return True
