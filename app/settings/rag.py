"""Knowledge-base answer settings: prompts, context budget, relevance gate, refusal, reranker."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from app.settings.base import Section

# Tuned for the small CPU default (bench/answer_quality.py): the passages first, the question
# last, and the passage's own sentence as the answer (quoted verbatim: rag.quote_answers). On
# 299 cmrc2018-trial questions Qwen2.5-Coder-1.5B contains 0.54 / F1 0.58 (with the short
# prompt below); with PROMPT_ZH_CITE Qwen-0.5B gave 0.05 / 0.04 on 40.
# No citation or refusal instructions: a small model answers "[1]" alone, or refuses when the
# answer is in passage 1; the relevance gate refuses off-topic questions before the model is
# called, and the sources come with every answer. Larger models (ChatGLM3-6B) can be asked
# to cite: see PROMPT_ZH_CITE.
PROMPT_ZH = (
    "资料：\n{context}\n\n"
    "根据上面的资料回答问题。找出资料中回答这个问题的原句，照原文写出，不要改写，不要解释。\n"
    "问题：{question}"
)
PROMPT_EN = (
    "Passages:\n{context}\n\n"
    "Answer the question from the passages above: find the sentence of the passages that "
    "answers it and write it out as it stands, without rewording or explaining.\n"
    "Question: {question}"
)
# Questions that ask for a name, a date, a number or a place get a short answer: the words of
# the passage that answer it (a whole sentence would bury them). Chosen by the question's
# words (rag.short_answer_zh / _en), the usual answer-type cue of extractive QA.
PROMPT_ZH_SHORT = (
    "资料：\n{context}\n\n"
    "根据上面的资料回答问题。用资料中的原文回答，只写出答案本身（一个词语、短语或短句），"
    "不要写整句，不要解释。\n"
    "问题：{question}"
)
PROMPT_EN_SHORT = (
    "Passages:\n{context}\n\n"
    "Answer the question from the passages above with their own words: write only the answer "
    "itself (a name, a number, a date or a short phrase), not a whole sentence, no "
    "explanation.\nQuestion: {question}"
)
# Units and measure words a number answer keeps from its passage (rag.answer_units).
ANSWER_UNITS = (
    r"(?:平方公里|平方米|公顷|公里|千米|公尺|公分|厘米|毫米|米|千克|公斤|克|吨|亩|美元|港元|"
    r"欧元|元|分钟|小时|秒|个|人|名|位|册|本|部|次|座|间|处|所|家|种|条|项|件|台|辆|艘|架|枚|"
    r"层|届|岁|倍|级|%|％|km|kg|m\b)"
)
# Qualifiers a number answer keeps from its passage (rag.answer_qualifiers): the figure is
# approximate, or a bound.
ANSWER_QUALIFIERS = (
    r"约|大约|大概|仅|仅有|只有|年仅|共|共计|总共|超过|逾|近|将近|接近|至少|最少|最多|不到|不足|"
    r"多达|高达|长达|约有"
)
# What a short answer keeps from right after it in its passage (rag.answer_suffixes): a gloss
# in brackets (an original name, a Gregorian year, a conversion), or the part of a place.
ANSWER_SUFFIXES = (
    r"[（(](?=[^（）()\n]*[^\W_])[^（）()\n]{1,40}[）)]|"  # a gloss with a word or number in it
    r"[东西南北中]{1,2}部|一带|附近|境内|以[东西南北]"
)
# Short answers to questions that ask when, where, how many or which post (rag.clause_answer_zh
# / _en) are given as their passage clause: the date with its event, the place with what is
# there, the number with what it counts, the post with its term.
CLAUSE_ANSWER_ZH = r"什么时候|何时|哪一?年|哪天|哪里|哪儿|什么地方|在哪|何处|位于|多少|职务"
SHORT_ANSWER_ZH = (
    r"多少|几(?!乎)|多[大长高远重久宽深厚]|什么时候|何时|哪一?年|哪天|谁|哪里|哪儿|什么地方|"
    r"哪[个位家国座所支部队省市县条种]|什么职务|什么性|"
    # a name: "简称是什么", "又名什么", "古称什么", "叫什么", "被称为什么", "被誉为什么", a
    # transliteration, a post ("位居何职") (not what a name means, where it comes from, or why
    # or how it is)
    r"^(?!.*(?:意思|由来|来历|含义|意义|形容|取自|得名|(?<![称名作誉之])为什么|为何|怎样|怎么|如何|"
    # how a name changed or differs ("名称有什么变化") is told by a sentence
    r"变化|改变|区别|不同|差别|差异)).*"
    r"(?:叫什么|[称作]为什么|名为什么|称之为什么|誉为什么|美誉|何职|音译|"
    r"[简别又原艺初本学笔全曾旧俗]名|[简别古俗史旧自]称|谥号|称号|代号|名称|名字|职业|官职)"
)
SHORT_ANSWER_EN = (
    r"(?i)^\s*(who|whom|when|where|which|what year|"
    r"how (many|much|long|old|tall|high|far|big|large))\b"
)
# Questions that ask for a list of items ("有哪些要求", "包括哪些？"): the answer is every row
# of the table section the question names or the model's answer comes from
# (rag.list_answer_zh / _en). Not a question for the one thing of a kind:
# "哪些部门或人员定期进行维护管理？" is answered by one requirement row.
LIST_ANSWER_ZH = (
    r"哪些(?:要求|条|项|内容|方面|措施|规定|控制点)|(?:有|包括|包含|是)哪些[？?]?$|要求有哪些|"
    r"哪几(?:条|项|种|个方面)|列出|列举|包括什么|包含什么|有什么要求"
)
LIST_ANSWER_EN = r"(?i)^\s*(?:what|which)\s+(?:are|were)\b|\blist\b"
# A list item's number at the start of a line (rag.answer_numbering): "03. ", "2、", "（一）",
# "No.1 ", not a figure ("1.44平方公里", "3.5").
ANSWER_NUMBERING = (
    r"^\s*(?:No\.\s*\d{1,3}\s+|(?:\d{1,3}|[一二三四五六七八九十]{1,3})[.．、](?!\d)\s*|"
    r"[（(](?:\d{1,3}|[一二三四五六七八九十]{1,3})[）)]\s*)"
)
PROMPT_ZH_CITE = (
    "请只根据下面编号的资料回答问题。回答时用 [1]、[2] 这样的编号标明依据的资料。"
    "如果资料中没有答案，就回答“根据已有资料无法回答该问题”，不要编造。\n\n"
    "资料：\n{context}\n\n问题：{question}\n回答："
)
PASSAGE_ZH = "[{index}] 《{title}》\n{text}"
PASSAGE_EN = "[{index}] ({title})\n{text}"
REFUSAL_ZH = "抱歉，知识库中没有找到与这个问题相关的内容，无法回答。"
REFUSAL_EN = "Sorry, the knowledge base has nothing that answers this question."


class RerankerSettings(Section):
    model: str | None = Field(
        None,
        description="Cross-encoder reranker: a local path or a hub id from the local cache "
        "(e.g. `BAAI/bge-reranker-base`). None: no reranking (the default).",
        examples=["BAAI/bge-reranker-v2-m3", "/models/bge-reranker-base"],
    )
    candidates: int = Field(
        20, ge=1, le=200, description="Passages retrieved and rescored by the reranker."
    )
    device: str | None = Field(None, description="Device of the reranker (default: auto).")
    batch_size: int = Field(16, ge=1, description="Passage pairs scored per reranker call.")


class RagSettings(Section):
    """How a question over knowledge bases becomes an answer with sources."""

    prompt_zh: str = Field(
        PROMPT_ZH,
        description="Prompt for Chinese questions; `{context}` gets the numbered passages, "
        "`{question}` the question. Sent as the user turn (with the chat template).",
    )
    prompt_en: str = Field(PROMPT_EN, description="Prompt for other questions (same fields).")
    prompt_zh_short: str = Field(
        PROMPT_ZH_SHORT,
        description="Prompt for Chinese questions that ask for a name, date, number or place "
        "(`rag.short_answer_zh` matches): the answer is the passage's own words, not a "
        "sentence.",
    )
    prompt_en_short: str = Field(
        PROMPT_EN_SHORT, description="Prompt for such questions in other languages."
    )
    short_answer_zh: str = Field(
        SHORT_ANSWER_ZH,
        description="Regular expression: a Chinese question it matches (searched anywhere) gets "
        "`prompt_zh_short`; empty: never.",
    )
    short_answer_en: str = Field(
        SHORT_ANSWER_EN,
        description="Regular expression for other questions (`prompt_en_short`); empty: never.",
    )
    list_answer_zh: str = Field(
        LIST_ANSWER_ZH,
        description="Regular expression: a Chinese question it matches (searched anywhere) asks "
        'for a list (and gets no short answer: "包括哪几项" wants the items): the default takes '
        '"有哪些要求", "哪些措施", "包括哪些？", not "哪些部门…" (one row names them). When its '
        "answer is a row of a table section (a requirement table's control point), the answer "
        "is all of that section's rows, in the document's order; only those whose marks "
        '("（适用等级：三级、四级）") name what the question names ("第三级"), when it names '
        "one. Empty: never.",
    )
    list_answer_en: str = Field(
        LIST_ANSWER_EN, description="The same for questions in other languages."
    )
    answer_numbering: str = Field(
        ANSWER_NUMBERING,
        description='Regex of a list item\'s number at the start of a line ("03. ", "2、", '
        '"（一）"). A sentence answer quoted from a numbered item loses its number ("03. 采用了'
        '…" -> "采用了…": the item answers, not its place in the list); a list question\'s '
        "answer in a numbered item becomes the list (`list_item_answers`). Empty: never.",
    )
    list_item_answers: bool = Field(
        True,
        description="A list question (`list_answer_zh` / `_en`) whose answer is in a numbered "
        "item of its passage's section (`answer_numbering`; a section longer than a chunk is "
        "read as far as `list_max_chunks`) is answered with every item of that numbered list, "
        'each its first sentence, one per line: "安全扩展要求包括哪几个方面？" gets the four '
        "extensions, not the first one the model copied. Items that head sections of their "
        'own ("07. 安全管理机构") are read with their sibling sections. false: the model\'s one '
        "item.",
    )
    quote_answers: bool = Field(
        True,
        description="Answers are finished from the passages (app/rag/quote.py) and sent when "
        "complete, not token by token: a sentence answer (not a short one) is replaced by "
        "the passage text it matches best (one or two adjacent sentences, verbatim) when "
        "their character overlap (F1) reaches `quote_min_overlap`, so the user reads the "
        "source's own words, not the model's paraphrase (cmrc2018-trial, Qwen2.5-Coder-1.5B: "
        "contains-the-answer 0.55 -> 0.73 on 60 questions); a short number answer gains its "
        "unit from the passage (`answer_units`); an answer that only repeats the question's "
        "subject is replaced by the passage sentence that best matches the rest of the "
        "question (with units: contains 0.54 -> 0.58 over 299 answers). false: the model's "
        "words, streamed.",
    )
    quote_min_overlap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Least overlap (bag-of-characters F1) between the model's answer and a "
        "passage sentence for the answer to be replaced by it; below it the model's own words "
        "stay (it combined passages, or answered from elsewhere).",
    )
    answer_min_relevance: float = Field(
        0.2,
        ge=0,
        le=1,
        description="A sentence answer (not a short one) sharing less than this fraction of "
        "the question's terms that the passages' best sentence shares (terms weighted by how "
        "few of the passages' sentences have them) is replaced by that sentence: a small model "
        "sometimes copies a neighbouring sentence (quoted answers only; 0: never).",
    )
    answer_units: str = Field(
        ANSWER_UNITS,
        description="Regex matched in the passage right after a short answer that ends in a "
        'number: what it matches is appended ("16" -> "16个", "81.6万" -> '
        '"81.6万册"): units and Chinese measure words. Empty: never.',
    )
    answer_qualifiers: str = Field(
        ANSWER_QUALIFIERS,
        description="Regex matched in the passage right before a short answer that starts "
        'with a number: what it matches is put in front ("22平方公里" -> "约22平方公里", '
        '"两岁" -> "年仅两岁"): the source called the figure approximate or a bound. Empty: never.',
    )
    answer_suffixes: str = Field(
        ANSWER_SUFFIXES,
        description="Regex matched in the passage right after a short answer (after its unit): "
        'what it matches is appended: a gloss in brackets ("天正3年" -> "天正3年（1575年）", '
        '"巴里·尼尔逊" -> "巴里·尼尔逊（Barry Nelson）") or the part of a place ("湖南省长沙县" '
        '-> "湖南省长沙县东北部"). Empty: never.',
    )
    answer_list_separators: str = Field(
        "、|或",
        description="Regex matched in the passage right after a short answer: when it "
        "matches, the answer is the first item of a list and becomes the list, to the end of "
        'its clause ("九江推官" -> "九江推官、西华知县"), up to `answer_list_max_chars`. '
        "Empty: never.",
    )
    answer_list_max_chars: int = Field(
        80,
        ge=0,
        le=1000,
        description="Longest list a short answer is completed to (characters); a longer one "
        "leaves the answer as it is. 0: never.",
    )
    loop_min_chars: int = Field(
        4,
        ge=1,
        le=200,
        description="Shortest text whose back-to-back repeats make an answer a loop (see "
        "`loop_repeats`).",
    )
    loop_repeats: int = Field(
        3,
        ge=0,
        le=100,
        description="An answer that ends in the same text (`loop_min_chars` or longer, with at "
        "least two letters or CJK characters, not itself in a passage) this many times in a "
        "row is a loop: generation stops there, and a quoted answer is the first passage's "
        'best sentence instead (Qwen2.5-Coder-1.5B wrote "资料中回答这个问题的原句是：" until '
        "`max_tokens` for 3 of 299 cmrc2018-trial questions). 0: never.",
    )
    list_max_chunks: int = Field(
        40,
        ge=0,
        le=1000,
        description="Chunks read on each side of a list answer's passage to gather its table "
        "section (the run of chunks under the same headings): bounds the work of one list "
        "question, whatever the document's size; a longer section is cut there.",
    )
    clause_answer_zh: str = Field(
        CLAUSE_ANSWER_ZH,
        description="Regex: a Chinese question it matches (searched anywhere; it asks when, "
        "where, how many or which post) that gets a short answer has that answer widened to "
        "the clause of its passage that holds it, up to `clause_answer_max_chars`: "
        '"2008年12月20日" -> "2008年12月20日在日本上映。", "1694人" -> '
        '"2006年人口统计数据为1694人。" (the date with its event, the place with what is '
        "there, the number with what it counts). A date set off by a comma takes the next "
        "clause when that shares a term with the question: "
        '"2006年6月，茨柏克沃斯基从微软退休。". When and where, cmrc2018-trial, 211 questions '
        "never used for tuning: contains 0.578 -> 0.616, F1 0.606 -> 0.602. How many, which "
        "post and the next clause, all 952 (stored answers finished again): contains 0.640 -> "
        "0.671, F1 0.635 -> 0.640; the 440 in no tuning sample 0.609 -> 0.652 and 0.617 -> "
        "0.628. Empty: never.",
    )
    clause_answer_en: str = Field(
        "",
        description="The same for other languages. Empty (the default): never; English "
        "extractive QA sets (SQuAD style) want the bare span.",
    )
    clause_answer_max_chars: int = Field(
        30,
        ge=0,
        le=400,
        description="Longest clause a short answer is widened to (characters); a longer clause "
        "leaves the answer as it is. 0: never.",
    )
    passage_zh: str = Field(
        PASSAGE_ZH,
        description="How one passage is written into a Chinese prompt: `{index}`, `{title}` "
        "(heading path or file name), `{text}`.",
    )
    passage_en: str = Field(PASSAGE_EN, description="How one passage is written (other).")
    system_prompt: str | None = Field(
        None,
        description="System message sent before the prompt (None: none, the chat template's "
        "own default applies).",
    )
    zh_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="A question is Chinese when CJK characters are at least this share of its "
        "letters; it picks the prompt and refusal language.",
    )
    no_answer_policy: Literal["refuse", "fallback"] = Field(
        "refuse",
        description="When no passage passes the threshold: `refuse` answers the fixed refusal "
        "message without calling the LLM; `fallback` lets the model answer alone and flags "
        "the answer as not grounded.",
    )
    refusal_zh: str = Field(REFUSAL_ZH, description="Refusal message for Chinese questions.")
    refusal_en: str = Field(REFUSAL_EN, description="Refusal message for other questions.")
    min_dense_score: float = Field(
        0.86,
        ge=0,
        le=1,
        description="Relevance gate: a passage is relevant when its dense cosine similarity "
        "reaches this ... (calibrated for the packaged multilingual-e5-small with "
        "`bench/rag.py --calibrate --held-out 16` on cmrc2018-trial: 0.86/0.5/0.35 keep 97.5% "
        "of 952 answerable questions, refuse 91.0% of them asked with their own passage left "
        "out (leave-one-out) and 96.9% of 98 off-topic ones (94% of Chinese, 100% of "
        "English); other embedding models need their own values)",
    )
    min_keyword_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="... or its keyword score bm25/(bm25+retrieval.keyword_score_half) reaches "
        "this ...",
    )
    min_question_coverage: float = Field(
        0.35,
        ge=0,
        le=1,
        description="... and it has at least this share of the question's terms (Chinese "
        "characters and bigrams, stop characters left out, a bigram counting double; words "
        "otherwise), each term weighted by how rare it is among the knowledge base's chunks "
        "(`coverage_by_rarity`): a passage on a neighbouring topic is close in meaning and "
        "shares the common terms, yet lacks the name asked about. No relevant passage: the "
        "no-answer policy applies. 0 for all three: no gate.",
    )
    min_dense_score_alone: float = Field(
        0.895,
        ge=0,
        le=1,
        description="... or, alone, its dense cosine similarity reaches this: a passage this "
        "close in meaning is relevant whatever words of the question it has (a question "
        'worded unlike its passage: "蓍的叶子有什么特点？" shares 0.12 of its weighted terms '
        "with the passage that answers it, at similarity 0.90). Calibrated with "
        "`bench/rag.py --calibrate --held-out 16` like the three above: with 0.895, 7 more "
        "of the 952 answerable cmrc2018-trial questions are answered (24 -> 17 refused), "
        "and as many off-topic ones refused (leave-one-out 91.0% -> 90.9%, the 98 others "
        "96.9%); 0.89 lets more leave-one-out questions through (90.4%). 0: off (the "
        "previous gate).",
    )
    dense_alone_margin: float = Field(
        0.035,
        ge=0,
        le=1,
        description="... and stands this far above the similarity of the question's "
        "`dense_reference_rank`-th nearest chunk: in a knowledge base on one topic every "
        "passage is that close to any question on it (the 等保 document: the best passage of "
        "its questions at 0.92, the 10th 0.03 below; of questions it does not answer, "
        '"云服务商需要通过哪些认证？", 0.921 and 0.030 below), so closeness alone says '
        "nothing there and the coverage check decides; on cmrc2018-trial the passages that "
        "pass alone stand 0.037-0.068 above theirs (`bench/rag.py --calibrate`). 0: no margin.",
    )
    dense_reference_rank: int = Field(
        10,
        ge=1,
        le=1000,
        description="Which nearest chunk is the reference of `dense_alone_margin` (the last "
        "one in a smaller knowledge base): one more nearest-neighbour query, made only when a "
        "passage could pass alone.",
    )
    coverage_by_rarity: bool = Field(
        True,
        description="Weigh the coverage's terms by their rarity in the knowledge base (BM25's "
        "inverse document frequency over its chunks, counted once per change of the KB). "
        "false: every term counts the same (a bigram double); the previous gate, calibrated "
        "at `min_question_coverage` 0.45.",
    )
    rarity_max_chunks: int = Field(
        20000,
        ge=1,
        le=10_000_000,
        description="Most chunks the rarity is counted over (the same sample every time: "
        "whole documents in the order of their content hashes): bounds the count, made on "
        "the first gated question after each change of a KB, to a few seconds on 2 cores "
        "(~0.1-0.2 ms a chunk).",
    )
    rarity_prior_chunks: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Chunks without any of the question's terms imagined added to the KB when "
        "weighing terms by rarity: in a KB of a few chunks on one topic every term is in all "
        "of them or in none, and the name asked about, in all of them, would weigh nothing "
        "(a one-document 等保 KB of 129 chunks refused one of six example questions with 0). "
        "Larger: closer to every term counting the same.",
    )
    score_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Minimum search score of a passage used for an answer (the search's 0-1 "
        "scale); None: `retrieval.score_threshold`.",
    )
    top_k: int | None = Field(
        3,
        ge=1,
        le=50,
        description="Passages used per answer; None: `retrieval.top_k`. 3: the gold passage "
        "is among the top 3 for 98% of cmrc2018-trial questions, and each passage costs "
        "prefill time on a CPU.",
    )
    passage_max_chars: int = Field(
        200,
        ge=0,
        description="A passage after the first that is longer than this is cut to its sentences "
        "most related to the question (shared terms), neighbours included, in document order; "
        "0: whole passages. Short prompts make small models faster and more accurate "
        "(bench/answer_quality.py); the first passage has its own cut "
        "(`first_passage_max_chars`).",
    )
    first_passage_max_chars: int = Field(
        500,
        ge=0,
        description="The same cut for the first (most relevant) passage, which holds the answer "
        "for nearly every question: cmrc2018-trial keeps the gold answer in 90% of first "
        "passages cut at 300 characters and in 97% at 500. With 500 here and 200 for the others "
        "instead of 300 for all, Qwen2.5-Coder-1.5B on 300 questions through `/ask`: contains "
        "0.663 -> 0.673, F1 0.645 -> 0.656, p50 latency 6.3 -> 7.7 s (412 prompt tokens instead "
        "of 339). 0: whole.",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Answer budget of a knowledge-base answer; None: `llm.max_new_tokens`.",
    )
    context_margin_tokens: int = Field(
        16,
        ge=0,
        description="Tokens kept free besides the answer budget when fitting passages into the "
        "model's context window (template tokens the count cannot see).",
    )
    history_turns: int = Field(
        6,
        ge=0,
        description="Earlier messages kept for a follow-up question (included in the prompt "
        "within the context budget, newest first; older ones dropped when they do not fit).",
    )
    history_budget_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Most of the prompt budget (after the answer budget) that history may take; "
        "the passages get the rest.",
    )
    history_query_turns: int = Field(
        1,
        ge=0,
        description="Earlier user questions put in front of the retrieval query of a follow-up "
        "when the question alone finds no relevant passage, so 'and its population?' still "
        "finds the passage about the city named before (a new topic uses its own words).",
    )
    passages_max: int = Field(
        20,
        ge=1,
        description="Most passages returned by `answer_mode: passages` (retrieval only).",
    )
    reranker: RerankerSettings = Field(
        default_factory=RerankerSettings,  # type: ignore[arg-type]
        description="Optional cross-encoder reranker (off by default).",
    )

    @model_validator(mode="after")
    def _templates_have_fields(self) -> RagSettings:
        for name in ("prompt_zh", "prompt_en", "prompt_zh_short", "prompt_en_short"):
            text = getattr(self, name)
            if "{context}" not in text or "{question}" not in text:
                raise ValueError(f"rag.{name} must contain {{context}} and {{question}}")
        for name in ("passage_zh", "passage_en"):
            if "{text}" not in getattr(self, name):
                raise ValueError(f"rag.{name} must contain {{text}}")
        patterns = ("short_answer_zh", "short_answer_en", "list_answer_zh", "list_answer_en")
        for name in (
            *patterns,
            "answer_units",
            "answer_qualifiers",
            "answer_suffixes",
            "answer_list_separators",
            "clause_answer_zh",
            "clause_answer_en",
            "answer_numbering",
        ):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"rag.{name} is not a regular expression: {exc}") from None
        return self
