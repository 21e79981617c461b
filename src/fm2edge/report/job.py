"""`fm2edge report RUN...`: one self-contained HTML page (and a Markdown summary) from run folders.

Reading is separate from rendering: :func:`collect` turns folders into :class:`Run` records, the ``*_rows``
functions turn records into table rows (pure), and :func:`render_html` / :func:`render_markdown` turn rows and
figures into text. Images are embedded as base64 PNG, so the page opens from disk with no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fm2edge.errors import Fm2EdgeError
from fm2edge.report import metrics as M

METHOD_COLOURS = {"teacher": "C3", "train": "C0", "distill": "C1", "probe": "C2", "finetune": "C4",
                  "zeroshot": "C5"}


@dataclass
class ReportJob:
    """`fm2edge report RUN...`: an HTML report and a Markdown summary of one or more run folders.

    Args:
        runs: Run folders, or folders holding run folders (e.g. runs/demo), searched recursively.
        output: Folder for report.html and report.md; empty writes into the first run folder.
        title: Page title.
        superclasses: Class groups for the "mistakes within a superclass" measure, e.g. {vehicle: [airplane, ...],
            animal: [...]}; empty uses CIFAR-10's vehicles/animals when the classes are CIFAR-10's, else groups
            derived from the teacher's confusion matrix.
    """

    runs: list[str] = field(default_factory=list)
    output: str | None = None
    title: str = "fm2edge report"
    superclasses: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("give at least one run folder, e.g. fm2edge report runs/demo")


@dataclass
class Run:
    path: Path
    label: str
    kind: str
    metrics: dict
    config: str = ""
    preds: dict | None = None
    teacher_preds: dict | None = None
    plots: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def _kind(metrics: dict) -> str:
    if "teacher" in metrics:
        return "distill"
    if "mode" in metrics:
        return "finetune"
    if "probes" in metrics:
        return "probe"
    if "prompts" in metrics or "templates" in metrics:
        return "zeroshot"
    if "history" in metrics:
        return "train"
    return "other"


def _npz(path: Path) -> dict | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _visible(path: Path, root: Path) -> bool:
    """Not inside checkpoints or a hidden folder (a recipe's .stages records, partial writes)."""
    parts = path.relative_to(root).parts
    return "checkpoints" not in parts and not any(p.startswith(".") for p in parts)


def collect(paths: list[str]) -> tuple[list[Run], list[Path]]:
    """Every run folder (a folder with metrics.json not nested inside another run) under ``paths``, in path order;
    and every other folder of interest (bench.json, export/, seeds.json, comparison.json holders)."""
    runs: list[Run] = []
    extras: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise Fm2EdgeError(f"run folder '{root}' does not exist")
        found = sorted({p.parent for name in ("metrics.json", "embed.json") for p in root.rglob(name)
                        if _visible(p, root)}) if root.is_dir() else []
        base = root.parent if root in found else root
        for folder in found:
            if any((a / "metrics.json").exists() for a in folder.parents if a != folder and base in a.parents):
                continue  # a run's internal sub-runs (a probe's label-efficiency trainings)
            file = folder / "metrics.json" if (folder / "metrics.json").exists() else folder / "embed.json"
            metrics = json.loads(file.read_text())
            if "parameters" not in metrics and (folder / "model.json").exists():
                metrics["parameters"] = json.loads((folder / "model.json").read_text()).get("parameters")
            config = (folder / "config.yaml").read_text() if (folder / "config.yaml").exists() else ""
            kind = "embed" if file.name == "embed.json" else _kind(metrics)
            runs.append(Run(folder, str(folder.relative_to(base)), kind, metrics, config,
                            _npz(folder / "predictions.npz"), _npz(folder / "teacher_predictions.npz"),
                            sorted((folder / "plots").glob("*.png")) if (folder / "plots").exists() else []))
        for name in ("bench.json", "seeds.json", "comparison.json", "export/export.json"):
            extras += sorted(p for p in root.rglob(name) if _visible(p, root))
    if not runs:
        raise Fm2EdgeError(f"no run folders (with metrics.json) under {', '.join(paths)}; give folders written by "
                           f"fm2edge train, distill, probe, finetune or demo")
    return runs, extras


# ---------------------------------------------------------------- tables (pure)


def accuracy_rows(runs: list[Run], seeds: dict[Path, dict]) -> list[dict]:
    """One row per run, or per seed group (mean and std over the group's seeds), teacher first."""
    rows, grouped = [], set()
    teacher = next((r for r in runs if r.kind == "distill"), None)
    if teacher is not None:
        rows.append({"label": f"teacher: {teacher.metrics['teacher']}", "kind": "teacher",
                     "test_acc": teacher.metrics["teacher_test_acc"], "std": None, "n": 1,
                     "parameters": teacher.metrics.get("teacher_parameters")})
    for r in runs:
        group = r.path.parent if r.path.parent in seeds else None
        if group is not None:
            if group in grouped:
                continue
            grouped.add(group)
            s = seeds[group]
            label = str(Path(r.label).parent)
            rows.append({"label": label, "kind": r.kind, "test_acc": s["mean"], "std": s["std"],
                         "n": len(s["seeds"]), "parameters": r.metrics.get("parameters")})
        else:
            acc = r.metrics.get("test_acc")
            if acc is None:
                continue
            rows.append({"label": r.label, "kind": r.kind, "test_acc": acc, "std": None, "n": 1,
                         "parameters": r.metrics.get("parameters")})
    return rows


def superclass_groups(class_names: list[str], given: dict | None, teacher_preds: dict | None) -> dict | None:
    if given:
        return given
    if set(class_names) == {c for members in M.CIFAR10_SUPERCLASSES.values() for c in members}:
        return M.CIFAR10_SUPERCLASSES
    if teacher_preds is not None and len(class_names) > 2:
        cm = M.confusion(teacher_preds["preds"], teacher_preds["labels"], len(class_names))
        return M.groups_from_confusion(cm, class_names)
    return None


def mistakes_rows(runs: list[Run], given_groups: dict | None) -> tuple[list[dict], dict | None]:
    """Per run with test predictions: accuracy, errors within a superclass, agreement with the teacher on shared
    errors, KL to the teacher, and ECE. The teacher is the one the first distillation run used (same test set)."""
    teacher = next((r.teacher_preds for r in runs if r.teacher_preds is not None), None)
    with_preds = [r for r in runs if r.preds is not None]
    if not with_preds:
        return [], None
    names = [str(c) for c in with_preds[0].preds["class_names"]]
    groups = superclass_groups(names, given_groups, teacher)
    group_idx = M.group_of(names, groups) if groups else None
    rows = []
    entries = ([("teacher", "teacher", teacher)] if teacher is not None else []) + \
        [(r.label, r.kind, r.preds) for r in with_preds]
    for label, kind, p in entries:
        same_test = teacher is not None and len(teacher["labels"]) == len(p["labels"]) and \
            bool((teacher["labels"] == p["labels"]).all())
        rows.append({
            "label": label, "kind": kind, "test_acc": M.accuracy(p["preds"], p["labels"]),
            "errors": int((p["preds"] != p["labels"]).sum()),
            "superclass_error_share": M.superclass_error_share(p["preds"], p["labels"], group_idx)
            if group_idx is not None else None,
            "error_agreement": M.error_agreement(p["preds"], teacher["preds"], p["labels"])
            if same_test and kind != "teacher" else None,
            "kl_to_teacher": M.kl_to_teacher(p["logits"], teacher["logits"]) if same_test and kind != "teacher"
            else None,
            "ece": M.expected_calibration_error(p["logits"], p["labels"])})
    return rows, groups


# ---------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def report_figures(runs: list[Run], bench_rows: list[dict], acc_rows: list[dict]) -> list[tuple[str, bytes]]:
    """Figures made for the report: confusion matrices (scratch vs the most accurate distilled student), Pareto
    plots (one point per run or seed group, the teacher included)."""
    from fm2edge.report import plots

    figs = []
    scratch = next((r for r in runs if r.kind == "train" and r.preds is not None), None)
    distilled = max((r for r in runs if r.kind == "distill" and r.preds is not None),
                    key=lambda r: r.metrics.get("test_acc", 0.0), default=None)
    if scratch is not None and distilled is not None and len(scratch.preds["labels"]) == len(distilled.preds["labels"]):
        names = [str(c) for c in scratch.preds["class_names"]]
        n = len(names)
        a = M.confusion(scratch.preds["preds"], scratch.preds["labels"], n, normalize=True)
        b = M.confusion(distilled.preds["preds"], distilled.preds["labels"], n, normalize=True)
        figs.append(("Confusion matrices: from scratch vs distilled", _png(plots.confusion_pair(
            a, b, names, (scratch.label, distilled.label), "row-normalised test confusion matrices"))))
    latency = []
    for row in bench_rows:
        # bench names a run by the path it was given, relative to where bench ran
        parts = Path(row["model"]).parts
        run = next((r for r in runs if r.path.resolve().parts[-len(parts):] == parts), None)
        if run is not None and row.get("backend") == "eager" and run.metrics.get("test_acc") is not None:
            latency.append({"label": run.label, "test_acc": run.metrics["test_acc"], "p50_ms": row["p50_ms"],
                            "colour": METHOD_COLOURS.get(run.kind, "C7")})
    if len(latency) >= 2:
        figs.append(("Accuracy vs latency", _png(plots.pareto(latency, "p50_ms", "batch-1 latency, p50 (ms, log)",
                                                              "accuracy vs latency (eager PyTorch)"))))
    params = [{"label": r["label"], "test_acc": r["test_acc"], "parameters": r["parameters"],
               "colour": METHOD_COLOURS.get(r["kind"], "C7")} for r in acc_rows if r.get("parameters")]
    if len(params) >= 2:
        figs.append(("Accuracy vs parameters", _png(plots.pareto(params, "parameters", "parameters (log)",
                                                                 "accuracy vs model size"))))
    return figs


# ---------------------------------------------------------------- rendering (pure text)


def _pct(v, std=None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def _num(v, fmt="{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def _table(table_id: str, head: list[str], rows: list[list[str]], values: list[list[float | None]] | None = None
           ) -> str:
    """An HTML table; ``values`` puts the raw numbers in data-value attributes (what the browser test reads)."""
    out = [f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) +
           "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            v = values[i][j] if values else None
            attr = f' data-value="{v:.6f}"' if isinstance(v, float) else ""
            cells.append(f"<td{attr}>{html.escape(str(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}pre{background:#f7f7f7;padding:8px;overflow:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}figure{margin:0}
figcaption{font-size:90%;color:#555}.note{color:#555;font-size:90%}"""

CHECK_JS = """window.addEventListener('load',()=>{const imgs=[...document.images];
const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;
document.body.dataset.images=imgs.length;document.body.dataset.badImages=bad;});"""


def _img(data: bytes, caption: str) -> str:
    b64 = base64.b64encode(data).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(title: str, acc: list[dict], mistakes: list[dict], groups: dict | None, figures: list,
                run_plots: list[tuple[str, bytes]], extras: dict, runs: list[Run]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append("<h2>Accuracy</h2>")
    parts.append(_table("accuracy", ["run", "kind", "test accuracy", "seeds", "parameters"],
                        [[r["label"], r["kind"], _pct(r["test_acc"], r["std"]), r["n"],
                          f"{r['parameters']:,}" if r.get("parameters") else "-"] for r in acc],
                        [[None, None, float(r["test_acc"]), None, None] for r in acc]))
    if mistakes:
        described = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items()) if groups else ""
        parts.append("<h2>Smarter mistakes?</h2><p class='note'>Errors within a superclass: of the wrong "
                     "predictions, the share that stays in the true class's group" +
                     (f" ({html.escape(described)})" if groups else "") +
                     ". Error agreement: where model and teacher are both wrong, how often they give the same wrong "
                     "class. KL: mean KL(teacher ‖ model) in nats. ECE: expected calibration error, 15 bins. "
                     "Shares of a few errors are noisy: read them with the error count.</p>")
        parts.append(_table("mistakes", ["run", "kind", "test accuracy", "errors", "errors within superclass",
                                         "error agreement with teacher", "KL to teacher", "ECE"],
                            [[m["label"], m["kind"], _pct(m["test_acc"]), f"{m['errors']:,}",
                              _pct(m["superclass_error_share"]), _pct(m["error_agreement"]),
                              _num(m["kl_to_teacher"]), _num(m["ece"])] for m in mistakes]))
    for name, rows in extras.get("comparison", []):
        parts.append(f"<h2>Fine-tuning: {html.escape(name)}</h2>")
        parts.append(_table("finetune", ["mode", "trainable parameters", "of total", "validation before",
                                         "validation after", "test (kept epoch)", "training s"],
                            [[r["mode"], f"{r['trainable']:,}", f"{100 * r['trainable'] / r['total']:.2f}%",
                              _pct(r.get("val_acc_before")), _pct(r.get("val_acc")), _pct(r["test_acc"]),
                              f"{r['train_seconds']:.0f}"]
                             for r in rows]))
    for name, rows in extras.get("bench", []):
        parts.append(f"<h2>Speed: {html.escape(name)}</h2>")
        parts.append(_table("bench", ["model", "backend", "dtype", "params", "MMACs", "p50 ms", "p90 ms", "p99 ms",
                                      "img/s", "speed-up"],
                            [[r["model"], r["backend"], r["dtype"], f"{r['params']:,}", f"{r['macs'] / 1e6:.0f}",
                              f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                              f"{r['throughput_img_s']:.1f}", f"{r['speedup_vs_first']:.2f}x"] for r in rows]))
        if rows:
            parts.append(f"<p class='note'>{html.escape(rows[0]['device'])}, torch {rows[0]['torch']}, "
                         f"{rows[0]['threads']} threads; batch-1 latency after warm-up.</p>")
    for name, e in extras.get("export", []):
        parts.append(f"<h2>Export: {html.escape(name)}</h2>")
        keys = [k for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8") if k in e["test_acc"]]
        parts.append(_table("export", ["model", "test accuracy", "size", "p50 ms"],
                            [[k.replace("_", " "), _pct(e["test_acc"][k]),
                              f"{e['size_bytes'][k] / 1e6:.2f} MB", f"{e['latency_batch1'][k]['p50_ms']:.3f}"]
                             for k in keys]))
        parts.append(f"<p class='note'>parity max |PyTorch − ONNX| {e['parity_max_abs_diff']:.1e}; "
                     f"{e['env']['threads']} threads on {html.escape(e['env']['cpu'])}.</p>")
    if figures:
        wide = [(c, d) for c, d in figures if c.startswith("Confusion")]
        parts.append("<h2>Comparisons</h2>" + "".join(_img(d, c) for c, d in wide) + "<div class='grid'>" +
                     "".join(_img(d, c) for c, d in figures if (c, d) not in wide) + "</div>")
    if run_plots:
        parts.append("<h2>Plots of each run</h2><div class='grid'>" +
                     "".join(_img(d, c) for c, d in run_plots) + "</div>")
    parts.append("<h2>Configs and environments</h2>")
    for r in runs:
        env = json.dumps(r.metrics.get("env", {}), indent=1)
        parts.append(f"<details><summary>{html.escape(r.label)} ({r.kind})</summary>"
                     f"<pre>{html.escape(r.config)}</pre><pre>{html.escape(env)}</pre></details>")
    parts.append(f"<script>{CHECK_JS}</script></body></html>")
    return "\n".join(parts)


def render_markdown(title: str, acc: list[dict], mistakes: list[dict]) -> str:
    lines = [f"# {title}", "", "| run | kind | test accuracy | seeds |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['kind']} | {_pct(r['test_acc'], r['std'])} | {r['n']} |" for r in acc]
    if mistakes:
        lines += ["", "| run | errors | errors within superclass | error agreement with teacher | KL to teacher "
                      "| ECE |", "|---|---|---|---|---|---|"]
        lines += [f"| {m['label']} | {m['errors']:,} | {_pct(m['superclass_error_share'])} | "
                  f"{_pct(m['error_agreement'])} | {_num(m['kl_to_teacher'])} | {_num(m['ece'])} |" for m in mistakes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the stage


def report_job(job: ReportJob) -> dict:
    from fm2edge.report.write import write_report

    runs, extra_files = collect(job.runs)
    seeds = {p.parent: json.loads(p.read_text()) for p in extra_files if p.name == "seeds.json"}
    extras: dict[str, list] = {"bench": [], "export": [], "comparison": []}
    for p in extra_files:
        if p.name == "bench.json":
            extras["bench"].append((str(p.parent), json.loads(p.read_text())["rows"]))
        elif p.name == "export.json":
            extras["export"].append((str(p.parent), json.loads(p.read_text())))
        elif p.name == "comparison.json":
            extras["comparison"].append((str(p.parent), json.loads(p.read_text())["rows"]))
    acc = accuracy_rows(runs, seeds)
    mistakes, groups = mistakes_rows(runs, job.superclasses)
    figures = report_figures(runs, [r for _, rows in extras["bench"] for r in rows], acc)
    run_plots = [(f"{r.label}: {p.stem.replace('_', ' ')}", p.read_bytes()) for r in runs for p in r.plots]
    for folder, _ in extras["comparison"]:
        for p in sorted((Path(folder) / "plots").glob("*.png")):
            run_plots.append((f"{Path(folder).name}: {p.stem}", p.read_bytes()))
    out = Path(job.output) if job.output else Path(job.runs[0])
    page = render_html(job.title, acc, mistakes, groups, figures, run_plots, extras, runs)
    markdown = render_markdown(job.title, acc, mistakes)
    write_report(out, page, markdown)
    print(markdown)
    print(f"report: {(out / 'report.html').resolve()} ({len(page) / 1e6:.1f} MB, {len(figures) + len(run_plots)} "
          f"images) and report.md")
    return {"accuracy": acc, "mistakes": mistakes, "html": str(out / "report.html")}
