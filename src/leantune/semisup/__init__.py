"""Learning from few labels: contrastive objectives, pseudo-labelling, active-learning
acquisition and meta-learning, one concept per module. The stages that use them live in
``leantune.stages`` (contrastive, self_train, co_train, active, meta); adversarial training
is a hook of the training loop (``leantune.training.adversarial``)."""
