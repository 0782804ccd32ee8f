"""Personalized Soups: one LoRA adapter per preference pole, merged at inference by user weights."""
