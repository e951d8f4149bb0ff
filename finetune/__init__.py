"""LoRA supervised finetuning: SFT data building, training, adapter merge."""
