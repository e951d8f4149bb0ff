"""The comparison as something a person reads at a glance: ``report.md``, a self-contained
``report.html`` (charts inlined as PNG data), the chart PNGs, and a rich table."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
METRICS_PNG = "metrics.png"
STABILITY_PNG = "stability.png"
INSTRUMENTS_PNG = "instruments.png"

LABELS = {
    "em": "EM",
    "f1": "F1",
    "rouge_l": "ROUGE-L",
    "bleu4": "BLEU-4",
    "contains": "Contains",
}
COLORS = {"base": "#9e9e9e", "rag": "#1f77b4", "lora": "#ff7f0e", "rag+lora": "#2ca02c"}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _ci_text(ci: dict[str, float] | None) -> str:
    if not ci:
        return "–"
    return f"{100 * ci['mean']:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _raw_ci(ci: dict[str, float] | None, digits: int = 3) -> str:
    """An interval of a value that is not a share (NLL, perplexity), unscaled."""
    if not ci:
        return "–"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def _nll(s: dict[str, Any]) -> dict[str, float] | None:
    return (s.get("likelihood") or {}).get("nll")


def likelihood_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Gold-answer likelihood per system (lower NLL: the answer is more likely)."""
    header = ["system", "mean NLL (nats/token)", "perplexity", "scored", "refused", "tokens"]
    rows = []
    for name, s in summary["systems"].items():
        lik = s.get("likelihood")
        if lik:
            rows.append(
                [
                    name,
                    _raw_ci(lik["nll"]),
                    _raw_ci(lik["perplexity"], 2),
                    str(lik["scored"]),
                    str(lik["refused"]),
                    _num(lik.get("answer_tokens_mean"), 1),
                ]
            )
    return header, rows


