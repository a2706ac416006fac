"""Data in MiniMind's public formats: typed JSONL records (`records`), ChatML and the token
ids and labels of each format (`chatml`), and tokenizers in MiniMind's layout (`tokenizer`).
Torch-free: reading and tokenizing data never loads torch."""
