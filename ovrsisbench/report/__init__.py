"""``ovrsisbench report``: a static HTML report with figures from result records
(``collect`` gathers, ``figures`` draws, ``sections`` lays out, ``page`` writes)."""

from ovrsisbench.report.page import write_report

__all__ = ["write_report"]
