"""``tune.py``'s machinery: the validated plan, the Ray Tune runner and the summary."""
