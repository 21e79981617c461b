"""`fm2edge report RUN...`: one self-contained HTML page (and a Markdown summary) from run folders.

Reading (:mod:`~fm2edge.report.read`) and comparing (:mod:`~fm2edge.report.compare`) come first; here the
``*_rows`` functions turn records into table rows (pure), and :func:`render_html` / :func:`render_markdown` turn
rows and figures into text. Images are embedded as base64 PNG, so the page opens from disk with no network.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fm2edge.errors import Fm2EdgeError
from fm2edge.report import metrics as M
from fm2edge.report.compare import Group, findings
from fm2edge.report.read import Run
from fm2edge.timing import timings_text

METHOD_COLOURS = {"teacher": "C3", "train": "C0", "distill": "C1", "probe": "C2", "finetune": "C4",
                  "zeroshot": "C5", "soup": "C6"}


@dataclass
class ReportJob:
    """`fm2edge report RUN...`: an HTML report and a Markdown summary of one or more run folders.

    Args:
        runs: Run folders, or folders holding run folders (e.g. runs/demo), searched recursively.
        output: Folder for report.html and report.md; empty writes into the first run folder.
        title: Page title.
        superclasses: Class groups for the "mistakes within a superclass" measure, e.g. {vehicle: [airplane, ...],
            animal: [...]}, or a YAML/JSON file holding them; empty uses the dataset's own groups where fm2edge knows
            them (CIFAR-10's vehicles and animals, CIFAR-100's 20 coarse classes), else the measure is left out.
            Groups never come from a model's predictions, which would make a student that copies its teacher look
            "smarter" by construction.
    """

    runs: list[str] = field(default_factory=list)
    output: str | None = None
    title: str = "fm2edge report"
    superclasses: dict[str, list[str]] | str | None = None

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("give at least one run folder, e.g. fm2edge report runs/demo")


# ---------------------------------------------------------------- tables (pure)


def accuracy_rows(runs: list[Run], groups: list[Group]) -> list[dict]:
    """One row per group (mean and std over its seeds), the teacher first (where a distillation run scored it on
    the test split: candidates of `fm2edge auto` leave it unread)."""
    rows = []
    teacher = next((r for r in runs if r.kind == "distill" and r.metrics.get("teacher_test_acc") is not None), None)
    if teacher is not None:
        rows.append({"label": f"teacher: {teacher.metrics['teacher']}", "kind": "teacher",
                     "test_acc": teacher.metrics["teacher_test_acc"], "std": None, "n": 1, "seeds": "-",
                     "balanced_acc": teacher.metrics.get("teacher_test_balanced_acc"),  # runs before it: none
                     "parameters": teacher.metrics.get("teacher_parameters")})
    for g in groups:
        accs = np.asarray(g.accs)
        balanced = [r.metrics.get("test_balanced_acc") for r in g.runs]  # runs written before it have none
        rows.append({"label": g.label, "kind": g.kind, "test_acc": float(accs.mean()),
                     "std": float(accs.std(ddof=1)) if len(accs) > 1 else None, "n": len(accs),
                     "balanced_acc": None if None in balanced else float(np.mean(balanced)),
                     "seeds": ", ".join(str(s) for s in g.seeds if s is not None) or "-",
                     "parameters": g.runs[0].metrics.get("parameters")})
    return rows


def load_superclasses(given: dict | str | None) -> dict | None:
    """The --superclasses value: groups as given, or read from a YAML or JSON file."""
    if not isinstance(given, str):
        return given
    import yaml

    path = Path(given)
    if not path.exists():
        raise Fm2EdgeError(f"--superclasses file '{given}' does not exist; give {{group: [class, ...]}} or a YAML file")
    groups = yaml.safe_load(path.read_text())
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise Fm2EdgeError(f"'{given}' must map each group name to a list of class names")
    return {str(k): [str(c) for c in v] for k, v in groups.items()}


def superclass_groups(class_names: list[str], given: dict | None) -> dict | None:
    """The user's groups, else the dataset's own where known (CIFAR-10, CIFAR-100), else None. Never derived from
    a model's predictions."""
    if given:
        unknown = sorted({c for members in given.values() for c in members} - set(class_names))
        if unknown:
            raise Fm2EdgeError(f"--superclasses names classes the data does not have: {unknown[:5]}; its classes are "
                               f"{class_names[:12]}")
        return given
    return M.known_superclasses(class_names)


