"""`leantune webui`: LeanBoard, the whole workflow in a browser (webui/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .app import app, console, quiet_libraries, user_errors


@app.command()
@user_errors
def webui(host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; any but the loopback "
                                   "needs --auth."),
          port: int = typer.Option(7860, "--port", min=1, max=65535),
          workspace: Path = typer.Option(Path("."), "--workspace", help="The folder the page reads and writes "
                                         "(data/, recipes/, runs/, exports/); nothing outside it."),
          auth: Optional[str] = typer.Option(None, "--auth", envvar="LEANTUNE_WEBUI_AUTH",
                                             help="USER:PASSWORD asked by the page (required off the loopback).")):
    """LeanBoard: data check, advice, training, comparison, chat and export in the browser."""
    from ..webui.access import check_exposure, parse_auth

    credentials = parse_auth(auth)
    check_exposure(host, credentials)  # before anything loads: a refusal takes a second
    quiet_libraries()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page reports nothing to anyone
    from ..webui.app import serve
    from ..webui.workspace import Workspace

    ws = Workspace(workspace)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"LeanBoard on http://{shown}:{port} · workspace {ws.root}", highlight=False, soft_wrap=True)
    serve(ws, host=host, port=port, auth=credentials)
