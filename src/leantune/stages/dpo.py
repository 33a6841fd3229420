"""Direct preference optimisation (Rafailov et al. 2023, arXiv:2305.18290) through TRL's
DPOTrainer; the reference is the base model with the adapter disabled. ``loss_type``
takes TRL's variants (sigmoid = DPO, ipo = Azar et al. 2023, hinge, robust, …)."""
from __future__ import annotations

import torch

from ..alignment.preference import collate_pairs, render_prompt, render_reply, reply_logps, tokenize_preferences
from ..alignment.trl_support import run_trainer, split_peft, trained_model, trl_args
from ..data.templates import resolve_template
from ..errors import RecipeError
from ..recipe.stage_settings import DPOSettings
from ..training.modes import evaluating
from ..training.runtime import build_runtime
from .registry import PreparedData, Stage, register


@register
class DPO(Stage):
    name = "dpo"
    summary = "Direct preference optimisation (TRL DPOTrainer; sigmoid, ipo, hinge, … losses) on preference data."
    data_kinds = ("preference",)
    custom_loop = True

    Config = DPOSettings

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage dpo: leantune runs DPO on decoder-only (causal) language models")
        return "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id = tokenizer.pad_token_id
        self.template = resolve_template(tokenizer, recipe.data.template)

        def rows(examples):  # TRL's standard (string) format, rendered with our template
            return [{"prompt": render_prompt(tokenizer, self.template, ex["prompt"]),
                     "chosen": render_reply(tokenizer, self.template, ex["prompt"], ex["chosen"]),
                     "rejected": render_reply(tokenizer, self.template, ex["prompt"], ex["rejected"]),
                     "line": ex.get("line")} for ex in examples]

        self.train_rows, self.eval_rows = rows(train_examples), rows(eval_examples)
        train = tokenize_preferences(train_examples, tokenizer, self.template, recipe.train.max_length)
        evals = tokenize_preferences(eval_examples, tokenizer, self.template, recipe.train.max_length)
        return PreparedData(train, evals, info={"tokenize": {"examples": len(train)}})

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        return preference_logp_metrics(model, features, batch_size, self.pad_id, self.config.beta)

    def run(self, model, *, recipe, run_dir, data, method, tokenizer, progress, resume, say, runtime=None):
        from datasets import Dataset  # lazy: TRL stages only; datasets and trl take seconds to import
        from trl import DPOConfig, DPOTrainer  # lazy: TRL takes seconds to import; only this stage needs it
        c = self.config
        runtime = runtime or build_runtime(recipe.train)
        self.precision = runtime.precision
        base, peft_config, ref = split_peft(model)
        args = trl_args(recipe, run_dir, runtime)
        losses = c.loss_type if isinstance(c.loss_type, list) else [c.loss_type]
        config = DPOConfig(**args, beta=c.beta, loss_type=losses, loss_weights=c.loss_weights,
                           label_smoothing=c.label_smoothing, max_length=recipe.train.max_length)
        cols = lambda rs: [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rs]  # noqa: E731
        trainer = DPOTrainer(model=base, ref_model=ref, args=config, train_dataset=Dataset.from_list(cols(self.train_rows)),
                             eval_dataset=Dataset.from_list(cols(self.eval_rows)) if self.eval_rows else None,
                             processing_class=tokenizer, peft_config=peft_config)
        result = run_trainer(trainer, run_dir, resume)
        return trained_model(trainer), result


def preference_logp_metrics(model, features, batch_size, pad_id, beta: float) -> dict[str, float]:
    """Reply log-prob margin log π(chosen) − log π(rejected), preference accuracy, and (with an
    adapter) the DPO implicit reward margin β·[(log π − log π_ref)(chosen) − (…)(rejected)]."""
    device = next(model.parameters()).device
    margins, rewards = [], []
    has_adapter = hasattr(model, "disable_adapter") and getattr(model, "peft_config", None)
    with evaluating(model):
        for s in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate_pairs(features[s: s + batch_size], pad_id).items()}
            c, r = reply_logps(model, batch).chunk(2)
            margins.append(c - r)
            if has_adapter:
                with model.disable_adapter():
                    rc, rr = reply_logps(model, batch).chunk(2)
                rewards.append(beta * ((c - rc) - (r - rr)))
    if not margins:
        return {}
    m = torch.cat(margins)
    out = {"logp_margin": m.mean().item(), "pref_accuracy": (m > 0).float().mean().item()}
    if rewards:
        out["reward_margin"] = torch.cat(rewards).mean().item()
    return out
