"""Generation speed: llamacpp vs transformers on the same model and prompt (not a test).

1. Decode tokens/s and time to first token of the same packaged model (Qwen2.5-Coder-0.5B by
   default) on both in-process backends, same Chinese RAG-sized prompt, greedy, same code
   path (the backend's own ``stream``). Goal: llamacpp decode >= 5x transformers.
2. Decode speed as a share of the memory-bandwidth limit: every generated token reads the
   model's weights once (the GGUF's tensors minus the token-embedding table, of which one row
   is read), so tokens/s can not exceed bandwidth / bytes-per-token; bandwidth is measured
   here by summing a 1 GiB array on every core.
3. Parallel slots: 8 concurrent requests against llamacpp with ``llm.max_concurrency=8``
   (continuous batching), aggregate decode tokens/s vs one request alone. Goal >= 1.5x.

    .venv/bin/python bench/llm_backends.py [--model qwen2.5-coder-0.5b-instruct] [--tokens 64]
        [--skip-transformers]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.llm.base import ChatMessage, GenerationParams, LLMBackend  # noqa: E402
from app.settings import load_settings  # noqa: E402

PASSAGE = (
    "等级保护2.0采用的防护理念是“一个中心，三重防护”，即安全管理中心，以及安全计算环境、"
    "安全区域边界、安全通信网络三重防护。等级保护对象根据其在国家安全、经济建设、社会生活中"
    "的重要程度，以及一旦遭到破坏后对国家安全、社会秩序、公共利益以及公民、法人和其他组织"
    "的合法权益的危害程度等，由低到高被划分为五个安全保护等级。"
)
PROMPT = [
    ChatMessage(
        "user",
        f"资料：\n{PASSAGE * 2}\n\n根据上面的资料回答问题，并详细解释。\n"
        "问题：等级保护2.0采用的防护理念是什么？",
    )
]


async def one(llm: LLMBackend, tokens: int, prompt: list[ChatMessage]) -> tuple[float, float, int]:
    """(time to first token s, decode tokens/s after the first, completion tokens)."""
    params = GenerationParams(max_tokens=tokens, stop=["never-appears-xyz"])
    start = time.perf_counter()
    first = None
    last_chunk = None
    async for chunk in llm.stream(prompt, params):
        if chunk.text and first is None:
            first = time.perf_counter()
        last_chunk = chunk
    end = time.perf_counter()
    assert last_chunk is not None and first is not None
    n = last_chunk.completion_tokens
    return first - start, (n - 1) / max(end - first, 1e-9), n


def measure(llm: LLMBackend, tokens: int, runs: int) -> tuple[float, float]:
    asyncio.run(one(llm, 8, PROMPT))  # warm-up
    results = [asyncio.run(one(llm, tokens, PROMPT)) for _ in range(runs)]
    ttft = statistics.median(r[0] for r in results)
    decode = statistics.median(r[1] for r in results)
    return ttft, decode


def weights_read_per_token(gguf: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    per_token = sum(n for name, n in sizes.items() if name != "token_embd.weight")
    if "output.weight" not in sizes:  # tied: the embedding table is the output layer too
        per_token += sizes.get("token_embd.weight", 0)
    return per_token


def memory_bandwidth(threads: int) -> float:
    """Bytes/s read by ``threads`` threads summing their share of a 1 GiB array."""
    data = np.ones(1 << 28, dtype=np.float32)  # 1 GiB
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


async def timeline(llm: LLMBackend, prompt: list[ChatMessage], tokens: int) -> list[float]:
    """The time of each streamed chunk with text, one request."""
    params = GenerationParams(max_tokens=tokens, stop=["never-appears-xyz"])
    times: list[float] = []
    async for chunk in llm.stream(prompt, params):
        if chunk.text:
            times.append(time.perf_counter())
    return times


async def concurrent(llm: LLMBackend, clients: int, tokens: int) -> tuple[float, float]:
    """(end-to-end tokens/s, decode-phase tokens/s) of ``clients`` requests sent at once.

    End to end counts every token over the whole wall time, prefill included. The decode
    phase is the window in which every request is generating (from the last first token to
    the first last token): the tokens of all requests inside it over its length, which is
    what continuous batching speeds up."""
    prompts = [
        [ChatMessage("user", f"{PASSAGE}\n请用第{i + 1}种不同的方式详细复述上面这段话。")]
        for i in range(clients)
    ]
    start = time.perf_counter()
    runs = await asyncio.gather(*(timeline(llm, p, tokens) for p in prompts))
    elapsed = time.perf_counter() - start
    total = sum(len(r) for r in runs)
    begin = max(r[0] for r in runs)
    end = min(r[-1] for r in runs)
    inside = sum(1 for r in runs for t in r if begin < t <= end)
    return total / elapsed, inside / max(end - begin, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    from app.llm.llamacpp_backend import LlamaCppBackend
    from app.llm.transformers_backend import TransformersBackend

    base = {"llm.model": args.model}
    settings = load_settings(**base, **{"llm.backend": "llamacpp"})
    llama = LlamaCppBackend.load(settings.llm, settings.resolved_models_dir)
    prompt_tokens = llama.count_prompt_tokens(PROMPT)
    l_ttft, l_decode = measure(llama, args.tokens, args.runs)
    per_token = weights_read_per_token(llama.gguf)
    llama.close()
    print(
        f"model={args.model} prompt_tokens={prompt_tokens} answer_tokens={args.tokens} "
        f"cores={os.cpu_count()}"
    )
    print(f"llamacpp     : ttft={l_ttft:6.2f}s decode={l_decode:6.1f} tok/s")
    if not args.skip_transformers:
        settings = load_settings(**base, **{"llm.backend": "transformers"})
        hf = TransformersBackend.load(settings.llm, settings.resolved_models_dir)
        t_ttft, t_decode = measure(hf, args.tokens, args.runs)
        hf.close()
        print(f"transformers : ttft={t_ttft:6.2f}s decode={t_decode:6.1f} tok/s")
        print(
            f"llamacpp / transformers: decode {l_decode / t_decode:.1f}x (goal >= 5x); "
            f"time to first token {l_ttft / t_ttft:.2f}x transformers' (prefill)"
        )
    bandwidth = max(memory_bandwidth(1), memory_bandwidth(os.cpu_count() or 1))
    limit = bandwidth / per_token
    print(
        f"bandwidth={bandwidth / 1e9:.1f} GB/s weights read per token={per_token / 1e6:.0f} MB "
        f"-> limit {limit:.1f} tok/s; llamacpp decode = {l_decode / limit:.0%} of it"
    )
    settings = load_settings(
        **base, **{"llm.backend": "llamacpp", "llm.max_concurrency": args.clients}
    )
    slots = LlamaCppBackend.load(settings.llm, settings.resolved_models_dir)
    asyncio.run(concurrent(slots, 1, 8))  # warm-up
    single, single_decode = asyncio.run(concurrent(slots, 1, args.tokens))
    together, together_decode = asyncio.run(concurrent(slots, args.clients, args.tokens))
    slots.close()
    print(
        f"parallel slots, end to end (prefill included): 1 client {single:.1f} tok/s, "
        f"{args.clients} clients {together:.1f} tok/s aggregate = {together / single:.2f}x"
    )
    print(
        f"parallel slots, decode phase: 1 client {single_decode:.1f} tok/s, {args.clients} "
        f"clients {together_decode:.1f} tok/s aggregate = "
        f"{together_decode / single_decode:.2f}x (goal >= 1.5x)"
    )


if __name__ == "__main__":
    main()
