"""Reward model, PPO, DPO, GRPO/RLOO and run directories as model sources, on tiny models."""
from __future__ import annotations

import json

import pytest
import torch

from leantune.alignment.policy import GenerationSettings
from leantune.alignment.ppo import PPO, PPOSettings, ValueHead, hidden_size
from leantune.alignment.preference import build_preference_pairs
from leantune.alignment.rewards import RewardFunction, resolve_reward
from leantune.data.builtin import dialog_pairs, write_jsonl
from leantune.data.loading import load_data
from leantune.errors import RecipeError
from leantune.methods.registry import build_method
from leantune.models.loading import load_model, load_tokenizer
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FAST = {"batch_size": 4, "max_length": 64, "precision": "fp32", "logging_steps": 1}


@pytest.fixture(scope="module")
def dialog_files(tmp_path_factory):
    """Real ChatterBot dialog data: preference pairs and prompt/completion rows."""
    d = tmp_path_factory.mktemp("rlhf-data")
    pairs = [p for p in dialog_pairs() if len(p["prompt"]) < 60 and len(p["completion"]) < 60]
    write_jsonl(build_preference_pairs(pairs, seed=0, limit=24), d / "pref.jsonl")
    write_jsonl([{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs[:24]], d / "sft.jsonl")
    return d


@pytest.fixture(scope="module")
def sharp_llama(tmp_path_factory, tiny_model_dir):
    """The tiny llama with a 25x output layer: its random logits are no longer near-uniform,
    so a LoRA on the inner layers can move the output distribution within a few steps."""
    from transformers import AutoModelForCausalLM

    src = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    out = tmp_path_factory.mktemp("sharp-llama")
    model.save_pretrained(out)
    load_tokenizer(src).save_pretrained(out)
    return out


def recipe(model, stage, data, out, name, **train_kw):
    return load_recipe(raw={"model": str(model), "stage": stage, "method": {"name": "lora", "r": 8},
                            "data": {"template": "chatml", **data}, "train": {**FAST, **train_kw},
                            "output": {"dir": str(out), "name": name, "overwrite": True}})


# --------------------------------------------------------------------------- PPO pieces

def lora_policy(path, perturb: bool):
    model = load_model(path, "causal_lm")
    model = build_method({"name": "lora", "r": 4}).apply(model, "causal_lm")
    if perturb:  # a trained-looking adapter: policy != base
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
    return model


def make_ppo(model, tok, reward=None):
    head = ValueHead(hidden_size(model))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    reward = reward or RewardFunction("len", lambda prompts, completions, **kw: [len(c) / 10 for c in completions])
    return PPO(model, head, tok, reward, torch.optim.AdamW(params, lr=1e-3), None,
               PPOSettings(ppo_epochs=1), GenerationSettings(max_new_tokens=5))


PROMPTS = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "how are you today?"}]]


def prompt_ids(tok):
    from leantune.alignment.preference import render_prompt
    from leantune.data.templates import CHATML

    return [tok(render_prompt(tok, CHATML, m), add_special_tokens=False)["input_ids"] for m in PROMPTS]


def test_kl_is_zero_when_policy_equals_reference(tiny_model_dir):
    path = tiny_model_dir("llama")
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    ro = make_ppo(lora_policy(path, perturb=False), tok).rollout(prompt_ids(tok), PROMPTS)
    assert torch.equal(ro.logprobs, ro.ref_logprobs)
    assert ro.kl.abs().sum().item() == 0.0
    # the per-token rewards are then just the score at each last token
    assert ro.rewards.sum(-1).tolist() == pytest.approx(ro.scores.tolist())


def test_reference_is_the_base_model_and_gets_no_gradient(tiny_model_dir):
    path = tiny_model_dir("llama")
    tok = load_tokenizer(path)
    model = lora_policy(path, perturb=True)
    ppo = make_ppo(model, tok)
    torch.manual_seed(0)
    ro = ppo.rollout(prompt_ids(tok), PROMPTS)
    assert not ro.ref_logprobs.requires_grad and ro.ref_logprobs.grad_fn is None
    assert ro.kl.abs().sum().item() > 0  # the adapter changed the policy
    # the reference log-probs are those of a freshly loaded base model (no adapter, no copy held)
    from leantune.alignment.policy import response_forward, token_logprobs

    base = load_model(path, "causal_lm").eval()
    with torch.no_grad():
        logits, _ = response_forward(base, ro.input_ids, ro.attention_mask, ro.prompt_len)
    assert torch.allclose(token_logprobs(logits, ro.responses), ro.ref_logprobs, atol=1e-5)
    # an update trains the adapter and value head only; base weights get no gradient and do not move
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    stats = ppo.update(ro)
    assert set(stats) >= {"policy_loss", "value_loss", "clip_frac"}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)
    # and the adapter-disabled pass still equals the base after the update
    assert torch.allclose(ppo.reference_logprobs(ro.input_ids, ro.attention_mask, ro.prompt_len, ro.responses),
                          ro.ref_logprobs, atol=1e-5)


