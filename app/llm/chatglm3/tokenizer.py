"""A fast (``tokenizers``) tokenizer equivalent to ChatGLM3's SentencePiece tokenizer.

ChatGLM3's own tokenizer is a SentencePiece BPE model (``tokenizer.model``) plus nine special
tokens appended after the SentencePiece vocabulary, in this order (ids ``n``, ``n+1``, ...
where ``n`` is the SentencePiece vocab size, 64789 for ChatGLM3-6B)::

    [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>

Its chat format builds each turn from separate SentencePiece calls::

    [gMASK] sop  then per message:  <|role|> + sp.encode(metadata + "\\n") + sp.encode(text)
    and finally <|assistant|> to ask for the answer.

Each ``sp.encode`` call adds its own dummy-prefix "▁". How the converted tokenizer gets the
same ids from one rendered string (the way transformers, kbqa and vLLM tokenize a chat):

1. The special tokens are added tokens: the text between two of them is normalized and
   tokenized on its own, and the normalizer prepends "▁" to every such segment (like
   SentencePiece's dummy prefix per call), so ``<|user|>`` starts a fresh "sp.encode".
2. Inside a turn, ``metadata + "\\n"`` and the message are two calls in ChatGLM3. The template
   renders ``metadata + "\\n" + " " + message``: the explicit space becomes the message's "▁",
   exactly what the second call would have prepended. This is exact because "\\n" is not a
   piece of ChatGLM3's vocabulary (it is the byte piece ``<0x0A>``), so no BPE merge crosses
   it: ``sp("▁meta\\n▁msg") == sp("▁meta\\n") + sp("▁msg")``. An empty message gets no space
   (``sp.encode("")`` is empty). :func:`verify_newline_barrier` checks the premise on the
   actual vocabulary at conversion time.

The tokens keep ChatGLM3's names, ``sop`` and ``eop`` included (``convert_tokens_to_ids("sop")``
is 64792 as with the original tokenizer). In ``tokenizers`` an added token is found in text by
its name (there is no option to name a token one thing and match another, and the chat
template can only produce the start token by writing its name), so the plain words "sop" and
"eop" need two guards to stay text:

- ``single_word``: ``sop`` matches only as a whole word, never inside one ("isopropyl",
  "people", "sop流程" stay text);
- the chat template escapes the words in message contents and metadata as ``s\\ufdd0op`` /
  ``e\\ufdd0op`` (U+FDD0 is a Unicode noncharacter, reserved for such internal use): the
  escaped form matches no added token, and the normalizer's first step turns it back into
  "sop"/"eop", so the ids are exactly SentencePiece's for the original words. Only these two
  four-character sequences are rewritten; a lone U+FDD0 elsewhere is left alone.

So a user's "sop" in a chat is never the control token. What stays: text encoded *without*
the template (``tokenizer("a sop story")``, used by kbqa only to count tokens) gets the
control id for a standalone lowercase word ``sop``/``eop``; a message that literally contains
a role token string (``<|user|>``) is tokenized as that special token; and tool definitions
(ChatGLM3's ``tools`` on the system message) are not rendered by the template. If the
SentencePiece vocabulary itself had a piece called ``sop`` or ``eop`` (a name can map to one
id only), that token falls back to GLM-4's spelling ``<sop>``/``<eop>``, with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# ChatGLM3's special tokens in id order after the SentencePiece vocabulary: the converted
# tokenizer uses these names (see the module docstring for the fallback of sop/eop).
ORIGINAL_SPECIALS = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
SPECIALS = list(ORIGINAL_SPECIALS)
GLM4_SPELLING = {"sop": "<sop>", "eop": "<eop>"}
ROLES = ("system", "user", "assistant", "observation")

# the plain-word specials and their escaped form in rendered chats (module docstring)
_MARK = "\ufdd0"
ESCAPED = {word: word[0] + _MARK + word[1:] for word in GLM4_SPELLING}


def chat_template(sop: str = "sop") -> str:
    """The Jinja template over `messages` (role, content, optional metadata); ``sop`` is the
    start token's name. `tool` messages are ChatGLM3 observations. See the module docstring
    for the space after "\\n" and for the escapes."""
    # the escaped form is written as the character itself, not as a "\\ufdd0" escape that
    # the template engine would have to decode
    escape = "".join(f" | replace('{w}', '{e}')" for w, e in ESCAPED.items())
    return (
        f"[gMASK]{sop}"
        "{%- for message in messages -%}"
        "{%- set role = 'observation' if message['role'] == 'tool' else message['role'] -%}"
        "{%- if role not in ['system', 'user', 'assistant', 'observation'] -%}"
        "{{ raise_exception('ChatGLM3 has no role ' + role) }}"
        "{%- endif -%}"
        "{{ '<|' + role + '|>' }}"
        f"{{{{ (message.get('metadata') or ''){escape} }}}}{{{{ '\n' }}}}"
        f"{{%- if message['content'] -%}}{{{{ ' ' + (message['content']{escape}) }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
    )


CHAT_TEMPLATE = chat_template()


class TokenizerConversionError(ValueError):
    """tokenizer.model cannot be converted faithfully."""


def special_token_ids(sp_vocab_size: int, names: list[str] | None = None) -> dict[str, int]:
    """Special token name -> id (ChatGLM3's ids: right after the SentencePiece vocab)."""
    return {name: sp_vocab_size + i for i, name in enumerate(names or SPECIALS)}


def special_names(pieces: set[str] | dict[str, int]) -> list[str]:
    """The names of the special tokens for a SentencePiece vocabulary: ChatGLM3's own, except
    ``sop``/``eop`` when the vocabulary has a piece of that name (GLM-4's spelling then)."""
    names = []
    for name in ORIGINAL_SPECIALS:
        if name in pieces:
            fallback = GLM4_SPELLING.get(name)
            if fallback is None or fallback in pieces:
                raise TokenizerConversionError(
                    f"tokenizer.model has a piece named {name!r}, the name of a ChatGLM3 "
                    "special token; refusing to guess which id it means"
                )
            logger.warning(
                "event=chatglm3_special_renamed token=%s as=%s reason=a vocabulary piece has "
                "the name",
                name,
                fallback,
            )
            name = fallback
        names.append(name)
    return names


def _load_proto(model_file: Path) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:  # a core dependency; a clear message anyway
        raise ImportError(
            "reading tokenizer.model needs sentencepiece: pip install sentencepiece"
        ) from exc
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def _merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges from a SentencePiece BPE vocabulary: a pair merges with the priority of the
    piece it forms (SentencePiece merges the pair whose result scores highest)."""
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, score in scores.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[piece], vocab[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_fast_tokenizer(model_file: Path) -> Any:
    """A ``PreTrainedTokenizerFast`` equivalent to ChatGLM3's tokenizer for ``model_file``."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    proto = _load_proto(model_file)
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 bpe
        raise TokenizerConversionError(
            f"{model_file} is not a SentencePiece BPE model (ChatGLM3's is); refusing to guess"
        )
    vocab: dict[str, int] = {}
    scores: dict[str, float] = {}
    for index, piece in enumerate(proto.pieces):
        vocab[piece.piece] = index
        if piece.type == 1:  # NORMAL pieces take part in merges
            scores[piece.piece] = piece.score
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    model = BPE(
        vocab=vocab,
        merges=_merges(vocab, scores),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=bool(proto.trainer_spec.byte_fallback),
        dropout=None,
    )
    tok = Tokenizer(model)
    names = special_names(vocab)
    _set_normalizer_and_decoder(tok, proto.normalizer_spec, names)

    control = [p.piece for p in proto.pieces if p.type in (2, 3)]  # UNKNOWN, CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_special_tokens(
        [
            # the plain words match only as whole words (module docstring)
            AddedToken(t, special=True, normalized=False, single_word=t in ESCAPED)
            for t in names
        ]
    )
    ids = special_token_ids(len(proto.pieces), names)
    for name, expected in ids.items():
        if tok.token_to_id(name) != expected:
            raise TokenizerConversionError(f"special token {name} got id {tok.token_to_id(name)}")
    eos = proto.pieces[proto.trainer_spec.eos_id].piece if proto.trainer_spec.eos_id >= 0 else None
    sop_name = names[ORIGINAL_SPECIALS.index("sop")]
    _set_post_processor(tok, ids, sop_name, eos, proto.trainer_spec.eos_id)
    verify_newline_barrier(vocab)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        eos_token=eos,
        pad_token=unk,  # ChatGLM3 pads with <unk> (id 0), on the left
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=chat_template(sop_name),
        model_max_length=_large(),
    )


