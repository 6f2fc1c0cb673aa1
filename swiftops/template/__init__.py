"""Turning conversations into model inputs (the tokenizer's own chat template) and outputs into tool calls."""
