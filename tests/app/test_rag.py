"""Knowledge-base answers on a live uvicorn server with the packaged SmolLM2 and the packaged
embedding model: sources, refusal without an LLM call, stream = non-stream, stability,
several KBs, history, passages mode, and the openai SDK / LangChain ChatOpenAI as clients."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

EN_DOCS = {
    "eiffel.md": "# Eiffel Tower\nThe Eiffel Tower in Paris was completed in 1889. It is 330 "
    "metres tall and was built by the company of Gustave Eiffel.\n\n# Louvre\nThe Louvre "
    "in Paris is the most visited museum in the world. It houses the Mona Lisa.\n",
    "rivers.txt": "The Nile is the longest river in Africa, about 6650 kilometres long. "
    "The Amazon in South America carries more water than any other river.",
}
ZH_DOCS = {
    "dengbao.md": "# 等级保护\n## 身份鉴别\n应对登录的用户进行身份标识和鉴别，身份标识具有唯一性，"
    "身份鉴别信息具有复杂度要求并定期更换。\n## 访问控制\n应对登录的用户分配账户和权限，"
    "应重命名或删除默认账户，修改默认账户的默认口令。\n",
    "panda.txt": "大熊猫以竹子为食，主要生活在四川、陕西和甘肃的山林里。"
    "成年大熊猫每天要吃十二公斤以上的竹子。",
}
EN_Q = "How tall is the Eiffel Tower?"
OFF_TOPIC = "Qu'est-ce que la photosynthèse des cactus?"


class GenerationSpy:
    """Counts the generations the real backend runs (wraps its methods, changes nothing)."""

    def __init__(self, llm: Any) -> None:
        self.calls = 0
        self.last_text = ""  # what the model wrote in the latest generation
        original = llm.stream

        async def stream(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.last_text = ""
            async for chunk in original(*args, **kwargs):
                self.last_text += chunk.text or ""
                yield chunk

        llm.stream = stream


def _ingest(
    client: httpx.Client, kb: str, docs: dict[str, str], wait_job: Callable[..., dict]
) -> None:
    assert client.post("/v1/knowledge_bases", json={"name": kb}).status_code == 201
    files = [("files", (name, text.encode())) for name, text in docs.items()]
    response = client.post(f"/v1/knowledge_bases/{kb}/documents", files=files)
    assert response.status_code == 202, response.text
    for item in response.json()["data"]:
        job = wait_job(client, item["job"]["id"])
        assert job["state"] == "succeeded", job


@pytest.fixture(scope="module")
def server(shared_server: Any, wait_job: Callable[..., dict]) -> Any:
    """The shared SmolLM2 server (tests/conftest.py: 16-token answers, one slot, 120-character
    chunks) with an English and a Chinese knowledge base."""
    live = shared_server("smollm2")
    live.spy = GenerationSpy(live.app.state.services.llm)
    with _client(live) as client:
        _ingest(client, "en", EN_DOCS, wait_job)
        _ingest(client, "zh", ZH_DOCS, wait_job)
    return live


def _client(server: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    return httpx.Client(base_url=server.url, timeout=300, headers=headers)


@pytest.fixture()
def client(server: Any) -> Iterator[httpx.Client]:
    with _client(server) as c:
        yield c


def _ask(client: httpx.Client, kb: str, question: str, **extra: Any) -> dict[str, Any]:
    response = client.post(f"/v1/knowledge_bases/{kb}/ask", json={"question": question, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def _sse(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_answer_cites_the_right_passage_first(client: httpx.Client) -> None:
    answer = _ask(client, "en", EN_Q)
    first = answer["sources"][0]
    assert first["index"] == 1 and first["filename"] == "eiffel.md"
    assert first["heading_path"] == ["Eiffel Tower"] and "330 metres" in first["text"]
    assert first["kb"] == "en" and first["chunk_id"].startswith(first["doc_id"])
    assert [s["index"] for s in answer["sources"]] == list(range(1, len(answer["sources"]) + 1))
    assert not answer["refused"] and answer["grounded"] and answer["answer"].strip()
    timings = answer["timings"]
    assert timings["retrieval_ms"] > 0 and timings["generation_ms"] > 0
    assert timings["ttft_ms"] <= timings["total_ms"]
    assert answer["usage"]["completion_tokens"] > 0


def test_chinese_question_finds_the_clause(client: httpx.Client) -> None:
    answer = _ask(client, "zh", "登录用户的身份鉴别有什么要求？")
    assert answer["sources"][0]["filename"] == "dengbao.md"
    assert answer["sources"][0]["heading_path"][-1] == "身份鉴别"
    panda = _ask(client, "zh", "大熊猫每天要吃多少竹子？")
    assert panda["sources"][0]["filename"] == "panda.txt"


def test_sentence_answers_are_quoted_from_the_passages(server: Any, client: httpx.Client) -> None:
    """rag.quote_answers: a sentence answer becomes the passage text it overlaps most (when
    enough), verbatim; a short-answer question ("how tall") keeps the model's own words,
    finished from the passage (app.rag.quote.finish_for)."""
    from app.rag.quote import finish_for

    settings = server.settings.rag
    changed = 0
    for kb, question in (
        ("en", "What is the Louvre?"),
        ("zh", "登录用户的身份鉴别有什么要求？"),
        ("zh", "大熊猫吃什么？"),
    ):
        answer = _ask(client, kb, question)
        said = server.spy.last_text
        texts = [s["text"] for s in answer["sources"]]
        expected = finish_for(
            settings,
            said,
            question,
            texts,
            short=False,
            language=kb,
            file_names=[s["filename"] for s in answer["sources"]],
        )
        assert expected is not None
        assert answer["answer"] == expected, (question, said)
        changed += answer["answer"] != said
        if answer["answer"] != said:
            assert any(answer["answer"] in text for text in texts)
    assert changed, "the model's answers were never replaced by a passage's words"
    short = _ask(client, "en", EN_Q)
    said = server.spy.last_text
    assert short["answer"] == finish_for(
        settings,
        said,
        EN_Q,
        [s["text"] for s in short["sources"]],
        short=True,
        language="en",
        file_names=[s["filename"] for s in short["sources"]],
    )
    assert short["answer"].startswith(said.strip().rstrip("."))


def test_off_topic_question_is_refused_without_the_llm(server: Any, client: httpx.Client) -> None:
    before = server.spy.calls
    answer = _ask(client, "en", OFF_TOPIC)
    assert answer["refused"] is True and answer["sources"] == []
    assert answer["answer"] == server.settings.rag.refusal_en
    assert answer["usage"]["completion_tokens"] == 0
    zh = _ask(client, "zh", "怎样在家里烤制法式长棍面包？")
    assert zh["refused"] is True and zh["answer"] == server.settings.rag.refusal_zh
    # the same through the OpenAI route, streamed: a normal answer flagged as refused
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "knowledge_base": "en",
            "stream": True,
            "messages": [{"role": "user", "content": OFF_TOPIC}],
        },
    ) as response:
        assert response.status_code == 200
        events = _sse(response)
    assert events[0]["refused"] is True and events[0]["sources"] == []
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == server.settings.rag.refusal_en
    assert server.spy.calls == before


def test_stream_equals_non_stream_and_repeats_are_identical(
    server: Any, client: httpx.Client
) -> None:
    body = {"knowledge_base": ["en"], "messages": [{"role": "user", "content": EN_Q}]}
    answers = []
    for _ in range(5):
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    texts = {a["choices"][0]["message"]["content"] for a in answers}
    assert len(texts) == 1, texts
    whole = answers[0]
    assert whole["sources"][0]["filename"] == "eiffel.md" and whole["refused"] is False
    assert whole["sources"][0]["page"] is None  # null stays in the body (not dropped)
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = _sse(response)
    first, last = events[0], events[-1]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert [s["chunk_id"] for s in first["sources"]] == [s["chunk_id"] for s in whole["sources"]]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == whole["choices"][0]["message"]["content"]
    assert last["choices"][0]["finish_reason"] in {"stop", "length"}
    assert last["usage"] == whole["usage"] and "ttft_ms" in last["timings"]


def test_request_knobs_on_the_openai_route(client: httpx.Client) -> None:
    """knowledge_base as a list, search_mode, top_k, score_threshold and return_sources on
    /v1/chat/completions, and citation markers within the sources."""
    from app.rag.citations import cited

    def chat(question: str, **extra: Any) -> dict[str, Any]:
        body = {"messages": [{"role": "user", "content": question}], **extra}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    both = chat("大熊猫每天要吃多少竹子？", knowledge_base=["en", "zh"], top_k=3)
    assert both["sources"][0]["kb"] == "zh" and both["sources"][0]["filename"] == "panda.txt"
    assert {s["kb"] for s in both["sources"]} <= {"en", "zh"} and len(both["sources"]) <= 3
    answer = both["choices"][0]["message"]["content"]
    assert set(cited(answer)) <= set(range(1, len(both["sources"]) + 1))
    # (passages mode: the relevance gate needs a bigger corpus than this for BM25 alone)
    mode = {"knowledge_base": "en", "top_k": 1, "answer_mode": "passages"}
    keyword = chat(EN_Q, search_mode="keyword", **mode)
    dense = chat(EN_Q, search_mode="dense", **mode)
    assert keyword["sources"][0]["filename"] == dense["sources"][0]["filename"] == "eiffel.md"
    assert keyword["sources"][0]["dense_score"] is None  # keyword search alone: no vectors
    assert dense["sources"][0]["keyword_score"] is None
    # (keyword scores stay below 1; a hybrid hit first in both lists scores exactly 1.0)
    strict = chat(EN_Q, knowledge_base="en", search_mode="keyword", score_threshold=0.9999)
    assert strict["refused"] is True and strict["sources"] == []
    quiet = chat(EN_Q, knowledge_base="en", return_sources=False)
    assert not quiet.get("sources") and quiet["refused"] is False
    assert quiet["choices"][0]["message"]["content"] == default_answer(client)


def default_answer(client: httpx.Client) -> str:
    """The default answer to EN_Q over "en" (return_sources changes nothing but the sources)."""
    body = {"messages": [{"role": "user", "content": EN_Q}], "knowledge_base": "en"}
    return str(
        client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    )


def test_two_knowledge_bases_together(client: httpx.Client) -> None:
    answer = _ask(client, "en", "大熊猫每天要吃多少竹子？", knowledge_bases=["zh"], top_k=3)
    assert answer["sources"][0]["kb"] == "zh" and answer["sources"][0]["filename"] == "panda.txt"
    english = _ask(client, "zh", EN_Q, knowledge_bases=["en"])
    assert english["sources"][0]["kb"] == "en"


def test_follow_up_uses_history(client: httpx.Client) -> None:
    alone = _ask(client, "en", "And when was it completed?", answer_mode="passages", top_k=1)
    history = [
        {"role": "user", "content": EN_Q},
        {"role": "assistant", "content": "It is 330 metres tall [1]."},
    ]
    follow = _ask(client, "en", "And when was it completed?", history=history)
    assert follow["sources"][0]["filename"] == "eiffel.md" and not follow["refused"]
    assert (
        alone["sources"] == []
        or alone["sources"][0]["text"] != follow["sources"][0]["text"]
        or (alone["sources"][0]["relevant"] is False)
    )
    # a new topic in the same chat finds its own passages, not the previous topic's
    switch = _ask(client, "en", "How long is the Nile river in Africa?", history=history)
    assert switch["sources"][0]["filename"] == "rivers.txt"
    plain = _ask(client, "en", "And when was it completed? Eiffel Tower")
    # the earlier turns are in the prompt: more prompt tokens than the question alone
    assert follow["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_passages_mode_calls_no_llm(server: Any, client: httpx.Client) -> None:
    before = server.spy.calls
    answer = _ask(client, "en", EN_Q, answer_mode="passages", top_k=2)
    assert answer["sources"][0]["filename"] == "eiffel.md" and len(answer["sources"]) == 2
    assert answer["answer"].startswith("[1]") and "330 metres" in answer["answer"]
    assert answer["sources"][0]["relevant"] is True
    assert server.spy.calls == before


def test_errors_keep_their_status(client: httpx.Client) -> None:
    msg = [{"role": "user", "content": EN_Q}]
    missing = client.post("/v1/chat/completions", json={"knowledge_base": "nope", "messages": msg})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    streamed = client.post(
        "/v1/chat/completions",
        json={"knowledge_base": "en", "model": "nope", "stream": True, "messages": msg},
    )
    assert streamed.status_code == 404 and streamed.json()["error"]["code"] == "model_not_found"
    last_not_user = [*msg, {"role": "assistant", "content": "x"}]
    bad = client.post(
        "/v1/chat/completions", json={"knowledge_base": "en", "messages": last_not_user}
    )
    assert bad.status_code == 400
    assert client.post("/v1/knowledge_bases/en/ask", json={"question": ""}).status_code == 422
    plain = client.post("/v1/chat/completions", json={"messages": msg, "max_tokens": 2})
    assert plain.status_code == 200 and "sources" not in plain.json()  # the plain model


def test_openai_sdk_and_langchain_clients(server: Any) -> None:
    from langchain_openai import ChatOpenAI
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, timeout=300)
    reply = sdk.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": EN_Q}],
        extra_body={"knowledge_base": "en", "top_k": 2},
    )
    extra = reply.model_extra or {}
    assert extra["sources"][0]["filename"] == "eiffel.md" and len(extra["sources"]) <= 2
    stream = sdk.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": EN_Q}],
        extra_body={"knowledge_base": "en", "top_k": 2},
        stream=True,
    )
    chunks = list(stream)
    assert (chunks[0].model_extra or {})["sources"][0]["filename"] == "eiffel.md"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content

    chat = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=server.api_key,  # type: ignore[arg-type]
        model="smollm2-135m-instruct",
        temperature=0,
        extra_body={"knowledge_base": "en", "top_k": 2},
    )
    assert chat.invoke(EN_Q).content == reply.choices[0].message.content


ACCESS_TABLE = """\
# 等级保护

