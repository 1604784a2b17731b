"""The leaderboard: read run directories, average each (data, model, sampler) over seeds, set published numbers
beside them, and write Markdown, CSV and a self-contained HTML page. Run ``python -m genbench.leaderboard --help``.

It reads ``metrics.json`` files only: no model, Lightning or torch import. It trusts none of them
(:mod:`~genbench.leaderboard.collect`): a record that is too large, too deep, not JSON or not an object is listed as
a corrupt run; a value of the wrong type is dropped; NaN and ±Infinity are left out of the mean and counted beside
it (:mod:`~genbench.leaderboard.stats`); every such run or value is a warning naming its path. Runs measured under
different evaluation protocols are never averaged together, and each table holds one protocol, stated once above
it. Every string is escaped for the format it is written in (:mod:`~genbench.leaderboard.markdown`,
:mod:`~genbench.leaderboard.csv_export`, :mod:`~genbench.leaderboard.render` for the HTML page, whose CSS and JS
are the package data in ``static/``). The page shows each row's sample grid in a gallery under its table.
"""
