"""Publishing a finished file: readable by others as the umask allows, swapped in by one rename."""

from __future__ import annotations

import os
from pathlib import Path


def publish_file(tmp: str | Path, out: str | Path) -> None:
    """Give ``tmp`` the umask's permissions (mkstemp and safetensors write 0600, which hides a shared store or
    a shippable pack from other users), then atomically replace ``out`` with it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out)
