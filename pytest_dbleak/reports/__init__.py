"""Reports of a run: the terminal text, JSON, HTML and the baseline. No pytest import."""