def mistakes_rows(runs: list[Run], given_groups: dict | None) -> tuple[list[dict], dict | None]:
    """Per run with test predictions: accuracy, errors within a superclass, agreement with the teacher on shared
    errors, KL to the teacher, and ECE. The teacher is the one the first distillation run used (same test set).
    A measure that cannot differ for this data reads "n/a" (error agreement with two classes: a shared error is
    always the same wrong class); one without groups reads "no groups"."""
    teacher = next((r.teacher_preds for r in runs if r.teacher_preds is not None), None)
    with_preds = [r for r in runs if r.preds is not None]
    if not with_preds:
        return [], None
    names = [str(c) for c in with_preds[0].preds["class_names"]]
    groups = superclass_groups(names, given_groups)
    group_idx = M.group_of(names, groups) if groups else None
    rows = []
    entries = ([("teacher", "teacher", teacher)] if teacher is not None else []) + \
        [(r.name, r.kind, r.preds) for r in with_preds]
    for label, kind, p in entries:
        same_test = teacher is not None and len(teacher["labels"]) == len(p["labels"]) and \
            bool((teacher["labels"] == p["labels"]).all())
        compare = same_test and kind != "teacher"
        rows.append({
            "label": label, "kind": kind, "test_acc": M.accuracy(p["preds"], p["labels"]),
            "errors": int((p["preds"] != p["labels"]).sum()),
            "superclass_error_share": M.superclass_error_share(p["preds"], p["labels"], group_idx)
            if group_idx is not None else "no groups",
            "error_agreement": ("n/a" if len(names) <= 2 else
                                M.error_agreement(p["preds"], teacher["preds"], p["labels"])) if compare else None,
            "kl_to_teacher": M.kl_to_teacher(p["logits"], teacher["logits"]) if compare else None,
            "ece": M.expected_calibration_error(p["logits"], p["labels"])})
    return rows, groups


# ---------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def mean_confusion(group: Group, num_classes: int) -> np.ndarray:
    """Row-normalised test confusion matrix averaged over the group's seeds."""
    return np.mean([M.confusion(r.preds["preds"], r.preds["labels"], num_classes, normalize=True)
                    for r in group.runs], axis=0)


def report_figures(runs: list[Run], compared: list[dict], bench_rows: list[dict],
                   acc_rows: list[dict], label_studies: list[tuple[str, dict]] = ()) -> list[tuple[str, bytes]]:
    """Figures made for the report: confusion matrices of a matched pair (a distilled student and the same student
    from scratch, same data and budget, averaged over seeds), Pareto plots (one point per group, the teacher
    included), and the label-efficiency curves of a study's label_efficiency.json."""
    from fm2edge.report import plots

    figs = []
    pair = next((c for c in compared if c["a"].kind == "distill" and c["b"].kind == "train" and
                 all(r.preds is not None for r in c["a"].runs + c["b"].runs)), None)
    if pair is not None:
        scratch, distilled = pair["b"], pair["a"]
        names = [str(c) for c in scratch.runs[0].preds["class_names"]]
        seeds = [f"{len(g.runs)} seed{'s' if len(g.runs) > 1 else ''}" for g in (scratch, distilled)]
        figs.append(("Confusion matrices: from scratch vs distilled (matched runs)", _png(plots.confusion_pair(
            mean_confusion(scratch, len(names)), mean_confusion(distilled, len(names)), names,
            (f"{scratch.label} ({seeds[0]})", f"{distilled.label} ({seeds[1]})"),
            "row-normalised test confusion matrices, averaged over seeds"))))
    latency = []
    for row in bench_rows:
        # bench names a run by the path it was given, relative to where bench ran
        parts = Path(row["model"]).parts
        run = next((r for r in runs if r.path.resolve().parts[-len(parts):] == parts), None)
        if run is not None and row.get("backend") == "eager" and row.get("device_type", "cpu") == "cpu" and \
                not row.get("skipped") and run.metrics.get("test_acc") is not None:
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
    for _, study in label_studies:
        figs.append((f"Label efficiency: {study['title']}",
                     _png(plots.label_efficiency(study["curves"], study["title"]))))
    return figs


