"""Settings (env, files, overrides, dotted keys), the CLI's config commands, model references
and the packaged models, and the docker files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import cli
from app.llm.models import ModelReferenceError, resolve_model
from app.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_nested_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_LLM__MODEL", "/models/x")
    monkeypatch.setenv("KBQA_API_KEYS", "k1, k2")
    monkeypatch.setenv("KBQA_LLM__ADAPTERS", "a=/ad/a,b=/ad/b")
    monkeypatch.setenv("KBQA_LLM__OPENAI__TIMEOUT_S", "7")
    settings = load_settings()
    assert settings.llm.model == "/models/x"
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert settings.llm.adapters == {"a": "/ad/a", "b": "/ad/b"}
    assert settings.llm.openai.timeout_s == 7


def test_priority_overrides_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "kbqa.toml"
    toml.write_text(
        'data_dir = "/srv/kbqa"\n[server]\nport = 9000\nhost = "127.0.0.1"\n'
        '[llm]\nmodel = "from-file"\nmax_new_tokens = 99\n'
    )
    assert load_settings(toml).llm.max_new_tokens == 99
    monkeypatch.setenv("KBQA_LLM__MODEL", "from-env")
    settings = load_settings(toml, **{"server.port": 9100, "llm.backend": None})
    assert settings.llm.model == "from-env"  # env beats file
    assert settings.server.port == 9100  # flag beats file
    assert settings.data_dir == Path("/srv/kbqa")  # file beats default
    assert settings.llm.backend == "transformers"  # a flag not given masks nothing
    yml = tmp_path / "kbqa.yaml"
    yml.write_text("llm:\n  max_new_tokens: 12\n")
    monkeypatch.setenv("KBQA_CONFIG", str(yml))
    assert load_settings().llm.max_new_tokens == 12


def test_bad_settings_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n")
    with pytest.raises(SettingsError, match="does not parse"):
        load_settings(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[llm]\nmodle = 'x'\n")
    with pytest.raises(SettingsError, match="modle"):
        load_settings(unknown)
    with pytest.raises(SettingsError, match="API keys"):
        load_settings(**{"environment": "production", "server.host": "0.0.0.0"})
    ok = load_settings(**{"environment": "production", "server.host": "0.0.0.0", "api_keys": ["k"]})
    assert ok.environment == "production"


def test_every_field_is_documented() -> None:
    def walk(model: type, prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description:
                missing.append(prefix + name)
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += walk(annotation, f"{prefix}{name}.")
        return missing

    assert walk(Settings, "") == []


def test_cli_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_API_KEYS", "super-secret")
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "super-secret" not in result.output
    data = json.loads(result.output)
    assert data["llm"]["model"] == "smollm2-135m-instruct"
    assert data["api_keys"] == ["**********"]


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "show", "--config", str(tmp_path / "no.toml")])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_model_reference_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelReferenceError, match=r"hf download some-org/some-model"):
        resolve_model("some-org/some-model", tmp_path)
    with pytest.raises(ModelReferenceError, match="does not exist"):
        resolve_model("./no/such/dir", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelReferenceError, match=r"no config\.json"):
        resolve_model(str(empty), tmp_path)


def test_packaged_model_converts_once(models_dir: Path) -> None:
    first = resolve_model("smollm2-135m-instruct", models_dir)
    marker = first.path / ".kbqa-complete"
    stamp = marker.stat().st_mtime_ns
    again = resolve_model("smollm2-135m-instruct", models_dir)
    assert again.path == first.path and marker.stat().st_mtime_ns == stamp
    assert (first.path / "config.json").is_file()
    assert list(first.path.glob("*.safetensors"))


def test_a_conversion_parses_each_gguf_once(tmp_path: Path) -> None:
    """transformers reads a GGUF's metadata for the tokenizer, the config and the weights;
    inside a conversion they share one parse (~17 s each on the Qwen 0.5B), which ends with
    it, and the parse gives what a fresh one does (bench/convert.py: same tensors)."""
    import gguf

    from app.llm.models import PACKAGED, _one_gguf_parse, packaged_gguf

    original = gguf.GGUFReader
    path = packaged_gguf(PACKAGED["smollm2-135m-instruct"], tmp_path)
    with _one_gguf_parse():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again and isinstance(first, original)
        assert gguf.GGUFReader(path, "r") is not first  # other arguments: a parse of their own
    assert gguf.GGUFReader is original
    fresh = gguf.GGUFReader(path)
    assert [t.name for t in fresh.tensors] == [t.name for t in first.tensors]


def _compose_settings(environment: dict[str, Any]) -> Any:
    """The settings a compose service's KBQA_ environment gives (defaults of ${VAR:-x})."""
    env = {k: str(v) for k, v in environment.items()}
    env = {k: re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    env = {k: v for k, v in env.items() if v}
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("KBQA_")]:
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        return load_settings()


