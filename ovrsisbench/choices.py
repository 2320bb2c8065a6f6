"""The fixed sets of values that options take: named once here, light to import (the command
line lists them in ``--help`` and offers them to shell completion without importing torch)."""

#: absent-class policies of the scores (``ovrsisbench.metrics``)
POLICIES = ("exclude-absent", "mmseg")
#: leaderboard output formats (table: for the terminal; csv and md: also for files)
FORMATS = ("table", "csv", "md")
#: what ``prepare`` converts: the official download or the RSKT-Seg authors' OVSISBench archive
SOURCE_KINDS = ("raw", "archive")
#: how ``prepare`` tiles the border of a large image (``ovrsisbench.data.tiling``)
EDGE_MODES = ("drop", "clamp", "pad")
#: mixed precision of training
AMP_MODES = ("auto", "bf16", "off")
#: where models run (a GPU is picked with CUDA_VISIBLE_DEVICES, or by torchrun per process)
DEVICES = ("cpu", "cuda")
#: the built-in models' backbones (``--backbone``; another adapter's: ``-o backbone=NAME``)
BACKBONES = ("vit-b", "vit-l", "convnext-b", "convnext-l", "tiny")
#: file formats of the report's standalone figures (``ovrsisbench report --format``)
FIGURE_FORMATS = ("svg", "png", "pdf")