# ---------------------------------------------------------------- rendering (pure text)


def _pct(v, std=None) -> str:
    if isinstance(v, str):  # "n/a", "no groups": a measure that does not apply, said in words
        return v
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def _sentence(text: str) -> str:
    """A note's text as a sentence: capitalised and closed."""
    return f"{text[0].upper()}{text[1:]}."


def _num(v, fmt="{:.3f}") -> str:
    if isinstance(v, str):
        return v
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def epochs_text(trained: int | None, kept: int | None) -> str:
    """A leaderboard's epochs cell: the epochs a candidate trained, and where its kept weights are from an earlier
    one (validation rated them higher than every later epoch), which: ``"11 (kept 3)"``."""
    if not trained:
        return "-"
    return f"{trained}" + (f" (kept {kept})" if kept is not None and kept != trained else "")


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
figcaption{font-size:90%;color:#555}.note{color:#555;font-size:90%}
#auto-leaderboard{font-size:88%}#auto-leaderboard td,#auto-leaderboard th{padding:4px 6px}
#auto-leaderboard td:last-child,#auto-leaderboard th:last-child{text-align:left;min-width:11em}"""

CHECK_JS = """window.addEventListener('load',()=>{const imgs=[...document.images];
const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;
document.body.dataset.images=imgs.length;document.body.dataset.badImages=bad;});"""


def _img(data: bytes, caption: str) -> str:
    b64 = base64.b64encode(data).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def comparison_rows(compared: list[dict]) -> list[list[str]]:
    """The comparisons as table cells: a, b, their means, the difference, its interval, how, and the verdict."""
    out = []
    for c in compared:
        d = c["difference"]
        ci = f"{100 * d.low:+.2f} to {100 * d.high:+.2f}" if d.low is not None else "-"
        out.append([f"{c['a'].label} vs {c['b'].label}", _pct(float(np.mean(c["a"].accs))),
                    _pct(float(np.mean(c["b"].accs))), f"{100 * d.diff:+.2f}", ci, d.method, d.verdict])
    return out


def bench_cells(r: dict) -> list[str]:
    """One row of the speed table; a combination that does not apply says why it was skipped."""
    head = [r["model"], r.get("device_type", r["device"]), r["backend"], r["dtype"], _num(r["params"], "{:,}"),
            _num(None if r["macs"] is None else r["macs"] / 1e6, "{:.0f}")]  # a graph's row counts neither
    if r.get("skipped"):
        return head + [f"skipped: {r['skipped']}", "", "", "", ""]
    return head + [f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['throughput_img_s']:.1f}",
                   _num(r.get("speedup_vs_first"), "{:.2f}x")]


COMPARISON_HEAD = ["comparison (same student, data, augmentation, budget)", "a", "b", "a - b (points)",
                   "95% interval", "how", "verdict"]


def auto_section(folder: str, r: dict) -> str:
    """`fm2edge auto`'s page: the choice beside the teacher and the budget, accuracy against measured latency, the
    teacher, the path the search took (rungs), the leaderboard and where the minutes went."""
    parts = [f"<h2>fm2edge auto: {html.escape(Path(folder).name)}</h2>", *auto_choice(folder, r)]
    if r.get("teachers"):
        parts += auto_teacher(r)
    if r.get("rungs"):
        parts += auto_search(r)
    return "\n".join(parts + auto_leaderboard(r))


