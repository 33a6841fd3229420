"""`leantune data curate`: duplicates, broken and leaking examples out, a diverse subset kept."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import console, data_app, quiet_libraries, user_errors


@data_app.command("curate")
@user_errors
def data_curate(
        file: Path = typer.Argument(..., help="Data file (.jsonl, .json, .csv or .parquet; any leantune format)."),
        out: Path = typer.Option(..., "--out", "-o", help="Curated file, same extension as FILE; the dropped rows "
                                                          "go beside it as OUT_STEM.dropped.jsonl."),
        max_examples: Optional[int] = typer.Option(
            None, "--max", min=1, help="Keep at most N: k-center greedy on MiniLM sentence embeddings picks the "
                                       "most spread-out ones; classification data keeps its label balance (each "
                                       "label its proportional share)."),
        dedup: str = typer.Option("exact,near", "--dedup", help="exact, near, exact,near or none."),
        near_threshold: float = typer.Option(
            0.8, "--near-threshold", help="Near duplicate: Jaccard similarity of word 5-gram shingles at or above "
                                          "this (MinHash-LSH, confirmed on the exact Jaccard)."),
        decontaminate: Optional[Path] = typer.Option(
            None, "--decontaminate", help="Evaluation file (any format): drop examples sharing a word n-gram "
                                          "with one of its rows."),
        ngram: int = typer.Option(13, "--ngram", min=1, help="n of the shared n-gram that marks contamination."),
        min_chars: int = typer.Option(2, "--min-chars", min=0, help="Drop responses with fewer non-space "
                                                                    "characters."),
        max_chars: int = typer.Option(20_000, "--max-chars", min=1, help="Drop responses with more characters."),
        embedder: str = typer.Option("minilm-l6", "--embedder", help="Sentence-embedding model for --max."),
        format: Optional[str] = typer.Option(None, "--format", "-f", help="Data format (default: detected)."),
        force: bool = typer.Option(False, "--force", help="Replace existing output files.")):
    """Curate a data set: invalid rows, quality filters (too short or long, junk, repeated characters,
    lines or words, response = prompt), contamination with an evaluation file (a shared 13-word n-gram),
    exact and near duplicates (Jaccard ≥ 0.8 of word 5-grams), then a diverse subset of --max. Every
    dropped row is written with its reason (and the line it duplicates); kept + dropped = all rows."""
    from ..data.curate import CurateOptions, check_outputs, curate, write_curated

    kinds = tuple(k.strip() for k in dedup.split(",") if k.strip() and k.strip() != "none")
    opts = CurateOptions(max_examples=max_examples, dedup=kinds, near_threshold=near_threshold,
                         eval_path=decontaminate, ngram=ngram, min_chars=min_chars, max_chars=max_chars)
    side = check_outputs(file, out, force, also_read=(decontaminate,) if decontaminate else ())

    def embed(texts: list[str]):
        quiet_libraries()
        from ..prompting.demonstrations import get_embedder

        return get_embedder(embedder)(texts)

    result = curate(file, format, opts, embed)
    write_curated(result, out, force=force)
    table = Table("rows", "count", title=f"{escape(str(file))} ({result.format})")
    table.add_row("input", str(result.rows))
    for reason, count in result.counts():
        table.add_row(f"dropped: {reason}", str(count))
    table.add_row("kept", str(len(result.kept)), style="bold")
    console.print(table)
    console.print(f"wrote {len(result.kept)} rows to [bold]{escape(str(out))}[/] and {len(result.dropped)} "
                  f"dropped rows with their reasons to [bold]{escape(str(side))}[/]", highlight=False)
    if not result.kept and result.dropped:
        reason, count = max(result.counts(), key=lambda rc: rc[1])
        console.print(f"[yellow]warning:[/] no row was kept ({count} of {result.rows} dropped as {reason}); "
                      f"{escape(str(out))} is empty. Check the filters against the data (--min-chars, "
                      f"--max-chars, --ngram, --near-threshold, --dedup none)", highlight=False)