def _set_normalizer_and_decoder(tok: Any, spec: Any, names: list[str]) -> None:
    """SentencePiece's normalizer spec as ``tokenizers`` steps, and the matching decoder."""
    from tokenizers import decoders, normalizers

    # first, the words the chat template escaped become plain words again (module docstring)
    steps: list[Any] = [normalizers.Replace(e, w) for w, e in ESCAPED.items() if w in names]
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True)]
        steps += [normalizers.Replace(_regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None  # SentencePiece BPE runs merges over the whole segment
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )


def _set_post_processor(
    tok: Any, ids: dict[str, int], sop_name: str, eos: str | None, eos_id: int
) -> None:
    """[gMASK] sop before every text, as ChatGLM3's ``build_inputs_with_special_tokens``."""
    from tokenizers import processors

    pair_suffix = [f"{eos}:1"] if eos else []
    tok.post_processor = processors.TemplateProcessing(
        single=["[gMASK]", sop_name, "$A"],
        pair=["[gMASK]", sop_name, "$A", "$B:1", *pair_suffix],
        special_tokens=[("[gMASK]", ids["[gMASK]"]), (sop_name, ids[sop_name])]
        + ([(eos, eos_id)] if eos else []),
    )


def _large() -> int:
    return int(1e30)


def _regex(pattern: str) -> Any:
    from tokenizers import Regex

    return Regex(pattern)


def verify_newline_barrier(vocab: dict[str, int]) -> None:
    """The chat template's exactness rests on "\\n" appearing in no vocabulary piece."""
    offending = [piece for piece in vocab if "\n" in piece]
    if offending:
        raise TokenizerConversionError(
            "tokenizer.model has pieces containing a newline "
            f"({offending[:3]}); the ChatGLM3 chat template would not be token-exact"
        )


def clean_response(text: str) -> str:
    """ChatGLM3's answer starts with its metadata line (empty for plain chat): drop it.

    Mirrors ChatGLM3's ``process_response`` for the no-tool case.
    """
    head, sep, rest = text.partition("\n")
    if sep and not head.strip():
        return rest.strip()
    return text.strip()


def save_tokenizer(model_file: Path, out_dir: Path) -> dict[str, int]:
    """Build and save the fast tokenizer into ``out_dir``; return the special token ids."""
    tokenizer = build_fast_tokenizer(model_file)
    tokenizer.save_pretrained(str(out_dir))
    names = special_names({p.piece for p in _load_proto(model_file).pieces})
    ids = {name: int(tokenizer.convert_tokens_to_ids(name)) for name in names}
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chatglm3_special_tokens"] = {
        orig: ids[name] for orig, name in zip(ORIGINAL_SPECIALS, names, strict=True)
    }
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return ids
