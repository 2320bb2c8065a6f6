"""Built-in adapters: one thin module per model (registration, options, weights, protocol glue).

``BUILTINS`` names each one's class as ``module:Class``; ``ovrsisbench.registry`` imports a model's
module only when that model is asked for, so the CLI and leaderboards start without any model.
"""

BUILTINS: dict[str, str] = {
    "catseg": "ovrsisbench.adapters.catseg:CatSegAdapter",
    "gsnet": "ovrsisbench.adapters.gsnet:GSNetAdapter",
    "maskclip": "ovrsisbench.adapters.maskclip:MaskCLIPAdapter",
    "ovrs": "ovrsisbench.adapters.ovrs:OVRSAdapter",
    "rsktseg": "ovrsisbench.adapters.rsktseg:RSKTSegAdapter",
    "san": "ovrsisbench.adapters.san:SANAdapter",
    "sed": "ovrsisbench.adapters.sed:SEDAdapter",
    "segearth_ov": "ovrsisbench.adapters.segearth_ov:SegEarthOVAdapter",
}
