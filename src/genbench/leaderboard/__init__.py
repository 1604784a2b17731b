"""The leaderboard: read run directories, average each (data, model, sampler) over seeds, set published numbers
beside them, and write Markdown, CSV and a self-contained HTML page. Run ``python -m genbench.leaderboard --help``.

It reads ``metrics.json`` files only: no model, Lightning or torch import.
"""
