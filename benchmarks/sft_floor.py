"""The floor for ``sft_throughput.py``: a bare PyTorch step over the same model, batches and settings.

What any trainer must do for a response-only SFT step, and nothing else: the Hugging Face model
(PEFT's LoRA for LoRA/QLoRA, as TRL gets it), right-padded batches of leantune's batch plan (the
same examples in the same order as leantune's row, so the same padding), the backbone's forward,
the LM head and cross-entropy at the labelled positions only, backward, fused AdamW, gradients
set to None. No schedule, no logging, no metrics, no allocator setting. A trainer's step time
over this one is its overhead; no trainer running the same eager model can be faster than the
floor by more than noise, so the floor bounds the ratio any trainer can reach over another.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def padded(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 at pads)."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id)
    labels = torch.full((len(features), longest), IGNORE)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions; the LM head only there."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = base.model, base.get_output_embeddings()
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False).last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    return F.cross_entropy(head(hidden[keep]).float(), targets[keep])


def hf_model(path, method_name: str, half: bool, lora: dict):
    """The Hugging Face model and PEFT LoRA config both the TRL row and the floor use: QLoRA as
    leantune's defaults (NF4, double quantization, fp32 compute on CPU), frozen weights in bf16
    when ``half`` (PEFT keeps the adapters fp32); no LoRA config for full fine-tuning."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = None
    if method_name == "qlora":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if half else torch.float32,
                                                 quantization_config=quantization)
    config = None if method_name == "full" else LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    return model, config


def build_model(path, method_name: str, precision: str, lora: dict):
    """The model as the TRL row gets it at equal settings: frozen weights in bf16 under bf16 for
    LoRA/QLoRA, fp32 for full fine-tuning."""
    from peft import get_peft_model

    model, config = hf_model(path, method_name, precision == "bf16" and method_name != "full", lora)
    return model if config is None else get_peft_model(model, config)

def run(path, features: list[dict], pad_id: int, method_name: str, precision: str, steps: int, clock, options: dict,
        lora: dict, lr: float, batch_size: int, seed: int) -> dict:
    """``steps`` optimizer steps timed by ``clock`` (the batch built before ``begin``, as the
    other sides collate outside the timed step); the settings' checkpointing and batching."""
    from mfu import token_stats

    from leantune.training.engine import batch_plan  # the order only: leantune's row sees the same batches

    torch.manual_seed(seed)
    model = build_model(path, method_name, precision, lora)
    if options.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    lengths = [len(f["input_ids"]) for f in features]
    plan, epoch, losses = [], 0, []
    while len(plan) < steps:
        plan += batch_plan(lengths, batch_size, seed, epoch, bool(options.get("group_by_length")))
        epoch += 1
    for indices in plan[:steps]:
        batch = padded([features[i] for i in indices], pad_id)
        info = {"response_tokens": int((batch["labels"][:, 1:] != IGNORE).sum()), **token_stats(batch)}
        clock.begin()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = response_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.end(**info)
        losses.append(loss.item())
    clock.finish()
    return {"model": model, "train_losses": losses, "weights": str(next(model.parameters()).dtype)}
