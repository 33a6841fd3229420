"""Fold a trained method into the base weights: a plain Hugging Face folder that
transformers loads without PEFT or leantune."""
from __future__ import annotations

import warnings
from pathlib import Path

from ..atomic import atomic_dir, check_output
from ..errors import NotMergeable
from .run_loading import load_run
from .ship import ship_folder


def merge_run(run_dir: str | Path, out_dir: str | Path, force: bool = False,
              base: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write the merged model to ``out_dir`` (a new folder, or an existing one with ``force``;
    never the run itself or a folder holding it); returns the folder and any warnings raised.
    ``base``: the run's base model where the run does not find it by itself (see ``load_run``).
    The folder ships what ``ship_folder`` adds: training's chat template, decoding, model card."""
    check_output(Path(out_dir), force=force, sources=(Path(run_dir),), what="merged model")
    run = load_run(run_dir, base=base)
    if not run.method.mergeable:
        raise NotMergeable(f"method '{run.method.name}' cannot be merged into the base weights; "
                           f"use the adapter in {run.run_dir / 'adapter'} with the base model instead")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = run.method.merge(run.model)
    merged.requires_grad_(False)
    with atomic_dir(Path(out_dir), force=force, sources=(Path(run_dir),), what="merged model") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        ship_folder(tmp, run.tokenizer, run.recipe, run.head, merged=True, run_dir=run.run_dir)
    notes = [str(w.message) for w in caught if "merg" in str(w.message)]
    return Path(out_dir), notes
