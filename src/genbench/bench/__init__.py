"""`make bench` (`python -m genbench.bench`): how fast genbench trains and evaluates every model, side by side.

For each ``conf/model/*.yaml`` on MNIST-shaped (1x28x28) and 64x64x3 images it measures training throughput and
peak memory through genbench's Lightning path and through a plain PyTorch loop of the same model, optimiser and
batch; the device-resident batches against a standard DataLoader; sampling, feature-extraction and FID speed
against torch-fidelity; and, on a GPU, bf16 / channels_last / torch.compile. It writes ``bench.json`` and prints
tables. It is a benchmark, not a test: ``tests/test_bench.py`` only checks that a tiny run works.

- ``configs``: compose the real configs, synthetic images of the right shape (or the real data).
- ``timing``: per-step clocks that never sync the hot loop, peak memory.
- ``training``: the Lightning path, the plain loop, the data path, GPU switches, the GLANN estimate.
- ``evaluation``: sampling, features and FID against torch-fidelity with the same extractor.
- ``suite``: the run over models x sizes, each cell guarded (a model that fails is skipped with its reason).
- ``tables``: the printed summary; ``cli``: the options and ``bench.json``.
"""
