"""Everything that runs several trainings: ``compare`` (several recipes side by side),
learning curves (several data sizes and seeds) and the demo (a baseline and a run).
Each calls the one-run pipeline; nothing below imports from here."""
