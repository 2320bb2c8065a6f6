"""ovrsisbench: a benchmark harness for open-vocabulary remote-sensing image segmentation.

``ovrsisbench.evaluate(...)`` evaluates a model on a protocol from Python (see
``ovrsisbench.api``); it is imported on first use, so ``import ovrsisbench`` stays light.
"""

from importlib import metadata

try:
    __version__ = metadata.version("ovrsisbench")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["Evaluation", "__version__", "evaluate"]


def __getattr__(name: str):
    if name in ("evaluate", "Evaluation"):
        from ovrsisbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'ovrsisbench' has no attribute '{name}'")