def test_response_kl_is_the_summed_log_ratio_to_the_base_model(sharp_llama):
    from leantune.alignment.policy import generate, response_forward, response_kl, response_mask, token_logprobs

    path = sharp_llama
    tok = load_tokenizer(path)
    model = lora_policy(path, perturb=True)
    torch.manual_seed(0)
    ids, mask, resp = generate(model, prompt_ids(tok) * 16, tok.pad_token_id, tok.eos_token_id,
                               GenerationSettings(max_new_tokens=5))
    kl = response_kl(model, ids, mask, resp, tok.eos_token_id)
    live = response_mask(resp, tok.eos_token_id)
    full_ids, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, live], 1)
    base = load_model(path, "causal_lm").eval()
    with torch.no_grad():
        policy = token_logprobs(response_forward(model.eval(), full_ids, full_mask, ids.shape[1])[0], resp)
        ref = token_logprobs(response_forward(base, full_ids, full_mask, ids.shape[1])[0], resp)
    assert torch.allclose(kl, ((policy - ref) * live).sum(-1), atol=1e-5)
    assert kl.mean() > 0  # sampled from the policy: a (noisy) estimate of a positive KL
    assert response_kl(lora_policy(path, perturb=False), ids, mask, resp, tok.eos_token_id).abs().sum() == 0


def test_ppo_run_increases_reward(sharp_llama, dialog_files, tmp_path):
    """Reward = fraction of lowercase letters and spaces in the reply (about 0.1 for the random
    tiny model); 12 PPO iterations of 16 prompts push it far up (about 0.6-0.9)."""
    r = recipe(sharp_llama, {"name": "ppo", "reward": "char_fraction", "max_new_tokens": 8, "kl_coef": 0.0},
               {"train": str(dialog_files / "sft.jsonl"), "eval_split": 0}, tmp_path, "ppo",
               max_steps=12, lr=1e-2, batch_size=16)
    s = train(r)
    rewards = [h["reward"] for h in s.history]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:2]) / 2 + 0.2, rewards
    lines = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "kl", "entropy", "clip_frac", "value_loss", "policy_loss"} <= set(lines[0])
    assert lines[0]["kl"] == 0.0  # first rollout: adapter still zero
    adapter = tmp_path / "ppo" / "adapter"
    assert (adapter / "value_head.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert ValueHead.load(adapter).summary.weight.abs().sum() > 0


REWARD_SRC = """import os, signal
calls = [0]

def score(prompts, completions, **kwargs):
    calls[0] += 1
    if {interrupt} and calls[0] == 3 and not os.path.exists({marker!r}):  # Ctrl-C during iteration 3, once
        open({marker!r}, "w").close()
        os.kill(os.getpid(), signal.SIGINT)
    return [len(c) / 10 for c in completions]
"""


def test_ppo_resume_after_interrupt_matches_uninterrupted(tiny_model_dir, dialog_files, tmp_path):
    """Ctrl-C during PPO iteration 3 checkpoints after it; ``resume`` then ends with the same
    adapter, value head and per-iteration metrics as a run never stopped."""
    from safetensors.torch import load_file

    from leantune.training.checkpoint import list_checkpoints
    from leantune.training.interrupt import TrainingInterrupted

    def ppo_recipe(name, interrupt):
        reward = tmp_path / f"reward_{name}.py"
        reward.write_text(REWARD_SRC.format(interrupt=interrupt, marker=str(tmp_path / "interrupted")))
        return recipe(tiny_model_dir("llama"), {"name": "ppo", "reward": f"{reward}:score", "max_new_tokens": 6,
                                                "kl_coef": 0.1, "ppo_epochs": 2, "mini_batch_size": 2},
                      {"train": str(dialog_files / "sft.jsonl"), "eval_split": 0}, tmp_path, name,
                      max_steps=5, lr=1e-2, save_steps=2)

    full = train(ppo_recipe("a", False))
    stopped = ppo_recipe("b", True)
    with pytest.raises(TrainingInterrupted, match="iteration 3"):
        train(stopped)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step-2", "step-3"]
    resumed = train(stopped, resume=True)

    keys = ("reward", "kl", "policy_loss", "value_loss", "approx_kl")
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5]
    for a, b in zip(full.history, resumed.history):
        assert [a[k] for k in keys] == pytest.approx([b[k] for k in keys], abs=1e-6), (a, b)
    assert full.history[-1]["kl"] != 0.0  # the policy moved, so the comparison means something
    for f in ("adapter_model.safetensors", "value_head.safetensors"):
        wa, wb = load_file(tmp_path / "a" / "adapter" / f), load_file(tmp_path / "b" / "adapter" / f)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), (f, k)


