"""Critic-free RL from a reward: GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) and
RLOO (Ahmadian et al. 2024, arXiv:2402.14740) through TRL's trainers. Several completions
per prompt; the advantage is the reward relative to the group (mean, or leave-one-out).
The reward is a stage-rm run directory or a Python function (see ``alignment/rewards.py``);
with ``beta > 0`` the KL reference is the base model with the adapter disabled."""
from __future__ import annotations

from typing import ClassVar

from ..alignment.preference import prompt_messages, render_prompt
from ..alignment.rewards import resolve_reward
from ..alignment.trl_support import run_trainer, split_peft, trained_model, trl_args
from ..data.templates import resolve_template
from ..errors import RecipeError
from ..recipe.stage_settings import GRPOSettings, RLOOSettings
from ..training.runtime import build_runtime
from .ppo import PPOStage
from .registry import PreparedData, Stage, register


class _GroupRL(Stage):
    """Shared by GRPO and RLOO: prompts in, TRL trainer, reward function out."""

    data_kinds = ("chat", "preference")
    custom_loop = True
    trainer_name: ClassVar[str]

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError(f"stage {self.name}: needs a decoder-only (causal) language model")
        return "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.tokenizer = tokenizer
        template = resolve_template(tokenizer, recipe.data.template)
        if recipe.train.batch_size % self.config.num_generations:
            raise RecipeError(f"stage {self.name}: train.batch_size ({recipe.train.batch_size}) must be a multiple "
                              f"of num_generations ({self.config.num_generations}): each prompt's completions "
                              f"form one group")

        def features(examples):
            out = []
            for ex in examples:
                msgs = prompt_messages(ex)
                text = render_prompt(tokenizer, template, msgs)
                out.append({"prompt": text, "messages": msgs, "line": ex.get("line"),
                            "input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]})
            return out

        self.reward_fn = resolve_reward(self.config.reward, self.config.reward_args, recipe.train.max_length)
        return PreparedData(features(train_examples), features(eval_examples)[:32],
                            info={"tokenize": {"examples": len(train_examples)}})

    evaluate = PPOStage.evaluate  # mean reward of greedy replies
    generation = PPOStage.generation

    def trainer_classes(self):
        raise NotImplementedError

    def config_kwargs(self) -> dict:
        c = self.config
        return dict(num_generations=c.num_generations, max_completion_length=c.max_new_tokens,
                    temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, beta=c.beta, epsilon=c.epsilon,
                    num_iterations=c.num_iterations)

    def run(self, model, *, recipe, run_dir, data, method, tokenizer, progress, resume, say, runtime=None):
        from datasets import Dataset  # lazy: TRL stages only; datasets and trl take seconds to import
        config_cls, trainer_cls = self.trainer_classes()
        runtime = runtime or build_runtime(recipe.train)
        self.precision = runtime.precision
        base, peft_config, ref = split_peft(model)
        config = config_cls(**trl_args(recipe, run_dir, runtime), **self.config_kwargs())
        rows = [{"prompt": f["prompt"], "messages": f["messages"]} for f in data.train]
        if ref is not None and self.config.beta > 0:
            say(f"[yellow]stage {self.name}: without a PEFT adapter TRL loads the KL reference from "
                f"config.name_or_path; set beta: 0 or use lora")
        tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
        try:
            trainer = trainer_cls(model=base, reward_funcs=self.reward_fn.as_trl(), args=config,
                                  train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                  peft_config=peft_config)
            result = run_trainer(trainer, run_dir, resume)
        finally:
            tokenizer.padding_side = "right"
        return trained_model(trainer), result


@register
class GRPO(_GroupRL):
    name = "grpo"
    summary = "Group relative policy optimisation (TRL GRPOTrainer) with an rm run or a Python reward."

    Config = GRPOSettings

    def trainer_classes(self):
        from trl import GRPOConfig, GRPOTrainer  # lazy: TRL takes seconds to import; only this stage needs it
        return GRPOConfig, GRPOTrainer

    def config_kwargs(self) -> dict:
        return {**super().config_kwargs(), "loss_type": self.config.loss_type,
                "scale_rewards": self.config.scale_rewards}


@register
class RLOO(_GroupRL):
    name = "rloo"
    summary = "REINFORCE leave-one-out (TRL RLOOTrainer) with an rm run or a Python reward."

    Config = RLOOSettings

    def trainer_classes(self):
        from trl import RLOOConfig, RLOOTrainer  # lazy: TRL takes seconds to import; only this stage needs it
        return RLOOConfig, RLOOTrainer

    def config_kwargs(self) -> dict:
        return {**super().config_kwargs(), "normalize_advantages": self.config.normalize_advantages}
