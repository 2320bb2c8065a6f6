"""SED (spec baselines.md)."""
