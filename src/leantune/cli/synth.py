"""`leantune data synth`: new instruction / input / output tasks from seed tasks (self-instruct)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import LeantuneError
from .app import console, data_app, quiet_libraries, user_errors


@data_app.command("synth")
@user_errors
def data_synth(
        seeds: Path = typer.Argument(..., help="Seed tasks: a chat data file (alpaca: instruction, input, output)."),
        teacher: str = typer.Option(..., "--teacher", "-t",
                                    help="The model that writes tasks: a packaged name, a model folder, a run "
                                         "directory, or an OpenAI-compatible endpoint (http://host:port/v1)."),
        n: int = typer.Option(..., "-n", min=1, help="Tasks the output file should hold (counting what it holds)."),
        out: Path = typer.Option(..., "--out", "-o",
                                 help="Output .jsonl; an existing one is continued (appended to, never rewritten)."),
        format: str = typer.Option("alpaca", "--format", "-f", help="Output format: alpaca, messages or chatglm."),
        api_key_env: Optional[str] = typer.Option(
            None, "--api-key-env", help="Environment variable holding the endpoint's API key (default "
                                        "OPENAI_API_KEY when set); sent only as the Authorization header."),
        model_name: Optional[str] = typer.Option(None, "--model-name",
                                                 help="Model to ask at the endpoint (default: the first it lists)."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed for sampling prompts and the teacher's tokens."),
        max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=16, help="Tokens per teacher answer."),
        temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="Sampling temperature (0: greedy)."),
        max_prompts: Optional[int] = typer.Option(None, "--max-prompts", min=1,
                                                  help="Stop after this many teacher calls (default 10 × N)."),
        keywords: Optional[str] = typer.Option(
            None, "--keywords", help="Comma-separated words that drop an instruction (default the paper's: "
                                     "image, picture, graph, file, map, draw, plot, go to, video, audio, …; "
                                     "'' for none). Shell or data tasks may need 'file' allowed.")):
    """Self-instruct (Wang et al. 2022): a teacher writes new tasks from seed tasks; kept only if
    their instruction's ROUGE-L with every kept one is below 0.7 and they pass the keyword,
    length and format filters. Writes OUT and OUT.report.json (kept, dropped per reason)."""
    if out.resolve() == seeds.resolve():
        raise LeantuneError(f"{out}: --out is the seed file; choose another file")
    quiet_libraries()
    from ..data.selfinstruct import KEYWORDS
    from ..workflows.synth import report_path, synthesize
    from ..workflows.teachers import make_teacher

    model = make_teacher(teacher, model_name=model_name, api_key_env=api_key_env)
    report = synthesize(seeds, model, n, out, fmt=format, seed=seed, max_new_tokens=max_new_tokens,
                        temperature=temperature, max_prompts=max_prompts,
                        keywords=KEYWORDS if keywords is None else tuple(w.strip().lower() for w in keywords.split(",")
                                                                          if w.strip()))
    resumed = f" (continuing {report.resumed_from})" if report.resumed_from else ""
    console.print(f"kept {report.kept} new task(s){resumed}: {out} holds {report.total} of {n}, "
                  f"after {report.prompts} prompt(s) in {report.seconds:.0f} s", highlight=False, soft_wrap=True)
    for reason, count in report.dropped.most_common():
        console.print(f"  dropped {count:>4}  {escape(reason)}", highlight=False)
    console.print(f"report: {report_path(out)}", highlight=False)
    if report.total < n:
        console.print(f"[yellow]stopped at --max-prompts {report.prompts} before reaching {n}; run the same "
                      f"command again to continue", highlight=False, soft_wrap=True)
