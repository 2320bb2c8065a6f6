"""Cat-Seg (Cho et al., CVPR 2024): CLIP cost volume, CAT-Seg aggregation, upsampling decoder."""
