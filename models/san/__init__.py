"""SAN (Xu et al., CVPR 2023): a side adapter network on a frozen CLIP proposes masks and
attention biases; CLIP's last blocks recognise each mask (spec ``baselines.md`` 5)."""
