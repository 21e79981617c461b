"""Split invariants, in one place: what makes the training, validation and test images of a run trustworthy.

- validation and test never share an image: not by index (one source split cut in two) and not by content (the
  same pixels filed under two splits);
- every class that validation or test holds has training images;
- a classifier has at least two classes to tell apart;
- each split's content is hashed, printed and recorded, so two runs can be checked to have used the same images.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

from fm2edge.errors import Fm2EdgeError

log = logging.getLogger(__name__)

DIGEST_SIZE = 16
# Below this many validation images, or with a 95% interval wider than this (in accuracy points, either side), the
# validation split cannot rank epochs or candidates whose accuracies differ by a few points.
MIN_SELECTION_IMAGES = 100
MAX_SELECTION_HALF_WIDTH = 0.10


def image_hashes(images: torch.Tensor) -> np.ndarray:
    """One blake2b digest of each image's stored pixels (N x DIGEST_SIZE bytes): equal digests, equal images."""
    out = np.empty((len(images), DIGEST_SIZE), dtype=np.uint8)
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    for i in range(len(arr)):
        out[i] = np.frombuffer(hashlib.blake2b(np.ascontiguousarray(arr[i]).tobytes(),
                                               digest_size=DIGEST_SIZE).digest(), dtype=np.uint8)
    return out


def content_hash(hashes: np.ndarray, labels: torch.Tensor | np.ndarray) -> str:
    """A short hash of a split's (image, label) pairs, whatever their order: two runs with equal hashes used the
    same images with the same labels."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = sorted(h.tobytes() + int(y).to_bytes(8, "little", signed=True) for h, y in zip(hashes, labels,
                                                                                          strict=True))
    digest = hashlib.blake2b(digest_size=6)
    for row in rows:
        digest.update(row)
    return digest.hexdigest()


def shared_with(hashes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Boolean mask over ``hashes``: the images whose pixels also occur among ``others``."""
    seen = {h.tobytes() for h in others}
    return np.array([h.tobytes() in seen for h in hashes], dtype=bool)


def filed_elsewhere(hashes: np.ndarray, labels: np.ndarray, others: np.ndarray, other_labels: np.ndarray) -> np.ndarray:
    """Boolean mask over ``hashes``: the images whose pixels occur among ``others`` under another label (a training
    image that is also a test image of another class: one of the two is mislabelled)."""
    seen: dict[bytes, set[int]] = {}
    for h, y in zip(others, np.asarray(other_labels).tolist(), strict=True):
        seen.setdefault(h.tobytes(), set()).add(int(y))
    return np.array([bool(seen.get(h.tobytes(), set()) - {int(y)})
                     for h, y in zip(hashes, np.asarray(labels).tolist(), strict=True)], dtype=bool)


