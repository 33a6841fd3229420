"""train.compile: the layers compiled in place train as the eager ones, evaluation runs eager,
a missing C++ compiler is a recipe error before training."""
from __future__ import annotations

import pytest
import torch
from test_engine import make_engine, make_recipe, trainable

from leantune.errors import RecipeError
from leantune.training import compile as compile_mod
from leantune.training.compile import CompiledBlocks, repeated_blocks


def test_the_repeated_blocks_are_the_outermost_layer_lists():
    inner = [torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]) for _ in range(3)]
    layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(2, 2), experts) for experts in inner])
    unlike = torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.Tanh()])
    model = torch.nn.Sequential(torch.nn.Embedding(4, 2), layers, unlike)
    assert repeated_blocks(model) == list(layers)  # not the experts inside them, not a list of unlike modules


def test_a_missing_compiler_is_a_recipe_error(monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler():
        raise RuntimeError("Unsupported compiler: g++ not found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(RecipeError, match=r"train\.compile: true needs a C\+\+ compiler.*g\+\+ not found"):
        CompiledBlocks(torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 2), torch.device("cpu"))
    CompiledBlocks(torch.nn.Linear(2, 2), torch.device("cuda"))  # GPUs build Triton kernels: not asked


def test_missing_python_headers_are_a_recipe_error(monkeypatch, tmp_path):
    import sysconfig

    import torch._inductor.cpp_builder as cpp_builder

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path / "include")})
    with pytest.raises(RecipeError, match=r"needs Python's C headers .*include/Python\.h is missing.*python3-dev"):
        compile_mod.check_compiler(torch.device("cpu"))


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_compiled_layers_train_as_the_eager_ones(tiny_model_dir, tmp_path, method):
    """LoRA (and QLoRA, on bitsandbytes' 4-bit layers) on the tiny Llama, batches of changing
    length, an evaluation inside the loop: the same losses and adapter weights as eager, both
    layers compiled during training (without a graph break) and eager at evaluation and after."""
    from torch._dynamo.utils import counters

    try:
        compile_mod.check_compiler(torch.device("cpu"))
    except RecipeError as exc:
        pytest.skip(str(exc))
    model_dir = tiny_model_dir("llama")
    results, seen = {}, {}
    counters.clear()
    for compiled in (False, True):
        recipe = make_recipe(model_dir, tmp_path / str(compiled), max_steps=4, batch_size=2, compile=compiled,
                             eval_steps=2)
        engine = make_engine(model_dir, recipe, tmp_path / str(compiled) / "run", method=method)
        layers = repeated_blocks(engine.model)

        def evaluate(model, layers=layers, compiled=compiled):
            seen.setdefault(compiled, []).append([layer._compiled_call_impl is None for layer in layers])
            return {"probe": 0.0}

        def after_step(model, step, layers=layers, compiled=compiled):
            seen.setdefault(compiled, []).append([layer._compiled_call_impl is not None for layer in layers])

        engine.evaluate, engine.after_optimizer_step = evaluate, after_step
        fitted = engine.fit()
        assert all(layer._compiled_call_impl is None for layer in layers)  # released
        results[compiled] = ([h["loss"] for h in fitted.history if "loss" in h], trainable(engine.model))
    # after each step: compiled or not; at the evaluation after step 2: eager
    assert len(layers) == 2
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert seen[False] == [[False, False]] * 2 + [[True, True]] + [[False, False]] * 2
    assert seen[True] == [[True, True]] * 2 + [[True, True]] + [[True, True]] * 2
    eager_losses, eager_weights = results[False]
    compiled_losses, compiled_weights = results[True]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager_losses[-1] < eager_losses[0]
    for name, weight in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, rtol=1e-3, atol=1e-5)


def test_the_compiler_is_checked_before_anything_is_written(tiny_model_dir, tmp_path, monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    from leantune.pipeline import train

    def no_compiler():
        raise RuntimeError("Unsupported compiler: g++ not found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    recipe = make_recipe(tiny_model_dir("llama"), tmp_path, method="lora", max_steps=2, compile=True)
    with pytest.raises(RecipeError, match="train.compile"):
        train(recipe, progress=False)
    assert not (tmp_path / "runs").exists()
