"""SegEarth-OV (Li et al., CVPR 2025): training-free open-vocabulary segmentation of remote-sensing
images with CLIP and the SimFeatUp upsampler (spec baselines.md 7)."""

from .checkpoint import load_upsampler, upsampler_state
from .model import (
    CONFIGS,
    PIXEL_MEAN_255,
    PIXEL_STD_255,
    SegEarthConfig,
    SegEarthOV,
    build_network,
    class_probabilities,
    reject_background,
)
from .upsampler import SimFeatUp, adaptive_conv

__all__ = [
    "CONFIGS",
    "PIXEL_MEAN_255",
    "PIXEL_STD_255",
    "SegEarthConfig",
    "SegEarthOV",
    "SimFeatUp",
    "adaptive_conv",
    "build_network",
    "class_probabilities",
    "load_upsampler",
    "reject_background",
    "upsampler_state",
]
