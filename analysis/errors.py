"""The one exception the command line turns into ``analysis: error: ...`` and exit status 2."""

from __future__ import annotations


class AnalysisError(ValueError):
    """Bad input the user can fix (unknown experiment, no pairs, ...); the message is one line."""
