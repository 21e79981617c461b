"""`fm2edge data`: what a source resolves to (splits, classes, counts, sizes, what was skipped, whether validation
can rank anything), without training. The images are decoded into the cache on the way, so the run that follows
starts at once."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from fm2edge.config import DataConfig, DataJob
from fm2edge.data.dataset import (
    ImageData,
    SplitPlan,
    folder_scan,
    groups_across_splits,
    image_folder,
    load_planned,
    plan_splits,
)
from fm2edge.data.folders import named_group
from fm2edge.data.images import peek_size
from fm2edge.data.splits import (
    MIN_HASHED_SIDE,
    NEAR_COPY_BITS,
    NEAR_COPY_SSIM,
    label_conflicts,
    near_copies,
    selection_noise,
)

NAMED_PAIRS = 10  # near-copies named by `fm2edge data` (all are counted)
SHEET_PAIRS = 24  # near-copies drawn by `fm2edge data --pairs FILE.png` (its help says 24)


# Classes whose largest has this many times the images of its smallest are imbalanced: accuracy is then read beside
# balanced accuracy (the mean of the classes' accuracies), which a model favouring the large classes cannot inflate.
IMBALANCED = 2.0


def summarise(cfg: DataConfig, pairs: str | None = None) -> dict:
    """The resolved source as a dict: layout, classes, per-split counts per class and content hashes, stored size,
    original sizes and skipped files (image folders), how well validation can rank, and the near-copies (drawn into
    the PNG file ``pairs`` where given)."""
    plan = plan_splits(cfg)
    train, val, test = load_planned(plan, cfg)
    validation = (f"the source's '{plan.val_name}' split" if plan.val_name else
                  f"{cfg.val_fraction:.0%} of '{cfg.train_split}', held out" if val is not None else "none")
    out = {"source": cfg.source, "classes": train.class_names, "stored_size": list(train.image_size),
           "validation_from": validation, "splits": {}}
    for name, data in (("train", train), ("validation", val), ("test", test)):
        if data is not None:
            out["splits"][name] = split_summary(data)
    out["undecodable"] = sum(d.skipped for d in (train, val, test) if d is not None)
    if val is not None:
        out["selection"] = selection_noise(len(val))
    out["imbalance"] = class_imbalance(out["splits"]["train"]["per_class"])
    out["near_copies"] = near_copy_summary(plan, train, {"test": test, "validation": val}, cfg, pairs)
    out["label_conflicts"] = conflict_summary(plan, train, cfg)
    if cfg.group_column:
        out["groups"] = group_summary(plan, cfg)
    folder = image_folder(cfg)
    if folder is not None:
        scan = folder_scan(cfg, folder)
        sizes = np.array(header_sizes(scan.files))
        out.update(layout=scan.layout, sub_folders=scan.sub_folders, skipped_files=scan.skipped,
                   split_folders={name: str(split.folder.relative_to(folder)) for name, split in scan.splits.items()},
                   empty_class_folders=scan.empty_classes,
                   original_sizes={"min": sizes.min(0).tolist(), "median": np.median(sizes, 0).tolist(),
                                   "max": sizes.max(0).tolist()})
    return out


def group_summary(plan: SplitPlan, cfg: DataConfig) -> dict:
    """The groups ``--data.group_column`` names: how many the labelled training split holds, how many hold images
    of several classes, and those that also have images in the source's own validation or test split."""
    classes: dict[str, set] = {}  # each named group's classes
    ungrouped = 0
    for g, y in zip(plan.train.groups[plan.labelled].tolist(), plan.train.labels[plan.labelled].tolist(), strict=True):
        if (name := named_group(g)) is None:
            ungrouped += 1
        else:
            classes.setdefault(name, set()).add(y)
    return {"column": cfg.group_column, "groups": len(classes), "ungrouped_images": ungrouped,
            "several_classes": sum(len(c) > 1 for c in classes.values()),
            "across_splits": groups_across_splits(plan, cfg)}


def group_lines(groups: dict) -> list[str]:
    """:func:`group_summary` in words."""
    lines = [f"groups: {groups['groups']} in column '{groups['column']}' ({groups['several_classes']} with images of "
             f"several classes" + (f"; {groups['ungrouped_images']} image(s) without one, each its own"
                                  if groups["ungrouped_images"] else "")
             + "); each is kept whole on one side when images are held out"]
    for split, found in groups["across_splits"].items():
        lines.append(f"  {len(found)} group(s) also in '{split}' ({', '.join(found[:5])}"
                     f"{', ...' if len(found) > 5 else ''}): move each group's images into one split")
    return lines


