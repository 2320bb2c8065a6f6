"""ovrsisbench: a benchmark harness for open-vocabulary remote-sensing image segmentation."""

from importlib import metadata

try:
    __version__ = metadata.version("ovrsisbench")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
