"""Converters from source datasets (and synthetic demo data) into the unified layout."""
