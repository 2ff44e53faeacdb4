"""Training: the phases with model.fit and XLA, the budget in pair exposures, optimizers, callbacks, distribution, the feature cache."""
