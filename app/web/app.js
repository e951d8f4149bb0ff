// kbqa web page: chat with sources, knowledge bases, uploads with job progress, settings.
// Plain JS, no build step, no external requests. Model output and document text only ever
// reach the page as text nodes (never innerHTML).
"use strict";

(() => {
  const I18N = window.KBQA_I18N || { en: {} };
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ---------- storage ----------
  const store = {
    get(key, fallback) {
      try {
        const raw = window.localStorage.getItem(key);
        return raw === null ? fallback : JSON.parse(raw);
      } catch (_e) {
        return fallback;
      }
    },
    set(key, value) {
      try {
        window.localStorage.setItem(key, JSON.stringify(value));
      } catch (_e) {
        /* private mode or storage full: settings last for this page only */
      }
    },
  };

  const DEFAULTS = {
    model: "",
    top_k: "",
    score_threshold: "",
    search_mode: "",
    answer_mode: "generate",
    max_tokens: "",
    lang: "",
  };

  const state = {
    settings: { ...DEFAULTS, ...store.get("kbqa.settings", {}) },
    apiKey: store.get("kbqa.apiKey", ""),
    kbs: [],
    kbsLoaded: false,
    selectedKbs: new Set(store.get("kbqa.selectedKbs", [])),
    currentKb: null,
    docs: [],
    history: [],
    chatId: 0,
    turns: 0,
    streaming: null,
    uploads: [],
    uploadSeq: 0,
    pollTimer: null,
    lang: "en",
    health: null,
  };

  // ---------- i18n ----------
  function pickLang() {
    if (state.settings.lang && I18N[state.settings.lang]) return state.settings.lang;
    const langs = navigator.languages && navigator.languages.length
      ? navigator.languages
      : [navigator.language || "en"];
    for (const lang of langs) {
      const low = String(lang).toLowerCase();
      if (low.startsWith("zh")) return "zh";
      if (low.startsWith("en")) return "en";
    }
    return "en";
  }

  function t(key, vars) {
    const dict = I18N[state.lang] || I18N.en;
    let text = dict[key];
    if (text === undefined) text = I18N.en[key];
    if (text === undefined) text = key;
    if (vars) {
      // {n|one|many}: English plurals; then {n}: the value
      text = text.replace(/\{(\w+)\|([^|}]*)\|([^}]*)\}/g, (m, name, one, many) =>
        name in vars ? (Number(vars[name]) === 1 ? one : many) : m,
      );
      text = text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
    }
    return text;
  }

  function applyI18n() {
    state.lang = pickLang();
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    }
    for (const el of document.querySelectorAll("[data-i18n-aria]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nAria));
    }
    for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
    renderHealth();
    renderKbPick();
    renderKbList();
    renderKbDetail();
    renderUploads();
    renderDocs();
    renderKeyToggle();
  }

  // ---------- DOM helpers ----------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (key === "class") el.className = value;
        else if (key === "text") el.textContent = value;
        else if (key.startsWith("on") && typeof value === "function") {
          el.addEventListener(key.slice(2), value);
        } else if (key === "dataset") Object.assign(el.dataset, value);
        else if (value === true) el.setAttribute(key, "");
        else el.setAttribute(key, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const reducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function toast(message, kind) {
    const el = h("div", { class: `toast ${kind || ""}` }, message);
    $("toasts").append(el);
    setTimeout(() => el.remove(), kind === "error" ? 7000 : 3500);
  }

  function showBanner(message) {
    const banner = $("banner");
    banner.replaceChildren(
      h("span", null, message),
      h("button", { type: "button", class: "btn small", onclick: () => openSettings(true) }, t("settings")),
    );
    banner.hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  function humanSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function formatDate(seconds) {
    try {
      return new Date(seconds * 1000).toLocaleString(state.lang === "zh" ? "zh-CN" : "en", {
        dateStyle: "short",
        timeStyle: "short",
      });
    } catch (_e) {
      return "";
    }
  }

  // ---------- API ----------
  class ApiError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  }

  function errorFrom(status, statusText, bodyText) {
    let message = `${status} ${statusText || ""}`.trim();
    let code = null;
    try {
      const data = JSON.parse(bodyText);
      if (data && data.error) {
        message = data.error.message || message;
        code = data.error.code || null;
      } else if (data && data.detail) {
        message = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      }
    } catch (_e) {
      /* not JSON: keep the status line */
    }
    if (status === 401) showBanner(t(code === "invalid_api_key" ? "auth.invalid" : "auth.needed"));
    return new ApiError(message, status, code);
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = authHeaders();
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || "GET", headers, body, signal: opts.signal });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(t("error.network"), 0, "network");
    }
    if (!res.ok) throw errorFrom(res.status, res.statusText, await res.text());
    return res;
  }

  async function apiJson(path, options) {
    const res = await api(path, options);
    return res.json();
  }

  // ---------- health and models ----------
  async function loadHealth() {
    try {
      const res = await fetch("health");
      state.health = await res.json();
    } catch (_e) {
      state.health = false;
    }
    renderHealth();
  }

  function renderHealth() {
    const el = $("health");
    const health = state.health;
    if (health === null) return;
    if (health === false) {
      el.className = "health down";
      el.textContent = t("health.down");
    } else if (health.model) {
      el.className = `health ${health.status === "ok" ? "ok" : "warn"}`;
      el.textContent = t("health.ok", { model: health.model, device: health.device || health.backend });
    } else {
      el.className = "health warn";
      el.textContent = t("health.noModel");
    }
    el.title = el.textContent;
  }

  async function loadModels() {
    const select = $("set-model");
    let models = [];
    try {
      models = (await apiJson("v1/models")).data || [];
    } catch (_e) {
      /* 401 shows the banner; keep the default option */
    }
    const options = [h("option", { value: "" }, t("settings.default"))];
    for (const model of models) {
      const label = model.parent ? `${model.id} (LoRA · ${model.parent})` : model.id;
      options.push(h("option", { value: model.id }, label));
    }
    const wanted = state.settings.model;
    if (wanted && !models.some((m) => m.id === wanted)) options.push(h("option", { value: wanted }, wanted));
    select.replaceChildren(...options);
    select.value = wanted;
  }

  // ---------- knowledge bases ----------
  async function loadKbs() {
    try {
      state.kbs = (await apiJson("v1/knowledge_bases")).data || [];
      state.kbsLoaded = true;
      hideBanner();
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
      state.kbs = [];
    }
    const names = new Set(state.kbs.map((k) => k.name));
    for (const name of [...state.selectedKbs]) if (!names.has(name)) state.selectedKbs.delete(name);
    if (state.kbsLoaded) store.set("kbqa.selectedKbs", [...state.selectedKbs]);
    if (state.currentKb && !names.has(state.currentKb)) state.currentKb = null;
    renderKbPick();
    renderKbList();
    renderKbDetail();
  }

  function renderKbPick() {
    const list = $("kb-pick-list");
    const items = state.kbs.map((kb) => {
      const box = h("input", {
        type: "checkbox",
        value: kb.name,
        checked: state.selectedKbs.has(kb.name),
        onchange: (e) => {
          if (e.target.checked) state.selectedKbs.add(kb.name);
          else state.selectedKbs.delete(kb.name);
          store.set("kbqa.selectedKbs", [...state.selectedKbs]);
          renderKbPickNote();
        },
      });
      return h(
        "label",
        { class: "chip", title: t("kb.counts", { docs: kb.documents, chunks: kb.chunks }) },
        box,
        h("span", null, kb.name),
        h("small", null, String(kb.documents)),
      );
    });
    list.replaceChildren(...items);
    renderKbPickNote();
  }

  function renderKbPickNote() {
    const note = $("kb-pick-note");
    if (!state.kbs.length) note.textContent = state.kbsLoaded ? t("chat.noKbs") : "";
    else note.textContent = state.selectedKbs.size ? "" : t("chat.plain");
    note.hidden = !note.textContent;
  }

  function renderKbList() {
    const list = $("kb-list");
    list.replaceChildren(
      ...state.kbs.map((kb) =>
        h(
          "li",
          null,
          h(
            "button",
            {
              type: "button",
              class: "kb-item",
              "aria-current": kb.name === state.currentKb ? "true" : null,
              dataset: { kb: kb.name },
              onclick: () => selectKb(kb.name),
            },
            h("span", { class: "kb-name" }, kb.name),
            h("small", null, t("kb.counts", { docs: kb.documents, chunks: kb.chunks })),
          ),
        ),
      ),
    );
    $("kb-none").hidden = !state.kbsLoaded || state.kbs.length > 0;
  }

  function currentKbInfo() {
    return state.kbs.find((k) => k.name === state.currentKb) || null;
  }

  function renderKbDetail() {
    const kb = currentKbInfo();
    $("kb-detail").hidden = !kb;
    $("kb-pick-hint").hidden = Boolean(kb);
    if (!kb) return;
    $("kb-title").textContent = kb.name;
    $("kb-embedding").textContent = t("kb.embedding", { model: kb.embedding_model });
  }

  async function selectKb(name) {
    if (state.currentKb !== name) {
      state.currentKb = name;
      state.docs = [];
      closeChunks();
    }
    renderKbList();
    renderKbDetail();
    renderUploads();
    renderDocs();
    await Promise.all([loadDocs(), adoptServerJobs(name)]);
  }

  async function createKb(event) {
    event.preventDefault();
    const input = $("kb-name");
    const name = input.value.trim();
    if (!input.checkValidity() || !name) {
      input.reportValidity();
      return;
    }
    try {
      await apiJson("v1/knowledge_bases", { method: "POST", json: { name } });
    } catch (err) {
      toast(err.message, "error");
      return;
    }
    input.value = "";
    toast(t("kb.created", { name }), "ok");
    state.selectedKbs.add(name);
    store.set("kbqa.selectedKbs", [...state.selectedKbs]);
    await loadKbs();
    await selectKb(name);
  }

  async function deleteKb() {
    const kb = currentKbInfo();
    if (!kb) return;
    const ok = await confirmDialog(
      t("kb.deleteTitle", { name: kb.name }),
      t("kb.deleteBody", { docs: kb.documents, chunks: kb.chunks }),
    );
    if (!ok) return;
    try {
      await apiJson(`v1/knowledge_bases/${enc(kb.name)}`, { method: "DELETE" });
    } catch (err) {
      toast(err.message, "error");
      return;
    }
    toast(t("kb.deleted", { name: kb.name }), "ok");
    state.selectedKbs.delete(kb.name);
    state.uploads = state.uploads.filter((u) => u.kb !== kb.name);
    state.currentKb = null;
    await loadKbs();
    renderUploads();
  }

  // ---------- confirmation dialog ----------
  function confirmDialog(title, body) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-body").textContent = body;
    return new Promise((resolve) => {
      const done = (value) => {
        $("confirm-ok").onclick = null;
        $("confirm-cancel").onclick = null;
        if (dialog.open) dialog.close();
        resolve(value);
      };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      dialog.oncancel = () => done(false);
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  // ---------- documents and chunks ----------
  async function loadDocs() {
    const kb = state.currentKb;
    if (!kb) return;
    try {
      const docs = (await apiJson(`v1/knowledge_bases/${enc(kb)}/documents`)).data || [];
      if (kb === state.currentKb) state.docs = docs;
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
    }
    renderDocs();
  }

  function renderDocs() {
    const list = $("docs");
    if (!list) return;
    const docs = [...state.docs].sort((a, b) => b.uploaded_at - a.uploaded_at);
    list.replaceChildren(
      ...docs.map((doc) =>
        h(
          "li",
          { class: `doc status-${doc.status}`, dataset: { docId: doc.id, filename: doc.filename } },
          h(
            "div",
            { class: "doc-main" },
            h("span", { class: "doc-name", title: doc.filename }, doc.filename),
            h("span", { class: `badge ${doc.status}` }, t(`docs.status.${doc.status}`)),
            h(
              "span",
              { class: "note" },
              t("docs.meta", {
                size: humanSize(doc.size),
                chunks: doc.chunks,
                date: formatDate(doc.uploaded_at),
              }),
            ),
            doc.error ? h("span", { class: "doc-error" }, doc.error) : null,
          ),
          h(
            "div",
            { class: "doc-actions" },
            h(
              "button",
              {
                type: "button",
                class: "btn small",
                disabled: doc.chunks === 0,
                onclick: () => openChunks(state.currentKb, doc.id, doc.filename),
              },
              t("docs.chunks"),
            ),
            h(
              "button",
              { type: "button", class: "btn small danger", onclick: () => deleteDoc(doc) },
              t("docs.delete"),
            ),
          ),
        ),
      ),
    );
    $("docs-none").hidden = docs.length > 0 || !state.currentKb;
  }

  async function deleteDoc(doc) {
    const kb = state.currentKb;
    const ok = await confirmDialog(
      t("docs.deleteTitle", { name: doc.filename }),
      t("docs.deleteBody", { kb }),
    );
    if (!ok) return;
    try {
      await apiJson(`v1/knowledge_bases/${enc(kb)}/documents/${enc(doc.id)}`, { method: "DELETE" });
    } catch (err) {
      toast(err.message, "error");
      return;
    }
    toast(t("docs.deleted", { name: doc.filename }), "ok");
    if ($("chunks").dataset.docId === doc.id) closeChunks();
    await Promise.all([loadDocs(), loadKbs()]);
  }

  async function openChunks(kb, docId, filename, focusIndex, terms) {
    const box = $("chunks");
    box.dataset.docId = docId;
    $("chunks-title").textContent = t("chunks.title", { name: filename });
    const list = $("chunk-list");
    list.replaceChildren(h("li", { class: "note" }, t("loading")));
    box.hidden = false;
    let chunks = [];
    try {
      const url = `v1/knowledge_bases/${enc(kb)}/documents/${enc(docId)}/chunks`;
      chunks = (await apiJson(url)).data || [];
    } catch (err) {
      list.replaceChildren(h("li", { class: "doc-error" }, err.message));
      return;
    }
    if (!chunks.length) {
      list.replaceChildren(h("li", { class: "note" }, t("chunks.none")));
      return;
    }
    list.replaceChildren(
      ...chunks.map((chunk) => {
        const meta = chunk.metadata || {};
        const index = meta.chunk_index;
        const text = h("p", { class: "chunk-text" });
        if (terms && index === focusIndex) renderMarked(text, chunk.text, markMask(chunk.text, terms), 0, chunk.text.length);
        else text.textContent = chunk.text;
        return h(
          "li",
          { class: "chunk", id: `chunk-${index}`, tabindex: "-1" },
          h("div", { class: "chunk-head" }, `#${index}`, locationText(meta) ? ` · ${locationText(meta)}` : ""),
          text,
        );
      }),
    );
    const target = focusIndex !== undefined ? $(`chunk-${focusIndex}`) : null;
    if (target) {
      target.scrollIntoView({ behavior: reducedMotion() ? "auto" : "smooth", block: "center" });
      target.focus({ preventScroll: true });
      flash(target);
    } else {
      box.scrollIntoView({ behavior: reducedMotion() ? "auto" : "smooth", block: "start" });
    }
  }

  function closeChunks() {
    const box = $("chunks");
    box.hidden = true;
    delete box.dataset.docId;
    $("chunk-list").replaceChildren();
  }

  // ---------- uploads and jobs ----------
  const TERMINAL = new Set(["succeeded", "failed", "duplicate", "rejected", "error"]);

  function addUpload(kb, filename) {
    const item = { key: ++state.uploadSeq, kb, filename, phase: "uploading", pct: 0, job: null, error: null };
    state.uploads.push(item);
    return item;
  }

  function uploadFiles(fileList) {
    const kb = state.currentKb;
    const files = [...fileList];
    if (!kb || !files.length) return;
    const batchSize = 50;
    for (let i = 0; i < files.length; i += batchSize) sendBatch(kb, files.slice(i, i + batchSize));
    renderUploads();
  }

  function sendBatch(kb, files) {
    const items = files.map((f) => addUpload(kb, f.name));
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `v1/knowledge_bases/${enc(kb)}/documents`);
    for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      for (const item of items) item.pct = Math.round((e.loaded / e.total) * 100);
      renderUploads();
    };
    const fail = (message) => {
      for (const item of items) {
        item.phase = "error";
        item.error = message;
      }
      renderUploads();
    };
    xhr.onerror = () => fail(t("error.network"));
    xhr.onload = () => {
      if (xhr.status !== 202) {
        fail(errorFrom(xhr.status, xhr.statusText, xhr.responseText).message);
        return;
      }
      let data = [];
      try {
        data = JSON.parse(xhr.responseText).data || [];
      } catch (_e) {
        fail("bad response");
        return;
      }
      data.forEach((result, i) => {
        const item = items[i] || addUpload(kb, result.filename);
        item.filename = result.filename;
        if (result.status === "queued" && result.job) {
          item.job = result.job;
          item.phase = result.job.state;
        } else {
          item.phase = result.status;
          item.error = result.error;
          item.duplicateOf = result.duplicate_of || null;
        }
      });
      renderUploads();
      startPolling();
      loadDocs();
      loadKbs();
    };
    xhr.send(form);
  }

  async function adoptServerJobs(kb) {
    // jobs still under way (from before a reload, or another client) show up as uploads too
    let jobs = [];
    try {
      jobs = (await apiJson(`v1/jobs?kb=${enc(kb)}&limit=100`)).data || [];
    } catch (_e) {
      return;
    }
    const known = new Set(state.uploads.filter((u) => u.job).map((u) => u.job.id));
    for (const job of jobs.reverse()) {
      if (known.has(job.id) || TERMINAL.has(job.state)) continue;
      const item = addUpload(kb, job.filename);
      item.job = job;
      item.phase = job.state;
    }
    renderUploads();
    startPolling();
  }

  function startPolling() {
    if (state.pollTimer === null) state.pollTimer = setTimeout(pollJobs, 500);
  }

  async function pollJobs() {
    state.pollTimer = null;
    const active = state.uploads.filter((u) => u.job && !TERMINAL.has(u.phase));
    if (!active.length) return;
    const kbs = [...new Set(active.map((u) => u.kb))];
    let changedHere = false;
    let finishedHere = false;
    await Promise.all(
      kbs.map(async (kb) => {
        let jobs;
        try {
          jobs = (await apiJson(`v1/jobs?kb=${enc(kb)}&limit=1000`)).data || [];
        } catch (_e) {
          return;
        }
        const byId = new Map(jobs.map((j) => [j.id, j]));
        for (const item of active.filter((u) => u.kb === kb)) {
          let job = byId.get(item.job.id);
          if (!job) {
            // older than the newest 1000 jobs of this knowledge base: ask for it alone
            try {
              job = await apiJson(`v1/jobs/${enc(item.job.id)}`);
            } catch (err) {
              if (err.status === 404) {
                item.phase = "error"; // the job is gone (its document or knowledge base deleted)
                item.error = err.message;
              }
              continue;
            }
          }
          item.job = job;
          if (job.state !== item.phase && kb === state.currentKb) {
            changedHere = true;
            if (TERMINAL.has(job.state)) finishedHere = true;
          }
          item.phase = job.state;
          item.error = job.error;
        }
      }),
    );
    renderUploads();
    if (changedHere) loadDocs();
    if (finishedHere) loadKbs();
    if (state.uploads.some((u) => u.job && !TERMINAL.has(u.phase))) {
      state.pollTimer = setTimeout(pollJobs, 700);
    }
  }

  function uploadLabel(item) {
    const job = item.job;
    switch (item.phase) {
      case "uploading":
        return t("upload.uploading", { pct: item.pct });
      case "queued":
        return t("upload.queued");
      case "running":
        return job && job.progress_total
          ? t("upload.runningProgress", { done: job.progress_done, total: job.progress_total })
          : t("upload.running");
      case "succeeded":
        return t("upload.succeeded", { chunks: job ? job.chunks : 0 });
      case "failed":
        return t("upload.failed", { error: item.error || "" });
      case "duplicate":
        return item.duplicateOf
          ? t("upload.duplicateOf", { name: item.duplicateOf })
          : t("upload.duplicate");
      case "rejected":
        return t("upload.rejected", { error: item.error || "" });
      default:
        return t("upload.error", { error: item.error || "" });
    }
  }

  function renderUploads() {
    const items = state.uploads.filter((u) => u.kb === state.currentKb);
    $("uploads-box").hidden = !items.length;
    $("uploads").replaceChildren(
      ...items
        .slice()
        .reverse()
        .map((item) => {
          const bar = h("progress", { max: "100" });
          const job = item.job;
          if (item.phase === "uploading") bar.value = item.pct;
          else if (item.phase === "running" && job && job.progress_total) {
            bar.max = job.progress_total;
            bar.value = job.progress_done;
          } else if (TERMINAL.has(item.phase)) bar.value = 100;
          else bar.removeAttribute("value"); // queued: indeterminate
          return h(
            "li",
            { class: `upload phase-${item.phase}`, dataset: { filename: item.filename, state: item.phase } },
            h("span", { class: "upload-name", title: item.filename }, item.filename),
            h("span", { class: "upload-state" }, uploadLabel(item)),
            bar,
          );
        }),
    );
  }

  // ---------- question terms and highlighting ----------
  const CJK_CLASS = "\\u3040-\\u30ff\\u3400-\\u4dbf\\u4e00-\\u9fff\\uf900-\\ufaff\\uac00-\\ud7af";
  const CJK_RUN = new RegExp(`[${CJK_CLASS}]+`, "g");
  const WORD = /[\p{L}\p{N}]+/gu;
  const WORD_CHAR = /[\p{L}\p{N}]/u;
  const CJK_CHAR = new RegExp(`[${CJK_CLASS}]`);
  const STOP_WORDS = new Set(
    ("a an the of to in on at for by with from and or not no is are was were be been being do does " +
      "did what which who whom whose when where why how that this these those it its as about into " +
      "than then there their they them can could should would will may might has have had i you he " +
      "she we me my your our his her tell please le la les un une des de du d l qu que qui quoi est " +
      "sont et ou en au aux ce cette ces pour par sur dans avec der die das und ist").split(" "),
  );
  const STOP_BIGRAMS = new Set(
    "什么 怎么 如何 哪些 哪个 为什 是否 可以 一个 这个 那个 多少 几个 请问 的是 是什 么是 有哪 有什 有几 吗？ 是多".split(" "),
  );
  const STOP_CHARS = new Set([..."的了吗呢吧啊是在有和与及或也就都而之"]);

  function stem(word) {
    if (/\d/.test(word)) return word;
    const rules = [["ing", 6], ["ies", 5], ["es", 5], ["ed", 5], ["s", 4]];
    for (const [suffix, min] of rules) {
      if (word.length >= min && word.endsWith(suffix) && !word.endsWith("ss")) {
        return word.slice(0, -suffix.length);
      }
    }
    return word;
  }

  function queryTerms(question) {
    const terms = new Map();
    for (const match of question.matchAll(CJK_RUN)) {
      const run = match[0];
      if (run.length === 1) {
        if (!STOP_CHARS.has(run)) terms.set(run, { text: run, word: false });
        continue;
      }
      for (let i = 0; i + 1 < run.length; i++) {
        const gram = run.slice(i, i + 2);
        if (STOP_BIGRAMS.has(gram) || (STOP_CHARS.has(gram[0]) && STOP_CHARS.has(gram[1]))) continue;
        terms.set(gram, { text: gram, word: false });
      }
    }
    const rest = question.replace(CJK_RUN, " ");
    for (const match of rest.matchAll(WORD)) {
      const word = match[0].toLowerCase();
      if ((word.length < 2 && !/\d/.test(word)) || STOP_WORDS.has(word)) continue;
      const root = stem(word);
      terms.set(root, { text: root, word: true });
    }
    return [...terms.values()];
  }

  function isWordChar(ch) {
    return Boolean(ch) && WORD_CHAR.test(ch) && !CJK_CHAR.test(ch);
  }

  // One flag per character of text: 1 where a question term matched.
  function markMask(text, terms) {
    const lower = text.toLowerCase();
    const hay = lower.length === text.length ? lower : text;
    const mask = new Uint8Array(text.length);
    for (const term of terms) {
      let from = 0;
      for (;;) {
        const at = hay.indexOf(term.text, from);
        if (at < 0) break;
        let end = at + term.text.length;
        from = at + 1;
        if (term.word) {
          if (at > 0 && isWordChar(hay[at - 1])) continue;
          let stop = end;
          while (stop < hay.length && isWordChar(hay[stop])) stop++;
          if (stop - end > Math.max(3, Math.floor(term.text.length / 2))) continue;
          end = stop;
        }
        mask.fill(1, at, end);
        from = end;
      }
    }
    return mask;
  }

  // The part of a long passage with the most matched characters, snapped to word breaks.
  function excerptRange(text, mask, size) {
    if (text.length <= size + 120) return [0, text.length];
    const prefix = new Uint32Array(text.length + 1);
    for (let i = 0; i < text.length; i++) prefix[i + 1] = prefix[i] + mask[i];
    let best = 0;
    let bestCount = 0;
    for (let start = 0; start + size <= text.length; start += 10) {
      const count = prefix[start + size] - prefix[start];
      if (count > bestCount) {
        best = start;
        bestCount = count;
      }
    }
    if (bestCount > 0) {
      // put the first match a little after the start rather than at the edge
      let first = best;
      while (first < best + size && !mask[first]) first++;
      best = Math.max(0, Math.min(first - 60, text.length - size));
    }
    let start = best;
    let end = Math.min(text.length, start + size);
    const brk = /[\s。，、；！？.,;!?]/;
    for (let i = 0; i < 30 && start > 0 && !brk.test(text[start - 1]); i++) start--;
    for (let i = 0; i < 30 && end < text.length && !brk.test(text[end]); i++) end++;
    return [start, end];
  }

  function renderMarked(el, text, mask, start, end) {
    const parts = [];
    if (start > 0) parts.push("… ");
    let i = start;
    while (i < end) {
      let j = i;
      const marked = mask[i] === 1;
      while (j < end && (mask[j] === 1) === marked) j++;
      const piece = text.slice(i, j);
      parts.push(marked ? h("mark", null, piece) : piece);
      i = j;
    }
    if (end < text.length) parts.push(" …");
    el.replaceChildren(...parts);
  }

  // ---------- chat ----------
  const CITE = /\[(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\]|【(\d{1,3})】/g;

  function locationText(meta) {
    const parts = [];
    if (meta.page !== null && meta.page !== undefined) parts.push(t("source.page", { page: meta.page }));
    if (meta.heading_path && meta.heading_path.length) parts.push(meta.heading_path.join(" › "));
    return parts.join(" · ");
  }

  class AnswerView {
    constructor(question, kbs, passagesOnly) {
      this.id = `t${++state.turns}`;
      this.passagesOnly = passagesOnly;
      this.question = question;
      this.kbs = kbs;
      this.terms = queryTerms(question);
      this.text = "";
      this.sources = [];
      this.refused = false;
      this.grounded = null;
      this.started = performance.now();
      this.usage = null;
      this.timings = null;
      this.done = false;
      this.textEl = h("div", { class: "answer-text streaming" });
      this.noticeEl = h("div", { class: "notice", hidden: true });
      this.statusEl = h("div", { class: "answer-status" }, t("chat.thinking"));
      this.sourcesEl = h("section", { class: "sources", hidden: true });
      this.el = h(
        "article",
        { class: "turn assistant", id: this.id, "aria-busy": "true", "aria-label": t("chat.assistant") },
        h(
          "div",
          { class: "turn-head" },
          h("span", { class: "who" }, t("chat.assistant")),
          h("span", { class: "kbs" }, kbs.length ? t("chat.usedKbs", { kbs: kbs.join(", ") }) : t("chat.plainModel")),
        ),
        this.noticeEl,
        this.textEl,
        this.statusEl,
        this.sourcesEl,
      );
    }

    onChunk(chunk) {
      if (chunk.error) {
        this.fail(chunk.error.message || JSON.stringify(chunk.error));
        return;
      }
      if (Array.isArray(chunk.sources)) this.setSources(chunk.sources);
      if (typeof chunk.refused === "boolean") this.refused = chunk.refused;
      if (typeof chunk.grounded === "boolean") this.grounded = chunk.grounded;
      if (chunk.usage) this.usage = chunk.usage;
      if (chunk.timings) this.timings = chunk.timings;
      const choice = chunk.choices && chunk.choices[0];
      if (choice) {
        const piece = (choice.delta && choice.delta.content) || (choice.message && choice.message.content);
        if (piece) this.text += piece;
      }
      this.renderNotice();
      this.renderText();
    }

    setSources(sources) {
      this.sources = [...sources].sort((a, b) => a.index - b.index);
      this.byIndex = new Map(this.sources.map((s) => [s.index, s]));
      this.renderSources();
    }

    renderNotice() {
      this.el.classList.toggle("refused", this.refused);
      let text = "";
      if (this.refused) text = t("chat.refused");
      else if (this.kbs.length && this.grounded === false) text = t("chat.notGrounded");
      this.noticeEl.textContent = text;
      this.noticeEl.hidden = !text;
      this.noticeEl.className = `notice ${this.refused ? "refused" : "ungrounded"}`;
    }

    renderText() {
      if (this.passagesOnly && !this.refused) {
        this.textEl.replaceChildren(h("span", { class: "note" }, t("chat.passagesOnly", { n: this.sources.length })));
        return;
      }
      const text = this.text;
      const frag = document.createDocumentFragment();
      let last = 0;
      const cited = new Set();
      for (const match of text.matchAll(CITE)) {
        const nums = (match[1] || match[2]).split(/[,，、]/).map((n) => parseInt(n.trim(), 10));
        if (!this.byIndex || !nums.every((n) => this.byIndex.has(n))) continue;
        frag.append(text.slice(last, match.index));
        for (const n of nums) {
          cited.add(n);
          frag.append(this.citeLink(n));
        }
        last = match.index + match[0].length;
      }
      frag.append(text.slice(last));
      this.textEl.replaceChildren(frag);
      for (const card of this.sourcesEl.querySelectorAll(".card")) {
        const n = Number(card.dataset.index);
        card.classList.toggle("cited", cited.has(n));
      }
      this.cited = cited;
    }

    citeLink(n) {
      const source = this.byIndex.get(n);
      return h(
        "a",
        {
          class: "cite",
          href: `#${this.id}-src-${n}`,
          title: source.filename,
          "aria-label": `[${n}] ${source.filename}`,
          onclick: (e) => {
            e.preventDefault();
            this.showSource(n);
          },
        },
        `[${n}]`,
      );
    }

    showSource(n) {
      const card = $(`${this.id}-src-${n}`);
      if (!card) return;
      card.scrollIntoView({ behavior: reducedMotion() ? "auto" : "smooth", block: "center" });
      card.focus({ preventScroll: true });
      flash(card);
    }

    renderSources() {
      if (!this.sources.length) {
        this.sourcesEl.hidden = true;
        return;
      }
      const multiKb = new Set(this.sources.map((s) => s.kb)).size > 1;
      this.sourcesEl.hidden = false;
      this.sourcesEl.replaceChildren(
        h("h3", null, t("chat.sources", { n: this.sources.length })),
        h("ol", { class: "cards" }, ...this.sources.map((s) => this.card(s, multiKb))),
      );
    }

    card(source, multiKb) {
      const text = source.text || "";
      const mask = markMask(text, this.terms);
      const passage = h("p", { class: "passage" });
      const [start, end] = excerptRange(text, mask, 360);
      renderMarked(passage, text, mask, start, end);
      const score = typeof source.score === "number" ? source.score : null;
      const fill = h("span", { class: "fill" });
      if (score !== null) fill.style.width = `${Math.round(Math.max(0, Math.min(1, score)) * 100)}%`;
      const location = locationText(source);
      const children = [
        h(
          "div",
          { class: "card-head" },
          h("span", { class: "idx" }, String(source.index)),
          h("span", { class: "file", title: source.filename }, source.filename),
          location ? h("span", { class: "loc" }, location) : null,
          multiKb ? h("span", { class: "kb-tag" }, source.kb) : null,
          source.relevant === false ? h("span", { class: "weak", title: t("source.weakHint") }, t("source.weak")) : null,
          score !== null
            ? h(
                "span",
                { class: "score", title: t("source.scoreLabel", { score: score.toFixed(2) }) },
                h("span", { class: "bar", "aria-hidden": "true" }, fill),
                t("source.score", { score: score.toFixed(2) }),
              )
            : null,
        ),
        passage,
      ];
      const foot = h("div", { class: "card-foot" });
      if (start > 0 || end < text.length) {
        let full = false;
        const toggle = h("button", { type: "button", class: "link", "aria-expanded": "false" }, t("source.more"));
        toggle.addEventListener("click", () => {
          full = !full;
          if (full) renderMarked(passage, text, mask, 0, text.length);
          else renderMarked(passage, text, mask, start, end);
          toggle.textContent = t(full ? "source.less" : "source.more");
          toggle.setAttribute("aria-expanded", String(full));
        });
        foot.append(toggle);
      }
      if (source.kb && source.doc_id) {
        foot.append(
          h(
            "button",
            {
              type: "button",
              class: "link",
              onclick: () => openSourceDocument(source, this.terms),
            },
            t("source.open"),
          ),
        );
      }
      if (source.chunk_index !== undefined && source.chunk_index !== null) {
        foot.append(h("span", { class: "note" }, t("source.chunk", { n: source.chunk_index })));
      }
      if (source.truncated) foot.append(h("span", { class: "note" }, t("source.truncated")));
      children.push(foot);
      return h(
        "li",
        {
          class: "card",
          id: `${this.id}-src-${source.index}`,
          tabindex: "-1",
          dataset: { index: source.index, filename: source.filename },
        },
        ...children,
      );
    }

    finish() {
      if (this.done) return;
      this.done = true;
      this.textEl.classList.remove("streaming");
      this.el.removeAttribute("aria-busy");
      if (this.refused && !this.text) this.text = t("chat.refusedDefault");
      this.renderNotice();
      this.renderText();
      const seconds = ((performance.now() - this.started) / 1000).toFixed(1);
      const tokens = this.usage ? this.usage.completion_tokens : null;
      const parts = [tokens ? t("chat.meta", { tokens, seconds }) : t("chat.metaTime", { seconds })];
      const tm = this.timings;
      if (tm && tm.retrieval_ms !== undefined) parts.push(t("chat.retrieval", { ms: Math.round(tm.retrieval_ms) }));
      if (tm && tm.ttft_ms !== undefined) parts.push(t("chat.ttft", { ms: Math.round(tm.ttft_ms) }));
      if (tm && tm.tokens_per_s) parts.push(t("chat.speed", { n: tm.tokens_per_s.toFixed(1) }));
      this.statusEl.textContent = parts.join(" · ");
      if (this.kbs.length && !this.refused && !this.sources.length) {
        this.sourcesEl.hidden = false;
        this.sourcesEl.replaceChildren(h("p", { class: "note" }, t("chat.noSources")));
      }
    }

    stopped() {
      this.finish();
      this.statusEl.textContent = t("chat.stopped");
    }

    fail(message) {
      this.done = true;
      this.textEl.classList.remove("streaming");
      this.el.removeAttribute("aria-busy");
      this.el.classList.add("failed");
      this.statusEl.textContent = t("chat.error", { message });
      this.statusEl.setAttribute("role", "alert");
      this.failed = true;
    }
  }

  async function openSourceDocument(source, terms) {
    switchTab("kb");
    await selectKb(source.kb);
    await openChunks(source.kb, source.doc_id, source.filename, source.chunk_index, terms);
  }

  function scrollMessages() {
    const box = $("messages");
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 160;
    if (nearBottom) box.scrollTop = box.scrollHeight;
  }

  function chatBody(kbs) {
    const s = state.settings;
    const body = { messages: state.history.map((m) => ({ role: m.role, content: m.content })), stream: true };
    if (s.model) body.model = s.model;
    if (s.max_tokens) body.max_tokens = Number(s.max_tokens);
    if (kbs.length) {
      body.knowledge_base = kbs.length === 1 ? kbs[0] : kbs;
      body.return_sources = true;
      if (s.top_k) body.top_k = Number(s.top_k);
      if (s.score_threshold !== "" && s.score_threshold !== null) body.score_threshold = Number(s.score_threshold);
      if (s.search_mode) body.search_mode = s.search_mode;
      if (s.answer_mode) body.answer_mode = s.answer_mode;
    }
    return body;
  }

  async function ask(question) {
    const kbs = state.kbs.map((k) => k.name).filter((n) => state.selectedKbs.has(n));
    $("chat-empty").hidden = true;
    const messages = $("messages");
    messages.append(
      h(
        "article",
        { class: "turn user", "aria-label": t("chat.you") },
        h("div", { class: "turn-head" }, h("span", { class: "who" }, t("chat.you"))),
        h("div", { class: "bubble" }, question),
      ),
    );
    state.history.push({ role: "user", content: question });
    const chat = state.chatId;
    const view = new AnswerView(question, kbs, kbs.length > 0 && state.settings.answer_mode === "passages");
    messages.append(view.el);
    messages.scrollTop = messages.scrollHeight;

    const controller = new AbortController();
    state.streaming = controller;
    setStreaming(true);
    try {
      const res = await api("v1/chat/completions", { method: "POST", json: chatBody(kbs), signal: controller.signal });
      const type = res.headers.get("content-type") || "";
      if (type.includes("text/event-stream") && res.body) {
        await readStream(res.body, (chunk) => {
          view.onChunk(chunk);
          scrollMessages();
        });
      } else {
        view.onChunk(await res.json());
      }
      if (!view.failed) view.finish();
    } catch (err) {
      if (err && err.name === "AbortError") view.stopped();
      else view.fail(err.message || String(err));
    } finally {
      state.streaming = null;
      setStreaming(false);
    }
    if (chat !== state.chatId) return; // "New chat" was pressed meanwhile
    if (view.text && !view.failed) state.history.push({ role: "assistant", content: view.text });
    else state.history.pop(); // no answer: do not send a dangling question again
    scrollMessages();
  }

  async function readStream(body, onChunk) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    const dispatch = () => {
      if (!data.length) return false;
      const payload = data.join("\n");
      data = [];
      if (payload === "[DONE]") return true;
      try {
        onChunk(JSON.parse(payload));
      } catch (_e) {
        /* a malformed event is skipped */
      }
      return false;
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          if (dispatch()) {
            reader.cancel().catch(() => {});
            return;
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
      }
    }
    dispatch();
  }

  function setStreaming(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    $("composer-input").setAttribute("aria-busy", on ? "true" : "false");
  }

  function submitQuestion(event) {
    if (event) event.preventDefault();
    const input = $("composer-input");
    const question = input.value.trim();
    if (!question || state.streaming) return;
    input.value = "";
    autosize();
    ask(question);
  }

  function newChat() {
    state.chatId++;
    if (state.streaming) state.streaming.abort();
    state.history = [];
    const empty = $("chat-empty");
    empty.hidden = false;
    $("messages").replaceChildren(empty);
    $("composer-input").focus();
  }

  function autosize() {
    const input = $("composer-input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  // ---------- tabs ----------
  function switchTab(name) {
    for (const [tab, view] of [["chat", "view-chat"], ["kb", "view-kb"]]) {
      const button = $(`tab-${tab}`);
      const on = tab === name;
      button.setAttribute("aria-selected", String(on));
      button.tabIndex = on ? 0 : -1;
      $(view).hidden = !on;
    }
    if (history.replaceState) history.replaceState(null, "", name === "kb" ? "#kb" : "#chat");
    if (name === "kb") {
      loadKbs().then(() => {
        if (!state.currentKb && state.kbs.length === 1) selectKb(state.kbs[0].name);
        else if (state.currentKb) loadDocs();
      });
    } else {
      loadKbs();
    }
  }

  // ---------- settings ----------
  const FIELDS = {
    "set-model": "model",
    "set-topk": "top_k",
    "set-threshold": "score_threshold",
    "set-search": "search_mode",
    "set-answer": "answer_mode",
    "set-maxtokens": "max_tokens",
    "set-lang": "lang",
  };

  function fillSettings() {
    for (const [id, key] of Object.entries(FIELDS)) $(id).value = state.settings[key] ?? "";
    $("set-key").value = state.apiKey;
  }

  function openSettings(focusKey) {
    const panel = $("settings");
    panel.hidden = false;
    $("settings-toggle").setAttribute("aria-expanded", "true");
    (focusKey ? $("set-key") : $("settings-close")).focus();
  }

  function closeSettings() {
    $("settings").hidden = true;
    $("settings-toggle").setAttribute("aria-expanded", "false");
    $("settings-toggle").focus();
  }

  function renderKeyToggle() {
    const input = $("set-key");
    $("set-key-show").textContent = t(input.type === "password" ? "settings.showKey" : "settings.hideKey");
  }

  function bindSettings() {
    for (const [id, key] of Object.entries(FIELDS)) {
      $(id).addEventListener("change", () => {
        const el = $(id);
        if (el.type === "number" && el.value !== "" && !el.checkValidity()) {
          el.reportValidity();
          return;
        }
        state.settings[key] = el.value;
        store.set("kbqa.settings", state.settings);
        if (key === "lang") applyI18n();
      });
    }
    $("set-key").addEventListener("change", async () => {
      const key = $("set-key").value.trim();
      if (key === state.apiKey) return;
      state.apiKey = key;
      store.set("kbqa.apiKey", state.apiKey);
      hideBanner();
      toast(t("settings.saved"), "ok");
      await Promise.all([loadKbs(), loadModels()]);
      if (state.currentKb) loadDocs();
    });
    $("set-key-show").addEventListener("click", () => {
      const input = $("set-key");
      input.type = input.type === "password" ? "text" : "password";
      renderKeyToggle();
    });
    $("settings-reset").addEventListener("click", () => {
      state.settings = { ...DEFAULTS };
      store.set("kbqa.settings", state.settings);
      fillSettings();
      applyI18n();
    });
    $("settings-form").addEventListener("submit", (e) => e.preventDefault());
    $("settings-toggle").addEventListener("click", () => {
      if ($("settings").hidden) openSettings(false);
      else closeSettings();
    });
    $("settings-close").addEventListener("click", closeSettings);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("settings").hidden && !$("confirm").open) closeSettings();
    });
  }

  // ---------- wiring ----------
  function bind() {
    $("composer").addEventListener("submit", submitQuestion);
    const input = $("composer-input");
    input.addEventListener("keydown", (e) => {
      // Enter sends, Shift+Enter is a new line; Enter that confirms an IME candidate is not a send
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        submitQuestion();
      }
    });
    input.addEventListener("input", autosize);
    $("stop").addEventListener("click", () => state.streaming && state.streaming.abort());
    $("new-chat").addEventListener("click", newChat);

    const tabs = [$("tab-chat"), $("tab-kb")];
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => switchTab(i === 0 ? "chat" : "kb"));
      tab.addEventListener("keydown", (e) => {
        if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
        const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
        next.focus();
        next.click();
      });
    });

    $("kb-create").addEventListener("submit", createKb);
    $("kb-delete").addEventListener("click", deleteKb);
    $("kb-refresh").addEventListener("click", () => {
      loadKbs();
      loadDocs();
    });
    $("chunks-close").addEventListener("click", closeChunks);
    $("uploads-clear").addEventListener("click", () => {
      state.uploads = state.uploads.filter((u) => u.kb !== state.currentKb || !TERMINAL.has(u.phase));
      renderUploads();
    });

    const picker = $("file-input");
    $("choose-files").addEventListener("click", () => picker.click());
    picker.addEventListener("change", () => {
      uploadFiles(picker.files);
      picker.value = "";
    });
    const zone = $("dropzone");
    const view = $("view-kb");
    let depth = 0;
    view.addEventListener("dragenter", (e) => {
      if (!state.currentKb) return;
      e.preventDefault();
      depth++;
      zone.classList.add("over");
    });
    view.addEventListener("dragover", (e) => {
      if (!state.currentKb) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    view.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("over");
    });
    view.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) uploadFiles(e.dataTransfer.files);
    });
    // a file dropped anywhere else must not make the browser leave the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    bindSettings();
  }

  async function start() {
    bind();
    fillSettings();
    applyI18n();
    switchTab(location.hash === "#kb" ? "kb" : "chat");
    await Promise.all([loadHealth(), loadModels()]);
    setInterval(loadHealth, 30000);
    document.body.dataset.ready = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
