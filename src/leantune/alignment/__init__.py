"""Alignment from preferences and rewards: preference data, Bradley–Terry reward models,
PPO with a value head (written here), and reward functions shared with DPO/GRPO/RLOO."""
