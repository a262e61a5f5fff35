"""One self-contained HTML report of a sweep: every table and figure, images embedded as
base64 PNG, no scripts, fonts or links to fetch, so it opens offline.

It opens with the answer (which arm wins, on which metric and classes, by how much, how sure,
and the winning model), then the evidence. A section whose inputs are missing (an artifact a
run did not write, too few search runs for importance, no paired runs) says why in place
instead of failing the whole report.
"""

from analysis.report import _answer, _evidence  # noqa: F401  (they register, in this order)
from analysis.report._document import SECTIONS, Report, build_report, section, section_titles

__all__ = ["SECTIONS", "Report", "build_report", "section", "section_titles"]