def near_copy_summary(plan: SplitPlan, train: ImageData, held: dict[str, ImageData | None], cfg: DataConfig,
                      sheet: str | None = None) -> dict:
    """How many test and validation images look like a training image (:func:`fm2edge.data.splits.near_copies`),
    the first NAMED_PAIRS pairs by name (a file under the source, or a row of the source's split), the most alike
    first, and where ``sheet`` names a PNG file, the first SHEET_PAIRS drawn into it (:func:`pair_sheet`)."""
    out: dict = {"max_bits": NEAR_COPY_BITS, "min_similarity": NEAR_COPY_SSIM,
                 "compared": min(train.image_size) >= MIN_HASHED_SIDE, "pairs": []}
    drawn: list[tuple] = []
    splits = {"validation": plan.val, "test": plan.test}
    source_split = {"validation": plan.val_name or cfg.train_split,
                    "test": cfg.train_split if plan.test is plan.train else cfg.test_split}
    for name, data in held.items():
        alike = near_copies(data, train) if data is not None else None
        if alike is None:
            continue
        out[name] = len(alike[0])
        order = np.argsort(-alike[3], kind="stable")  # the most alike first: the likeliest copies to look at
        for i, j, bits, similarity in zip(*(a[order] for a in alike), strict=True):
            if len(drawn) < SHEET_PAIRS:
                drawn.append((data.images[i], train.images[j], f"{name} ~ train, SSIM {similarity:.2f}"))
            if len(out["pairs"]) < NAMED_PAIRS:
                out["pairs"].append({"split": name,
                                     "image": image_name(splits[name], data, int(i), source_split[name], cfg.source),
                                     "training_image": image_name(plan.train, train, int(j), cfg.train_split,
                                                                  cfg.source),
                                     "bits": int(bits), "similarity": round(float(similarity), 3)})
    if sheet:
        from fm2edge.runs import atomic_write_bytes

        buf = io.BytesIO()
        pair_sheet(drawn).save(buf, format="PNG")
        atomic_write_bytes(Path(sheet), buf.getvalue())
        out["sheet"] = str(sheet)
    return out


def conflict_summary(plan: SplitPlan, train: ImageData, cfg: DataConfig) -> dict:
    """Training images filed under two classes or more (:func:`fm2edge.data.splits.label_conflicts`): how many, and
    the first NAMED_PAIRS sets by name, each image with its class."""
    sets = label_conflicts(train.image_hashes(), train.labels.numpy())
    def named(i: int) -> dict:
        return {"image": image_name(plan.train, train, i, cfg.train_split, cfg.source),
                "class": train.class_names[int(train.labels[i])]}

    return {"images": sum(map(len, sets)), "sets": [[named(i) for i in group] for group in sets[:NAMED_PAIRS]]}


def conflict_lines(conflicts: dict) -> list[str]:
    """The label conflicts of :func:`conflict_summary` in words (none when there are none)."""
    if not conflicts["images"]:
        return []
    lines = [f"label conflicts: {conflicts['images']} training image(s) have the pixels of one filed under another "
             f"class: one of each set is mislabelled (training sees one image with two answers); keep the right one"]
    return lines + ["  " + "  =  ".join(f"{c['image']} ({c['class']})" for c in group) for group in conflicts["sets"]]


def pair_sheet(pairs: list[tuple], side: int = 96, cols: int = 4):
    """Pairs of uint8 CHW images side by side, a caption under each pair, ``cols`` pairs a row (a PIL image; one
    line saying so where there are none)."""
    from PIL import Image, ImageDraw

    rows = max(1, math.ceil(len(pairs) / cols))
    cell_w, cell_h = 2 * side + 16, side + 18
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if not pairs:
        draw.text((8, 8), "no near-copies", fill="black")
    for k, (left, right, caption) in enumerate(pairs):
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        for dx, img in ((0, left), (side, right)):
            tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((side, side), Image.BILINEAR)
            sheet.paste(tile, (x + dx, y))
        draw.text((x, y + side + 3), caption, fill="black")
    return sheet


def image_name(split, data: ImageData, i: int, label: str, source: str) -> str:
    """Image ``i`` of ``data`` by name: its file relative to the ``source`` folder, its row in ``label``'s split
    of the source, or its position where the row is not known."""
    if data.rows is None:
        return f"{label} image {i}"
    row = int(data.rows[i])
    item = split.rows[row] if isinstance(split.rows, np.ndarray) and split.rows.dtype == object else None
    if not isinstance(item, str):
        return f"{label} row {row}"
    path, root = Path(item), Path(source).expanduser()
    return str(path.relative_to(root)) if path.is_relative_to(root) else item


def original_sizes_text(sizes: dict) -> str:
    """The originals' sides as ranges, each on its own (the smallest height and width need not be one image's):
    "96-400 px high, 128-400 px wide (median 300 x 400)"."""
    def span(side: int) -> str:
        lo, hi = sizes["min"][side], sizes["max"][side]
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    median = " x ".join(f"{v:g}" for v in sizes["median"])
    return f"{span(0)} px high, {span(1)} px wide (median {median})"


def header_sizes(files: list) -> list[tuple[int, int]]:
    """(height, width) of every file whose header reads; the others are the undecodable images the load skipped
    (``--data.on_bad_image skip``) or stopped on."""
    sizes = []
    for f in files:
        try:
            sizes.append(peek_size(str(f)))
        except (OSError, ValueError):  # PIL's UnidentifiedImageError is an OSError
            continue
    return sizes


