"""Shared by text and image models: ELBO terms, schedules, estimators, trainer, checkpoints."""