def test_compose_parses_and_points_at_real_files() -> None:
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"kbqa", "chroma", "vllm", "postgres", "api1", "api2", "worker1", "worker2"} <= set(
        services
    )
    assert "profiles" not in services["chroma"]  # every profile needs it
    for name, service in services.items():
        if "build" not in service:
            continue
        build = service["build"]
        context = (ROOT / "docker" / build["context"]).resolve()
        assert context == ROOT
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), name
        for line in dockerfile.read_text().splitlines():
            match = re.match(r"COPY\s+(.+)\s+\S+$", line)
            if match:
                for src in match.group(1).split():
                    assert (context / src).exists(), f"{dockerfile.name} copies missing {src}"
        # every KBQA_ variable the compose file sets is a real setting
        settings = _compose_settings(service["environment"])
        assert settings.vectorstore.chroma_host == "chroma", name
        assert "vllm" in settings.llm.openai.base_url, name
    # the scale profile: two API replicas and two workers on postgres, no ingest in the API
    for name in ("api1", "api2", "worker1", "worker2"):
        service = services[name]
        assert service["profiles"] == ["scale"] and "postgres" in service["depends_on"]
        settings = _compose_settings(service["environment"])
        url = settings.catalog.url.get_secret_value()
        assert url.startswith("postgresql://kbqa:") and url.endswith("@postgres:5432/kbqa")
        assert settings.ingest.workers == 0
    assert services["worker1"]["command"] == ["kbqa", "worker"]
    assert services["postgres"]["profiles"] == ["scale"]
    ports = {p for name in ("api1", "api2") for p in services[name]["ports"]}
    assert ports == {"8001:8000", "8002:8000"}


def test_packaged_gemma_without_chat_template(models_dir: Path) -> None:
    """The packaged Gemma 3 270m base has no chat template: it is served through the plain
    prompt template, and `llm.prompt_template` replaces that for any model. Checked on
    llama.cpp, the CPU default backend (its GGUF runs as shipped; a transformers copy would be
    a 1 GB fp32 conversion of ~2 minutes on a fresh machine, for the same template logic that
    the SmolLM2 check below covers on transformers)."""
    from app.llm.base import ChatMessage, GenerationParams
    from app.llm.llamacpp_backend import LlamaCppBackend
    from app.llm.models import PACKAGED, PLAIN_TEMPLATE
    from app.llm.transformers_backend import TransformersBackend

    question = [ChatMessage("user", "中国的首都是哪里？")]
    assert PACKAGED["gemma-3-270m"].chat_template == PLAIN_TEMPLATE
    base = {"llm.model": "gemma-3-270m", "models_dir": models_dir, "llm.context_length": 512}
    gemma = LlamaCppBackend.load(load_settings(**base).llm, models_dir)
    try:
        assert gemma.render(question).endswith("Question: 中国的首都是哪里？\nAnswer:")
        answer = gemma.generate_text(question, GenerationParams(max_tokens=16))
        assert answer.completion_tokens > 0 and answer.text.strip()
        assert "Question:" not in answer.text  # the plain template's stop ends the turn
        again = gemma.generate_text(question, GenerationParams(max_tokens=16))
        assert again.text == answer.text
    finally:
        gemma.close()
    custom = "{% for m in messages %}<<{{ m.role }}>> {{ m.content }}\n{% endfor %}A:"
    overridden = LlamaCppBackend.load(
        load_settings(**base, **{"llm.prompt_template": custom}).llm, models_dir
    )
    try:
        assert overridden.render(question) == "<<user>> 中国的首都是哪里？\nA:"
    finally:
        overridden.close()
    # the same override on transformers, over a model that has its own chat template
    settings = load_settings(
        **{
            "llm.model": "smollm2-135m-instruct",
            "llm.backend": "transformers",
            "models_dir": models_dir,
            "llm.prompt_template": custom,
        }
    )
    smollm2 = TransformersBackend.load(settings.llm, models_dir)
    try:
        assert smollm2.chat_template == custom
        assert smollm2.render(question) == "<<user>> 中国的首都是哪里？\nA:"
    finally:
        smollm2.close()


def test_dotted_keys_nest_and_merge() -> None:
    from app.settings.base import deep_merge, nest_dotted

    flat = {"llm.model": "m", "llm.llamacpp.threads": 2, "data_dir": "d", "eval.top_k": None}
    nested = nest_dotted(flat)
    assert nested == {"llm": {"model": "m", "llamacpp": {"threads": 2}}, "data_dir": "d"}
    base = {"llm": {"model": "x", "backend": "llamacpp"}, "eval": {"top_k": 3}}
    assert deep_merge(base, nested) == {
        "llm": {"model": "m", "backend": "llamacpp", "llamacpp": {"threads": 2}},
        "eval": {"top_k": 3},
        "data_dir": "d",
    }
    assert base["llm"]["model"] == "x"  # the base is not changed