def auto_choice(folder: str, r: dict) -> list[str]:
    """The choice: its test figures beside the teacher's, what decided its precision, what the budget passed over or
    left out, near-copies in the test split, the two plots, and how validation ranked."""
    c, t = r["chosen"], r["test"]
    budget = (f"against a {r['latency_budget_ms']:.3g} ms budget" if r.get("latency_budget_ms")
              else "with no latency bound")
    parts = [f"<p id=\"auto-choice\">Chosen: <b>{html.escape(c['candidate'])}</b> as {c['precision']} ONNX, "
             f"{c['p50_ms']:.2f} ms batch-1{timings_text(c.get('timings_ms'))}"
             + (f", {c['state_ms']:.2f} ms in the state the machine screened it in" if "state_ms" in c else "")
             + f", {budget}, {c['mb']:.1f} MB, validation {_pct(c['val_acc'])}"
             + (f", balanced accuracy {_pct(c['val_score'])} (what chose it)"
                if r.get("metric") == "balanced_accuracy" and c.get("val_score") is not None else "") + ". "
             f"Test, read once: <b>{_pct(t['chosen_test_acc'])}</b> against the teacher's "
             f"{_pct(t['teacher_test_acc'])} on {t['test_images']:,} images: "
             f"{M.gap_text(t['gap_points'], t.get('gap_interval_points'), r.get('teacher_itself', False))}. "
             f"{r['minutes']:.1f} of {r['budget_minutes']:g} minutes on "
             f"{html.escape(str(r.get('machine', 'this machine')))}.</p>"]
    if r.get("passed_over"):  # a more accurate finalist that timed over the budget only in its export
        parts.append(f'<p id="auto-passed-over"><b>Timed over the budget:</b> {html.escape(r["passed_over"])}.</p>')
    if r.get("no_budget"):  # the teacher won because nothing bounded the latency
        parts.append(f'<p id="auto-no-budget"><b>The budget:</b> {html.escape(_sentence(r["no_budget"]))}</p>')
    if r.get("students_skipped"):  # the budget left no student an epoch: the teacher was shipped alone
        parts.append(f'<p id="auto-students-skipped"><b>No student:</b> '
                     f'{html.escape(_sentence(r["students_skipped"]))}</p>')
    if r.get("precision_why"):  # fp32 or int8, and what the other precision measured
        parts.append(f'<p id="auto-precision"><b>Precision:</b> {html.escape(r["precision_why"])}.</p>')
    if r.get("pretrained_out_of_budget"):  # the budget left only students from random weights
        parts.append(f'<p id="auto-pretrained-out"><b>The budget:</b> '
                     f'{html.escape(r["pretrained_out_of_budget"]["text"])}.</p>')
    if "chosen_balanced_acc" in t:  # written since the test split is compared image by image
        parts.append(f"<p id=\"auto-test\">On the test images the two agree on {_pct(t['agreement'])}; balanced "
                     f"accuracy (the mean of the classes' accuracies; "
                     + (f"the classes' sizes differ up to {t['class_imbalance']:.1f} to 1" if t["class_imbalance"] > 1
                        else "the classes are the same size")
                     + f") {_pct(t['chosen_balanced_acc'])} against the teacher's "
                     f"{_pct(t['teacher_balanced_acc'])}.</p>")
    if r.get("test_read_before"):  # a rerun in the same folder chose another model and read the test split again
        parts.append(f'<p id="auto-test-read-before"><b>Read before:</b> {html.escape(r["test_read_before"])}.</p>')
    if t.get("near_copies"):
        parts.append(f"<p id=\"auto-near-copies\">{t['near_copies']} test image(s) look like a training image (the "
                     f"same photo resized, re-saved or lightly edited: <code>fm2edge data</code> names them), which "
                     f"flatters both; without them, {_pct(t['chosen_test_acc_without_near_copies'])} against the "
                     f"teacher's {_pct(t['teacher_test_acc_without_near_copies'])}.</p>")
    per_class = Path(folder) / "plots" / "test_per_class.png"
    if per_class.exists():
        parts.append(_img(per_class.read_bytes(), "each class's test accuracy, the teacher beside the chosen model"))
    plot = Path(folder) / "plots" / "accuracy_vs_latency.png"
    if plot.exists():
        scored = (f"agreement with the teacher on {r['held_out_images']:,} held-out images"
                  if r.get("held_out_images") else "validation balanced accuracy"
                  if r.get("metric") == "balanced_accuracy" else "validation accuracy")
        line = "; the dashed line is the budget" if r.get("latency_budget_ms") else ""
        parts.append(_img(plot.read_bytes(), f"{scored} against latency measured here{line}"))
    if r.get("selection"):
        sel = r["selection"]
        ranked = (f"the candidates were ranked by their agreement with the teacher's labels on "
                  f"{r['held_out_images']:,} unlabelled images held out of training"
                  if r.get("held_out_images") else
                  f"scores within {100 * sel['half_width']:.0f} points of the best counted as a tie, which went "
                  f"to the students that start pretrained, among them the larger input (where its graph answers "
                  f"as its fp32 graph), then to the lower validation loss")
        graphs = ("every exported graph was scored the same way" if r.get("held_out_images") else
                  "each model's graph was chosen by its closeness to the fp32 graph on training images (agreement, "
                  "then probabilities: fp32 itself where it fits)")
        how = (f"too few to rank epochs or candidates that differ by less: the students trained a fixed schedule "
               f"(their last epoch kept), {ranked}, {graphs}, and the teacher was not fine-tuned"
               if sel["noisy"] else "enough to rank: each student's best validation epoch was kept")
        known = (f"balanced accuracy known to +-{100 * sel['half_width']:.1f} points (95% interval; as accuracy is "
                 f"on {sel['effective_images']:,} images: its smallest classes decide)" if "effective_images" in sel
                 else f"accuracy known to +-{100 * sel['half_width']:.1f} points (95% interval)")
        parts.append(f"<p id=\"auto-selection\">Validation: {sel['val_images']:,} images, {known}; {how}.</p>")
    return parts