def label_conflicts(hashes: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """The positions of images whose pixels another image also has under another label, one list per set of
    copies (in order): at least one of each set is mislabelled, and training sees one image with two answers."""
    by_pixels: dict[bytes, list[int]] = {}
    for i, h in enumerate(hashes):
        by_pixels.setdefault(h.tobytes(), []).append(i)
    labels = np.asarray(labels)
    return [group for group in by_pixels.values() if len(set(labels[group].tolist())) > 1]


# A held-out image whose perceptual hash is within this many of 64 bits of a training image's is a candidate
# near-copy (the same photo resized, re-saved or lightly edited): `fm2edge data` names such pairs, runs count them,
# once their structural similarity confirms them (NEAR_COPY_SSIM).
NEAR_COPY_BITS = 8
# At most this many training images within NEAR_COPY_BITS are compared with each held-out image, nearest first.
CANDIDATES_PER_IMAGE = 8


HASHED_SIDE = 64  # images are sampled down to about this many pixels a side before they are hashed


def perceptual_hashes(images: torch.Tensor, chunk: int = 512) -> np.ndarray:
    """A 64-bit difference hash (dHash) of each image (N x 8 bytes): its grey levels averaged into 8 x 9 cells, one
    bit per pair of neighbouring cells (is the right one brighter?). Resizing, re-encoding and small edits change a
    few bits; another photo changes about half. Written here rather than taken from ``imagehash``, whose hashes are
    made one PIL image at a time: this hashes the stored uint8 tensors in batches, with the same definition."""
    out = np.empty((len(images), 8), dtype=np.uint8)
    step = max(1, min(images.shape[-2:]) // HASHED_SIDE)  # every step-th pixel: the cells average ~50 of them
    for lo in range(0, len(images), chunk):
        cells = torch.nn.functional.adaptive_avg_pool2d(grey_levels(images[lo:lo + chunk, :, ::step, ::step]),
                                                        (8, 9))[:, 0]
        bits = (cells[..., 1:] > cells[..., :-1]).reshape(len(cells), 64).numpy()
        out[lo:lo + chunk] = np.packbits(bits, axis=1)
    return out


def grey_levels(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float luma (ITU-R BT.601 weights, 0-255) of uint8 (N, 3, H, W) RGB images."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True)


def hash_distances(held: np.ndarray, train: np.ndarray, budget: int = 1 << 22):
    """The bits between ``held``'s and ``train``'s perceptual hashes, a block of held-out rows at a time (about
    ``budget`` pairs each): yields (the block's first held-out position, its (rows, len(train)) distances)."""
    if len(train) == 0:
        return
    a, b = held.view(np.uint64)[:, 0], train.view(np.uint64)[:, 0]
    step = max(1, budget // len(b))
    for lo in range(0, len(a), step):
        yield lo, popcount(a[lo:lo + step, None] ^ b[None, :])


def nearest_hashes(held: np.ndarray, train: np.ndarray, budget: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``held``'s perceptual hashes, the nearest of ``train``'s: (its index, how many bits differ)."""
    index, bits = np.zeros(len(held), dtype=np.int64), np.full(len(held), 64, dtype=np.int64)
    for lo, dist in hash_distances(held, train, budget):
        index[lo:lo + len(dist)] = dist.argmin(1)
        bits[lo:lo + len(dist)] = dist.min(1)
    return index, bits


def hash_candidates(held: np.ndarray, train: np.ndarray, max_bits: int = NEAR_COPY_BITS,
                    per_image: int = CANDIDATES_PER_IMAGE, budget: int = 1 << 22
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of a held-out and a training hash at most ``max_bits`` apart, at most ``per_image`` per held-out
    hash (the nearest): (held-out positions, training positions, bits), ordered by held-out position, then bits."""
    found = [(np.zeros(0, dtype=np.int64),) * 3]
    for lo, dist in hash_distances(held, train, budget):
        close = np.flatnonzero(dist.min(1) <= max_bits)  # most rows have none: not scanned pair by pair
        rows, cols = np.nonzero(dist[close] <= max_bits)
        rows = close[rows]
        bits = dist[rows, cols].astype(np.int64)
        order = np.lexsort((bits, rows))
        rows, cols, bits = rows[order], cols[order], bits[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # each pair's place among its row's
        keep = rank < per_image
        found.append((rows[keep] + lo, cols[keep], bits[keep]))
    return tuple(np.concatenate(parts).astype(np.int64) for parts in zip(*found, strict=True))


# A candidate pair is a near-copy where the structural similarity of its grey levels at SSIM_SIDE px a side is at
# least NEAR_COPY_SSIM. The hash alone reads two different things on one flat background as one: on 28 px
# Fashion-MNIST products (grey on black) 441 of 2,000 test images had a training image within 4 bits (a bag beside a
# dress), on clip art a red and a yellow traffic light 0 bits apart. On photos the similarity is what tells: of the
# 92 CIFAR-10 test images within 4 bits of a training image, the 81 of the same photo (shifted, cropped, recoloured)
# scored 0.53-0.98 and the 11 others 0.12-0.49; from 5 to 8 bits, where the hash alone named about half wrongly,
# every pair looked at that scored 0.7 or more was the same photo (benchmarks/near_copies.py: 80 named at 4 bits
# and 0.6, 165 at 8 bits and 0.7).
NEAR_COPY_SSIM = 0.7
SSIM_SIDE = 32
# A window of the similarity where neither image's grey levels vary by this many of 255 (standard deviation) is flat
# (a plain background): two flat windows agree whatever the images are, so they are left out of the mean.
FLAT_STD = 5.0
SIMILARITY_CHUNK = 1024  # pairs scored at once: their images are copied out of the splits to be compared


def structural_similarity(a: torch.Tensor, b: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray] | None = None,
                          side: int = SSIM_SIDE, chunk: int | None = None) -> np.ndarray:
    """The mean structural similarity (SSIM; Wang et al., IEEE TIP 2004: 7 x 7 Gaussian windows of sigma 1.5,
    K1 0.01, K2 0.03) of each pair of uint8 (N, 3, H, W) images, ``a[i]`` with ``b[i]`` (or, with ``pairs`` =
    (i, j), ``a[i[k]]`` with ``b[j[k]]``, gathered SIMILARITY_CHUNK pairs at a time), on their grey levels
    sampled to ``side`` px a side, averaged over the windows where either image varies (FLAT_STD); a pair flat all
    over is averaged over every window. 1 for equal images. Written here rather than taken from scikit-image or
    torchmetrics: neither leaves flat windows out, and this scores the stored tensors in batches."""
    x = torch.arange(7, dtype=torch.float32) - 3
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    rows, cols = pairs if pairs is not None else (np.arange(len(a)), np.arange(len(a)))
    chunk = chunk or SIMILARITY_CHUNK
    out = np.empty(len(rows), dtype=np.float64)
    for lo in range(0, len(rows), chunk):
        picked = (t[torch.from_numpy(np.asarray(i[lo:lo + chunk], dtype=np.int64))] for t, i in ((a, rows), (b, cols)))
        p, q = (torch.nn.functional.interpolate(grey_levels(t), size=(side, side), mode="area") for t in picked)
        mean_p, mean_q = (torch.nn.functional.conv2d(t, window) for t in (p, q))
        var_p, var_q, cov = (torch.nn.functional.conv2d(t, window) - m for t, m in
                             ((p * p, mean_p ** 2), (q * q, mean_q ** 2), (p * q, mean_p * mean_q)))
        score = ((2 * mean_p * mean_q + c1) * (2 * cov + c2)) / ((mean_p ** 2 + mean_q ** 2 + c1)
                                                                 * (var_p + var_q + c2))
        varied = (torch.maximum(var_p, var_q) > FLAT_STD ** 2).float()
        varied[varied.sum((1, 2, 3)) == 0] = 1.0  # flat all over: every window counts
        out[lo:lo + chunk] = ((score * varied).sum((1, 2, 3)) / varied.sum((1, 2, 3))).numpy()
    return out


# Below this many pixels a side the 8 x 9 cells of a perceptual hash are not averages of anything: scikit-learn's 8 x
# 8 digits hash alike (77% of their test images within NEAR_COPY_BITS of a training image), so they are not compared.
MIN_HASHED_SIDE = 16


def near_copies(held, train) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The images of ``held`` (an ``ImageData``) that look like one of ``train``'s: (their positions, the training
    image's, the hash bits that differ, the structural similarity), each the most similar of the training images
    whose hashes are at most NEAR_COPY_BITS apart (CANDIDATES_PER_IMAGE nearest) and whose similarity is at least
    NEAR_COPY_SSIM; None where the images are too small to tell (below MIN_HASHED_SIDE px). Searched once per pair
    of splits: the load's warning, every run's metrics, `auto`'s test reading and `fm2edge data` ask again, and get
    the answer kept on ``held``."""
    if held.near is not None and held.near[0] == train.fingerprint:
        return held.near[1]
    found = None
    if min(train.image_size) >= MIN_HASHED_SIDE:
        rows, cols, bits = hash_candidates(held.perceptual_hashes(), train.perceptual_hashes())
        similarity = structural_similarity(held.images, train.images, (rows, cols))
        ok = similarity >= NEAR_COPY_SSIM
        rows, cols, bits, similarity = rows[ok], cols[ok], bits[ok], similarity[ok]
        order = np.lexsort((-similarity, rows))  # per held-out image, the most similar first
        first = order[np.unique(rows[order], return_index=True)[1]]
        found = rows[first], cols[first], bits[first], similarity[first]
    held.near = (train.fingerprint, found)
    return found


def popcount(x: np.ndarray) -> np.ndarray:
    """The set bits of each uint64: numpy's own where it has one (2.0 and later), else the classic SWAR sum."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


def check_classes(names: Sequence[str], train_labels: np.ndarray, others: dict[str, np.ndarray], source: str) -> None:
    """At least two classes have training images, and every class that another split holds has some."""
    trained = set(np.unique(train_labels[train_labels >= 0]).tolist())
    for split, labels in others.items():
        missing = sorted(set(np.unique(labels).tolist()) - trained)
        if missing:
            raise Fm2EdgeError(f"class '{names[missing[0]]}' has images in split '{split}' of '{source}' but no "
                               f"training image; add training images of it, or remove it from '{split}'")
    if len(trained) < 2:
        only = f" ('{names[next(iter(trained))]}')" if trained else ""
        raise Fm2EdgeError(f"'{source}' has training images of only {len(trained)} class{only}; a classifier needs at "
                           f"least two: add labelled images of another class")


def check_disjoint(val_idx: np.ndarray, test_idx: np.ndarray, split: str) -> None:
    """Validation and test cut from one source split must not share a row (a programming error if they do)."""
    common = np.intersect1d(val_idx, test_idx)
    if len(common):
        raise Fm2EdgeError(f"validation and test share {len(common)} image(s) of split '{split}' (e.g. row "
                           f"{int(common[0])}); this is a bug in fm2edge: please report it with the command line")


def binomial_half_width(n: int, p: float = 0.5, z: float = 1.96) -> float:
    """Half the width of the 95% Wilson interval of an accuracy ``p`` measured on ``n`` images (worst case at
    p = 0.5): how far apart two accuracies must be before ``n`` images can tell them apart."""
    if n <= 0:
        return math.inf
    centre_pad = z * z / (4 * n * n)
    return z * math.sqrt(p * (1 - p) / n + centre_pad) / (1 + z * z / n)


def effective_images(counts: Sequence[int]) -> int:
    """How many images plain accuracy needs to be as noisy as balanced accuracy (the mean of the classes'
    accuracies) over classes of ``counts`` validation images: with each class at the same accuracy p, balanced
    accuracy's variance is p(1 - p) * sum(1 / n_k) / K^2, accuracy's on K^2 / sum(1 / n_k) images (rounded down).
    Classes with no image are left out, as balanced accuracy leaves them out; 0 where none has one."""
    present = [int(n) for n in counts if n > 0]
    # in fractions: in floats one class of 105 images came to 104.99...
    return math.floor(len(present) ** 2 / sum(Fraction(1, n) for n in present)) if present else 0


def balanced_selection_noise(counts: Sequence[int], class_names: Sequence[str], what: str = "epochs") -> dict:
    """:func:`selection_noise` for balanced accuracy over classes of ``counts`` validation images: its half-width
    is accuracy's on :func:`effective_images` images (``effective_images``), which the smallest classes decide."""
    n = effective_images(counts)
    out = {**selection_noise(n, what), "val_images": int(sum(counts)), "effective_images": n}
    if out["noisy"]:
        small = min((i for i, c in enumerate(counts) if c > 0), key=lambda i: counts[i], default=0)
        out["warning"] = (f"validation's balanced accuracy rests on its smallest class ({int(counts[small])} of "
                          f"{int(sum(counts))} images are '{class_names[small]}'): it is known to "
                          f"+-{100 * out['half_width']:.1f} points (95% interval), as accuracy is on {n} images, too "
                          f"coarse to rank {what} that differ by less; give validation more images of the small "
                          f"classes")
    return out


def selection_noise(n_val: int, what: str = "epochs") -> dict:
    """How well ``n_val`` validation images can rank ``what``: the 95% interval's half-width, and a warning when it
    is too wide (fewer than MIN_SELECTION_IMAGES images or wider than MAX_SELECTION_HALF_WIDTH), with what helps:
    for epochs a fixed schedule (--train.select last), for anything else (`auto`'s candidates, which train a fixed
    schedule then) more validation images."""
    half = binomial_half_width(n_val)
    noisy = n_val < MIN_SELECTION_IMAGES or half > MAX_SELECTION_HALF_WIDTH
    out = {"val_images": int(n_val), "half_width": round(half, 4), "noisy": noisy}
    if noisy:
        remedy = ("choose with --train.select last (a fixed schedule), or give validation more images"
                  if what == "epochs" else
                  "give validation more images (a val/ folder beside train/, or a larger --data.val_fraction)")
        out["warning"] = (f"validation holds {n_val} images: its accuracy is known to +-{100 * half:.1f} points "
                          f"(95% interval), too coarse to rank {what} that differ by less; {remedy}")
    return out
