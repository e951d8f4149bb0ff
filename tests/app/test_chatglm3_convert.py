"""ChatGLM3 -> GlmForCausalLM conversion on a synthetic checkpoint in ChatGLM3's exact layout.

No real weights exist here: the test writes tiny random ChatGLM3 checkpoints (2 layers,
hidden 64, 4 heads, 2 key/value groups) and a SentencePiece model trained on the spot, and
checks the converted directory against independent references (tests/app/chatglm3_reference).
"""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from chatglm3_reference import (  # tests/app is on sys.path (rootdir-less test dirs)
    ORIGINAL_SPECIALS,
    reference_chat_ids,
    reference_logits,
    reference_special_ids,
    train_sentencepiece,
    write_checkpoint,
)

from app.llm.chatglm3 import ConversionError, clean_response, convert_chatglm3
from app.llm.chatglm3.convert import load_shard
from app.llm.lora_targets import LORA_TARGETS
from app.llm.models import ModelReferenceError, resolve_model
from app.llm.prompting import encode_prompt, render_prompt

CONVERSATION = [
    {"role": "system", "content": "你是一个知识库问答助手。Answer briefly."},
    {"role": "user", "content": "等级保护第三级多久测评一次？"},
    {"role": "assistant", "content": "每年至少一次。\nOnce a year at least."},
    {"role": "user", "content": "  And the quick brown fox 2024?"},
]

TEXTS = [
    "知识库问答系统根据上传的文档回答问题。",
    "The quick brown fox jumps over the lazy dog.",
    "混合 text: 北京 is the capital, 3.14 and 42!",
    "  leading spaces,\ttabs and a newline\nsecond line\n\nthird",
    "生僻字：龘靐齉爩，emoji 🙂 fall back to bytes",
    "    def answer(question):  return retriever.search(question)",
    "",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chatglm3")


@pytest.fixture(scope="module")
def sp_model(work: Path) -> Path:
    return train_sentencepiece(work / "sp")


@pytest.fixture(scope="module")
def sp(sp_model: Path) -> Any:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(sp_model))


@pytest.fixture(scope="module")
def chatglm3(work: Path, sp_model: Path) -> dict[str, Any]:
    """chatglm3-6b layout: three pytorch_model-*.bin shards + index, converted once."""
    src, dst = work / "chatglm3-6b", work / "chatglm3-6b-hf"
    weights = write_checkpoint(src, sp_model, fmt="bin", shards=3)
    report = convert_chatglm3(src, dst)
    config = json.loads((src / "config.json").read_text())
    return {"src": src, "dst": dst, "weights": weights, "config": config, "report": report}


