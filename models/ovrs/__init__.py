"""OVRS (Cao et al., TGRS 2025): Cat-Seg with a rotation-aggregated cost and guided upsampling."""
