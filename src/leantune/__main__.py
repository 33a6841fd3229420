"""`python -m leantune`: the same as the `leantune` command."""
from .cli import app

app(prog_name="leantune")