@pytest.fixture(scope="module")
def converted_model(chatglm3: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(chatglm3["dst"], dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(chatglm3: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chatglm3["dst"])


# ---------------------------------------------------------------- weights and config


def test_converted_logits_match_chatglm3_reference(
    chatglm3: dict[str, Any], converted_model: Any, sp: Any
) -> None:
    assert type(converted_model).__name__ == "GlmForCausalLM"
    ids = reference_chat_ids(sp, CONVERSATION)
    expected = reference_logits(chatglm3["weights"], chatglm3["config"], ids)
    with torch.no_grad():
        got = converted_model(torch.tensor([ids])).logits[0]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_converted_config_and_generation_config(chatglm3: dict[str, Any], sp: Any) -> None:
    dst = chatglm3["dst"]
    config = json.loads((dst / "config.json").read_text())
    n = sp.vocab_size()
    user, observation = n + 6, n + 8
    assert config["architectures"] == ["GlmForCausalLM"]
    assert config["model_type"] == "glm"
    assert config["num_key_value_heads"] == 2 and config["head_dim"] == 16
    assert config["rms_norm_eps"] == 1e-5 and config["tie_word_embeddings"] is False
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.5
    assert config["rope_parameters"]["rope_theta"] == 10000.0
    assert config["pad_token_id"] == 0 < config["vocab_size"]
    generation = json.loads((dst / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == {2, user, observation}
    assert not any(p.suffix == ".bin" for p in dst.iterdir())
    assert "auto_map" not in config


def test_32k_layout_from_safetensors_keeps_rope_ratio(work: Path, sp_model: Path, sp: Any) -> None:
    from transformers import AutoModelForCausalLM

    src, dst = work / "chatglm3-6b-32k", work / "chatglm3-6b-32k-hf"
    weights = write_checkpoint(src, sp_model, fmt="safetensors", shards=2, rope_ratio=50, seed=1)
    convert_chatglm3(src, dst)
    config = json.loads((dst / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 500000.0
    assert config["max_position_embeddings"] == 32768
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    ids = reference_chat_ids(sp, CONVERSATION[:2])
    expected = reference_logits(weights, json.loads((src / "config.json").read_text()), ids)
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    assert (got - expected).abs().max().item() < 1e-4


def test_converted_model_generates_the_reference_greedy_tokens(
    chatglm3: dict[str, Any], converted_model: Any, sp: Any
) -> None:
    prompt = reference_chat_ids(sp, CONVERSATION[1:2])
    with torch.no_grad():
        out = converted_model.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=[]
        )
    generated = out[0, len(prompt) :].tolist()
    ids = list(prompt)
    for _ in range(6):  # greedy decoding with the reference forward pass (no KV cache)
        ids.append(int(reference_logits(chatglm3["weights"], chatglm3["config"], ids)[-1].argmax()))
    assert generated == ids[len(prompt) :]


def test_conversion_streams_one_shard_at_a_time(work: Path, sp_model: Path) -> None:
    """Observe the converter: no more than one loaded input shard is alive at any load, and
    each output shard holds exactly the tensors of one input shard."""
    src, dst = work / "streamed", work / "streamed-hf"
    write_checkpoint(src, sp_model, fmt="bin", shards=4, seed=2)
    alive: set[int] = set()
    peak: list[int] = []

    class TrackedShard(dict):  # a dict that can be weak-referenced
        pass

    def tracking_loader(path: Path) -> dict[str, torch.Tensor]:
        peak.append(len(alive))  # shards still alive when the next one is read
        shard = TrackedShard(load_shard(path))
        key = id(shard)
        alive.add(key)
        weakref.finalize(shard, alive.discard, key)
        return shard

    report = convert_chatglm3(src, dst, shard_loader=tracking_loader)
    assert report.input_shards == report.output_shards == 4
    assert peak == [0, 0, 0, 0]
    source_map = json.loads((src / "pytorch_model.bin.index.json").read_text())["weight_map"]
    out_map = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    by_input: dict[str, set[str]] = {}
    for name, shard in source_map.items():
        by_input.setdefault(shard, set()).add(name)
    by_output: dict[str, set[str]] = {}
    for name, shard in out_map.items():
        by_output.setdefault(shard, set()).add(name)
    assert len(by_output) == 4
    for (_, names), (_, out_names) in zip(
        sorted(by_input.items()), sorted(by_output.items()), strict=True
    ):
        layer_of = {n.split(".")[3] for n in names if ".layers." in n}
        assert {n.split(".")[2] for n in out_names if ".layers." in n} == layer_of


def test_unknown_tensor_is_refused(work: Path, sp_model: Path) -> None:
    from safetensors.torch import save_file

    src = work / "ptuning"
    write_checkpoint(src, sp_model, fmt="safetensors", shards=1, seed=3)
    shard = next(src.glob("model-*.safetensors"))
    tensors = load_shard(shard)
    tensors["transformer.prefix_encoder.embedding.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(shard))
    index = src / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["transformer.prefix_encoder.embedding.weight"] = shard.name
    index.write_text(json.dumps(data))
    with pytest.raises(ConversionError, match="prefix_encoder"):
        convert_chatglm3(src, work / "ptuning-hf")
    assert not (work / "ptuning-hf").exists()


def test_lora_targets_exist_in_the_converted_model(converted_model: Any) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in converted_model.named_modules()}
    assert set(LORA_TARGETS[converted_model.config.model_type]) <= names


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_fast_tokenizer_matches_sentencepiece(tokenizer: Any, sp: Any, text: str) -> None:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    prefix = [sp.vocab_size() + 1, sp.vocab_size() + 3]  # [gMASK] sop, as ChatGLM3 encodes
    assert tokenizer(text)["input_ids"] == prefix + sp.encode(text)
    assert tokenizer.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def test_special_tokens_have_chatglm3_names_and_ids(
    chatglm3: dict[str, Any], tokenizer: Any, sp: Any
) -> None:
    """The original names, both ways: ``convert_tokens_to_ids("sop")`` is ChatGLM3's id (64792
    on ChatGLM3-6B), and that id reads back as ``sop``."""
    from app.llm.chatglm3 import SPECIALS

    assert SPECIALS == ORIGINAL_SPECIALS
    expected = reference_special_ids(sp)
    assert expected["sop"] == sp.vocab_size() + 3
    for name, token_id in expected.items():
        assert tokenizer.convert_tokens_to_ids(name) == token_id, name
        assert tokenizer.convert_ids_to_tokens(token_id) == name
    assert tokenizer.convert_tokens_to_ids("<sop>") == tokenizer.unk_token_id  # no other name
    config = json.loads((chatglm3["dst"] / "tokenizer_config.json").read_text())
    assert config["chatglm3_special_tokens"] == expected
    assert chatglm3["report"].special_token_ids == expected
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 0
    assert tokenizer.padding_side == "left"
    assert tokenizer.decode([expected["[gMASK]"], expected["sop"]]) == "[gMASK]sop"


SOP_WORDS = [
    {"role": "system", "content": "sop"},
    {"role": "user", "content": "sop"},
    {"role": "assistant", "content": "Follow the sop. eop\nsop: step one"},
    {"role": "user", "content": "a sop story, (eop) and SOP流程 sop流程 isopropyl people"},
]


def test_sop_and_eop_in_messages_stay_text(tokenizer: Any, sp: Any) -> None:
    """A user's "sop"/"eop", as a whole word or not, is encoded as ChatGLM3 encodes message
    text (SentencePiece pieces): the start token appears once, where the template puts it."""
    special = reference_special_ids(sp)
    expected = reference_chat_ids(sp, SOP_WORDS)
    assert expected.count(special["sop"]) == 1 and special["eop"] not in expected
    # kbqa's path (role and content only): render with the template, encode once
    assert encode_prompt(tokenizer, render_prompt(tokenizer, SOP_WORDS)) == expected
    # transformers' path, with the words in a message's metadata as well
    with_metadata = [{**SOP_WORDS[0], "metadata": "eop sop"}, *SOP_WORDS[1:]]
    expected = reference_chat_ids(sp, with_metadata)
    assert expected.count(special["sop"]) == 1 and special["eop"] not in expected
    encoded = tokenizer.apply_chat_template(
        with_metadata, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert list(encoded["input_ids"]) == expected


@pytest.mark.parametrize("text", ["isopropyl", "people", "sop流程", "关于sop的", "SOP", "soppy"])
def test_sop_inside_words_stays_text_without_the_template(
    tokenizer: Any, sp: Any, text: str
) -> None:
    """Outside a chat, ``sop``/``eop`` match only as whole words (see the tokenizer module)."""
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_a_vocabulary_piece_named_eop_gets_glm4_spelling(sp_model: Path, tmp_path: Path) -> None:
    """A name maps to one id: if the SentencePiece vocabulary has a piece called ``eop``, the
    special token is spelled ``<eop>`` and the piece keeps its own id; ``sop`` is unaffected."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    from app.llm.chatglm3.tokenizer import build_fast_tokenizer

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(sp_model.read_bytes())
    piece = next(p for p in reversed(proto.pieces) if p.type == 1)  # the rarest normal piece
    piece.piece = "eop"
    model = tmp_path / "tokenizer.model"
    model.write_bytes(proto.SerializeToString())
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokenizer = build_fast_tokenizer(model)
    n = sp.vocab_size()
    assert tokenizer.convert_tokens_to_ids("eop") == sp.piece_to_id("eop") < n
    assert tokenizer.convert_tokens_to_ids("<eop>") == n + 4
    assert tokenizer.convert_tokens_to_ids("sop") == n + 3
    prompt = render_prompt(tokenizer, CONVERSATION)
    assert encode_prompt(tokenizer, prompt) == reference_chat_ids(sp, CONVERSATION)


def test_chat_template_is_token_exact(tokenizer: Any, sp: Any) -> None:
    expected = reference_chat_ids(sp, CONVERSATION)
    # the path kbqa's transformers backend takes: render with the template, encode once
    prompt = render_prompt(tokenizer, CONVERSATION)
    assert encode_prompt(tokenizer, prompt) == expected
    encoded = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert list(encoded["input_ids"]) == expected
    without = reference_chat_ids(sp, CONVERSATION, add_generation_prompt=False)
    rendered = render_prompt(tokenizer, CONVERSATION, add_generation_prompt=False)
    assert encode_prompt(tokenizer, rendered) == without


def test_chat_template_edge_cases(tokenizer: Any, sp: Any) -> None:
    messages = [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "\n以换行开头"},
        {"role": "observation", "content": '{"temperature": 21}', "metadata": ""},
        {"role": "assistant", "content": "call", "metadata": "get_weather"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert encode_prompt(tokenizer, prompt) == reference_chat_ids(sp, messages)


def test_clean_response_drops_the_metadata_line(tokenizer: Any, sp: Any) -> None:
    turn = [{"role": "assistant", "content": "每年一次。"}]
    answer = reference_chat_ids(sp, turn, add_generation_prompt=False)[3:]  # after the role
    text = tokenizer.decode(answer, skip_special_tokens=True)
    assert clean_response(text) == "每年一次。"
    assert clean_response("plain answer") == "plain answer"


# ---------------------------------------------------------------- refusal and CLI


def test_unconverted_dir_is_refused_with_the_command(
    chatglm3: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ModelReferenceError, match="kbqa models convert-chatglm3"):
        resolve_model(str(chatglm3["src"]), tmp_path)
    resolved = resolve_model(str(chatglm3["dst"]), tmp_path)
    assert resolved.kind == "local"


def test_serve_on_unconverted_dir_says_how_to_convert(
    chatglm3: dict[str, Any], tmp_path: Path
) -> None:
    """`kbqa serve --model <ChatGLM3 dir>`: exit 2 with the convert command, no traceback."""
    from typer.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(
        cli, ["serve", "--model", str(chatglm3["src"]), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert f"kbqa models convert-chatglm3 {chatglm3['src']}" in result.output
    assert "Traceback" not in result.output


def test_cli_converts_and_refuses_to_overwrite(chatglm3: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    dst = tmp_path / "cli-hf"
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "convert-chatglm3", str(chatglm3["src"]), str(dst)])
    assert result.exit_code == 0, result.output
    assert f"kbqa serve --model {dst}" in result.output
    assert (dst / "tokenizer.json").is_file()
    again = runner.invoke(cli, ["models", "convert-chatglm3", str(chatglm3["src"]), str(dst)])
    assert again.exit_code == 2
    assert "--overwrite" in again.output
    shutil.rmtree(dst)


def test_converted_model_serves_through_the_transformers_backend(
    chatglm3: dict[str, Any], tmp_path: Path
) -> None:
    """The converted directory is a plain model reference for the service: it loads with
    no remote code, formats chats with its own template and stops on ChatGLM3's role tokens."""
    import asyncio

    from app.llm.base import ChatMessage, GenerationParams
    from app.llm.transformers_backend import TransformersBackend
    from app.settings import load_settings

    settings = load_settings(**{"llm.model": str(chatglm3["dst"]), "llm.memory_check": True})
    backend = TransformersBackend.load(settings.llm, tmp_path)
    try:
        assert backend.device == "cpu"
        ids = backend.tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])
        assert set(ids) <= backend._eos_ids
        result = asyncio.run(
            backend.complete([ChatMessage("user", "你好")], GenerationParams(max_tokens=5))
        )
        assert result.prompt_tokens > 0
        assert 1 <= result.completion_tokens <= 5
    finally:
        backend.close()
