"""The report's pages: tables built once, rendered to HTML (self-contained) or Markdown."""

from __future__ import annotations

import base64
import html

Table = tuple[list[str], list[list[str]]]  # (header, rows), cells already formatted


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def overview_table(section: dict) -> Table:
    rows = [["type", section["type"]], ["model", str(section.get("model"))]]
    if train := section.get("train"):
        rows.append([f"train {train['metric']} (first -> last quarter of {train['steps']} steps)",
                     f"{train['first_quarter']:.3f} -> {train['last_quarter']:.3f}"])
    times = section["times"]
    rows += [
        ["training steps, total", _minutes(times["train_s"])],
        ["mean step", "n/a" if times["mean_step_s"] is None else f"{times['mean_step_s']:.1f} s"],
        ["run directory writes, first to last", _minutes(times["span_s"])],
        ["final checkpoint", str(section.get("final_checkpoint"))],
    ]
    return ["", ""], rows


def score_table(section: dict, tags: list[str]) -> Table:
    rows = section["scores"]
    present = {key for row in rows for key in row if "pass@" in key}
    extra = [key for tag in tags for key in sorted(present) if key.startswith(f"{tag} ")]
    header = ["suite", "mode", "problems", *tags, *(["after - before"] if any("delta" in r for r in rows) else []), *extra]
    body = []
    for row in rows:
        cells = [row["suite"], row["mode"], _num(row.get("problems")), *[_num(row.get(tag)) for tag in tags]]
        if "after - before" in header:
            cells.append("n/a" if "delta" not in row else f"{row['delta']:+.3f}")
        body.append(cells + [_num(row.get(key)) for key in extra])
    return header, body


def phase_table(section: dict) -> Table:
    phases = section["times"]["phases_s"]
    total = sum(phases.values()) or 1.0
    return ["phase", "seconds (all steps)", "share"], [
        [name, f"{seconds:.1f}", f"{seconds / total:.0%}"] for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1])
    ]


def token_table(section: dict) -> Table:
    rows = [[f"eval {tag}", mode, _num(use["thinking"], 1), _num(use["answer"], 1)]
            for tag, modes in section["token_use"].items() for mode, use in sorted(modes.items())]
    rows += [["train (last quarter)", mode, _num(use["thinking"], 1), _num(use["answer"], 1)]
             for mode, use in section["train_token_use"].items()]
    return ["where", "mode", "thinking tokens", "answer tokens"], rows


def sweep_table(section: dict) -> Table:
    sweeps = section["budget_sweeps"]
    budgets = sorted({p["budget"] for sweep in sweeps.values() for p in sweep["points"]})
    header = ["budget", *[f"{tag} accuracy" for tag in sweeps], *[f"{tag} thinking tokens" for tag in sweeps]]

    def at(tag: str, budget: int, key: str):
        return next((p[key] for p in sweeps[tag]["points"] if p["budget"] == budget), None)

    rows = [[str(b), *[_num(at(t, b, "accuracy")) for t in sweeps], *[_num(at(t, b, "mean_thinking_tokens"), 1) for t in sweeps]]
            for b in budgets]
    return header, rows


def recovery_table(section: dict) -> Table:
    header = ["teacher", "base", "teacher acc.", "student", "recovered", "KL before", "KL after", "student think+answer tok"]
    rows = []
    for name, row in section.get("recovery", {}).items():
        recovered = "n/a" if row.get("recovered") is None else f"{row['recovered']:.0%}"
        tokens = f"{row.get('student_thinking_tokens', 0):.0f}+{row.get('student_answer_tokens', 0):.0f}"
        rows.append([name, _num(row["base"]), _num(row["teacher"]), _num(row["student"]), recovered,
                     _num(row.get("kl_before")), _num(row.get("kl_after")), tokens])
    return header, rows


def student_table(section: dict) -> Table:
    header = ["domain", "suite", "mode", "base", "specialist", "student", "student think+answer tok"]
    rows = [[str(r.get("domain")), r["suite"], r["mode"], _num(r.get("base")), _num(r.get("specialist")), _num(r.get("student")),
             f"{r.get('student_thinking_tokens', 0):.0f}+{r.get('student_answer_tokens', 0):.0f}"]
            for r in section.get("student_table", [])]
    return header, rows


def stage_table(report: dict) -> Table:
    rows = []
    for stage in report["stages"]:
        section = next((s for s in report["sections"] if s["name"] == stage["stage"]), None)
        rows.append([stage["stage"], str(stage["status"]), _minutes(stage["wall_s"]), section_headline(section) if section else ""])
    return ["stage", "status", "wall time", "headline"], rows