<table>
  <tr><th>类别</th><th>环境</th><th>控制点</th><th>要求</th><th>二级</th><th>三级</th><th>四级</th></tr>
  <tr>
    <td rowspan="4"><h3>安全通用要求</h3></td><td rowspan="4"><h4>安全计算环境</h4></td>
    <td rowspan="4"><h5>访问控制</h5></td>
    <td>应对登录的用户分配账户和权限。</td><td>√</td><td>√</td><td>√</td>
  </tr>
  <tr><td>应重命名或删除默认账户，修改默认账户的默认口令。</td><td>√</td><td>√</td><td>√</td></tr>
  <tr><td>应由授权主体配置访问控制策略。</td><td></td><td>√</td><td>√</td></tr>
  <tr><td>应对主体、客体设置安全标记。</td><td></td><td></td><td>√</td></tr>
</table>
"""


def test_a_list_question_gets_every_row_of_its_table_section(
    shared_server: Any, wait_job: Callable[..., dict]
) -> None:
    """A requirement table's section read whole and answered whole: the packaged Qwen 0.5B
    on llama.cpp copies one row, the answer is the section's rows for the level asked."""
    live = shared_server("qwen-llamacpp")
    with _client(live) as client:
        _ingest(client, "table", {"access.md": ACCESS_TABLE}, wait_job)
        question = "第三级系统的访问控制有哪些要求？"
        answer = _ask(client, "table", question, max_tokens=48)
        rows = [
            "应对登录的用户分配账户和权限。（适用等级：二级、三级、四级）",
            "应重命名或删除默认账户，修改默认账户的默认口令。（适用等级：二级、三级、四级）",
            "应由授权主体配置访问控制策略。（适用等级：三级、四级）",
        ]
        assert answer["answer"].splitlines() == rows
        # the section is longer than one chunk (120 characters here): its rows come from the
        # document's chunks under the same headings, not only from the passages sent
        assert answer["sources"][0]["heading_path"][-1] == "访问控制"
        assert not any(all(row in s["text"] for row in rows) for s in answer["sources"])
        # the same table section, a question for one sentence: no list
        one = _ask(client, "table", "用户的账户和权限应该怎样分配？", max_tokens=48)
        assert "\n" not in one["answer"].strip()


