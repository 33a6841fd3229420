"""LeanBoard: the whole workflow on one gradio page — data, advice, training, runs and
comparison, chat, export — driving the same code as the command line.

Safety: the page binds to 127.0.0.1 unless told otherwise, and any other address needs a
user and password; every path it reads or writes is inside the workspace; uploads are
limited in size; one training at a time per run folder (``jobs.py``)."""
from __future__ import annotations

import os

import gradio as gr

from . import tab_advise, tab_chat, tab_data, tab_export, tab_runs, tab_train
from .access import check_exposure
from .board import Board, refreshed
from .jobs import Jobs
from .workspace import UPLOAD_LIMIT, Workspace

CSS = ".mono textarea {font-family: ui-monospace, monospace; font-size: 13px}"


def build_page(board: Board) -> gr.Blocks:
    with gr.Blocks(title="LeanBoard · leantune", analytics_enabled=False) as page:
        gr.Markdown(f"## LeanBoard · workspace `{board.workspace.root}`")
        tabs, data_pickers, run_pickers = [], [], []
        with gr.Tabs():
            for title, module, picks in (("Data", tab_data, data_pickers), ("Advise", tab_advise, data_pickers),
                                         ("Train", tab_train, run_pickers), ("Runs & compare", tab_runs, run_pickers),
                                         ("Chat", tab_chat, run_pickers), ("Export", tab_export, run_pickers)):
                with gr.Tab(title, elem_id=f"tab-{module.__name__.rsplit('_', 1)[-1]}") as tab:
                    picks.append(module.build(board))
                tabs.append(tab)

        def fresh_choices(*current):  # files and runs made since the page was drawn
            data, runs = board.workspace.data_files(), board.run_choices()
            return [refreshed(data if i < len(data_pickers) else runs, value) for i, value in enumerate(current)]
        for tab in tabs:
            tab.select(fresh_choices, [*data_pickers, *run_pickers], [*data_pickers, *run_pickers])
    return page



def serve(workspace: Workspace, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
          upload_limit: int = UPLOAD_LIMIT, block: bool = True):
    """Start the page (blocking unless ``block`` is False); refuses an exposed address without auth."""
    check_exposure(host, auth)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(workspace.root)  # the recipes' relative paths (data/, runs/) are the workspace's
    board = Board(workspace, Jobs(workspace))
    page = build_page(board)
    page.queue(default_concurrency_limit=4)
    return page.launch(server_name=host, server_port=port, auth=auth, max_file_size=upload_limit,
                       prevent_thread_lock=not block, show_error=True, quiet=False, ssr_mode=False,
                       theme=gr.themes.Default(), css=CSS,
                       footer_links=[])
