"""The reproduction of the papers' published results: ``python -m trainables.reproduce`` (train.py: the runs and the
command line; runs.py: what is run, from the families' presets; bootstrap.py: subject-level intervals; table.py:
results.json and table.md; recon_norm.py: the issue-29 table of the AAE family's two reconstruction terms)."""