def auto_teacher(r: dict) -> list[str]:
    """The teacher chosen on validation, how it was fine-tuned, every teacher probed and those left out."""
    parts = ["<h3>The teacher</h3>"]
    fine = r.get("teacher_finetune") or {}
    how = (f"fine-tuned {fine['seeds']} x {fine['epochs']} epochs at {fine['size']} px" if "size" in fine
           else f"not fine-tuned: {fine['why']}" if "why" in fine else "")
    parts.append(f"<p id=\"auto-teacher\">Chosen on validation: <b>{html.escape(r['teacher']['teacher'])}</b>"
                 + (f"; {html.escape(how)}" if how else "") + ".</p>")
    parts.append(_table("auto-teachers", ["teacher", "validation", "images/s here"],
                        [[t["teacher"], _pct(t["val_acc"]), _num(t.get("images_per_s"), "{:.1f}")]
                         for t in r["teachers"]]))
    if r.get("teachers_left_out"):
        parts.append("<p id=\"auto-teachers-left-out\">Left out (cannot be loaded here): "
                     + "; ".join(f"<b>{html.escape(t['teacher'])}</b>: {html.escape(t['why'])}"
                                 for t in r["teachers_left_out"]) + ".</p>")
    return parts


def auto_search(r: dict) -> list[str]:
    """The path the search took: input sizes fitted to the budget, the hedge, the teaching, the rungs, the seeds
    and the finalists."""
    parts = ["<h3>The search</h3>"]
    for s in r.get("size_searches") or []:  # input sizes fitted to the latency budget before any training
        parts.append(f'<p class="auto-sizes">{html.escape(s["text"])}.</p>')
    if r.get("hedge"):  # the candidate kept to the finalists beside the larger inputs at the budget's edge
        parts.append(f'<p id="auto-hedge">Hedge: {html.escape(r["hedge"]["text"])}.</p>')
    if r.get("views"):
        parts.append(f"<p id=\"auto-teaching\">The students were taught on {r['train_images']:,} labelled and "
                     f"{r['unlabeled_images']:,} unlabelled images, the teacher's outputs cached "
                     + (f"on {r['views']} views of each" if r["views"] > 1 else "once for each") + ".</p>")
    parts.append(_table("auto-rungs", ["rung", "candidates", "epochs each", "planned minutes"],
                        [[f"{i} (time left over)" if g.get("extension") else str(i), str(g["candidates"]),
                          _rung_epochs(g), _num(None if g.get("seconds") is None else g["seconds"] / 60, "{:.1f}")]
                         for i, g in enumerate(r["rungs"])]))
    if r.get("soups"):  # the time the search left over, spent on seeds of the finalists (auto: soup_of_seeds)
        parts.append("<p id=\"auto-soups\">Time left over: " + "; ".join(
            f"<b>{html.escape(s['candidate'])}</b> not trained again with seeds: {html.escape(s['why'])}"
            if s.get("why") else
            f"<b>{html.escape(s['candidate'])}</b> trained again with {s['seeds']} more seed"
            f"{'s' * (s['seeds'] > 1)} for its epochs, the average of its weights and theirs (a soup) "
            + ("kept: it ranked at least as high" if s["kept"] else "left out: it ranked lower")
            for s in r["soups"]) + ".</p>")
    if r.get("finalists_why"):
        parts.append(f"<p id=\"auto-finalists\">One finalist: {html.escape(r['finalists_why'])}, and the last "
                     f"rung trained the leader alone.</p>")
    return parts


