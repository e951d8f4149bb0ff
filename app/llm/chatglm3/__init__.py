"""ChatGLM3-6B without remote code: convert the original checkpoint to ``GlmForCausalLM``."""

from app.llm.chatglm3.convert import (
    ConversionError,
    ConversionReport,
    convert_chatglm3,
    is_chatglm_dir,
)
from app.llm.chatglm3.tokenizer import CHAT_TEMPLATE, SPECIALS, clean_response, special_token_ids

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIALS",
    "ConversionError",
    "ConversionReport",
    "clean_response",
    "convert_chatglm3",
    "is_chatglm_dir",
    "special_token_ids",
]
