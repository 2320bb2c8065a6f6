"""What a result was computed with: package versions, platform, device, git revision."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import ovrsisbench

PACKAGES = ("torch", "torchvision", "numpy", "open_clip_torch", "timm", "pillow")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cache
def git_revision() -> str | None:
    """The git commit of the source tree ovrsisbench runs from, when it is a checkout."""
    source = Path(ovrsisbench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name(device: torch.device) -> str:
    """A human-readable name of the device results were computed on."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()})"


def describe_environment() -> dict[str, Any]:
    """Versions and platform facts stored in every result record."""
    return {
        "ovrsisbench": ovrsisbench.__version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
