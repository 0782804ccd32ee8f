"""Tone adapters from simulated data: facts → questions → reference answers → tone-rewritten
answers kept by a tone scorer → a LoRA adapter; and the experiment comparing it with prompting."""
