"""Retrieval-augmented answers: LangChain retriever, chat model and RetrievalQA chain."""
