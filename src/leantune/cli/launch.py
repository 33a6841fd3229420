"""``leantune train --nproc N``: start N training processes on this machine through torchrun.

The parent checks the recipe once, then runs
``python -m torch.distributed.run --nproc_per_node N … -m leantune train RECIPE …``; each
child is one rank of an accelerate run (``training/runtime.py``). Like LLaMA-Factory, a
machine with several visible GPUs gets one process per GPU unless ``--nproc`` says otherwise.
Several machines: the same command on each with ``--nnodes``, ``--node-rank``,
``--master-addr`` and ``--master-port`` (docs/distributed.md).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from ..errors import RecipeError


def under_launcher() -> bool:
    """True inside a process started by torchrun, accelerate launch or this module."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_to_start(nproc: int | None, device: str) -> int:
    """``--nproc``, checked against the GPUs; by default one per visible GPU (1 on a CPU machine)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    uses_gpu = device != "cpu" and gpus > 0
    if nproc is None:
        return gpus if uses_gpu and device == "auto" else 1
    if uses_gpu and nproc > gpus:
        raise RecipeError(f"--nproc {nproc}: this machine has {gpus} GPU(s); start at most {gpus} processes, "
                          f"or set train.device=cpu to run CPU processes")
    if device.startswith("cuda") and not gpus:
        raise RecipeError(f"--nproc {nproc}: train.device is {device} and torch sees no GPU on this machine")
    return nproc


def torchrun_command(nproc: int, child_args: list[str], nnodes: int = 1, node_rank: int = 0,
                     master_addr: str | None = None, master_port: int | None = None) -> list[str]:
    """The torchrun command line that starts this machine's ranks of the run."""
    if nnodes > 1 and not master_addr:
        raise RecipeError("--nnodes: a run over several machines needs --master-addr (the address of the "
                          "node-rank 0 machine, reachable from every machine) and --master-port")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
           f"--node_rank={node_rank}", f"--master_addr={master_addr or '127.0.0.1'}",
           f"--master_port={master_port or (29500 if nnodes > 1 else free_port())}"]
    return cmd + ["-m", "leantune", "train", *child_args]


def launch(cmd: list[str]) -> int:
    """Run torchrun and return its exit status (Ctrl-C reaches the children through the
    terminal's process group; torchrun forwards SIGTERM to them)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, _nproc(cmd)))))
    # DDP runs with find_unused_parameters (some methods leave parameters unused in a step) and
    # warns once per process when none were: torch's C++ warnings stay off unless asked for
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    proc = subprocess.Popen(cmd, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the children checkpoint and stop; wait for them
            continue


def _nproc(cmd: list[str]) -> int:
    return next(int(a.split("=", 1)[1]) for a in cmd if a.startswith("--nproc_per_node="))