EXTENSIONS = """# 等级保护
## 安全扩展要求
安全扩展要求是采用特定技术或特定应用场景下的等级保护对象需要增加实现的安全要求。包括以下四方面：

01. 云计算安全扩展要求是针对云计算平台提出的安全要求。主要内容包括基础设施的位置和虚拟化安全保护。

02. 移动互联安全扩展要求是针对移动终端、移动应用和无线网络提出的安全要求。

03. 物联网安全扩展要求是针对感知层提出的特殊安全要求。主要内容包括感知节点的物理防护。

04. 工业控制系统安全扩展要求是针对现场控制层和现场设备层提出的特殊安全要求。
"""


def test_a_list_question_gets_every_item_of_its_numbered_list(
    shared_server: Any, wait_job: Callable[..., dict]
) -> None:
    """rag.list_item_answers and rag.answer_numbering through /ask: the packaged Qwen 0.5B on
    llama.cpp copies one numbered item; a list question is answered with the whole list (its
    items read from the section's chunks, not only the passages sent), a question for one
    thing with its item's sentence, without the list number."""
    live = shared_server("qwen-llamacpp")
    with _client(live) as client:
        _ingest(client, "items", {"ext.md": EXTENSIONS}, wait_job)
        answer = _ask(client, "items", "请列出安全扩展要求", max_tokens=48)
        assert answer["answer"].splitlines() == [
            "01. 云计算安全扩展要求是针对云计算平台提出的安全要求。",
            "02. 移动互联安全扩展要求是针对移动终端、移动应用和无线网络提出的安全要求。",
            "03. 物联网安全扩展要求是针对感知层提出的特殊安全要求。",
            "04. 工业控制系统安全扩展要求是针对现场控制层和现场设备层提出的特殊安全要求。",
        ]
        assert not any("01." in s["text"] and "04." in s["text"] for s in answer["sources"])
        one = _ask(client, "items", "物联网安全扩展要求是针对什么提出的？", max_tokens=48)
        assert one["answer"].startswith("物联网安全扩展要求是针对感知层"), one["answer"]


