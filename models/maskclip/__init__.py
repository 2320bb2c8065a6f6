"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022): training-free dense labels from CLIP's value path."""

from .model import MaskCLIP, use_mmseg_numerics

__all__ = ["MaskCLIP", "use_mmseg_numerics"]
