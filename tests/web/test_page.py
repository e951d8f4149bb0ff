"""The web page end to end in headless Chromium against a live kbqa with the packaged models:
API key, create a knowledge base, upload a .md and a .pdf (picker) and a .txt (drag and drop),
watch the jobs succeed, read chunks, ask with streaming and source cards, follow a citation,
get a refusal, new chat, delete with confirmation; phone width and Chinese interface."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)

REACTOR_MD = """# Zorblax reactor manual

## Fuel
The Zorblax reactor burns crystallized helium pellets. Each helium pellet keeps the Zorblax
reactor running for forty hours before the operator loads the next one.

## Cooling
The Zorblax reactor is cooled by a loop of liquid sodium that runs through the core.
"""
QUESTION = "What fuel does the Zorblax reactor burn?"
FOLLOW_UP = "How many hours does one helium pellet keep the Zorblax reactor running?"
PDF_QUESTION = "How often are the greenhouse tomatoes watered?"
OFF_TOPIC = "Qu'est-ce que la photosynthèse des cactus?"


def make_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pages = [
        [
            "Greenhouse handbook",
            "Chapter 1: Planting",
            "Seedlings are planted in April, once the nights stay above ten degrees.",
            "Each bed holds twelve plants in two rows, forty centimetres apart.",
            "Young plants are tied to bamboo canes with soft cotton string.",
            "The vents are opened on sunny days so the air stays dry and fresh.",
            "Labels with the variety and the planting date go at the end of each row.",
        ],
        [
            "Chapter 2: Watering",
            "Water is taken from the rain barrels behind the greenhouse.",
            "Cucumbers need more water than peppers in the hot weeks of July.",
            "The soil should feel damp but never wet when pressed with a finger.",
            "Drip lines are checked for leaks every Monday before the first watering.",
            "The greenhouse tomatoes are watered every morning at six o'clock,",
            "with two litres of rain water per plant.",
        ],
    ]
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def shot(page: Any, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"{name}.png"), full_page=False)


def wait_answer(page: Any, index: int, timeout_ms: int = 180_000) -> Any:
    """The index-th answer (0-based) once its stream has ended."""
    answer = page.locator("article.turn.assistant").nth(index)
    answer.wait_for(state="attached")
    page.wait_for_function(
        "(i) => { const a = document.querySelectorAll('article.turn.assistant')[i];"
        " return a && !a.hasAttribute('aria-busy'); }",
        arg=index,
        timeout=timeout_ms,
    )
    return answer


class Session:
    """A browser context and page; every request and script error is recorded."""

    def __init__(self, browser: Any, server: Any, **kwargs: Any) -> None:
        self.server = server
        self.context = browser.new_context(**kwargs)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", self._record_console)
        self.chat_bodies: list[dict[str, Any]] = []
        self.page.on("request", self._record_chat)

    def _record_console(self, message: Any) -> None:
        # the page must run under its own Content-Security-Policy (no inline code or styles)
        if "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def _record_chat(self, request: Any) -> None:
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            self.chat_bodies.append(json.loads(request.post_data or "{}"))

    def check_and_close(self) -> None:
        outside = [u for u in self.requests if not u.startswith(self.server.url)]
        assert not outside, f"requests left the server: {outside}"
        assert not self.errors, self.errors
        self.context.close()


def test_page_and_assets_are_served_without_a_key(server: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("app.js", "app.css", "i18n.js", "favicon.svg"):
            assert client.get(f"/web/{asset}").status_code == 200, asset
        assert client.get("/web/__init__.py").status_code == 404
        assert client.get("/web/..%2F..%2Fmain.py").status_code == 404
        # the API itself still needs the key
        assert client.get("/v1/knowledge_bases").status_code == 401
        # no external URL in the page's files (fonts, CDNs)
        for asset in ("index.html", "app.js", "app.css", "i18n.js"):
            text = (Path(__file__).resolve().parents[2] / "app" / "web" / asset).read_text()
            assert "http://" not in text and "https://" not in text, asset


def test_kb_upload_chat_refusal_delete(
    browser: Any, server: Any, api_key: str, output_dir: Path
) -> None:
    session = Session(browser, server, viewport={"width": 1280, "height": 800}, locale="en-US")
    page = session.page
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")

    # API keys are on: the page says so and points at the settings
    banner = page.locator("#banner")
    banner.wait_for(state="visible")
    assert "API key" in banner.inner_text()
    page.click("#banner button")
    page.fill("#set-key", api_key)
    page.locator("#set-key").dispatch_event("change")
    for field, value in (("#set-maxtokens", "32"), ("#set-topk", "3"), ("#set-threshold", "0")):
        page.fill(field, value)
        page.locator(field).dispatch_event("change")
    page.select_option("#set-search", "hybrid")
    page.select_option("#set-model", "smollm2-135m-instruct")
    shot(page, output_dir, "01-settings-1280")
    page.keyboard.press("Escape")
    assert page.locator("#settings").is_hidden()
    banner.wait_for(state="hidden")
    assert page.evaluate("JSON.parse(localStorage.getItem('kbqa.apiKey'))") == api_key

    # create a knowledge base
    page.click("#tab-kb")
    page.fill("#kb-name", "manuals")
    page.press("#kb-name", "Enter")
    page.locator("#kb-title", has_text="manuals").wait_for()

    # upload a .md and a .pdf with the picker: both reach succeeded
    with page.expect_file_chooser() as chooser:
        page.click("#choose-files")
    chooser.value.set_files(
        [
            {"name": "reactor.md", "mimeType": "text/markdown", "buffer": REACTOR_MD.encode()},
            {"name": "greenhouse.pdf", "mimeType": "application/pdf", "buffer": make_pdf()},
        ]
    )
    for name in ("reactor.md", "greenhouse.pdf"):
        page.locator(f'li.upload[data-filename="{name}"][data-state="succeeded"]').wait_for(
            timeout=120_000
        )
    assert "succeeded" in page.locator('li.upload[data-filename="reactor.md"]').inner_text()

    # two more by drag and drop; the empty one fails with its reason
    page.evaluate(
        """([name, text]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, { type: 'text/plain' }));
            dt.items.add(new File([''], 'empty.txt', { type: 'text/plain' }));
            dt.items.add(new File([text], 'copy.txt', { type: 'text/plain' }));
            dt.items.add(new File(['not a zip at all'], 'broken.docx'));
            const zone = document.getElementById('dropzone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                         dataTransfer: dt }));
            }
        }""",
        ["notes.txt", "Shift notes: the night shift checks the sodium loop pressure."],
    )
    page.locator('li.upload[data-filename="notes.txt"][data-state="succeeded"]').wait_for(
        timeout=120_000
    )
    # an empty file is refused at upload, with the reason on its line; it is not listed
    rejected = page.locator('li.upload[data-filename="empty.txt"][data-state="rejected"]')
    rejected.wait_for(timeout=120_000)
    assert "rejected: " in rejected.inner_text() and "empty" in rejected.inner_text()
    # the same bytes under another name: a duplicate, saying which name it is listed as
    copy = page.locator('li.upload[data-filename="copy.txt"][data-state="duplicate"]')
    assert "already in the knowledge base as notes.txt" in copy.inner_text()
    # a file that fails its job is listed, failed, with the reason
    page.locator('li.upload[data-filename="broken.docx"][data-state="failed"]').wait_for(
        timeout=120_000
    )
    page.locator("#docs li.doc.status-ready").nth(2).wait_for()
    names = page.locator("#docs li.doc").evaluate_all("els => els.map(e => e.dataset.filename)")
    assert sorted(names) == ["broken.docx", "greenhouse.pdf", "notes.txt", "reactor.md"]
    error = page.locator('li.doc[data-filename="broken.docx"] .doc-error').inner_text()
    assert "not a valid DOCX" in error
    page.locator('.kb-item[data-kb="manuals"] small', has_text="4 docs").wait_for()

    # a document's chunks
    page.locator('li.doc[data-filename="greenhouse.pdf"] button', has_text="Chunks").click()
    page.locator("#chunk-list li.chunk").first.wait_for()
    assert "p. 2" in page.locator("#chunk-list").inner_text()
    shot(page, output_dir, "02-knowledge-base-1280")

    # delete one document (confirmation dialog)
    page.locator('li.doc[data-filename="notes.txt"] button', has_text="Delete").click()
    page.locator("#confirm").wait_for(state="visible")
    page.click("#confirm-ok")
    page.locator('li.doc[data-filename="notes.txt"]').wait_for(state="detached")

    # chat: the new knowledge base is picked; the answer streams in with its sources
    page.click("#tab-chat")
    chip = page.locator('#kb-pick-list input[value="manuals"]')
    chip.wait_for()
    assert chip.is_checked()
    page.evaluate(
        """() => { window.__lengths = new Set();
            new MutationObserver(() => {
                const a = document.querySelector('.answer-text.streaming');
                if (a) window.__lengths.add(a.textContent.length);
            }).observe(document.getElementById('messages'),
                       { childList: true, subtree: true, characterData: true }); }"""
    )
    box = page.locator("#composer-input")
    box.click()
    # Shift+Enter is a new line, not a send
    page.keyboard.type("draft")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line")
    assert box.input_value() == "draft\nline"
    assert page.locator("article.turn").count() == 0
    box.fill(QUESTION)
    box.press("Enter")
    answer = wait_answer(page, 0)
    assert page.evaluate("window.__lengths.size") >= 2, "the answer did not stream in"
    # the settings panel's knobs go with the request
    sent = session.chat_bodies[-1]
    assert sent["stream"] is True and sent["knowledge_base"] == "manuals"
    assert (sent["max_tokens"], sent["top_k"], sent["score_threshold"]) == (32, 3, 0)
    assert (sent["search_mode"], sent["answer_mode"]) == ("hybrid", "generate")
    assert sent["model"] == "smollm2-135m-instruct"
    assert answer.locator("li.card").count() <= 3
    classes = answer.get_attribute("class") or ""
    assert "failed" not in classes and "refused" not in classes, answer.inner_text()
    assert answer.locator(".answer-text").inner_text().strip()
    cards = answer.locator("li.card")
    assert cards.count() >= 1
    assert cards.first.get_attribute("data-filename") == "reactor.md"
    assert "Fuel" in cards.first.locator(".loc").inner_text()
    marks = cards.first.locator("mark").all_inner_texts()
    assert any(m.lower().startswith("zorblax") for m in marks), marks
    assert "score" in cards.first.locator(".score").inner_text()
    if answer.locator("a.cite").count():  # SmolLM2 may or may not cite; see the canned test
        link = answer.locator("a.cite").first
        link.click()
        page.wait_for_function(
            "(id) => document.getElementById(id).classList.contains('flash')",
            arg=(link.get_attribute("href") or "#")[1:],
        )
    shot(page, output_dir, "03-answer-with-sources-1280")

    # a follow-up in the same chat: the history goes with it
    box.fill(FOLLOW_UP)
    box.press("Enter")
    second = wait_answer(page, 1)
    assert "failed" not in (second.get_attribute("class") or ""), second.inner_text()
    assert second.locator('li.card[data-filename="reactor.md"]').count() >= 1
    assert [m["role"] for m in session.chat_bodies[-1]["messages"]] == [
        "user",
        "assistant",
        "user",
    ]

    # new chat: the PDF's page shows on its card; only the new question is sent
    page.click("#new-chat")
    assert page.locator("article.turn").count() == 0
    assert page.locator("#chat-empty").is_visible()
    box.fill(PDF_QUESTION)
    box.press("Enter")
    third = wait_answer(page, 0)
    assert len(session.chat_bodies[-1]["messages"]) == 1
    pdf_card = third.locator('li.card[data-filename="greenhouse.pdf"]')
    assert pdf_card.count() >= 1, third.inner_text()
    assert "p. 2" in pdf_card.first.inner_text()

    # an off-topic question is refused: shown as a refusal, not an error
    page.click("#new-chat")
    box.fill(OFF_TOPIC)
    box.press("Enter")
    refused = wait_answer(page, 0)
    classes = refused.get_attribute("class") or ""
    assert "refused" in classes and "failed" not in classes, refused.inner_text()
    assert "Not answered" in refused.locator(".notice").inner_text()
    assert refused.locator(".answer-text").inner_text().strip()
    assert refused.locator("li.card").count() == 0
    shot(page, output_dir, "04-refused-1280")

    # no knowledge base: the plain model answers, without sources
    page.click("#new-chat")
    chip.uncheck()
    box.fill("Say hello.")
    box.press("Enter")
    plain = wait_answer(page, 0)
    assert "failed" not in (plain.get_attribute("class") or ""), plain.inner_text()
    assert plain.locator("li.card").count() == 0
    assert "Plain model" in plain.inner_text()

    # delete the knowledge base: cancel first, then confirm
    page.click("#tab-kb")
    page.click('.kb-item[data-kb="manuals"]')
    page.click("#kb-delete")
    page.locator("#confirm").wait_for(state="visible")
    assert "manuals" in page.locator("#confirm-title").inner_text()
    shot(page, output_dir, "05-delete-confirm-1280")
    page.keyboard.press("Escape")
    page.locator("#confirm").wait_for(state="hidden")
    assert page.locator('.kb-item[data-kb="manuals"]').count() == 1
    page.click("#kb-delete")
    page.click("#confirm-ok")
    page.locator('.kb-item[data-kb="manuals"]').wait_for(state="detached")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}) as c:
        assert c.get("/v1/knowledge_bases/manuals").status_code == 404

    session.check_and_close()


def canned_stream(answer: str, sources: list[dict[str, Any]], refused: bool = False) -> str:
    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data)}\n\n"

    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    first = {
        **base,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        "sources": sources,
        "refused": refused,
        "grounded": not refused,
    }
    body = event(first)
    for piece in (answer[: len(answer) // 2], answer[len(answer) // 2 :]):
        body += event({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
    body += event(
        {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            "timings": {"retrieval_ms": 12.0, "ttft_ms": 80.0, "tokens_per_s": 20.0},
        }
    )
    return body + "data: [DONE]\n\n"


def source(index: int, filename: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "kb": "docs",
        "doc_id": f"d{index}",
        "filename": filename,
        "page": None,
        "heading_path": [],
        "chunk_id": f"d{index}:0",
        "chunk_index": 0,
        "score": 0.5,
        "text": text,
        "start": 0,
        "end": len(text),
        **extra,
    }


def test_citations_highlights_and_escaping(
    browser: Any, server: Any, api_key: str, output_dir: Path
) -> None:
    """Markers link to their cards, terms are highlighted, model and document text cannot
    inject HTML: a canned stream through the page's real rendering code."""
    evil = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    long_text = "Filler sentence about nothing. " * 30 + "The Zorblax core runs hot. " + evil
    sources = [
        source(1, "reactor.md", long_text, heading_path=["Manual", "Core"]),
        source(2, "plant <script>.pdf", "Watering tomatoes daily in the greenhouse.", page=3),
        source(3, "extra.md", "Unrelated text.", relevant=False),
    ]
    answer = f"The core runs hot [1]; tomatoes are watered [2][9]. {evil}"
    session = Session(browser, server, viewport={"width": 1280, "height": 800}, locale="en-US")
    page = session.page
    page.add_init_script(
        f"localStorage.setItem('kbqa.apiKey', JSON.stringify('{api_key}'));"
        "localStorage.setItem('kbqa.selectedKbs', JSON.stringify(['docs']));"
    )
    bodies: list[dict[str, Any]] = []

    def fake_chat(route: Any) -> None:
        bodies.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(
            status=200,
            headers={"content-type": "text/event-stream"},
            body=canned_stream(answer, sources),
        )

    def fake_kbs(route: Any) -> None:
        kb = {
            "object": "knowledge_base",
            "name": "docs",
            "embedding_model": "e",
            "embedding_dim": 3,
            "created_at": 0,
            "documents": 2,
            "chunks": 2,
        }
        route.fulfill(status=200, json={"object": "list", "data": [kb]})

    page.route("**/v1/chat/completions", fake_chat)
    page.route("**/v1/knowledge_bases", fake_kbs)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.locator('#kb-pick-list input[value="docs"]').wait_for()
    page.fill("#composer-input", "Why does the Zorblax core run hot?")
    page.press("#composer-input", "Enter")
    turn = wait_answer(page, 0)

    body = bodies[0]
    assert body["knowledge_base"] == "docs" and body["stream"] is True
    assert body["messages"][-1] == {"role": "user", "content": "Why does the Zorblax core run hot?"}
    # [1] and [2] link to their cards, [9] (no such source) stays text
    links = turn.locator(".answer-text a.cite")
    assert links.all_inner_texts() == ["[1]", "[2]"]
    assert "[9]" in turn.locator(".answer-text").inner_text()
    # model output is text, not HTML
    assert turn.locator(".answer-text img, .answer-text b, .passage img").count() == 0
    assert evil in turn.locator(".answer-text").inner_text()
    assert page.evaluate("window.__pwned") is None
    assert "plant <script>.pdf" in turn.locator("li.card").nth(1).inner_text()
    # the long passage shows the matched part, with the question's words marked
    card1 = turn.locator("li.card").nth(0)
    assert card1.locator(".passage").inner_text().startswith("…")
    assert {m.lower() for m in card1.locator("mark").all_inner_texts()} >= {"zorblax", "core"}
    assert "Manual › Core" in card1.inner_text()
    card1.get_by_text("Show the whole passage").click()
    assert card1.locator(".passage").inner_text().startswith("Filler")
    assert "p. 3" in turn.locator("li.card").nth(1).inner_text()
    assert "below the relevance gate" in turn.locator("li.card").nth(2).inner_text()
    # cited cards are marked; a click on [2] scrolls to card 2 and flashes it
    assert "cited" in (card1.get_attribute("class") or "")
    assert "cited" not in (turn.locator("li.card").nth(2).get_attribute("class") or "")
    links.nth(1).click()
    card2 = turn.locator("li.card").nth(1)
    page.wait_for_function(
        "(id) => document.getElementById(id).classList.contains('flash')",
        arg=card2.get_attribute("id"),
    )
    assert card2.evaluate("el => document.activeElement === el")
    assert "7 tokens" in turn.locator(".answer-status").inner_text()
    shot(page, output_dir, "09-citations-1280")

    # the next question carries the history
    page.fill("#composer-input", "And the tomatoes?")
    page.press("#composer-input", "Enter")
    wait_answer(page, 1)
    roles = [m["role"] for m in bodies[1]["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert bodies[1]["messages"][1]["content"] == answer
    session.check_and_close()


def test_phone_width_and_chinese(
    browser: Any, server: Any, api_key: str, output_dir: Path, wait_job: Callable[..., dict]
) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}) as c:
        c.post("/v1/knowledge_bases", json={"name": "shouji"})
        text = "# 大熊猫\n大熊猫以竹子为食，生活在四川的山林里。"
        r = c.post(
            "/v1/knowledge_bases/shouji/documents",
            files=[("files", ("熊猫.md", text.encode()))],
        )
        job = r.json()["data"][0]["job"]["id"]
        wait_job(c, job, 120)
    session = Session(
        browser,
        server,
        viewport={"width": 390, "height": 844},
        locale="zh-CN",
        is_mobile=True,
        has_touch=True,
    )
    page = session.page
    page.add_init_script(
        f"localStorage.setItem('kbqa.apiKey', JSON.stringify('{api_key}'));"
        "localStorage.setItem('kbqa.settings', JSON.stringify({answer_mode: 'passages'}));"
    )
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert page.locator("#tab-chat").inner_text() == "问答"
    assert page.locator("#tab-kb").inner_text() == "知识库"
    page.locator('#kb-pick-list input[value="shouji"]').check()
    assert page.locator("#banner").is_hidden()
    page.fill("#composer-input", "大熊猫吃什么？")
    page.press("#composer-input", "Enter")
    answer = wait_answer(page, 0)
    card = answer.locator("li.card").first
    assert card.get_attribute("data-filename") == "熊猫.md"
    marks = card.locator("mark").all_inner_texts()
    assert "大熊猫" in "".join(marks), marks
    assert "出处" in answer.inner_text()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width}px)"
    shot(page, output_dir, "06-chat-390-zh")

    # a source card opens its document's chunks at that passage
    card.get_by_text("在原文档中查看").click()
    page.locator("#chunk-list li.chunk.flash").wait_for()
    assert page.locator("#tab-kb").get_attribute("aria-selected") == "true"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, output_dir, "07-kb-390-zh")
    page.click("#settings-toggle")
    assert page.locator("#settings").is_visible()
    shot(page, output_dir, "08-settings-390-zh")
    session.check_and_close()


