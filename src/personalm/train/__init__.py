"""LoRA fine-tuning: chat data with assistant-only labels, a pluggable token loss, an int8 base option."""
