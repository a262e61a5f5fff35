"""Analysis of a finished sweep, read from MLflow: ``python -m analysis --help``.

Layout: ``store`` is the only module that talks to MLflow; ``tables``, ``stats``,
``confusion``, ``curves``, ``predictions`` and ``importance`` are pure functions of pandas
tables and numpy arrays; ``plots`` draws their results; ``results`` loads what each command
needs; ``report`` writes the HTML; ``predict`` runs a logged model on image files; ``cli``
wires the commands.
"""

from analysis.errors import AnalysisError

__all__ = ["AnalysisError"]
