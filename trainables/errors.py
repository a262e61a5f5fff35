"""The one family of errors meant for the user.

The command lines (``tune.py``, ``python -m analysis``) catch ``UserError`` only: its message
is printed as one line and the command exits with status 2. Anything else, a plain
``ValueError`` included, is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; printed as one line, exit status 2."""
