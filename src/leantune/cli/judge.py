"""`leantune judge`: run A against run B, each question judged in both orders (workflows/judge.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import LeantuneError
from .app import app, console, quiet_libraries, user_errors


def _confirmer(yes: bool):
    """Print the estimate; an endpoint may bill the calls, so it is asked for (or --yes), and a
    session without a terminal to answer on stops before the first call. A local judge costs
    only time, and an interrupted judge continues where it stopped: no question then."""
    def confirm(est) -> None:
        tokens = f"{est.prompt_tokens:,} prompt tokens" + ("" if est.exact else " (about: characters / 4)")
        console.print(f"judge calls: {est.calls} (two per question), {tokens}, at most "
                      f"{est.max_reply_tokens:,} reply tokens", highlight=False, soft_wrap=True)
        if est.local or yes:
            return
        if not sys.stdin.isatty():
            raise LeantuneError("the judge is an endpoint that may bill these calls, and there is no terminal to "
                                "confirm on; pass --yes to start")
        if not typer.confirm("start judging?", default=True):
            raise typer.Abort()
    return confirm


@app.command()
@user_errors
def judge(run_a: Path = typer.Argument(..., help="Run directory A."),
          run_b: Path = typer.Argument(..., help="Run directory B."),
          data: Path = typer.Option(..., "--data", help="Chat or preference data: each conversation up to its "
                                                        "last reply is a prompt."),
          judge_spec: str = typer.Option(..., "--judge", help="The judge: a packaged model name, a model folder, a "
                                                              "run directory, or an OpenAI-compatible endpoint "
                                                              "(http://host:port/v1)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Output folder (resumable; default "
                                                                 "runs/judge/A-vs-B)."),
          max_prompts: Optional[int] = typer.Option(None, "--max", min=1, help="Judge the first N prompts only."),
          fmt: Optional[str] = typer.Option(None, "--format", "-f", help="Data format (default: detected)."),
          judge_model: Optional[str] = typer.Option(None, "--judge-model",
                                                    help="Model to ask at the endpoint (default: the first listed)."),
          api_key_env: Optional[str] = typer.Option(
              None, "--api-key-env", help="Environment variable holding the endpoint's API key (default "
                                          "OPENAI_API_KEY when set); sent only as the Authorization header."),
          reference: bool = typer.Option(False, "--reference", help="Show the judge the data's reply as a "
                                                                    "reference answer (MT-Bench's reference-guided "
                                                                    "judge, for tasks with one right answer)."),
          max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Tokens per run answer."),
          judge_max_tokens: int = typer.Option(256, "--judge-max-tokens", min=8, help="Tokens per judge reply."),
          batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts answered at a time."),
          forced_choice: bool = typer.Option(False, "--forced-choice", help="Local judge: where a reply has no "
                                             "verdict, take the likeliest of [[A]], [[B]], [[C]] after it."),
          yes: bool = typer.Option(False, "--yes", "-y", help="Start without asking (an endpoint judge asks).")):
    """Which run answers better? A judge model compares their answers (MT-Bench, Zheng et al. 2023),
    each question in both orders; a win counts only if both orders agree. Writes summary.md/.json,
    the judge's replies (judgments.jsonl) and the answers; run again to continue."""
    if judge_model is not None and not judge_spec.startswith(("http://", "https://")):
        raise LeantuneError(f"--judge-model is for an endpoint judge; {judge_spec!r} is a model, not an "
                            f"http(s):// address")
    out = out or Path("runs") / "judge" / f"{run_a.name}-vs-{run_b.name}"
    quiet_libraries()
    from ..workflows.judge import judge_runs

    result = judge_runs(run_a, run_b, data, judge_spec, out, fmt=fmt, limit=max_prompts, judge_model=judge_model,
                        api_key_env=api_key_env, reference=reference, max_new_tokens=max_new_tokens,
                        judge_max_tokens=judge_max_tokens, batch_size=batch_size, forced_choice=forced_choice,
                        confirm=_confirmer(yes),
                        say=lambda m: console.print(escape(m), highlight=False))
    s = result.summary
    interval = s["interval_95"]
    ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
    rate = "n/a" if s["win_rate_a"] is None else f"{s['win_rate_a']:.2f}{ci}"
    console.print(f"A wins {s['wins_a']}, B wins {s['wins_b']}, ties {s['ties']}, unparseable {s['unparseable']} "
                  f"of {s['questions']} question(s) ({result.judged_now} judged now); win rate of A {rate}"
                  + (f"; {s['forced_verdicts']} verdict(s) forced" if s.get("forced_verdicts") else ""),
                  highlight=False, soft_wrap=True)
    if s["first_shown_share"] is not None:
        console.print(f"position bias: the first-shown answer wins {s['first_shown_share']:.0%} of decisive "
                      f"replies (50% is none)", highlight=False)
    console.print(f"written: {out / 'summary.md'}, {out / 'summary.json'}, {out / 'judgments.jsonl'}", style="dim")
