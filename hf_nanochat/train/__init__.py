"""Training: recipe configs, the pretraining loop, the chat stages (TRL), optimizers, precision,
sharding, memory planning and automatic batch sizing."""
