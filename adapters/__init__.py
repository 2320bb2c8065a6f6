"""Built-in adapters: one thin module per model (registration, options, weights, protocol glue)."""

from ovrsisbench.adapter import Adapter
from ovrsisbench.adapters.maskclip import MaskCLIPAdapter
from ovrsisbench.adapters.rsktseg import RSKTSegAdapter

BUILTINS: dict[str, type[Adapter]] = {
    "maskclip": MaskCLIPAdapter,
    "rsktseg": RSKTSegAdapter,
}