# --------------------------------------------------------------------------- reward model

def test_rm_trains_and_reward_is_computable_from_the_run_dir(tiny_model_dir, dialog_files, tmp_path, tiny_tokenizer):
    r = recipe(tiny_model_dir("llama"), "rm", {"train": str(dialog_files / "pref.jsonl"),
                                               "eval": str(dialog_files / "pref.jsonl")},
               tmp_path, "rm", max_steps=12, lr=5e-3)
    s = train(r)
    assert set(s.eval_after) >= {"loss", "accuracy", "margin"}
    assert s.eval_after["loss"] < s.eval_before["loss"]
    assert s.eval_after["margin"] > s.eval_before["margin"]
    # the run reloads as a scalar seq_cls model, and the reward function matches the trained metrics
    from leantune.alignment.reward_model import pairwise_metrics
    from leantune.export.run_loading import load_run
    from leantune.stages.registry import build_stage

    run = load_run(tmp_path / "rm")
    assert run.head == "seq_cls" and run.model.config.num_labels == 1
    stage = build_stage({"name": "rm"})
    stage.head_name = "seq_cls"
    examples = load_data(r, stage, None, print)[0]
    data = stage.prepare(r, run.tokenizer, examples, examples)
    reloaded = pairwise_metrics(run.model, data.train, 8, stage.collate)
    scorer = resolve_reward(str(tmp_path / "rm"))
    from leantune.data.formats import load_examples

    exs = load_examples(dialog_files / "pref.jsonl", "preference").examples
    rc = scorer([e["prompt"] for e in exs], [e["chosen"] for e in exs])
    rr = scorer([e["prompt"] for e in exs], [e["rejected"] for e in exs])
    assert (rc - rr).mean().item() == pytest.approx(reloaded["margin"], abs=1e-4)
    assert (rc - rr).mean().item() == pytest.approx(s.eval_after["margin"], abs=1e-4)


# --------------------------------------------------------------------------- DPO, GRPO, RLOO