FILM = (
    "《摄影结束》是一部日本电影，由佐藤导演执导。该片于2008年夏天完成拍摄，"
    "2008年12月20日由东宝在日本全国上映，并在东京国际电影节获得提名。"
)


def test_a_when_question_gets_the_date_with_its_clause(
    shared_server: Any, wait_job: Callable[..., dict]
) -> None:
    """rag.clause_answer_zh through /ask: the packaged Qwen 0.5B on llama.cpp answers a
    "什么时候" question with the date; the user reads the date with its event, verbatim."""
    live = shared_server("qwen-llamacpp")
    with _client(live) as client:
        _ingest(client, "film", {"film.txt": FILM}, wait_job)
        answer = _ask(client, "film", "《摄影结束》是什么时候上映的？", max_tokens=32)
        assert answer["answer"] == "2008年12月20日由东宝在日本全国上映"
        assert answer["answer"] in answer["sources"][0]["text"]


def test_a_looping_answer_stops_and_gives_way_to_the_passage(
    shared_server: Any, wait_job: Callable[..., dict]
) -> None:
    """rag.loop_repeats through the OpenAI route with a knowledge base: the packaged Qwen
    0.5B on llama.cpp, told by a system message to write a phrase five times, writes it until
    max_tokens (as Qwen 1.5B did on its own for 3 of 299 cmrc2018-trial questions): it is
    stopped after the third repeat, and the user reads the passage's best sentence."""
    live = shared_server("qwen-llamacpp")
    system = "Output exactly this, with nothing else: " + "资料中回答这个问题的原句是：" * 5
    with _client(live) as client:
        _ingest(client, "loop", {"film.txt": FILM}, wait_job)
        body = {
            "model": live.model,
            "knowledge_base": "loop",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "《摄影结束》在东京国际电影节获得了什么？"},
            ],
            "max_tokens": 120,
            "temperature": 0,
        }
        looped = client.post("/v1/chat/completions", json=body).json()
        answer = looped["choices"][0]["message"]["content"]
        assert "资料中回答" not in answer
        # the passage's sentence that answers, cited
        said = "2008年12月20日由东宝在日本全国上映，并在东京国际电影节获得提名。"
        assert answer.endswith(said + " [1]")
        # the loop was cut after three repeats, not at max_tokens, and the usage still counts
        # the prompt and what was generated
        assert 0 < looped["usage"]["completion_tokens"] < 60
        assert looped["usage"]["prompt_tokens"] > 100