def _rung_epochs(g: dict) -> str:
    """A rung's epochs each, with those planned where the rung was re-sized."""
    ran = str(g["epochs"] or "shared")
    return ran if g.get("planned", g["epochs"]) in (None, g["epochs"]) else f"{ran} (planned {g['planned']})"


def auto_leaderboard(r: dict) -> list[str]:
    """Every candidate's row, where the minutes went, and what a run that finished early could do with the rest."""
    rows = r["leaderboard"]
    held = r.get("held_out_images") or 0
    # the graphs' columns show the figure that chose (balanced accuracy with --auto.metric balanced_accuracy)
    graphs = "val_balanced_acc" if r.get("metric") == "balanced_accuracy" else "val_acc"
    parts = ["<h3>Leaderboard</h3>"]
    # the status, a sentence, last: the numbers stay in narrow columns and the sentence takes the width left
    parts.append(_table("auto-leaderboard", ["candidate", "rung", "epochs", "validation"]
                        + (["validation balanced"] if graphs == "val_balanced_acc" else [])
                        + ([f"agrees with the teacher ({held:,} held out)"] if held else [])
                        + [f"ONNX {p} val" + (" balanced" if graphs == "val_balanced_acc" else "")
                           for p in ("fp32", "int8")]
                        + ["fp32 ms", "int8 ms", "parameters", "minutes", "status"],
                        [[x["candidate"], str(x.get("rung") if x.get("rung") is not None else "-"),
                          epochs_text(x.get("epochs"), x.get("kept_epochs")), _pct(x.get("val_acc"))]
                         + ([_pct(x.get("val_balanced_acc"))] if graphs == "val_balanced_acc" else [])
                         + ([_pct(x.get("teacher_agreement"))] if held else [])
                         + [_pct(x.get(f"{graphs}_onnx_fp32")),
                          _pct(x.get(f"{graphs}_onnx_int8")), _num(x.get("fp32_ms") or x["screen_fp32_ms"], "{:.2f}"),
                          _num(x.get("int8_ms") or x["screen_int8_ms"], "{:.2f}"), f"{x['params']:,}",
                          _num(x.get("minutes"), "{:.1f}"), x["status"]] for x in rows]))
    if r.get("minutes_by_step"):
        parts.append("<h3>Where the minutes went</h3>")
        parts.append(_table("auto-minutes", ["step", "minutes"],
                            [[k, f"{v:.1f}"] for k, v in r["minutes_by_step"].items()]))
    if early := r.get("finished_early"):
        parts.append(f'<p id="auto-finished-early">{html.escape(_sentence(early))}</p>')
    return parts


