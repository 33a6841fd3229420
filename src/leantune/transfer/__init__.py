"""Transfer under scarcity: knowledge distillation, continual learning (EWC, replay,
per-task adapters), multi-task sampling and domain-adversarial training.

The stages that use these pieces live in ``leantune/stages/{distill,continual,multitask,dann}.py``.
"""
