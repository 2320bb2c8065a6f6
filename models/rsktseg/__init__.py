"""RSKT-Seg (Li et al., AAAI-26): the trainable head over CLIP, RemoteCLIP and DINO features."""
