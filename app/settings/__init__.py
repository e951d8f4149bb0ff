"""The one typed settings tree of kbqa.

Sources, highest priority first: explicit overrides (CLI flags), environment variables
(prefix ``KBQA_``, nesting with ``__``, e.g. ``KBQA_LLM__MODEL``), the optional config file
(``--config kbqa.toml`` or ``KBQA_CONFIG``; TOML or YAML), then the defaults documented on
each field. This package imports nothing else of the project.
"""

from __future__ import annotations

from app.settings.base import SettingsError
from app.settings.root import Settings, load_settings, masked_dump

__all__ = ["Settings", "SettingsError", "load_settings", "masked_dump"]
