"""Protocols and vocabularies shipped as YAML data (package data of ovrsisbench.protocols)."""
