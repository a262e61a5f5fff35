"""The one exception the command line turns into ``analysis: error: ...`` and exit status 2."""

from __future__ import annotations

from trainables.errors import UserError


class AnalysisError(UserError):
    """Bad input the user can fix (unknown experiment, no pairs, ...); the message is one line."""