def sampling_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main run's stability next to the sampled run's, per system (in %)."""
    header = [
        "system",
        "main: identical",
        "main: mixed right/wrong",
        "sampled: identical",
        "sampled: pairwise sim.",
        "sampled: mixed right/wrong",
        "sampled: contains",
    ]
    rows = []
    for name, s in summary["systems"].items():
        sampled = s.get("sampled")
        if not sampled:
            continue
        main = s.get("stability") or {}
        rows.append(
            [
                name,
                _ci_text(main.get("identical_ci")),
                _ci_text(main.get("mixed_correctness_ci")),
                _ci_text(sampled.get("identical_ci")),
                _ci_text(sampled.get("pairwise_similarity_ci")),
                _ci_text(sampled.get("mixed_correctness_ci")),
                _ci_text(sampled.get("contains")),
            ]
        )
    return header, rows


def sampling_caption(summary: dict[str, Any]) -> str:
    sampled = [s["sampled"] for s in summary["systems"].values() if s.get("sampled")]
    if not sampled:
        return ""
    first = sampled[0]
    temperature = summary.get("meta", {}).get("temperature")
    main = "greedy" if not temperature else f"temperature {temperature}"
    return (
        f"Main run: {main}. Sampled run: temperature {first.get('temperature')}, top-p "
        f"{first.get('top_p')}, {first.get('repeats')} answers per question (seed + repeat). "
        "Shares of questions in %."
    )


def forgetting_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The forgetting probe: how much the adapter changed general answers (in %)."""
    header = [
        "questions",
        "changed by the adapter",
        "base/lora similarity",
        "base contains",
        "lora contains",
        "lora - base",
    ]
    f = summary.get("forgetting")
    if not f:
        return header, []
    row = [
        str(f["questions"]),
        _ci_text(f["changed"]),
        _ci_text(f["similarity"]),
        _ci_text(f["contains"]["base"]),
        _ci_text(f["contains"]["lora"]),
        _ci_text(f["contains_difference"]),
    ]
    if f.get("nll"):
        header += ["base gold NLL", "lora gold NLL", "NLL lora - base"]
        row += [
            _raw_ci(f["nll"]["base"]),
            _raw_ci(f["nll"]["lora"]),
            _raw_ci(f.get("nll_difference")),
        ]
    return header, [row]


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per system (values in %, intervals in brackets)."""
    header = [
        "system",
        *[LABELS[m] for m in LABELS],
        "hit@1",
        "hit@k",
        "MRR",
        "refusal (unans.)",
        "wrong refusal",
        "identical",
        "pairwise sim.",
        "mixed right/wrong",
        "p50 ms",
        "p95 ms",
        "tok/s",
        "gold NLL",
        "sampled: mixed",
    ]
    rows = []
    for name, s in summary["systems"].items():
        retrieval = s.get("retrieval") or {}
        stability = s.get("stability") or {}
        rows.append(
            [
                name,
                *[_ci_text(s.get(m)) for m in LABELS],
                _pct((retrieval.get("hit@1") or {}).get("mean")) if retrieval else "–",
                _pct((retrieval.get("hit@k") or {}).get("mean")) if retrieval else "–",
                _pct((retrieval.get("mrr") or {}).get("mean")) if retrieval else "–",
                _pct(s.get("refusal_rate")),
                _pct(s.get("wrong_refusal_rate")),
                _pct(stability.get("identical")),
                _pct(stability.get("pairwise_similarity")),
                _pct(stability.get("mixed_correctness")),
                _num(s["latency_ms"]["p50"]),
                _num(s["latency_ms"]["p95"]),
                _num(s.get("tokens_per_s"), 1),
                _raw_ci(_nll(s)),
                _ci_text((s.get("sampled") or {}).get("mixed_correctness_ci")),
            ]
        )
    return header, rows


def headline(summary: dict[str, Any]) -> list[str]:
    """A few sentences: who wins, how stably."""
    lines = []
    systems = summary["systems"]
    scored = {n: s["f1"]["mean"] for n, s in systems.items() if s.get("f1")}
    if scored:
        best = max(scored, key=lambda n: scored[n])
        lines.append(
            f"Best token F1: **{best}** ({_ci_text(systems[best]['f1'])}, 95% bootstrap CI)."
        )
    for pair in summary.get("paired", []):
        diff = pair["mean_difference"]
        significant = diff and (diff["low"] > 0 or diff["high"] < 0)
        verdict = "excludes 0" if significant else "includes 0"
        lines.append(
            f"{pair['a']} vs {pair['b']} on {pair['questions']} questions: {pair['a']} better on "
            f"{pair['a_wins']}, {pair['b']} better on {pair['b_wins']}, tie on {pair['ties']} "
            f"(mean F1 difference {_ci_text(diff)} points"
            f", an interval that {verdict})."
        )
    for name, s in systems.items():
        st = s.get("stability")
        if st:
            lines.append(
                f"{name}: identical answers on {_pct(st['identical'])}% of questions over "
                f"{st['repeats']} repeats; sometimes right, sometimes wrong on "
                f"{_pct(st.get('mixed_correctness'))}%."
            )
    nll: dict[str, dict[str, float]] = {}
    for name, s in systems.items():
        value = _nll(s)
        if value:
            nll[name] = value
    if nll:
        best = min(nll, key=lambda n: nll[n]["mean"])
        others = ", ".join(f"{n} {v['mean']:.3f}" for n, v in nll.items() if n != best)
        lines.append(
            f"Most likely gold answers: **{best}** (mean NLL {_raw_ci(nll[best])} nats/token"
            + (f"; {others}" if others else "")
            + ")."
        )
    for name, s in systems.items():
        sampled = s.get("sampled")
        if sampled:
            lines.append(
                f"{name} sampled at temperature {sampled.get('temperature')} "
                f"({sampled.get('repeats')} answers): sometimes right, sometimes wrong on "
                f"{_pct(sampled.get('mixed_correctness'))}% of questions, identical on "
                f"{_pct(sampled.get('identical'))}%."
            )
    f = summary.get("forgetting")
    if f:
        lines.append(
            f"Forgetting probe ({f['questions']} general questions): the adapter changed "
            f"{f['changed_questions']} answers ({_ci_text(f['changed'])}%); probe accuracy "
            f"base {_ci_text(f['contains']['base'])}%, lora {_ci_text(f['contains']['lora'])}%."
        )
    for system, reason in summary.get("skipped", {}).items():
        lines.append(f"Skipped {system}: {reason}.")
    for instrument, reason in summary.get("notes", {}).items():
        lines.append(f"No {instrument} measurement: {reason}.")
    return lines


# ----------------------------------------------------------------------------- charts


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_chart(summary: dict[str, Any], path: Path) -> Path | None:
    systems = [n for n, s in summary["systems"].items() if s.get("f1")]
    if not systems:
        return None
    plt = _plt()
    import numpy as np

    names = list(LABELS)
    width = 0.8 / len(systems)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for index, system in enumerate(systems):
        s = summary["systems"][system]
        means = [100 * (s[m] or {}).get("mean", 0) for m in names]
        low = [100 * ((s[m] or {}).get("mean", 0) - (s[m] or {}).get("low", 0)) for m in names]
        high = [100 * ((s[m] or {}).get("high", 0) - (s[m] or {}).get("mean", 0)) for m in names]
        ax.bar(
            x + (index - (len(systems) - 1) / 2) * width,
            means,
            width,
            yerr=[low, high],
            capsize=3,
            label=system,
            color=COLORS.get(system),
        )
    ax.set_xticks(x, [LABELS[m] for m in names])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    level = int(100 * summary["bootstrap"]["level"])
    ax.set_title(f"Answer quality per system ({level}% bootstrap CI over questions)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=len(systems), loc="upper center", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stability_chart(summary: dict[str, Any], path: Path) -> Path | None:
    systems = [n for n, s in summary["systems"].items() if s.get("stability")]
    if not systems:
        return None
    plt = _plt()
    import numpy as np

    parts = [
        ("identical", "identical answers"),
        ("pairwise_similarity", "mean pairwise similarity"),
        ("mixed_correctness", "sometimes right, sometimes wrong"),
    ]
    x = np.arange(len(systems))
    width = 0.8 / len(parts)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for index, (key, label) in enumerate(parts):
        values = [100 * (summary["systems"][s]["stability"].get(key) or 0) for s in systems]
        bars = ax.bar(x + (index - 1) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    repeats = max(summary["systems"][s]["stability"]["repeats"] for s in systems)
    ax.set_xticks(x, systems)
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("% of questions")
    ax.set_title(f"Stability over {repeats} repeats of each question")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar(ax: Any, x: Any, ci: dict[str, float] | None, scale: float, **kwargs: Any) -> None:
    """One bar with its interval as the error bar."""
    if not ci:
        return
    mean = scale * ci["mean"]
    err = [[scale * (ci["mean"] - ci["low"])], [scale * (ci["high"] - ci["mean"])]]
    bars = ax.bar(x, [mean], yerr=err, capsize=3, **kwargs)
    ax.bar_label(bars, fmt="%.2f" if scale == 1 else "%.0f", fontsize=7, padding=2)


def instruments_chart(summary: dict[str, Any], path: Path) -> Path | None:
    """Gold-answer NLL per system, greedy vs sampled stability, the forgetting probe: the
    panels that have data, each bar with its bootstrap interval."""
    systems = summary["systems"]
    nll = [n for n, s in systems.items() if _nll(s)]
    sampled = [n for n, s in systems.items() if s.get("sampled")]
    forget = summary.get("forgetting")
    panels = [p for p, has in (("nll", nll), ("sampled", sampled), ("forget", forget)) if has]
    if not panels:
        return None
    plt = _plt()
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    level = int(100 * summary["bootstrap"]["level"])
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "nll":
            for index, name in enumerate(nll):
                _bar(ax, index, _nll(systems[name]), 1, color=COLORS.get(name))
            ax.set_xticks(range(len(nll)), nll)
            ax.set_ylabel("mean NLL, nats/token (lower: likelier)")
            ax.set_title("Gold-answer likelihood")
        elif panel == "sampled":
            x = np.arange(len(sampled))
            width = 0.38
            series = (
                ("main: identical", "stability", "identical_ci"),
                ("sampled: mixed right/wrong", "sampled", "mixed_correctness_ci"),
            )
            for shift, (label, part, key) in zip((-width / 2, width / 2), series, strict=True):
                for index, name in enumerate(sampled):
                    _bar(
                        ax,
                        x[index] + shift,
                        (systems[name].get(part) or {}).get(key),
                        100,
                        width=width,
                        color="#8da0cb" if shift < 0 else "#fc8d62",
                        label=label if index == 0 else None,
                    )
            ax.set_xticks(x, sampled)
            ax.set_ylim(0, 125)
            ax.set_yticks(range(0, 101, 20))
            ax.set_ylabel("% of questions")
            ax.set_title("Greedy vs sampled")
            ax.legend(fontsize=7, loc="upper center", ncols=1, frameon=False)
        else:
            assert forget is not None
            parts = [
                ("changed", forget["changed"], "#d62728"),
                ("similarity", forget["similarity"], "#9467bd"),
                ("base contains", forget["contains"]["base"], COLORS["base"]),
                ("lora contains", forget["contains"]["lora"], COLORS["lora"]),
            ]
            for index, (_, ci, color) in enumerate(parts):
                _bar(ax, index, ci, 100, color=color)
            ax.set_xticks(range(len(parts)), [p[0] for p in parts], fontsize=8)
            ax.set_ylim(0, 118)
            ax.set_yticks(range(0, 101, 20))
            ax.set_ylabel("%")
            ax.set_title(f"Forgetting probe ({forget['questions']} questions)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Instruments ({level}% bootstrap CI over questions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- documents


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _distinct(entry: dict[str, Any]) -> str:
    count = int(entry.get("distinct_answers", 1))
    return f"; {count} different answers" if count > 1 else ""


def _run_lines(summary: dict[str, Any]) -> list[str]:
    meta = summary.get("meta", {})
    return [f"- {k}: `{v}`" for k, v in meta.items() if v not in (None, "", {}, [])]


def paired_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["a", "b", "questions", "a better", "b better", "ties", "mean diff (points)"]
    header.append("NLL diff (a - b)")
    rows = [
        [
            p["a"],
            p["b"],
            str(p["questions"]),
            str(p["a_wins"]),
            str(p["b_wins"]),
            str(p["ties"]),
            _ci_text(p["mean_difference"]),
            _raw_ci(p.get("nll_difference")),
        ]
        for p in summary["paired"]
    ]
    return header, rows


def _instrument_tables(
    summary: dict[str, Any],
) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """(title, caption, table) of each instrument that has data."""
    out = []
    level = int(100 * summary["bootstrap"]["level"])
    head, rows = likelihood_rows(summary)
    if rows:
        out.append(
            (
                "Gold-answer likelihood",
                "Teacher-forced mean negative log-likelihood per token of the accepted answer "
                "after each system's own prompt (lower: the system finds the answer more "
                f"likely), {level}% bootstrap interval; perplexity = exp(NLL). 'refused': "
                "questions the rag gate refused (no prompt sent, left out).",
                (head, rows),
            )
        )
    head, rows = sampling_rows(summary)
    if rows:
        out.append(("Stability: main run vs sampled run", sampling_caption(summary), (head, rows)))
    head, rows = forgetting_rows(summary)
    if rows:
        f = summary["forgetting"]
        caption = (
            "General questions unrelated to the knowledge base, asked of base and lora "
            "(greedy); in %. Changed: the lora answer is not identical to the base answer. "
            "Gold NLL (nats/token, when measured): a drop on these questions is what the "
            "adapter does to answers it was not trained on (e.g. the answer format), the "
            "control for its drop on the knowledge-base questions."
        )
        if f.get("examples"):
            caption += " Changed, e.g.: " + "; ".join(
                f"{_cell(e['question'], 40)} base: {_cell(e['base'], 40)} / "
                f"lora: {_cell(e['lora'], 40)}"
                for e in f["examples"][:3]
            )
        out.append(("Forgetting probe", caption, (head, rows)))
    return out


def markdown(summary: dict[str, Any], charts: dict[str, Path]) -> str:
    header, rows = table_rows(summary)
    parts = [
        "# RAG vs finetuning: comparison report",
        "",
        *_run_lines(summary),
        f"- questions: {summary['questions']} ({summary['answerable']} answerable)",
        "",
        *[f"- {line}" for line in headline(summary)],
        "",
        "## Results",
        "",
        "Answer metrics in %, mean over questions of the mean over repeats, with the "
        f"{int(100 * summary['bootstrap']['level'])}% bootstrap interval "
        f"({summary['bootstrap']['samples']} resamples of the questions).",
        "",
        _md_table(header, rows),
        "",
    ]
    for name, path in charts.items():
        parts += [f"![{name}]({path.name})", ""]
    for title, caption, (head, body) in _instrument_tables(summary):
        parts += [f"## {title}", "", caption, "", _md_table(head, body), ""]
    if summary.get("paired"):
        parts += ["## Paired comparisons (token F1 per question)", ""]
        parts.append(_md_table(*paired_rows(summary)))
        parts.append("")
    if summary.get("disagreements"):
        systems = list(summary["systems"])
        parts += ["## Where the systems disagree most", ""]
        parts.append(
            _md_table(
                ["question", "accepted answer", *[f"{s} (F1)" for s in systems]],
                [
                    [
                        _cell(d["question"], 80),
                        _cell(" / ".join(d["answers"]), 40),
                        *[
                            _cell(
                                f"{d['systems'][s]['answer']} ({100 * d['systems'][s]['f1']:.0f})"
                            )
                            if s in d["systems"]
                            else "–"
                            for s in systems
                        ],
                    ]
                    for d in summary["disagreements"]
                ],
            )
        )
        parts.append("")
    parts += ["## How each metric is computed", ""]
    parts += [f"- **{k}**: {v}" for k, v in summary["metrics"].items()]
    return "\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC",sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} th,td{border:1px solid #ddd;
padding:4px 7px;text-align:right;vertical-align:top} th{background:#f4f6f8}
td:first-child,th:first-child{text-align:left;font-weight:600}
table.text td,table.text th{text-align:left;max-width:260px}
table.text td{font-weight:normal}
.headline{background:#f7fafc;border-left:4px solid #1f77b4;padding:.6em 1em}
.meta{color:#666;font-size:.85em} .charts img{max-width:49%;vertical-align:top}
.best{background:#e6f4ea} small{color:#777} details{margin-top:1em;font-size:.85em;color:#444}
"""


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html_cell(text: str) -> str:
    """``mean [low, high]`` as the mean with the interval small below it."""
    mean, sep, interval = text.partition(" [")
    if sep and interval.endswith("]"):
        return f"{html.escape(mean)}<br><small>[{html.escape(interval)}</small>"
    return html.escape(text)


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def html_report(summary: dict[str, Any], charts: dict[str, Path]) -> str:
    import re

    header, rows = table_rows(summary)
    esc = html.escape
    meta = summary.get("meta", {})
    meta_text = " · ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in meta.items() if v)

    def md_bold(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(text))

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>RAG vs finetuning</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>RAG vs finetuning</h1>",
        f"<p class='meta'>{meta_text}<br>{summary['questions']} questions "
        f"({summary['answerable']} answerable)</p>",
        "<div class='headline'>"
        + "<br>".join(md_bold(line) for line in headline(summary))
        + "</div>",
        "<h2>Results</h2>",
        f"<p class='meta'>Answer metrics in %: mean over questions of the mean over repeats, "
        f"[{int(100 * summary['bootstrap']['level'])}% bootstrap interval].</p>",
        _html_table(header, rows),
        "<div class='charts'>"
        + "".join(f"<img alt='{esc(n)}' src='{_png_data(p)}'>" for n, p in charts.items())
        + "</div>",
    ]
    for title, caption, (head, body) in _instrument_tables(summary):
        parts.append(f"<h2>{esc(title)}</h2><p class='meta'>{esc(caption)}</p>")
        parts.append(_html_table(head, body))
    if summary.get("paired"):
        parts.append("<h2>Paired comparisons (token F1 per question)</h2>")
        parts.append(_html_table(*paired_rows(summary)))
    if summary.get("disagreements"):
        systems = list(summary["systems"])
        parts.append(
            f"<h2>The {len(summary['disagreements'])} questions where the systems disagree "
            "most</h2><p class='meta'>First repeat's answer, mean F1 over repeats in "
            "parentheses.</p>"
        )
        parts.append(
            _html_table(
                ["question", "accepted answer", *systems],
                [
                    [
                        d["question"],
                        " / ".join(d["answers"]),
                        *[
                            _cell(
                                f"{d['systems'][s]['answer']} "
                                f"(F1 {100 * d['systems'][s]['f1']:.0f}"
                                + _distinct(d["systems"][s])
                                + ")",
                                240,
                            )
                            if s in d["systems"]
                            else "–"
                            for s in systems
                        ],
                    ]
                    for d in summary["disagreements"]
                ],
                "text",
            )
        )
    parts.append("<h2>How each metric is computed</h2><ul>")
    parts += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in summary["metrics"].items()]
    parts.append("</ul>")
    parts.append(
        "<details><summary>summary.json</summary><pre>"
        + esc(json.dumps(summary, ensure_ascii=False, indent=1)[:20000])
        + "</pre></details></body></html>"
    )
    return "".join(parts)


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """summary.json, the chart PNGs, report.md and report.html under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    charts: dict[str, Path] = {}
    for name, build, file in (
        ("metrics", metrics_chart, METRICS_PNG),
        ("stability", stability_chart, STABILITY_PNG),
        ("instruments", instruments_chart, INSTRUMENTS_PNG),
    ):
        made = build(summary, out / file)
        if made is not None:
            charts[name] = made
    (out / REPORT_MD).write_text(markdown(summary, charts), encoding="utf-8")
    (out / REPORT_HTML).write_text(html_report(summary, charts), encoding="utf-8")
    return {
        "summary": out / SUMMARY,
        "markdown": out / REPORT_MD,
        "html": out / REPORT_HTML,
        **charts,
    }


def rich_table(summary: dict[str, Any]) -> Any:
    """The results for the terminal: quality (means, %) and behaviour (stability, refusals,
    latency), each narrow enough for 80 columns; the intervals are in the reports."""
    from rich.console import Group
    from rich.table import Table

    def mean(value: dict[str, float] | None) -> str:
        return "–" if not value else f"{100 * value['mean']:.1f}"

    quality = Table(title="Answer quality (%, mean; 95% CIs in report.html)")
    behaviour = Table(title="Refusals and stability (%), latency, throughput")
    for table, names in (
        (quality, ["system", "EM", "F1", "ROUGE-L", "BLEU-4", "contains", "hit@1", "MRR", "NLL"]),
        (
            behaviour,
            ["system", "refusal", "wrong ref.", "identical", "mixed", "p50 s", "p95 s", "tok/s"],
        ),
    ):
        for index, name in enumerate(names):
            table.add_column(name, justify="left" if index == 0 else "right", no_wrap=True)
    for name, s in summary["systems"].items():
        retrieval = s.get("retrieval") or {}
        stability = s.get("stability") or {}
        latency = s["latency_ms"]
        quality.add_row(
            name,
            *[mean(s.get(m)) for m in LABELS],
            mean(retrieval.get("hit@1")),
            mean(retrieval.get("mrr")),
            _num((_nll(s) or {}).get("mean"), 3),
        )
        behaviour.add_row(
            name,
            _pct(s.get("refusal_rate")),
            _pct(s.get("wrong_refusal_rate")),
            _pct(stability.get("identical")),
            _pct(stability.get("mixed_correctness")),
            _num(latency["p50"] / 1000 if latency["p50"] is not None else None, 1),
            _num(latency["p95"] / 1000 if latency["p95"] is not None else None, 1),
            _num(s.get("tokens_per_s"), 1),
        )
    return Group(quality, behaviour)
