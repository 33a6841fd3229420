"""RLHF with PPO (Ouyang et al. 2022, InstructGPT, arXiv:2203.02155; Schulman et al. 2017,
arXiv:1707.06347): LoRA policy + value head, reference = adapter disabled, per-token KL
penalty, GAE, clipped policy and value losses. The loop lives in ``alignment/ppo.py``."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..alignment.policy import GenerationSettings, generate, response_kl, response_mask
from ..alignment.ppo import PPO, PPOSettings, ValueHead, hidden_size, n_iterations, n_updates, now, prompt_batches
from ..alignment.preference import prompt_messages, render_prompt
from ..alignment.rewards import resolve_reward
from ..data.templates import resolve_template
from ..errors import RecipeError
from ..methods.base import wraps_model
from ..recipe.stage_settings import PPOStageSettings
from ..training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ..training.device import autocast_context, resolve_precision
from ..training.engine import TrainResult, seed_everything
from ..training.interrupt import stop_on_signals
from ..training.metrics_log import append_metrics, truncate_metrics
from ..training.optim import build_optimizer, build_scheduler, param_groups
from ..training.progress import TrainProgress
from .registry import PreparedData, Stage, register


@register
class PPOStage(Stage):
    name = "ppo"
    summary = ("PPO on prompts (chat or preference data): LoRA policy + value head, KL to the adapter-"
               "disabled reference, GAE; reward from an rm run or a Python function.")
    data_kinds = ("chat", "preference")
    custom_loop = True
    multi_process = False  # its own loop runs in one process

    Config = PPOStageSettings

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
        """On the eval prompts: ``reward``, the mean reward of greedy replies; ``reward_sampled``, of
        ``eval_samples`` sampled replies per prompt (the objective RL maximises); with an adapter
        ``kl``, the mean KL(π‖π_ref) per sampled reply (:func:`response_kl`)."""
        greedy, lengths, sampled, kls = [], [], [], []
        pad, eos, gen, n = (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.generation(),
                            self.config.eval_samples)
        has_adapter = hasattr(model, "disable_adapter") and getattr(model, "peft_config", None)

        def replies(responses):
            mask = response_mask(responses, eos)
            return [self.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(responses, mask)], mask

        for s in range(0, len(features), batch_size):
            chunk = features[s: s + batch_size]
            prompts, msgs = [f["input_ids"] for f in chunk], [f["messages"] for f in chunk]
            texts, mask = replies(generate(model, prompts, pad, eos, gen, greedy=True)[2])
            greedy.append(self.reward_fn(msgs, texts))
            lengths.append(mask.sum(-1).float())
            if n:
                ids, p_mask, responses = generate(model, [p for p in prompts for _ in range(n)], pad, eos, gen)
                sampled.append(self.reward_fn([m for m in msgs for _ in range(n)], replies(responses)[0]))
                if has_adapter:
                    kls.append(response_kl(model, ids, p_mask, responses, eos, gen.temperature))
        if not greedy:
            return {}
        out = {"reward": torch.cat(greedy).mean().item(), "response_len": torch.cat(lengths).mean().item()}
        if sampled:
            out["reward_sampled"] = torch.cat(sampled).mean().item()
        if kls:
            out["kl"] = torch.cat(kls).mean().item()
        return out

    def run(self, model, *, recipe, run_dir, data, method, tokenizer, progress, resume, say, runtime=None):
        """PPO iterations with the engine's checkpoints: every ``train.save_steps`` iterations and on
        Ctrl-C, ``checkpoints/step-N/`` holds the adapter and value head, optimizer, scheduler, fp16
        loss-scaler and random-number states; ``resume`` continues from the last one and ends as an
        uninterrupted run. Device and precision come from ``runtime`` (else the model's device and
        ``train.precision``); ``train.grad_accum`` mini-batches make one optimizer step."""
        if not wraps_model(method):
            raise RecipeError("stage ppo: the method must be PEFT-based (e.g. lora): the reference policy "
                              "is the model with its adapter disabled")
        cfg, c = recipe.train, self.config
        seed_everything(cfg.seed)
        device = runtime.device if runtime is not None else next(model.parameters()).device
        precision = runtime.precision if runtime is not None else resolve_precision(cfg.precision, device)
        self.value_head = ValueHead(hidden_size(model)).to(device)
        trainable = nn.ModuleDict({"policy": model, "value_head": self.value_head})  # what a checkpoint holds
        iterations = n_iterations(len(data.train), cfg.batch_size, cfg.epochs, cfg.max_steps)
        settings = PPOSettings(c.kl_coef, c.gamma, c.lam, c.clip_range, c.clip_range_value, c.vf_coef, c.ppo_epochs,
                               c.mini_batch_size, c.whiten_advantages, cfg.max_grad_norm, cfg.grad_accum)
        groups = param_groups(model, cfg.lr, cfg.weight_decay)
        groups.append({"params": list(self.value_head.parameters()), "weight_decay": 0.0, "lr": cfg.lr})
        optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr)
        scheduler = build_scheduler(cfg.scheduler, optimizer,
                                    n_updates(iterations, min(cfg.batch_size, len(data.train)), settings),
                                    cfg.warmup_ratio)
        autocast, self.precision = autocast_context(precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        metrics, ckpt_root = Path(run_dir) / "metrics.jsonl", Path(run_dir) / "checkpoints"
        ppo = PPO(model, self.value_head, tokenizer, self.reward_fn, optimizer, scheduler, settings,
                  self.generation(), autocast, scaler, ckpt_root)
        batches = prompt_batches(len(data.train), cfg.batch_size, cfg.seed)
        start = 0
        if resume and (ckpts := list_checkpoints(ckpt_root)):
            state = load_checkpoint(ckpts[-1], trainable, optimizer, scheduler)
            start = state["step"]
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            for _ in range(start):  # the prompt batches already used
                next(batches)
            say(f"resuming PPO from {ckpts[-1]}")
        elif resume:
            say("[yellow]no PPO checkpoint to resume from; starting over")
        history = truncate_metrics(metrics, start)  # start 0: none, the file removed
        bar = TrainProgress(iterations, start, enabled=progress, label="ppo")
        t0, tokens, record, step = now(), 0, {}, start
        model.train()
        with stop_on_signals() as stop, bar:
            for step in range(start + 1, iterations + 1):
                idx = next(batches)
                feats = [data.train[i] for i in idx]
                record, ro = ppo.step([f["input_ids"] for f in feats], [f["messages"] for f in feats], step)
                tokens += int(ro.attention_mask.sum())
                elapsed = now() - t0
                record = {"step": step, **{k: round(v, 6) for k, v in record.items()},
                          "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
                bar.update(step, record["loss"], tokens / max(elapsed, 1e-9))
                if step % cfg.logging_steps == 0 or step == iterations or step == 1:
                    history.append(record)
                    append_metrics(metrics, record)
                if (cfg.save_steps and step % cfg.save_steps == 0) or stop:
                    save_checkpoint(ckpt_root, step, trainable, optimizer, scheduler,
                                    {"loss": record["loss"], "scaler": scaler.state_dict()}, cfg.save_total_limit)
                if stop:
                    raise stop.interrupted(f"PPO iteration {step}", str(ckpt_root))
        wall = now() - t0
        return model, TrainResult(steps=step, final_loss=record.get("loss", float("nan")), wall_time_s=wall,
                                  tokens=tokens, tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=0.0,
                                  history=history)

    def save_extra(self, model, folder: Path) -> None:
        if getattr(self, "value_head", None) is not None:
            self.value_head.save(folder)
