"""Run dirs: layout and fingerprint, checkpoints (damage, restore, bookkeeping), the read-only loader, a training run's setup, the lock."""
