"""`leantune recipe convert`: a LLaMA-Factory or axolotl config as a leantune recipe."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml
from rich.markup import escape

from ..errors import RecipeError
from .app import app, console, user_errors

if TYPE_CHECKING:
    from ..recipe.foreign import Translation

recipe_app = typer.Typer(no_args_is_help=True, help="Work with recipe files: convert other tools' configs.")
app.add_typer(recipe_app, name="recipe")


def print_translation(config: Path) -> Translation | None:
    """Print what a foreign config translates to and every key that does not map (yellow), and
    return it; None, printing nothing, for a leantune recipe."""
    from ..recipe.foreign import translate_foreign
    from ..yaml_source import read_yaml

    raw, marks = read_yaml(config)
    translation = translate_foreign(raw, marks, config) if isinstance(raw, dict) else None
    if translation is None:
        return None
    console.print(f"[yellow]note:[/] {escape(str(config))} is written for {translation.tool}; as a leantune recipe "
                  f"it reads:", highlight=False, soft_wrap=True)
    console.print(escape(yaml.safe_dump(translation.recipe, sort_keys=False)), highlight=False)
    if translation.unmapped:
        console.print(f"[yellow]not translated[/] ({len(translation.unmapped)} keys; key: value — why / what to do):",
                      highlight=False)
        for line in translation.unmapped:
            console.print(f"  [yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)
    return translation


@recipe_app.command("convert")
@user_errors
def convert(config: Path = typer.Argument(..., help="A LLaMA-Factory or axolotl training YAML."),
            out: Path | None = typer.Option(None, "--out", help="Write the leantune recipe here (a new file)."),
            force: bool = typer.Option(False, "--force", help="Replace an existing --out file.")):
    """Translate a LLaMA-Factory or axolotl config into a leantune recipe; name what does not map."""
    from ..atomic import atomic_write_text, check_output
    from ..recipe import load_recipe

    translation = print_translation(config)
    if translation is None:
        raise RecipeError(f"{config}: not a LLaMA-Factory config (model_name_or_path with stage or finetuning_type) "
                          f"nor an axolotl one (base_model with adapter or datasets); a leantune recipe needs no "
                          f"conversion")
    load_recipe(config)  # the translation validates as a recipe
    if out is None:
        return
    check_output(out, force=force, sources=(config,), what="recipe")
    atomic_write_text(out, yaml.safe_dump(translation.recipe, sort_keys=False))
    console.print(f"recipe written to [bold]{escape(str(out))}[/]", highlight=False)
