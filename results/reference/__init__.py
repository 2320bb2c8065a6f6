"""Published reference numbers, with their sources (package data of ovrsisbench.reference)."""
