"""RLHF with PPO (Ouyang et al. 2022, InstructGPT, arXiv:2203.02155; Schulman et al. 2017,
arXiv:1707.06347): LoRA policy + value head, reference = adapter disabled, per-token KL
penalty, GAE, clipped policy and value losses. The loop lives in ``alignment/ppo.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from ..alignment.ppo import (PPO, GenerationSettings, PPOSettings, ValueHead, generate, hidden_size,
                             n_iterations, now, prompt_batches, response_mask, write_metrics)
from ..alignment.preference import prompt_messages, render_prompt
from ..alignment.rewards import resolve_reward
from ..data.templates import resolve_template
from ..errors import RecipeError
from ..methods.registry import wraps_model
from ..training.engine import TrainResult, _ProgressBar, autocast_context, seed_everything
from ..training.optim import build_optimizer, build_scheduler, param_groups
from .registry import PreparedData, Stage, StageConfig, register


class GenerationConfig(StageConfig):
    max_new_tokens: int = Field(32, gt=0, description="Longest sampled response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0: all.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")


class RewardConfig(StageConfig):
    reward: str = Field(description="Reward: a stage-rm run directory, module:function, or a built-in "
                                    "(max_words, mentions_keyword, char_fraction).")
    reward_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of a reward function.")


@register
class PPOStage(Stage):
    name = "ppo"
    summary = ("PPO on prompts (chat or preference data): LoRA policy + value head, KL to the adapter-"
               "disabled reference, GAE; reward from an rm run or a Python function.")
    data_kinds = ("chat", "preference")
    custom_loop = True

    class Config(GenerationConfig, RewardConfig):
        kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty to the reference.")
        gamma: float = Field(1.0, gt=0, le=1)
        lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
        clip_range: float = Field(0.2, gt=0, description="ε of the clipped policy ratio.")
        clip_range_value: float = Field(0.2, gt=0, description="ε of the clipped value loss.")
        vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
        ppo_epochs: int = Field(4, gt=0, description="Optimisation epochs per rollout batch.")
        mini_batch_size: int | None = Field(None, gt=0, description="Default: the whole rollout batch.")
        whiten_advantages: bool = True
        eval_max_prompts: int = Field(32, gt=0, description="Eval prompts scored (greedy) before/after.")

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage ppo: needs a decoder-only (causal) language model")
        return "causal_lm"

    def generation(self) -> GenerationSettings:
        c = self.config
        return GenerationSettings(c.max_new_tokens, c.temperature, c.top_k, c.top_p)

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.tokenizer = tokenizer
        template = resolve_template(tokenizer, recipe.data.template)
        keep = max(8, recipe.train.max_length - self.config.max_new_tokens)

        def features(examples):
            out = []
            for ex in examples:
                msgs = prompt_messages(ex)
                ids = tokenizer(render_prompt(tokenizer, template, msgs), add_special_tokens=False)["input_ids"]
                out.append({"input_ids": ids[-keep:], "messages": msgs, "line": ex.get("line")})
            return out

        self.reward_fn = resolve_reward(self.config.reward, self.config.reward_args, recipe.train.max_length)
        return PreparedData(features(train_examples), features(eval_examples)[: self.config.eval_max_prompts],
                            info={"tokenize": {"examples": len(train_examples)}})

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        """Mean reward of greedy replies to the eval prompts."""
        scores, lengths = [], []
        for s in range(0, len(features), batch_size):
            chunk = features[s: s + batch_size]
            _, _, resp = generate(model, [f["input_ids"] for f in chunk], self.tokenizer.pad_token_id,
                                  self.tokenizer.eos_token_id, self.generation(), greedy=True)
            mask = response_mask(resp, self.tokenizer.eos_token_id)
            texts = [self.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(resp, mask)]
            scores.append(self.reward_fn([f["messages"] for f in chunk], texts))
            lengths.append(mask.sum(-1).float())
        if not scores:
            return {}
        return {"reward": torch.cat(scores).mean().item(), "response_len": torch.cat(lengths).mean().item()}

    def run(self, model, *, recipe, run_dir, data, method, tokenizer, progress, resume, say):
        if not wraps_model(method):
            raise RecipeError("stage ppo: the method must be PEFT-based (e.g. lora): the reference policy "
                              "is the model with its adapter disabled")
        if resume:
            say("[yellow]stage ppo has no checkpoints to resume from; starting over")
        cfg, c = recipe.train, self.config
        seed_everything(cfg.seed)
        device = next(model.parameters()).device
        self.value_head = ValueHead(hidden_size(model)).to(device)
        iterations = n_iterations(len(data.train), cfg.batch_size, cfg.epochs, cfg.max_steps)
        mb = c.mini_batch_size or cfg.batch_size
        updates = iterations * c.ppo_epochs * -(-min(cfg.batch_size, len(data.train)) // mb)
        groups = param_groups(model, cfg.lr, cfg.weight_decay)
        groups.append({"params": list(self.value_head.parameters()), "weight_decay": 0.0, "lr": cfg.lr})
        optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr)
        scheduler = build_scheduler(cfg.scheduler, optimizer, updates, cfg.warmup_ratio)
        autocast, self.precision = autocast_context(cfg.precision, device)
        ppo = PPO(model, self.value_head, tokenizer, self.reward_fn, optimizer, scheduler,
                  PPOSettings(c.kl_coef, c.gamma, c.lam, c.clip_range, c.clip_range_value, c.vf_coef, c.ppo_epochs,
                              c.mini_batch_size, c.whiten_advantages, cfg.max_grad_norm),
                  self.generation(), autocast)
        metrics = Path(run_dir) / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        batches = prompt_batches(len(data.train), cfg.batch_size, cfg.seed)
        bar = _ProgressBar(iterations, 0, enabled=progress)
        history, t0, tokens, record = [], now(), 0, {}
        model.train()
        try:
            for step in range(1, iterations + 1):
                idx = next(batches)
                feats = [data.train[i] for i in idx]
                record, ro = ppo.step([f["input_ids"] for f in feats], [f["messages"] for f in feats])
                tokens += int(ro.attention_mask.sum())
                elapsed = now() - t0
                record = {"step": step, **{k: round(v, 6) for k, v in record.items()},
                          "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
                bar.update(step, record["loss"], tokens / max(elapsed, 1e-9))
                if step % cfg.logging_steps == 0 or step == iterations or step == 1:
                    history.append(record)
                    write_metrics(metrics, record)
        finally:
            bar.close()
        wall = now() - t0
        return model, TrainResult(steps=iterations, final_loss=record.get("loss", float("nan")), wall_time_s=wall,
                                  tokens=tokens, tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=0.0,
                                  history=history)

    def save_extra(self, model, folder: Path) -> None:
        if getattr(self, "value_head", None) is not None:
            self.value_head.save(folder)
