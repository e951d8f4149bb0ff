"""LoRA SFT finetune settings: every hyperparameter of `kbqa finetune`, with its default."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode

from app.settings.base import Section, split_csv


class FinetuneDataSettings(Section):
    holdout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of questions (or source documents, see `holdout_by`) kept out of "
        "training as a test split, written next to the train file. 0: no split.",
    )
    holdout_by: Literal["question", "source"] = Field(
        "question",
        description="Unit of the holdout split: `question` (normalised question text; duplicates "
        "stay on one side) or `source` (whole documents go to one side).",
    )
    holdout_seed: int = Field(
        0, description="Seed of the deterministic holdout split (hash-ordered, not random)."
    )
    kb_question_template: str = Field(
        "What does {title} say?",
        description="Knowledge-injection question for a knowledge-base chunk; `{title}` is the "
        "chunk's heading path when it has one, else its document name (`{document}` and "
        "`{heading}` are available too).",
    )
    kb_part_template: str = Field(
        " (part {part} of {parts})",
        description="Appended to the question when several chunks share one title, so that "
        "every knowledge-injection question has one answer.",
    )
    kb_max_chunks: int = Field(
        0,
        ge=0,
        description="`--kb`: use at most this many of the knowledge base's chunks (evenly "
        "spaced over its documents in order, so the same chunks every run) for knowledge "
        "examples and `--generate-qa`; 0: all. Bounds the CPU time of a recipe on a large "
        "document.",
    )
    generate_qa_per_chunk: int = Field(
        3, ge=1, description="`--generate-qa`: question/answer pairs asked of the LLM per chunk."
    )
    generate_qa_max_tokens: int = Field(
        384, gt=0, description="`--generate-qa`: answer budget of the LLM call for one chunk."
    )
    generate_qa_max_answer_chars: int = Field(
        150,
        gt=0,
        description="`--generate-qa`: a generated answer longer than this (characters) is "
        "dropped (`too_long`): a short answer is what the test scores and what the adapter "
        "should learn to say.",
    )
    generate_qa_min_support: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="`--generate-qa`: least share of a generated answer's characters (words "
        "for non-CJK text) found in its chunk; below it the pair is dropped (`not_in_chunk`): "
        "the model answered from elsewhere, or invented.",
    )
    generate_qa_zh_ratio: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="`--generate-qa`: a chunk whose letters are at least this share CJK gets "
        "`generate_qa_prompt_zh` (questions in Chinese), others `generate_qa_prompt`.",
    )
    generate_qa_prompt_zh: str = Field(
        "阅读下面的资料，提出{n}个不同的问题，每个问题以问号结尾，答案是资料中的一个短语或一句原文。"
        "只输出一个JSON数组，格式如下：\n"
        '[{{"question": "……？", "answer": "……"}}, {{"question": "……？", "answer": "……"}}]\n\n'
        "资料（{title}）：\n{text}",
        description="`--generate-qa`: the user message for a Chinese chunk (see "
        "`generate_qa_zh_ratio`); same fields as `generate_qa_prompt`. A JSON array: the "
        "packaged Qwen models return one pair per reply when asked for JSON lines (4 of 12 "
        "pairs on four 等保 chunks), most of the pairs asked for when shown the array.",
    )
    generate_qa_prompt: str = Field(
        "Write {n} different questions that the following passage answers, each ending with a "
        "question mark, each with a short answer taken word for word from the passage. Reply "
        "with one JSON array and nothing else, exactly like "
        '[{{"question": "...?", "answer": "..."}}, {{"question": "...?", "answer": "..."}}]\n\n'
        "Passage ({title}):\n{text}",
        description="`--generate-qa`: the user message sent to the configured LLM per chunk; "
        "`{n}`, `{title}` and `{text}` are filled in. Replies are read as a JSON array, JSON "
        "lines or `Q:`/`A:` lines; see `finetune/kb.py` for which pairs are kept.",
    )


class FinetuneSettings(Section):
    """Hyperparameters of `kbqa finetune train`; `--config lora.yaml` overrides any of them."""

    # LoRA
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: Annotated[list[str], NoDecode, BeforeValidator(split_csv)] = Field(
        default_factory=list,
        description="Modules that get LoRA weights. Empty: auto by architecture (llama-style "
        "q/k/v/o_proj, Gemma, the converted ChatGLM3 `glm`); `all-linear` is accepted too.",
        examples=[["q_proj", "v_proj"]],
    )
    # optimisation
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"
    ] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="Fraction of the steps spent warming up linearly."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    epochs: float = Field(3.0, gt=0, description="Training epochs (ignored when max_steps > 0).")
    max_steps: int = Field(
        -1, description="Optimizer steps to run; > 0 overrides `epochs`, -1 uses `epochs`."
    )
    batch_size: int = Field(4, ge=1, description="Examples per device per forward pass.")
    gradient_accumulation: int = Field(
        1, ge=1, description="Forward passes per optimizer step (effective batch = batch x this)."
    )
    max_length: int = Field(
        1024,
        ge=8,
        description="Longest example in tokens; longer ones lose prompt tokens from the left "
        "(the answer is kept) and are skipped when the answer alone does not fit.",
    )
    seed: int = Field(42, description="Seed for LoRA init, data order and dropout.")
    # runtime
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="Training device; auto picks cuda > mps > cpu."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Mixed precision; auto: bf16 on CUDA when supported else fp16, fp32 on "
        "MPS and CPU.",
    )
    gradient_checkpointing: bool | None = Field(
        None, description="Trade compute for memory; default: on for CUDA, off elsewhere."
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while training (default: torch's own choice)."
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="`4bit`: QLoRA (bitsandbytes NF4 base weights; CUDA, extra `cuda`)."
    )
    logging_steps: int = Field(5, ge=1, description="Log train loss and lr every N steps.")
    save_steps: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept (oldest deleted).")
    eval_steps: int | None = Field(
        None, ge=1, description="Eval loss on the dev set every N steps (default: save_steps)."
    )
    system_prompt: str | None = Field(
        None,
        description="System message prepended to every example that has none (use the same "
        "one the service sends at inference; None: the chat template's own default).",
    )
    merge_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="`kbqa finetune merge`: dtype of the merged weights; auto keeps the base "
        "model's stored dtype (vLLM serves float16/bfloat16 best).",
    )
    data: FinetuneDataSettings = Field(
        default_factory=FinetuneDataSettings,  # type: ignore[arg-type]
        description="`kbqa finetune data`: building SFT examples and the holdout split.",
    )