def test_dpo_raises_chosen_minus_rejected_margin(tiny_model_dir, dialog_files, tmp_path):
    data = {"train": str(dialog_files / "pref.jsonl"), "eval": str(dialog_files / "pref.jsonl")}
    r = recipe(tiny_model_dir("llama"), {"name": "dpo", "beta": 0.1}, data, tmp_path, "dpo",
               max_steps=12, lr=1e-2, batch_size=8)
    s = train(r)
    assert s.eval_after["logp_margin"] > s.eval_before["logp_margin"] + 1.0, (s.eval_before, s.eval_after)
    assert s.eval_after["reward_margin"] > 0 and s.eval_after["pref_accuracy"] >= s.eval_before["pref_accuracy"]
    lines = (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 10 and "rewards/margins" in json.loads(lines[-1])
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()


def test_trl_reference_is_adapter_disabled(tiny_model_dir):
    """TRL 1.16 given (base, peft_config) builds the adapter itself and uses ``use_adapter(None)``
    (adapters disabled) as reference; given a wrapped PeftModel it would add a "ref" copy."""
    from leantune.alignment.trl_support import split_peft

    model = lora_policy(tiny_model_dir("llama"), perturb=False)
    base, cfg, ref = split_peft(model)
    assert ref is None and cfg.r == 4 and not hasattr(base, "peft_config")
    assert not any("lora" in n for n, _ in base.named_parameters())


LOWERCASE_REWARD = """def score(prompts, completions, **kwargs):
    ok = set("abcdefghijklmnopqrstuvwxyz ")
    return [sum(ch in ok for ch in c) / len(c) if c else 0.0 for c in completions]
"""


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_group_rl_stages_run_with_a_python_reward(stage, sharp_llama, dialog_files, tmp_path):
    """A reward from a Python file (share of lowercase letters and spaces in the reply, about 0.15 for
    the random tiny model) rises over 12 steps: in the rewards the trainer logs, and in the greedy replies
    to held-out prompts before vs after training. beta 0: RLOO's default KL penalty (0.05) to the
    sharpened base holds the reward down in so few steps."""
    (tmp_path / "lowercase_reward.py").write_text(LOWERCASE_REWARD)
    rows = (dialog_files / "sft.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(rows[:16]))
    (tmp_path / "eval.jsonl").write_text("".join(rows[16:]))
    r = recipe(sharp_llama,
               {"name": stage, "reward": f"{tmp_path / 'lowercase_reward.py'}:score", "max_new_tokens": 8,
                "num_generations": 4, "beta": 0.0},
               {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")}, tmp_path, stage,
               max_steps=12, lr=1e-2, batch_size=16)
    assert r.eval.before
    s = train(r)
    rewards = [h["reward"] for h in s.history if "reward" in h]
    assert s.steps == 12 and len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:2]) / 2 + 0.2, rewards
    assert s.eval_after["reward"] > s.eval_before["reward"] + 0.2, (s.eval_before, s.eval_after)


def test_group_rl_batch_must_hold_whole_groups(tiny_model_dir, dialog_files, tmp_path):
    r = recipe(tiny_model_dir("llama"), {"name": "grpo", "reward": "max_words", "num_generations": 3},
               {"train": str(dialog_files / "sft.jsonl")}, tmp_path, "g", max_steps=1)
    with pytest.raises(RecipeError, match="multiple of num_generations"):
        train(r)


# --------------------------------------------------------------------------- rewards

def test_reward_resolution(tmp_path):
    f = resolve_reward("max_words", {"n": 2})
    assert f([[{"role": "user", "content": "q"}]] * 3, ["a b", "a b c d", ""]).tolist() == [1.0, 0.5, 0.0]
    k = resolve_reward("mentions_keyword", {"keyword": "Please"})
    assert k([[{"role": "user", "content": "q"}]] * 2, ["please do", "no"]).tolist() == [1.0, 0.0]
    (tmp_path / "myrewards.py").write_text("def r(prompts, completions, **kw):\n"
                                           "    return [float(p == 'q') + len(c) for p, c in zip(prompts, completions)]\n")
    g = resolve_reward(f"{tmp_path / 'myrewards.py'}:r")
    assert g([[{"role": "user", "content": "q"}]], ["ab"]).tolist() == [3.0]
    assert g.as_trl()(prompts=["<rendered>"], completions=["ab"], messages=[[{"role": "user", "content": "q"}]]) == [3.0]
    with pytest.raises(RecipeError, match="Did you mean 'max_words'"):
        resolve_reward("max_word")
    with pytest.raises(RecipeError, match="unknown reward_args"):
        resolve_reward("max_words", {"limit": 3})
    with pytest.raises(RecipeError, match="cannot import"):
        resolve_reward("no_such_module_xyz:f")


# --------------------------------------------------------------------------- run directory as a model

def test_run_directory_is_a_model_source(tiny_model_dir, dialog_files, tmp_path):
    from leantune.export.run_loading import load_run
    from leantune.models.loading import load_config, resolve_model_path

    base_path = tiny_model_dir("llama")
    r = recipe(base_path, "sft", {"train": str(dialog_files / "sft.jsonl")}, tmp_path, "sft", max_steps=3, lr=1e-2)
    train(r)
    run_dir = tmp_path / "sft"
    assert resolve_model_path(str(run_dir)) == run_dir
    assert load_config(run_dir).model_type == "llama"
    merged = load_model(run_dir, "causal_lm").eval()
    assert not hasattr(merged, "peft_config") and all(p.requires_grad for p in merged.parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = load_run(run_dir).model.eval()(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base_logits = load_model(base_path, "causal_lm").eval()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, base_logits, atol=1e-4)
    # under another head (a reward model on the SFT run) the backbone carries the merged weights
    rm = load_model(run_dir, "seq_cls", labels=["reward"])
    assert torch.equal(rm.model.layers[0].self_attn.q_proj.weight, merged.model.layers[0].self_attn.q_proj.weight)
    # and a chained stage trains from it
    r2 = recipe(run_dir, "rm", {"train": str(dialog_files / "pref.jsonl")}, tmp_path, "rm2", max_steps=1)
    assert train(r2).steps == 1
    assert load_tokenizer(run_dir).pad_token_id is not None
