"""Reward modelling on preference pairs (Bradley–Terry; Ouyang et al. 2022, InstructGPT,
arXiv:2203.02155): a scalar head on a causal LM, loss −log σ(r_c − r_r)."""
from __future__ import annotations

from ..alignment.preference import collate_pairs, tokenize_preferences
from ..alignment.reward_model import bradley_terry_loss, pair_rewards, pairwise_metrics
from ..data.templates import resolve_template
from .registry import PreparedData, Stage, register

REWARD_LABELS = ["reward"]  # one output: the scalar reward


@register
class RewardModeling(Stage):
    name = "rm"
    summary = "Pairwise (Bradley–Terry) reward model on preference data; pairwise accuracy and margin."
    data_kinds = ("preference",)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return "seq_cls"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id = tokenizer.pad_token_id
        template = resolve_template(tokenizer, recipe.data.template)
        train = tokenize_preferences(train_examples, tokenizer, template, recipe.train.max_length)
        evals = tokenize_preferences(eval_examples, tokenizer, template, recipe.train.max_length)
        tokens = sum(len(f["input_ids"]) + len(f["rejected_ids"]) for f in train)
        return PreparedData(train, evals, labels=REWARD_LABELS,
                            info={"tokenize": {"examples": len(train), "tokens": tokens}})

    def collate(self, features, generator=None) -> dict:
        batch = collate_pairs(features, self.pad_id)
        batch.pop("reply_mask")
        return batch

    def loss(self, model, batch):
        return bradley_terry_loss(*pair_rewards(model, batch))

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        return pairwise_metrics(model, features, batch_size, self.collate)
