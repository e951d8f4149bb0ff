"""RAG-vs-finetune evaluation: metrics, the compare command, reports."""
