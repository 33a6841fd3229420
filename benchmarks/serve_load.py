"""`leantune serve` under a bounded load: N concurrent clients × M requests each.

Two short LoRA runs over SmolLM2-135M (the packaged ``smollm2-135m``) are trained first;
then ``leantune serve alpha=RUN beta=RUN`` runs as its own process on 127.0.0.1 and N
threads of the official ``openai`` client send chat requests in turn to alpha, beta and the
base model, every other one streamed. Every answer is checked (a string, a finish reason,
usage counts that add up); a request that fails or is malformed counts as dropped. The
server generates one answer at a time, so a client's latency includes its wait in the queue.

No baseline server: one with the same API and per-request LoRA adapters (vLLM
``--enable-lora``) needs a GPU, and none is installable here. The baseline row is the same
requests generated directly (plain transformers + PEFT, one after another, no HTTP): what
the server adds to the cost of generation.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/serve_load.py --clients 4 --requests 3

Writes ``benchmarks/results/serve_load.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUIET_ENV, RESULTS, ROOT, emit, format_table, machine_facts, run_worker, write_results

MODEL = "smollm2-135m"
KEY = "bench-key"
DEMO = Path(str(resources.files("leantune") / "resources" / "demo"))


def train_runs(folder: Path, steps: int) -> dict[str, Path]:
    """Two LoRA runs on different slices of the built-in shell-help data (a few steps each)."""
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    lines = (DEMO / "shell_help_train.jsonl").read_text(encoding="utf-8").splitlines()
    runs = {}
    for i, name in enumerate(("alpha", "beta")):
        data = folder / f"{name}.jsonl"
        data.write_text("\n".join(lines[i * 16:(i + 1) * 16]) + "\n", encoding="utf-8")
        recipe = load_recipe(raw={
            "model": MODEL, "method": {"name": "lora", "r": 8, "alpha": 16}, "stage": "sft",
            "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0, "template": "chatml"},
            "train": {"max_steps": steps, "batch_size": 4, "max_length": 64, "lr": 1e-3, "precision": "fp32",
                      "seed": i},
            "eval": {"before": False},
            "output": {"dir": str(folder / "runs"), "name": name},
        })
        runs[name] = Path(train(recipe, progress=False, say=lambda m: None).run_dir)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: dict[str, Path], port: int, log_file, timeout: float) -> tuple[subprocess.Popen, list[str]]:
    """``leantune serve`` as its own process; returns it once /v1/models answers, with the model names."""
    cmd = [sys.executable, "-m", "leantune", "serve", *(f"{n}={p}" for n, p in runs.items()),
           "--port", str(port), "--api-key", KEY, "--max-tokens-limit", "256"]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **QUIET_ENV})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"leantune serve exited with {proc.returncode}; see {log_file.name}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return proc, [m["id"] for m in json.loads(answer.read())["data"]]
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"leantune serve did not answer within {timeout:.0f} s; see {log_file.name}")


def one_request(client, model: str, question: str, max_tokens: int, stream: bool) -> dict:
    """Send one chat request; return its timing and token count, or why it is not well-formed."""
    messages = [{"role": "user", "content": question}]
    start = time.perf_counter()
    first = None  # seconds to the first piece of text (streamed requests)
    if stream:
        pieces, usage, finish = [], None, None
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0, stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            if chunk.choices and chunk.choices[0].delta.content:
                first = first if first is not None else time.perf_counter() - start
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        text = "".join(pieces)
    else:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        text, usage, finish = reply.choices[0].message.content, reply.usage, reply.choices[0].finish_reason
    seconds = time.perf_counter() - start
    problems = []
    if not isinstance(text, str) or not text.strip():
        problems.append("empty answer")
    if finish not in ("stop", "length"):
        problems.append(f"finish_reason {finish!r}")
    if usage is None or not 1 <= usage.completion_tokens <= max_tokens or \
            usage.total_tokens != usage.prompt_tokens + usage.completion_tokens:
        problems.append(f"usage {usage}")
    return {"model": model, "stream": stream, "s": seconds, "tokens": usage.completion_tokens if usage else 0,
            "first_text_s": first, "problems": problems}


def direct_generation(runs: dict[str, Path], models: list[str], clients: int, requests: int,
                      max_tokens: int) -> dict:
    """The baseline without a server: the same requests, one after another, with plain transformers + PEFT
    (the base loaded once, both adapters on it), greedy, the same token budget; in its own process, fresh
    as the server's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = json.loads((runs["alpha"] / "run.json").read_text())["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                      runs["alpha"] / "adapter", adapter_name="alpha").eval()
    model.load_adapter(str(runs["beta"] / "adapter"), adapter_name="beta")
    templates = {n: (p / "adapter" / "chat_template.jinja").read_text() for n, p in runs.items()}
    questions = _questions()
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    seconds, tokens = [], 0
    start = time.perf_counter()
    for k in range(clients * requests):
        name = models[k % len(models)]
        messages = [{"role": "user", "content": questions[k % len(questions)]}]
        t0 = time.perf_counter()
        text = tokenizer.apply_chat_template(messages, chat_template=templates.get(name), tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with contextlib.ExitStack() as stack:
            if name in runs:
                model.set_adapter(name)
            else:
                stack.enter_context(model.disable_adapter())
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        tokens += out.shape[1] - ids.shape[1]
        seconds.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {"requests": len(seconds), "latency_s": {"p50": percentile(seconds, 50), "p90": percentile(seconds, 90),
                                                    "max": max(seconds)},
            "requests_per_s": len(seconds) / wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall,
            "wall_s": wall}


def _questions() -> list[str]:
    return [json.loads(line)["instruction"]
            for line in (DEMO / "shell_help_eval.jsonl").read_text(encoding="utf-8").splitlines()]


def direct_run(job: str) -> dict:
    """:func:`direct_generation` in a fresh process (``--worker``), as the server is."""
    result = run_worker(Path(__file__), ["--worker", job], timeout=1800)
    if "error" in result:
        raise SystemExit(f"the direct-generation worker failed:\n{result['stderr_tail']}")
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run_load(port: int, models: list[str], clients: int, requests: int, max_tokens: int) -> tuple[list[dict], float]:
    import openai

    questions = _questions()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=600)
    lock, results = threading.Lock(), []

    def worker(c: int):
        for r in range(requests):
            k = c * requests + r
            try:
                outcome = one_request(client, models[k % len(models)], questions[k % len(questions)], max_tokens,
                                      stream=bool(k % 2))
            except Exception as exc:  # noqa: BLE001 - a failed request is a dropped one, counted
                outcome = {"model": models[k % len(models)], "stream": bool(k % 2), "s": None, "tokens": 0,
                           "problems": [f"{type(exc).__name__}: {exc}"]}
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return results, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # JSON arguments of direct_generation, in a fresh process
    a = ap.parse_args()
    if a.worker:
        job = json.loads(a.worker)
        emit(direct_generation({n: Path(p) for n, p in job.pop("runs").items()}, **job))
        return
    os.environ.update(QUIET_ENV)
    from leantune.cli.app import quiet_libraries

    quiet_libraries()  # library warnings and progress bars to the leantune log, as the CLI does
    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        t0 = time.perf_counter()
        print(f"training two LoRA runs over {MODEL} ({a.train_steps} steps each) …", flush=True)
        runs = train_runs(Path(tmp), a.train_steps)
        train_s = time.perf_counter() - t0
        job = json.dumps({"runs": {n: str(p) for n, p in runs.items()}, "models": ["alpha", "beta", MODEL],
                          "clients": a.clients, "requests": a.requests, "max_tokens": a.max_tokens})
        print("direct generation, before the server …", flush=True)
        before = direct_run(job)
        port = free_port()
        with open(Path(tmp) / "server.log", "w+") as log_file:
            t0 = time.perf_counter()
            proc, models = start_server(runs, port, log_file, a.start_timeout)
            start_s = time.perf_counter() - t0
            print(f"serving {', '.join(models)} (ready in {start_s:.1f} s); {a.clients} clients × "
                  f"{a.requests} requests, max_tokens {a.max_tokens} …", flush=True)
            try:
                results, wall = run_load(port, models, a.clients, a.requests, a.max_tokens)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log_file.seek(0)
            server_log_tail = log_file.read().splitlines()[-20:]
        print("direct generation, after the server …", flush=True)
        after = direct_run(job)
    ok = [r for r in results if not r["problems"]]
    dropped = [r for r in results if r["problems"]]
    latencies = [r["s"] for r in ok]
    firsts = [r["first_text_s"] for r in ok if r.get("first_text_s") is not None]
    tokens = sum(r["tokens"] for r in ok)
    summary = {
        "requests": len(results), "well_formed": len(ok), "dropped": len(dropped),
        "latency_s": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "max": max(latencies)}
        if latencies else None,
        "first_text_s_streamed": {"p50": percentile(firsts, 50), "max": max(firsts)} if firsts else None,
        "requests_per_s": len(ok) / wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall,
    }
    table = ((f"leantune serve, {a.clients} concurrent clients", f"{len(ok)}/{len(results)}", summary),
             ("direct generate, serial, before", str(before["requests"]), before),
             ("direct generate, serial, after", str(after["requests"]), after))
    rows = [[label, f"{a.clients} × {a.requests}", done, *(f"{row['latency_s'][k]:.2f}" for k in ("p50", "p90", "max")),
             f"{row['requests_per_s']:.2f}", f"{row['tokens_per_s']:.1f}"]
            for label, done, row in table if row["latency_s"]]
    print(format_table(["", "clients × requests", "well-formed", "p50 s", "p90 s", "max s", "requests/s",
                        "tokens/s"], rows))
    for r in dropped:
        print(f"dropped: {r['model']} stream={r['stream']}: {'; '.join(r['problems'])}")
    payload = {
        "benchmark": "serve_load", "machine": facts, "model": MODEL, "models_served": models,
        "settings": {"clients": a.clients, "requests_per_client": a.requests, "max_tokens": a.max_tokens,
                     "temperature": 0, "streamed": "every other request", "train_steps": a.train_steps,
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                     "cpu_affinity": sorted(os.sched_getaffinity(0))},
        "summary": summary, "train_s": train_s, "server_ready_s": start_s, "requests": results,
        "baseline": {"what": "the same requests generated one after another with plain transformers + PEFT (base "
                             "loaded once, both adapters on it), no HTTP, in a fresh process; run before and after "
                             "the server, since the load of a shared machine drifts", "before": before, "after": after},
        "notes": [("The server generates one answer at a time under a lock (adapters are switched on one "
                  "shared model); concurrent requests queue, so latency grows with the number of clients."),
                  ("No baseline server: vLLM (the usual OpenAI-compatible server with per-request LoRA "
                  "adapters) needs a GPU and is not installable on this CPU machine; the baseline is direct "
                  "generation without a server, which shows what the HTTP layer and the queue add."),
                  (f"Latency of the served requests counts the wait in the queue ({a.clients} clients, one "
                   f"generation at a time); the direct baseline has no queue: compare requests/s and tokens/s.")],
        "server_log_tail": server_log_tail,
    }
    print(f"wrote {write_results(Path(a.out), payload)}")
    if dropped:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
