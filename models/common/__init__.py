"""Building blocks shared by several models (dense CLIP wrapper, text encoder, templates)."""