def render_html(title: str, acc: list[dict], mistakes: list[dict], groups: dict | None, figures: list,
                run_plots: list[tuple[str, bytes]], extras: dict, runs: list[Run], compared: list[dict],
                verdicts: list[str], cautions: list[str] = ()) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if verdicts:
        parts.append("<h2>Verdicts</h2><ul id='verdicts'>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts)
                     + "</ul><p class='note'>A difference is a gain or a loss only when its 95% interval excludes 0; "
                       "otherwise it is within noise.</p>")
    if cautions:
        parts.append("<h2>Cautions</h2><ul id='cautions'>" + "".join(f"<li>{html.escape(c)}</li>" for c in cautions)
                     + "</ul>")
    for name, result in extras.get("auto", []):
        parts.append(auto_section(name, result))
    parts.append("<h2>Accuracy</h2>")
    several = any(r["n"] > 1 for r in acc)  # a spread over seeds only where some row has seeds to spread
    parts.append(_table("accuracy", ["run", "kind", "test accuracy" + (" (mean ± std over seeds)" if several else ""),
                                     "balanced accuracy (mean of the classes')", seed_heading(acc), "parameters"],
                        [[r["label"], r["kind"], _pct(r["test_acc"], r["std"]), _pct(r.get("balanced_acc")),
                          r["seeds"], f"{r['parameters']:,}" if r.get("parameters") else "-"] for r in acc],
                        [[None, None, float(r["test_acc"]), r.get("balanced_acc"), None, None] for r in acc]))
    if compared:
        parts.append("<h2>Matched comparisons</h2>")
        parts.append(_table("comparisons", COMPARISON_HEAD, comparison_rows(compared)))
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
    for name, study in extras.get("label_efficiency", []):
        counts = sorted({n for curve in study["curves"].values() for n in curve})
        parts.append(f"<h2>Label efficiency: {html.escape(name)}</h2>")
        parts.append(_table("label-efficiency", ["test accuracy (%) at labels per class", *map(str, counts)],
                            [[label, *(f"{curve[n]:.2f}" if n in curve else "-" for n in counts)]
                             for label, curve in study["curves"].items()]))
        parts.append(f"<p class='note'>{html.escape(study.get('budget', ''))}</p>")
    for name, rows in extras.get("bench", []):
        parts.append(f"<h2>Speed: {html.escape(name)}</h2>")
        parts.append(_table("bench", ["model", "device", "backend", "dtype", "params", "MMACs", "p50 ms", "p90 ms",
                                      "p99 ms", "img/s", "speed-up"], [bench_cells(r) for r in rows]))
        for device in dict.fromkeys(r["device"] for r in rows):
            parts.append(f"<p class='note'>{html.escape(device)}, torch {rows[0]['torch']}; batch-1 latency after "
                         f"warm-up.</p>")
    for name, e in extras.get("export", []):
        parts.append(f"<h2>Export: {html.escape(name)}</h2>")
        split = e.get("scored_on", "test")  # candidates' exports in `fm2edge auto` are scored on validation
        accs = e[f"{split}_acc"]
        keys = [k for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8") if k in accs]
        parts.append(_table("export", ["model", f"{split} accuracy", "size", "p50 ms"],
                            [[k.replace("_", " "), _pct(accs[k]),
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


def seed_heading(acc: list[dict]) -> str:
    """The accuracy table's seed column: "seeds" where some row averages several, else "seed" (a single run's "0"
    under "seeds" read as no seeds at all)."""
    return "seeds" if any(r["n"] > 1 for r in acc) else "seed"


def render_markdown(title: str, acc: list[dict], mistakes: list[dict], compared: list[dict],
                    verdicts: list[str], cautions: list[str] = ()) -> str:
    lines = [f"# {title}", ""]
    if verdicts:
        lines += [f"- {v}" for v in verdicts] + [""]
    if cautions:
        lines += ["Cautions:", *[f"- {c}" for c in cautions], ""]
    lines += [f"| run | kind | test accuracy | {seed_heading(acc)} |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['kind']} | {_pct(r['test_acc'], r['std'])} | {r['seeds']} |" for r in acc]
    if compared:
        lines += ["", "| " + " | ".join(COMPARISON_HEAD) + " |", "|" + "---|" * len(COMPARISON_HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(compared)]
    if mistakes:
        lines += ["", "| run | errors | errors within superclass | error agreement with teacher | KL to teacher "
                      "| ECE |", "|---|---|---|---|---|---|"]
        lines += [f"| {m['label']} | {m['errors']:,} | {_pct(m['superclass_error_share'])} | "
                  f"{_pct(m['error_agreement'])} | {_num(m['kl_to_teacher'])} | {_num(m['ece'])} |" for m in mistakes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the stage


def unique_plots(plots: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``plots`` (caption, PNG bytes) with each image shown once, where it first came, its caption naming every run
    that holds it: a folder copied from another run (`fm2edge auto`'s best/, a copy of the chosen candidate) brings
    the same plots again."""
    captions: dict[bytes, list[str]] = {}
    for caption, data in plots:
        captions.setdefault(data, []).append(caption)
    return [(names[0] + "".join(f" (also {n.split(': ', 1)[0]})" for n in names[1:]), data)
            for data, names in captions.items()]


def report_job(job: ReportJob) -> dict:
    """`fm2edge report`: the page and the summary written, the summary printed."""
    result, markdown = write_pages(job)
    print(markdown)
    print(f"report: {Path(result['html']).resolve()} ({result['html_mb']:.1f} MB, {result['images']} images) and "
          f"report.md")
    return result


def write_pages(job: ReportJob) -> tuple[dict, str]:
    """(the report's findings, its Markdown summary): report.html and report.md written into ``job.output`` (or
    the first run folder), nothing printed."""
    from fm2edge.report.write import write_report

    found = findings(job.runs)
    runs, extras, compared, verdicts = found.runs, found.extras, found.compared, found.verdicts
    acc = accuracy_rows(runs, found.groups)
    mistakes, superclasses = mistakes_rows(runs, load_superclasses(job.superclasses))
    figures = report_figures(runs, compared, [r for _, rows in extras["bench"] for r in rows], acc,
                             extras["label_efficiency"])
    run_plots = [(f"{r.label}: {p.stem.replace('_', ' ')}", p.read_bytes()) for r in runs for p in r.plots]
    for folder, _ in extras["comparison"]:
        for p in sorted((Path(folder) / "plots").glob("*.png")):
            run_plots.append((f"{Path(folder).name}: {p.stem}", p.read_bytes()))
    run_plots = unique_plots(run_plots)
    out = Path(job.output) if job.output else Path(job.runs[0])
    page = render_html(job.title, acc, mistakes, superclasses, figures, run_plots, extras, runs, compared, verdicts,
                       found.cautions)
    markdown = render_markdown(job.title, acc, mistakes, compared, verdicts, found.cautions)
    write_report(out, page, markdown)
    return {"accuracy": acc, "mistakes": mistakes, "verdicts": verdicts, "cautions": found.cautions,
            "html": str(out / "report.html"), "html_mb": len(page) / 1e6, "images": len(figures) + len(run_plots),
            "comparisons": [{"a": c["a"].label, "b": c["b"].label, **dataclasses.asdict(c["difference"]),
                             "verdict": c["difference"].verdict} for c in compared]}, markdown
