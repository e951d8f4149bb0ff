"""Settings of `kbqa eval compare` (the RAG-vs-finetune comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from app.settings.base import SearchMode, Section, split_csv

SYSTEMS = ("base", "rag", "lora", "rag+lora")

REFUSAL_PATTERNS = [
    "无法回答",
    "没有找到",
    "不知道",
    "无法确定",
    "没有相关",
    "cannot answer",
    "can't answer",
    "unable to answer",
    "don't know",
    "do not know",
    "nothing that answers",
    "no information",
]


class EvalSettings(Section):
    """Defaults of `kbqa eval compare`; every flag of the command falls back to a field here."""

    systems: Annotated[list[str], NoDecode, BeforeValidator(split_csv)] = Field(
        default_factory=lambda: list(SYSTEMS),
        description="Systems compared: `base` (the LLM alone), `rag` (retrieval + LLM), "
        "`lora` (the LLM with the LoRA adapter, no retrieval), `rag+lora`. Systems whose "
        "inputs are missing (no KB, no adapter) are skipped with a note.",
    )
    repeats: int = Field(
        3,
        ge=1,
        le=50,
        description="Times every question is asked per system; stability is measured over them.",
    )
    temperature: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description="Sampling temperature of every system; 0 = greedy (each system's default "
        "decoding). Above 0 each repeat uses its own seed (`seed` + repeat).",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling with temperature > 0.")
    seed: int = Field(0, description="Base seed of sampled repeats and of the bootstrap.")
    max_tokens: int = Field(
        64, ge=1, description="Answer budget of every system (tokens) in the comparison."
    )
    top_k: int | None = Field(
        None,
        ge=1,
        le=50,
        description="Passages retrieved by the rag systems (hit@k uses it); None: `rag.top_k` "
        "/ `retrieval.top_k`.",
    )
    search_mode: SearchMode | None = Field(
        None, description="Retrieval mode of the rag systems; None: the service default."
    )
    adapter_name: str = Field(
        "eval-lora",
        description="Name under which `--adapter DIR` is loaded in-process (the `lora` and "
        "`rag+lora` systems ask for this model name).",
    )
    strip_citations: bool = Field(
        True,
        description="Remove `[n]` citation markers from answers before scoring (the RAG "
        "prompt asks for them; the reference answers have none).",
    )
    refusal_patterns: Annotated[list[str], NoDecode, BeforeValidator(split_csv)] = Field(
        default_factory=lambda: list(REFUSAL_PATTERNS),
        description="An answer containing one of these (case-insensitive) counts as a refusal, "
        "besides the RAG service's own `refused` flag (the base/lora systems have none).",
    )
    bootstrap_samples: int = Field(
        1000, ge=100, description="Bootstrap resamples of the questions for the 95% intervals."
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Level of the bootstrap confidence intervals."
    )
    tie_margin: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Paired comparison: a question is a tie when the two systems' mean F1 "
        "differ by at most this.",
    )
    disagreements: int = Field(
        10, ge=0, description="Questions listed in the report where the systems disagree most."
    )
    likelihood: bool = Field(
        True,
        description="Gold-answer likelihood (in-process only): the teacher-forced mean negative "
        "log-likelihood per token (and perplexity) of the accepted answer after the exact "
        "prompt each system sends (base: the question; rag: with its passages; lora: with the "
        "adapter), from the transformers copy of the model. `--likelihood/--no-likelihood`.",
    )
    probe: bool = Field(
        True,
        description="Forgetting probe: when a lora system runs, ask `probe_file`'s general "
        "questions of base and lora (greedy) and report how many answers the adapter changed. "
        "`--probe/--no-probe`.",
    )
    probe_file: Path | None = Field(
        None,
        description="JSONL of the forgetting probe ({id, question, answers}); None: the 30 "
        "general questions shipped in eval/forgetting_probe.jsonl. `--probe-file`.",
    )
    sampling_temperature: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description="Sampled run next to the main (greedy) one: after it, every question is "
        "asked `sampling_repeats` more times at this temperature (seed `seed` + repeat); "
        "0 = no sampled run. `--sampling-temperature`.",
    )
    sampling_repeats: int = Field(
        5,
        ge=2,
        le=50,
        description="Answers per question and system in the sampled run (`--sampling-repeats`).",
    )
    server_timeout_s: float = Field(
        600.0, gt=0, description="Per-request timeout with `--server` (CPU answers are slow)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="API key sent as `Authorization: Bearer` with `--server` "
        "(env `KBQA_EVAL__API_KEY`; `--api-key` overrides).",
    )

    @field_validator("systems")
    @classmethod
    def _known_systems(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in SYSTEMS]
        if unknown:
            raise ValueError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
        if not value:
            raise ValueError("at least one system")
        return list(dict.fromkeys(value))
