"""`leantune curve`: how much data do I need? Nested fractions × seeds, a fitted power law, the
predicted gain from doubling the data (workflows/learning_curve.py, report/curve_fit.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import RecipeError
from .app import app, console, quiet_libraries, user_errors


def _numbers(text: str, kind, option: str) -> list:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"curve: {option} {text!r}: give comma-separated numbers, e.g. 0.1,0.25,0.5,1") from None


@app.command()
@user_errors
def curve(recipe: Path = typer.Argument(..., help="Recipe YAML file with data.train (the fractions are taken of it)."),
          fractions: str = typer.Option("0.1,0.25,0.5,1", "--fractions",
                                        help="Comma-separated fractions of the training set (nested for each seed)."),
          seeds: int = typer.Option(3, "--seeds", min=1, max=1000, help="Seeds per fraction: 0, 1, … N−1."),
          out: Path = typer.Option(Path("runs/curve"), "--out", help="Output folder (resumable)."),
          metric: Optional[str] = typer.Option(None, "--metric", help="Default: accuracy, macro_f1, f1, "
                                               "reward_accuracy, loss or perplexity, the first the runs report."),
          overrides: list[str] = typer.Argument(None, help="key.path=value overrides applied to every run."),
          isolate: bool = typer.Option(True, "--isolate/--in-process", help="One process per run.")):
    """Train on growing fractions of the data; fit a power law and predict what doubling the data buys."""
    chosen = _numbers(fractions, float, "--fractions")
    quiet_libraries()
    from ..recipe import load_recipe
    from ..workflows.learning_curve import fraction_curve

    raw = load_recipe(recipe, overrides or []).model_dump(mode="json")
    result, fit = fraction_curve(raw, chosen, list(range(seeds)), out_dir=out, base_dir=recipe.parent,
                                 metric=metric, isolate=isolate, say=lambda m: console.print(m, highlight=False))
    m = result["metric"]
    table = Table("fraction", "examples", f"{m} mean", "± std", "seeds")
    for r in result["points"]:
        table.add_row(f"{r['fraction']:g}", "" if r["examples"] is None else str(r["examples"]),
                      "" if r["mean"] is None else f"{r['mean']:.4f}",
                      "" if r["std"] is None else f"{r['std']:.4f}", str(r["n"]))
    console.print(table)
    console.print(escape(result["sentence"]), style="bold" if fit.trustworthy else "yellow", highlight=False)
    console.print(f"written: {out / 'curve.json'}, {out / 'curve.md'}, {out / 'curve.png'}", style="dim")
