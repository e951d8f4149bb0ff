"""Benchmark: a streamed completion through the API vs ``model.generate`` in-process.

Same model, prompt and settings (greedy, fixed max tokens, stop strings that never match),
same run. Prints tokens/s and time to first token for both and the ratio API/direct
(target >= 0.9x), then 8 concurrent clients: all complete, aggregate tokens/s vs one client.

    .venv/bin/python bench/llm_api.py [--model smollm2-135m-instruct] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import free_port

from app.llm.base import ChatMessage
from app.llm.prompting import encode_prompt
from app.llm.transformers_backend import TransformersBackend
from app.settings import load_settings

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
NEVER = "never-appears-xyz"


def direct(backend, tokens: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """TTFT and tokens/s of plain model.generate with a streamer, in-process."""
    import torch
    from transformers import TextIteratorStreamer

    ids = encode_prompt(backend.tokenizer, backend.render([ChatMessage("user", PROMPT)]))
    streamer = TextIteratorStreamer(backend.tokenizer, skip_prompt=True)
    start = time.perf_counter()
    first: float | None = None
    import threading

    def run() -> None:
        with torch.inference_mode():
            backend.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                streamer=streamer,
            )

    thread = threading.Thread(target=run)
    thread.start()
    for piece in streamer:
        if first is None and piece:
            first = time.perf_counter() - start
    thread.join()
    total = time.perf_counter() - start
    return first or total, tokens / total


def via_api(url: str, tokens: int) -> tuple[float, float, int]:
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "stop": [NEVER],
        "stream": True,
    }
    start = time.perf_counter()
    first: float | None = None
    count = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return first or total, count / total, count


async def concurrent(url: str, clients: int, tokens: int) -> tuple[int, float]:
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "stop": [NEVER],
    }
    async with httpx.AsyncClient(timeout=1200) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *[client.post(f"{url}/v1/chat/completions", json=body) for _ in range(clients)]
        )
        elapsed = time.perf_counter() - start
    ok = [r for r in results if r.status_code == 200]
    produced = sum(r.json()["usage"]["completion_tokens"] for r in ok)
    return len(ok), produced / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--models-dir", default=None)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="kbqa-bench-"))
    settings = load_settings(
        **{
            "data_dir": data_dir,
            "models_dir": args.models_dir,
            "llm.model": args.model,
            "llm.max_queue": args.clients,
            "llm.queue_timeout_s": 3600,
        }
    )
    # the server runs in its own process, as in a deployment: a client in the same process
    # would compete with generation for the GIL on a 2-core machine
    port = free_port()
    env = {
        **os.environ,
        "KBQA_DATA_DIR": str(data_dir),
        "KBQA_LLM__MODEL": args.model,
        "KBQA_LLM__MAX_QUEUE": str(args.clients),
        "KBQA_LLM__QUEUE_TIMEOUT_S": "3600",
        "KBQA_SERVER__LOG_LEVEL": "warning",
    }
    if args.models_dir:
        env["KBQA_MODELS_DIR"] = args.models_dir
    kbqa = Path(sys.executable).parent / "kbqa"
    proc = subprocess.Popen([str(kbqa), "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("kbqa serve did not start")
            time.sleep(0.5)
        run_bench(url, TransformersBackend.load(settings.llm, settings.resolved_models_dir), args)
    finally:
        proc.terminate()
        proc.wait(30)


def run_bench(url: str, backend: TransformersBackend, args: argparse.Namespace) -> None:
    via_api(url, 8)  # warm up both paths
    direct(backend, 8)
    d_ttft, d_tps, a_ttft, a_tps = [], [], [], []
    for _ in range(args.repeats):
        ttft, tps = direct(backend, args.tokens)
        d_ttft.append(ttft)
        d_tps.append(tps)
        ttft, tps, count = via_api(url, args.tokens)
        assert count == args.tokens, f"API produced {count} tokens, wanted {args.tokens}"
        a_ttft.append(ttft)
        a_tps.append(tps)
    md = statistics.median
    print(f"model={args.model} tokens={args.tokens} repeats={args.repeats} (medians)")
    print(f"direct  model.generate: ttft_ms={md(d_ttft) * 1000:.0f} tokens_per_s={md(d_tps):.2f}")
    print(f"API     stream (SSE):   ttft_ms={md(a_ttft) * 1000:.0f} tokens_per_s={md(a_tps):.2f}")
    print(f"ratio API/direct tokens_per_s={md(a_tps) / md(d_tps):.3f} (target >= 0.9)")
    print(f"ttft overhead API-direct ms={(md(a_ttft) - md(d_ttft)) * 1000:.0f}")
    one_ok, one_tps = asyncio.run(concurrent(url, 1, args.tokens))
    many_ok, many_tps = asyncio.run(concurrent(url, args.clients, args.tokens))
    print(f"1 client:  completed={one_ok}/1 aggregate_tokens_per_s={one_tps:.2f}")
    print(
        f"{args.clients} clients: completed={many_ok}/{args.clients} "
        f"aggregate_tokens_per_s={many_tps:.2f} ratio_vs_one={many_tps / one_tps:.2f}"
    )


if __name__ == "__main__":
    main()
