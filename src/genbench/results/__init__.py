"""The results: a set of finished benchmark runs rendered into committed, human-readable files. Run
``python -m genbench.results --layout results/layout.yaml --out results/``.

A layout file (:mod:`.layout`) names the sections and the run roots of each. Per section and dataset the
README holds the leaderboard's tables (mean ± std over seeds, one protocol each, stated once), a table per model
of what does not depend on the sampler, the learning curves' final points, an optional comparison and the runs'
flags; beside it are a samples figure and a learning-curves figure per dataset, the leaderboard's CSV and page of
every row, and the machines, libraries and commits the runs ran on. Nothing in them is written by hand: all
comes from the runs' ``metrics.json`` and pictures, read as the leaderboard reads them (:mod:`genbench.leaderboard`:
untrusted, bounded, escaped), and from the layout. No torch: Pillow draws (:mod:`genbench.drawing`,
:mod:`genbench.panels`).
"""
