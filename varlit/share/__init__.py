"""Sharing subject adapters in the formats diffusers users know: a peft folder with a model card, the hub."""
