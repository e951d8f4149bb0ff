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
4. Prompt-lookup decoding (``llm.llamacpp.lookup_draft_tokens``, on by default): knowledge-base
   answers with the service's own sentence prompt (the answer copies a passage sentence),
   decode tokens/s with lookup vs without, same model and prompts, in one run.

Sections 1-3 measure plain decoding (lookup off): every token is one forward pass there, which
is what the transformers comparison and the bandwidth limit are about.

    .venv/bin/python bench/llm_backends.py [--model qwen2.5-coder-0.5b-instruct] [--tokens 64]
        [--skip-transformers] [--lookup-only]
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.llm.base import ChatMessage, GenerationParams, LLMBackend  # noqa: E402
from app.settings import load_settings  # noqa: E402
from app.settings.rag import PASSAGE_ZH, PROMPT_ZH  # noqa: E402

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


# Knowledge-base questions whose answer is a sentence of the passage (section 4)
KB_PASSAGES = [
    PASSAGE,
    "网络安全等级保护工作包括定级、备案、建设整改、等级测评和监督检查五个环节。第三级以上"
    "的等级保护对象应每年至少进行一次等级测评，发现不符合相应等级保护标准要求的及时整改。"
    "运营者应在等级保护对象投入运行后三十日内，到所在地公安机关办理备案手续。",
    "安全计算环境的身份鉴别要求包括：应对登录的用户进行身份标识和鉴别，身份标识具有唯一性，"
    "身份鉴别信息具有复杂度要求并定期更换；应具有登录失败处理功能，应配置并启用结束会话、"
    "限制非法登录次数和当登录连接超时自动退出等相关措施。",
    "安全区域边界的访问控制要求包括：应在网络边界或区域之间根据访问控制策略设置访问控制规则，"
    "默认情况下除允许通信外受控接口拒绝所有通信；应删除多余或无效的访问控制规则，优化访问控制"
    "列表，并保证访问控制规则数量最小化。",
]
KB_QUESTIONS = [
    (0, "等级保护对象是根据什么划分安全保护等级的？"),
    (1, "第三级以上的等级保护对象多久进行一次等级测评？"),
    (1, "运营者应在什么时候办理备案手续？"),
    (2, "身份鉴别信息有什么要求？"),
    (2, "登录失败处理功能包括哪些措施？"),
    (3, "默认情况下受控接口如何处理通信？"),
]


def kb_prompt(passage: str, question: str) -> list[ChatMessage]:
    """The service's own Chinese sentence prompt over one numbered passage."""
    context = PASSAGE_ZH.format(index=1, title="等级保护.md", text=passage)
    text = PROMPT_ZH.replace("{context}", context).replace("{question}", question)
    return [ChatMessage("user", text)]


async def kb_answers(llm: LLMBackend, tokens: int) -> tuple[float, list[str]]:
    """Decode tokens/s over all KB questions (tokens after the first over the time after the
    first), and the answers."""
    decoded, seconds, answers = 0, 0.0, []
    for index, question in KB_QUESTIONS:
        params = GenerationParams(max_tokens=tokens)
        first = None
        text, last = "", None
        async for chunk in llm.stream(kb_prompt(KB_PASSAGES[index], question), params):
            if chunk.text and first is None:
                first = time.perf_counter()
            text += chunk.text
            last = chunk
        end = time.perf_counter()
        assert last is not None and first is not None
        decoded += last.completion_tokens - 1
        seconds += end - first
        answers.append(text)
    return decoded / seconds, answers


def lookup_decoding(model: str, tokens: int, transformers: bool) -> None:
    """Section 4: the same KB answers with prompt-lookup decoding on and off, on llamacpp
    (``llm.llamacpp.lookup_draft_tokens``) and, unless skipped, transformers
    (``llm.prompt_lookup_tokens``)."""
    from app.llm.llamacpp_backend import LlamaCppBackend
    from app.llm.transformers_backend import TransformersBackend

    defaults = load_settings().llm
    kinds: list[tuple[str, str, int, Any]] = [
        (
            "llamacpp",
            "llm.llamacpp.lookup_draft_tokens",
            defaults.llamacpp.lookup_draft_tokens,
            LlamaCppBackend,
        )
    ]
    if transformers:
        kinds.append(
            (
                "transformers",
                "llm.prompt_lookup_tokens",
                defaults.prompt_lookup_tokens,
                TransformersBackend,
            )
        )
    for kind, key, default, backend in kinds:
        results = []
        for draft in (0, default or 8):
            settings = load_settings(**{"llm.model": model, "llm.backend": kind, key: draft})
            llm = backend.load(settings.llm, settings.resolved_models_dir)
            asyncio.run(one(llm, 8, PROMPT))  # warm-up
            speed, answers = asyncio.run(kb_answers(llm, tokens))
            results.append(
                (
                    speed,
                    answers,
                    getattr(llm, "drafted", None),
                    getattr(llm, "draft_accepted", None),
                )
            )
            llm.close()
        (off, plain, _, _), (on, looked, drafted, accepted) = results
        same = sum(a == b for a, b in zip(plain, looked, strict=True))
        drafts = (
            f"; drafted {drafted}, accepted {accepted} ({accepted / max(drafted, 1):.0%})"
            if drafted is not None
            else ""
        )
        print(
            f"prompt lookup on {kind}, {len(KB_QUESTIONS)} KB answers (service prompt): decode "
            f"{off:.1f} tok/s without, {on:.1f} tok/s with = {on / off:.2f}x{drafts}; answers "
            f"identical {same}/{len(KB_QUESTIONS)}"
        )


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
    parser.add_argument(
        "--lookup-only", action="store_true", help="only section 4 (prompt-lookup decoding)"
    )
    args = parser.parse_args()
    if args.lookup_only:
        lookup_decoding(args.model, args.tokens, not args.skip_transformers)
        return
    from app.llm.llamacpp_backend import LlamaCppBackend
    from app.llm.transformers_backend import TransformersBackend

    plain = {"llm.llamacpp.lookup_draft_tokens": 0}  # sections 1-3: one pass per token
    base = {"llm.model": args.model}
    settings = load_settings(**base, **plain, **{"llm.backend": "llamacpp"})
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
        **base, **plain, **{"llm.backend": "llamacpp", "llm.max_concurrency": args.clients}
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
    lookup_decoding(args.model, args.tokens, not args.skip_transformers)


if __name__ == "__main__":
    main()
