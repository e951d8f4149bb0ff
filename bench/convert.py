"""Converting a packaged GGUF model to a transformers folder (not a test).

The first ``kbqa finetune train --model qwen2.5-coder-0.5b-instruct`` (and the first test run
on a fresh machine) de-quantizes the packaged GGUF into a safetensors folder once. transformers
parses the GGUF's metadata for the tokenizer, the config and the weights separately; kbqa's
conversion lets one parse serve them all (``app.llm.models._one_gguf_parse``). This times the
conversion both ways in one run, each into a fresh folder, and checks both folders hold the
same tensors.

    .venv/bin/python bench/convert.py [--model qwen2.5-coder-0.5b-instruct] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.llm import models  # noqa: E402
from app.settings import load_settings  # noqa: E402


def timed_conversion(gguf: Path, out: Path, one_parse: bool) -> float:
    original = models._one_gguf_parse
    if not one_parse:
        models._one_gguf_parse = contextlib.nullcontext  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        models._convert_gguf(gguf, out)
        return time.perf_counter() - start
    finally:
        models._one_gguf_parse = original


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}

    left, right = tensors(a), tensors(b)
    return bool(left) and left.keys() == right.keys() and all(left[k].equal(right[k]) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    settings = load_settings()
    spec = models.PACKAGED[args.model]
    gguf = models.packaged_gguf(spec, settings.resolved_models_dir)
    print(f"model={args.model} gguf={gguf} bytes={gguf.stat().st_size}", flush=True)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-convert-") as tmp:
        for repeat in range(args.repeats):
            for one_parse in (False, True):  # the baseline first: it warms the page cache
                out = Path(tmp) / f"{one_parse}-{repeat}"
                seconds[one_parse].append(timed_conversion(gguf, out, one_parse))
                print(f"one_parse={one_parse} seconds={seconds[one_parse][-1]:.1f}", flush=True)
        identical = same_tensors(Path(tmp) / "False-0", Path(tmp) / "True-0")
    before, after = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(
        f"conversion seconds: transformers as is {before:.1f}, one parse {after:.1f}, "
        f"ratio {before / after:.2f}x; same tensors: {identical}"
    )


if __name__ == "__main__":
    main()