def section_headline(section: dict) -> str:
    parts = []
    if train := section.get("train"):
        parts.append(f"{train['metric']} {train['first_quarter']:.3f} -> {train['last_quarter']:.3f}")
    last = section["eval_tags"][-1] if section["eval_tags"] else None
    for row in section["scores"]:
        if "delta" in row:
            parts.append(f"{row['suite']}/{row['mode']} {row['before']:.3f} -> {row['after']:.3f}")
        elif last in row and not section.get("student_table"):
            parts.append(f"{row['suite']}/{row['mode']} {last} {row[last]:.3f}")
    for row in section.get("student_table", []):
        parts.append(f"student {row['suite']}/{row['mode']} {_num(row.get('student'))} (specialist {_num(row.get('specialist'))})")
    recovered = [r["recovered"] for r in section.get("recovery", {}).values() if r.get("recovered") is not None]
    if recovered:
        parts.append(f"mean recovered {sum(recovered) / len(recovered):.0%} over {len(recovered)} teachers")
    return "; ".join(parts)


def headline_lines(report: dict) -> list[str]:
    lines = []
    for stage in report["stages"]:
        section = next((s for s in report["sections"] if s["name"] == stage["stage"]), None)
        wall = _minutes(stage["wall_s"])
        lines.append(f"{stage['stage']} [{stage['status']}, {wall}]: {section_headline(section) if section else 'no run directory'}")
    return lines


def eval_curve_table(section: dict) -> Table:
    curve = section.get("eval_curve") or {}
    steps = sorted({point[0] for points in curve.values() for point in points})
    at = {key: dict((step, score) for step, score in points) for key, points in curve.items()}
    return ["step", *curve], [[str(step), *[_num(at[key].get(step)) for key in curve]] for step in steps]


def _cut(text, width: int = 300) -> str:
    text = str(text)
    return text if len(text) <= width else text[:width] + " ..."


def samples_table(section: dict) -> Table:
    rows = [[row["where"], str(row["mode"]), _cut(row["prompt"]), _cut(row["completion"]), _num(row["reward"])]
            for row in section.get("samples") or []]
    return ["where", "mode", "prompt", "completion", "reward / score"], rows


def config_table(section: dict) -> Table:
    return ["field", "value"], [[key, _cut(value, 200)] for key, value in (section.get("config") or {}).items()]


def _section_parts(section: dict, index: int) -> list[tuple[str, Table | None, str | None]]:
    """(heading, table, figure name) in page order; parts without data are left out."""
    tags = section["eval_tags"]
    parts = [
        ("overview", overview_table(section), None),
        ("learning curves", None, f"{index}_curves"),
        ("held-out scores", score_table(section, tags) if section["scores"] else None, f"{index}_scores"),
        ("time per phase", phase_table(section) if section["times"]["phases_s"] else None, None),
        ("token use per mode", token_table(section), f"{index}_tokens"),
        ("accuracy vs thinking budget", sweep_table(section) if section["budget_sweeps"] else None, f"{index}_budget"),
        ("student vs teachers", recovery_table(section) if section.get("recovery") else None, f"{index}_recovery"),
        ("student vs specialists", student_table(section) if section.get("student_table") else None, f"{index}_student"),
        ("held-out score over training", eval_curve_table(section) if section.get("eval_curve") else None, f"{index}_eval_curve"),
        ("sample completions", samples_table(section) if section.get("samples") else None, None),
        ("resolved config", config_table(section) if section.get("config") else None, None),
    ]
    return parts


def render_markdown(report: dict, images: dict[str, str]) -> str:
    def table(tab: Table) -> list[str]:
        header, rows = tab
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return out + ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", "<br>") for cell in row) + " |" for row in rows] + [""]

    lines = [f"# posttrain report ({report['generated']})", ""]
    if report.get("pipeline"):
        lines += ["## stages", "", *table(stage_table(report))]
        lines += [f"![stages]({images['stages']})", ""] if "stages" in images else []
    for index, section in enumerate(report["sections"]):
        lines += [f"## {section['name']}", "", f"`{section['path']}`", ""]
        for heading, tab, figure in _section_parts(section, index):
            if tab is None and figure not in images:
                continue
            lines += [f"### {heading}", ""]
            lines += table(tab) if tab and tab[1] else []
            lines += [f"![{heading}]({images[figure]})", ""] if figure in images else []
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0 1.5em}h2{border-bottom:2px solid #ddd;margin-top:2em}
code{background:#f6f6f6;padding:1px 4px}"""


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    def table(tab: Table) -> str:
        header, rows = tab
        head = "" if not any(header) else "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table>{head}{body}</table>"

    def image(name: str, alt: str) -> str:
        data = base64.b64encode(figures[name]).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>posttrain report</title><style>{STYLE}</style></head><body>",
           f"<h1>posttrain report</h1><p>generated {html.escape(report['generated'])}</p>"]
    if report.get("pipeline"):
        out += ["<h2>stages</h2>", table(stage_table(report))] + ([image("stages", "stage wall times")] if "stages" in figures else [])
    for index, section in enumerate(report["sections"]):
        out.append(f"<h2>{html.escape(section['name'])}</h2><p><code>{html.escape(section['path'])}</code></p>")
        for heading, tab, figure in _section_parts(section, index):
            if tab is None and figure not in figures:
                continue
            out.append(f"<h3>{html.escape(heading)}</h3>")
            out += [table(tab)] if tab and tab[1] else []
            out += [image(figure, heading)] if figure in figures else []
    out.append("</body></html>")
    return "\n".join(out)
