"""ovrsisbench-colour-prototype: an example third-party OVRSISBench adapter (see ``adapter``)."""

from ovrsis_colour_prototype.adapter import ColourPrototypeAdapter

__all__ = ["ColourPrototypeAdapter"]
