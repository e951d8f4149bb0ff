"""The root of the settings tree and how it is loaded."""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.settings.base import SettingsError, nest_dotted, split_csv
from app.settings.eval import EvalSettings
from app.settings.finetune import FinetuneSettings
from app.settings.ingest import (
    CatalogSettings,
    EmbeddingsSettings,
    IngestSettings,
    RetrievalSettings,
    VectorStoreSettings,
)
from app.settings.llm import LLMSettings
from app.settings.rag import RagSettings
from app.settings.server import ServerSettings

_config_data: ContextVar[dict[str, Any] | None] = ContextVar("kbqa_config_data", default=None)


class Settings(BaseSettings):
    """Everything kbqa can be told. Env: `KBQA_<FIELD>`, nested `KBQA_<SECTION>__<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="KBQA_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    environment: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses unsafe defaults (no API keys on a public interface).",
    )
    data_dir: Path = Field(
        Path("./data"),
        description="Directory that holds everything the service writes (models cache, Chroma, "
        "job queue, uploads, adapters).",
    )
    models_dir: Path | None = Field(
        None,
        description="Where packaged models are converted once and cached "
        "(default: `<data_dir>/models`).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode, BeforeValidator(split_csv)] = Field(
        default_factory=list,
        description="API keys (comma-separated in the env). When set, every route but /health "
        "needs `Authorization: Bearer <key>`.",
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings,  # type: ignore[arg-type]
        description="HTTP server.",
    )
    llm: LLMSettings = Field(
        default_factory=LLMSettings,  # type: ignore[arg-type]
        description="The LLM backend.",
    )
    embeddings: EmbeddingsSettings = Field(
        default_factory=EmbeddingsSettings,  # type: ignore[arg-type]
        description="The embedding model of the knowledge bases.",
    )
    vectorstore: VectorStoreSettings = Field(
        default_factory=VectorStoreSettings,  # type: ignore[arg-type]
        description="Chroma: embedded (persistent) or a server.",
    )
    catalog: CatalogSettings = Field(
        default_factory=CatalogSettings,  # type: ignore[arg-type]
        description="The catalog and job queue: SQLite under the data dir, or PostgreSQL.",
    )
    ingest: IngestSettings = Field(
        default_factory=IngestSettings,  # type: ignore[arg-type]
        description="Document ingestion: splitting, limits, workers.",
    )
    retrieval: RetrievalSettings = Field(
        default_factory=RetrievalSettings,  # type: ignore[arg-type]
        description="Knowledge-base search defaults.",
    )
    finetune: FinetuneSettings = Field(
        default_factory=FinetuneSettings,  # type: ignore[arg-type]
        description="LoRA SFT finetuning (`kbqa finetune`).",
    )
    rag: RagSettings = Field(
        default_factory=RagSettings,  # type: ignore[arg-type]
        description="Knowledge-base answers: prompts, context budget, refusal, reranker.",
    )
    eval: EvalSettings = Field(
        default_factory=EvalSettings,  # type: ignore[arg-type]
        description="`kbqa eval compare` defaults.",
    )

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if (
            self.environment == "production"
            and not self.api_keys
            and self.server.host
            not in {
                "127.0.0.1",
                "localhost",
                "::1",
            }
        ):
            raise ValueError(
                "environment=production on a public interface needs API keys: set KBQA_API_KEYS "
                "or bind server.host to 127.0.0.1"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        data = _config_data.get()
        if data:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=data))
        return tuple(sources)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a table/mapping at the top")
    return data


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: overrides > env > config file > defaults.

    ``overrides`` use dotted keys for nested fields (``**{"llm.model": "x"}``); ``None``
    values are ignored so CLI flags that were not given do not mask lower sources.
    """
    path = config_file or os.environ.get("KBQA_CONFIG")
    data = _read_config(Path(path)) if path else None
    init = nest_dotted(overrides)
    token = _config_data.set(data)
    try:
        return Settings(**init)
    except ValidationError as exc:
        raise SettingsError(str(exc)) from exc
    finally:
        _config_data.reset(token)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked."""
    return settings.model_dump(mode="json")
