"""leantune: fine-tune language models when data and compute are scarce."""

__version__ = "0.1.0"