class _OtherSite(http.server.BaseHTTPRequestHandler):
    """Another web site (another origin) with a harmless page."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(b"<p>another site</p>")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_cross_site_upload_is_refused_and_the_pages_own_upload_works(
    browser: Any, shared_server: Any
) -> None:
    """With no API keys (the default on loopback), a page on another site makes the visitor's
    browser POST a multipart form to the upload route (no CORS preflight for a form post):
    refused with 403 and nothing stored. The same request from kbqa's own page is accepted."""
    live = shared_server("no-llm")  # no API key
    with httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.post("/v1/knowledge_bases", json={"name": "site"}).status_code == 201
    upload = f"{live.url}/v1/knowledge_bases/site/documents"
    attack = """([url, name]) => {
        const form = new FormData();
        form.append('files', new Blob(['planted text'], {type: 'text/plain'}), name);
        return fetch(url, {method: 'POST', mode: 'no-cors', body: form})
            .then(() => 'sent', (e) => String(e));
    }"""
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherSite)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    other_site = f"http://127.0.0.1:{other.server_address[1]}/"
    context = browser.new_context()
    try:
        page = context.new_page()
        statuses: dict[str, int] = {}
        page.on("response", lambda r: statuses.__setitem__(r.request.method, r.status))
        # another site: a page served from another port of this machine (Chromium lets
        # only pages of the loopback address space reach a loopback server)
        page.goto(other_site)
        assert page.evaluate(attack, [upload, "planted.txt"]) == "sent"
        page.wait_for_timeout(500)
        assert statuses.get("POST") == 403
        # kbqa's own page: the same request goes through
        page.goto(live.url + "/")
        assert page.evaluate(attack, [upload, "own.txt"]) == "sent"
        page.wait_for_timeout(500)
        assert statuses.get("POST") == 202
    finally:
        context.close()
        other.shutdown()
    with httpx.Client(base_url=live.url, timeout=60) as client:
        names = [d["filename"] for d in client.get(upload).json()["data"]]
        assert names == ["own.txt"]
        refused = client.post(
            upload,
            files=[("files", ("x.txt", b"planted"))],
            headers={"Origin": "https://evil.example"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "cross_origin_refused"
