"""Built-in adapters: one thin module per model (registration, options, weights, protocol glue)."""

from ovrsisbench.adapter import Adapter
from ovrsisbench.adapters.catseg import CatSegAdapter
from ovrsisbench.adapters.gsnet import GSNetAdapter
from ovrsisbench.adapters.maskclip import MaskCLIPAdapter
from ovrsisbench.adapters.ovrs import OVRSAdapter
from ovrsisbench.adapters.rsktseg import RSKTSegAdapter
from ovrsisbench.adapters.san import SANAdapter
from ovrsisbench.adapters.sed import SEDAdapter
from ovrsisbench.adapters.segearth_ov import SegEarthOVAdapter

BUILTINS: dict[str, type[Adapter]] = {
    "catseg": CatSegAdapter,
    "gsnet": GSNetAdapter,
    "maskclip": MaskCLIPAdapter,
    "ovrs": OVRSAdapter,
    "rsktseg": RSKTSegAdapter,
    "san": SANAdapter,
    "sed": SEDAdapter,
    "segearth_ov": SegEarthOVAdapter,
}