def class_imbalance(per_class: dict[str, int]) -> dict:
    """The largest class, the smallest one with images, and how many times the first's images the second has."""
    present = {k: v for k, v in per_class.items() if v}
    largest, smallest = max(present, key=present.get), min(present, key=present.get)
    return {"ratio": present[largest] / present[smallest], "largest": largest, "smallest": smallest,
            "largest_images": present[largest], "smallest_images": present[smallest]}


def imbalance_text(found: dict) -> str | None:
    """What :func:`class_imbalance` found, in words, where the classes differ IMBALANCED to 1 or more (None
    otherwise)."""
    if found["ratio"] < IMBALANCED:
        return None
    return (f"the training classes are imbalanced ({found['largest_images']} '{found['largest']}' to "
            f"{found['smallest_images']} '{found['smallest']}', {found['ratio']:.1f} to 1)")


def near_copy_lines(near: dict) -> list[str]:
    """The near-copies of :func:`near_copy_summary` in words: one line, and the named pairs under it."""
    if not near["compared"]:
        return [f"near-copies: not looked for (images under {MIN_HASHED_SIDE} px are too small to compare)"]
    counts = {k: near[k] for k in ("test", "validation") if near.get(k)}
    how = (f"perceptual hashes at most {near['max_bits']} of 64 bits apart and structural similarity (SSIM) at least "
           f"{near['min_similarity']}")
    if not counts:
        return [f"near-copies: no validation or test image looks like a training image ({how})"]
    lines = [f"near-copies: {' and '.join(f'{n} {k}' for k, n in counts.items())} image(s) look like a training "
             f"image ({how}: the same photo resized, re-saved or lightly edited); the held-out accuracy may flatter "
             f"the model: look at each pair and remove one of the two"
             + (f" ({len(near['pairs'])} named, the most alike first)" if sum(counts.values()) > len(near["pairs"])
                else "")]
    lines += [f"  {p['split']}: {p['image']}  ~  train: {p['training_image']}  (SSIM {p['similarity']:.2f}, "
              f"{p['bits']} bit{'' if p['bits'] == 1 else 's'})" for p in near["pairs"]]
    lines += [f"  drawn side by side in {near['sheet']}"] if near.get("sheet") else \
        ["  (--pairs FILE.png draws them side by side)"]
    return lines


def per_class(data: ImageData) -> dict[str, int]:
    """Images per class name, every class listed (0 where a split has none)."""
    counts = Counter(data.labels.tolist())
    return {name: counts.get(i, 0) for i, name in enumerate(data.class_names)}


def split_summary(data: ImageData) -> dict:
    return {"images": len(data), "content": data.content_hash, "per_class": per_class(data)}


def render(summary: dict) -> str:
    """The summary as a few lines and a table of images per class and split."""
    splits = summary["splits"]
    lines = [f"source: {summary['source']}" + (f" ({summary['layout']})" if "layout" in summary else "")]
    lines.append("splits: " + ", ".join(f"{name} {s['images']} images (content {s['content']})"
                                        for name, s in splits.items()))
    lines.append(f"validation: {summary['validation_from']}")
    if renamed := {n: f for n, f in summary.get("split_folders", {}).items() if f not in (n, ".")}:
        lines.append("split folders: " + ", ".join(f"{n} from {f}/" for n, f in renamed.items()))
    if summary.get("sub_folders"):
        lines.append(f"sub-folders: {summary['sub_folders']} in class folders, their images read as the class's; each "
                     f"is kept whole on one side when images are held out")
    h, w = summary["stored_size"]
    sizes = summary.get("original_sizes")
    lines.append(f"stored at {h} x {w} px" + (f"; originals {original_sizes_text(sizes)}" if sizes else ""))
    skipped = {**summary.get("skipped_files", {}), **({"undecodable": summary["undecodable"]}
                                                       if summary["undecodable"] else {})}
    lines.append("skipped: " + (", ".join(f"{n} {what}" for what, n in skipped.items()) if skipped else "nothing"))
    for folder in summary.get("empty_class_folders", []):
        lines.append(f"empty class folder left out: {folder}")
    lines += near_copy_lines(summary["near_copies"])
    lines += conflict_lines(summary["label_conflicts"])
    lines += group_lines(summary["groups"]) if "groups" in summary else []
    width = max(len("class"), *(len(c) for c in summary["classes"]))
    lines.append("")
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{n:>10}" for n in splits))
    for name in summary["classes"]:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{s['per_class'][name]:>10}" for s in splits.values()))
    if summary.get("selection", {}).get("noisy"):
        lines += ["", f"note: {summary['selection']['warning']}"]
    if text := imbalance_text(summary["imbalance"]):
        lines += ["", f"note: {text}: accuracy favours the large classes; fm2edge auto reports balanced accuracy (the "
                      f"mean of the classes' accuracies) beside it, and chooses on it with --auto.metric "
                      f"balanced_accuracy"]
    return "\n".join(lines)


def data_job(job: DataJob) -> dict:
    summary = summarise(job.data, job.pairs)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if job.json else render(summary))
    return summary
