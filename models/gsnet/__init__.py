"""GSNet (Ye, Zhuge, Zhang; AAAI 2025): CLIP and DINO "RSIB" costs, Cat-Seg aggregation,
the RIPD decoder."""
