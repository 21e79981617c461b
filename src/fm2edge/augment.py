"""Batched, seeded augmentation on the device, as *views*: every image's random choices are drawn first as one row
of numbers (:class:`Views`), then rendered at any resolution.

Drawing and rendering apart is what consistent teaching needs (Beyer et al., CVPR 2022, "Knowledge distillation: a
good teacher is patient and consistent"): the student and the teacher render the *same* crop, flip, colour change
and mix, each at its own input size, and the soft target of a mixed image is the teacher's output on that mixed
image. It is also what cached views need (FKD, Shen & Xing, ECCV 2022): the rows are stored with the teacher's
outputs and replayed exactly.

torchvision's ``transforms.v2`` draws one set of parameters per call, so on a batch every image would get the same
crop, and it does not hand back what it drew; hence the sampling here is written out (vectorised, from a
``torch.Generator``). Rendering is batched where that is faster: the colour jitter is one 3x3 colour matrix per
image and the TrivialAugment / RandAugment operations run once per kind over all the images that drew it, with
``transforms.v2.functional``'s arithmetic (pixel for pixel what it gives image by image); the crop and flip is one
separable, antialiased resample of the batch on a GPU and for small views, and torch's uint8 resize box by box on a
CPU at photo sizes, where that kernel beats any float resample of the batch (:func:`crop_resize`).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fm2edge.config import AugmentConfig

# The columns of a view row: crop box (fractions of the image), flip, colour factors, up to two operations with
# their magnitudes, the mix partner (a dataset index, -1 for none), the share of the image's own pixels (lam), the
# cut-out box of CutMix (fractions; zero size for MixUp), and the cached view's slot (-1 when drawn online).
COLUMNS = ("top", "left", "height", "width", "flip", "brightness", "contrast", "saturation", "op1", "mag1", "op2",
           "mag2", "partner", "lam", "cut_top", "cut_left", "cut_height", "cut_width", "slot")
COL = {name: i for i, name in enumerate(COLUMNS)}

# Bumped whenever rendering changes the pixels a stored view gives, so caches of teacher outputs on views made
# before are not replayed against other pixels (3: each model's views resampled with its own interpolation).
RENDER_VERSION = 3

# TrivialAugment's "wide" space (Mueller & Hutter, ICCV 2021), as torchvision's TrivialAugmentWide defines it:
# (name, magnitude range at full strength, signed).
OPS: tuple[tuple[str, float, bool], ...] = (
    ("identity", 0.0, False), ("shear_x", 0.99, True), ("shear_y", 0.99, True), ("translate_x", 32.0, True),
    ("translate_y", 32.0, True), ("rotate", 135.0, True), ("brightness", 0.99, True), ("color", 0.99, True),
    ("contrast", 0.99, True), ("sharpness", 0.99, True), ("posterize", 6.0, False), ("solarize", 255.0, False),
    ("autocontrast", 0.0, False), ("equalize", 0.0, False))


@dataclass
class Views:
    """One row of view parameters per image (see ``COLUMNS``), float64 so dataset indices stay exact."""

    params: torch.Tensor  # (N, len(COLUMNS))

    def __len__(self) -> int:
        return len(self.params)

    def col(self, name: str) -> torch.Tensor:
        return self.params[:, COL[name]]

    @property
    def mixes(self) -> bool:
        return bool((self.col("partner") >= 0).any())

    def to(self, device: torch.device) -> Views:
        return Views(self.params.to(device))


def uniform(n: int, lo: float, hi: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def draw_views(n: int, cfg: AugmentConfig, generator: torch.Generator, num_images: int,
               image_size: int = 32) -> Views:
    """Draw ``n`` views (one per image of a batch) from ``generator``; mix partners come from ``[0, num_images)``.
    ``image_size`` (the stored images' size) turns the "pad" crop's pixel shift into fractions."""
    dev = generator.device
    p = torch.zeros(n, len(COLUMNS), dtype=torch.float64, device=dev)
    p[:, COL["height"]] = p[:, COL["width"]] = 1.0
    p[:, COL["brightness"]] = p[:, COL["contrast"]] = p[:, COL["saturation"]] = 1.0
    p[:, COL["op1"]] = p[:, COL["op2"]] = -1
    p[:, COL["partner"]] = -1
    p[:, COL["lam"]] = 1.0
    p[:, COL["slot"]] = -1
    if cfg.crop == "resized":
        # RandomResizedCrop's distribution (area share uniform, aspect ratio log-uniform), drawn for all images at
        # once; a box that does not fit is shrunk to fit rather than redrawn (torchvision retries ten times).
        area = uniform(n, cfg.scale[0], cfg.scale[1], generator, dev)
        log_r = uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator, dev)
        w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
        h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        p[:, COL["height"]], p[:, COL["width"]] = h, w
        p[:, COL["top"]] = torch.rand(n, generator=generator, device=dev, dtype=torch.float64) * (1 - h)
        p[:, COL["left"]] = torch.rand(n, generator=generator, device=dev, dtype=torch.float64) * (1 - w)
    elif cfg.crop == "pad":
        # the CIFAR classic: pad by cfg.pad pixels, crop the original size back at a random offset
        shift = torch.randint(-cfg.pad, cfg.pad + 1, (n, 2), generator=generator, device=dev).double() / image_size
        p[:, COL["top"]], p[:, COL["left"]] = shift[:, 0], shift[:, 1]
    if cfg.flip:
        p[:, COL["flip"]] = (torch.rand(n, generator=generator, device=dev) < 0.5).double()
    if cfg.jitter > 0:
        for name in ("brightness", "contrast", "saturation"):
            p[:, COL[name]] = uniform(n, 1 - cfg.jitter, 1 + cfg.jitter, generator, dev)
    if cfg.auto != "none":
        count = 1 if cfg.auto == "trivial" else 2
        for k in range(1, count + 1):
            p[:, COL[f"op{k}"]] = torch.randint(0, len(OPS), (n,), generator=generator, device=dev).double()
            # the sign of the strength is the direction of a signed operation (shear, rotate, brightness, ...)
            sign = torch.where(torch.rand(n, generator=generator, device=dev) < 0.5, -1.0, 1.0).double()
            if cfg.auto == "trivial":  # TrivialAugment: a uniformly random strength per image
                p[:, COL[f"mag{k}"]] = sign * torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
            else:  # RandAugment: a fixed strength (of 30 bins, as torchvision counts them)
                p[:, COL[f"mag{k}"]] = sign * cfg.magnitude / 30
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mix_partners(p, cfg, generator, num_images)
    return Views(p)


def mix_partners(p: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, num_images: int) -> None:
    """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019): each chosen image gets a partner from the whole
    dataset (not only the batch, so a stored view can be replayed in any batch) and a share lam ~ Beta(a, a) of its
    own pixels; with both enabled each image takes one of the two at random, as timm's Mixup does."""
    n, dev = len(p), p.device
    chosen = torch.rand(n, generator=generator, device=dev) < cfg.mix_prob
    partner = torch.randint(0, num_images, (n,), generator=generator, device=dev)
    use_cut = torch.rand(n, generator=generator, device=dev) < (0.5 if cfg.mixup > 0 and cfg.cutmix > 0 else
                                                                 float(cfg.cutmix > 0))
    # torch's Beta sampler takes no generator: NumPy's, seeded from this one, keeps the draw reproducible
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator, device=dev)))
    lam_mix = rng.beta(cfg.mixup, cfg.mixup, n) if cfg.mixup > 0 else np.ones(n)
    lam_cut = rng.beta(cfg.cutmix, cfg.cutmix, n) if cfg.cutmix > 0 else np.ones(n)
    lam = torch.where(use_cut, torch.as_tensor(lam_cut, device=dev), torch.as_tensor(lam_mix, device=dev))
    # CutMix's box covers a share 1 - lam of the image; clipped at the border, lam becomes the share left
    side = torch.sqrt(1 - lam)
    cy = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    cx = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    top, bottom = (cy - side / 2).clamp(0, 1), (cy + side / 2).clamp(0, 1)
    left, right = (cx - side / 2).clamp(0, 1), (cx + side / 2).clamp(0, 1)
    cut = use_cut & chosen
    p[:, COL["partner"]] = torch.where(chosen, partner.double(), p[:, COL["partner"]])
    p[:, COL["lam"]] = torch.where(cut, 1 - (bottom - top) * (right - left), torch.where(chosen, lam, 1.0))
    p[:, COL["cut_top"]] = torch.where(cut, top, 0.0)
    p[:, COL["cut_left"]] = torch.where(cut, left, 0.0)
    p[:, COL["cut_height"]] = torch.where(cut, bottom - top, 0.0)
    p[:, COL["cut_width"]] = torch.where(cut, right - left, 0.0)


# ---------------------------------------------------------------- rendering


def cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel at distances ``t`` (support 2), with a = -0.5 as PIL and
    ``interpolate(mode="bicubic", antialias=True)`` use it."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def triangle(t: torch.Tensor) -> torch.Tensor:
    """The bilinear (triangle) kernel at distances ``t`` (support 1)."""
    return (1 - t.abs()).clamp_(min=0)


KERNELS = {"bilinear": (triangle, 1.0), "bicubic": (cubic, 2.0)}  # interpolation -> (kernel, support)


def kernel_of(interpolation: str) -> str:
    """The resampling kernel that stands for a model's interpolation: bicubic as bicubic, any other as bilinear
    (as :class:`~fm2edge.models.preprocess.Preprocess` resizes)."""
    return interpolation if interpolation in KERNELS else "bilinear"


def taps(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
         interpolation: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output pixel of a resampled box reads, and with what weights: ``start`` and ``length`` (N,) are
    every image's box along one axis in input pixels. The filter is the triangle (bilinear) or Keys cubic one
    (``interpolation``), widened by the shrink factor when a box is larger than the output (antialiasing, as PIL
    and ``interpolate(antialias=True)`` compute it), so a box shrunk 3x averages its pixels instead of skipping two
    of three. Only pixels of the box that lie in the image carry weight, as when the box is cut out first and then
    resized (the rest are renormalised; an output pixel whose centre falls outside the image is zero, as in a
    zero-padded image). Returns ``index`` (N, out, T) into [0, in_size) and ``weight`` (N, out, T) float32, T the
    most taps any image needs."""
    kernel, radius = KERNELS[kernel_of(interpolation)]
    scale = length / out_size
    stretch = scale.clamp(min=1.0)
    support = radius * stretch
    centre = start[:, None] + (torch.arange(out_size, dtype=start.dtype, device=start.device) + 0.5) * scale[:, None]
    count = max(int(math.ceil(2 * float(support.max()) - 1e-9)), 1)
    first = torch.floor(centre - support[:, None] - 0.5) + 1
    index = first[..., None] + torch.arange(count, dtype=start.dtype, device=start.device)
    weight = kernel((index + 0.5 - centre[..., None]) / stretch[:, None, None])
    total = weight.sum(-1, keepdim=True)
    lo, hi = start.clamp(min=0)[:, None, None], (start + length).clamp(max=in_size)[:, None, None]
    weight = torch.where((index >= lo) & (index < hi), weight, 0.0)
    kept = weight.sum(-1, keepdim=True)
    centre_in = ((centre >= 0) & (centre <= in_size))[..., None]
    some = kept.abs() > 1e-12  # a cubic's weights may sum below zero near a border; only none at all falls back
    weight = torch.where(centre_in & some, weight / torch.where(some, kept, 1.0), weight / total.clamp(min=1e-12))
    return index.clamp_(0, in_size - 1).long(), weight.float()


def crop_resize(images: torch.Tensor, views: Views, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Every image's own box resized to ``size`` x ``size`` (antialiased, with the model's own ``interpolation``
    kernel, bilinear or bicubic, as if the box were cut out and then resized) and flipped where its view says.
    Boxes inside the image snap to whole stored pixels, on every device and at every output size, so a teacher and
    a student rendering one view at their own sizes cut the same box. On a CPU, for outputs of 64 px and more or
    boxes larger than the output, each box goes through torch's uint8 resize kernel (the one ``transforms.v2``
    uses): uint8 out. Elsewhere (a GPU, small unshrunk views such as CIFAR's, the "pad" crop's boxes past the
    border) :func:`resample` takes the whole batch at once: float32 out (0..255), the same pixels to within a level
    of rounding (bilinear) or a few (bicubic, whose uint8 kernel rounds between its two passes, as PIL does)."""
    p = views.params
    n, _, h, w = images.shape
    full = bool(((p[:, COL["top"]] == 0) & (p[:, COL["left"]] == 0) & (p[:, COL["height"]] == 1)
                 & (p[:, COL["width"]] == 1)).all())
    if full and (h, w) == (size, size):  # no crop: only the flips
        flip = p[:, COL["flip"]].to(images.device) > 0
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images) if bool(flip.any()) else images
    boxes = pixel_boxes(p, h, w)
    # image by image where the pixels outweigh the loop: outputs of 64 px and more, or boxes shrunk (whose
    # antialiasing filter gives the batched resample more taps); small unshrunk views (CIFAR's 32 px) go faster batched
    if boxes is not None and images.device.type == "cpu" and (size >= 64 or float(boxes[:, 2:].max()) > size):
        return resize_each(images, boxes.long().tolist(), (p[:, COL["flip"]] > 0).tolist(), size, interpolation)
    return resample(images, views, size, boxes, interpolation)


def pixel_boxes(p: torch.Tensor, h: int, w: int) -> torch.Tensor | None:
    """The views' boxes snapped to whole pixels, (N, 4) float64 rows of top, left, height, width, at least one
    pixel each; None when a box leaves the image (the "pad" crop)."""
    p = p.double()
    top, left = (p[:, COL["top"]] * h).round(), (p[:, COL["left"]] * w).round()
    bottom = ((p[:, COL["top"]] + p[:, COL["height"]]) * h).round()
    right = ((p[:, COL["left"]] + p[:, COL["width"]]) * w).round()
    if bool((top < 0).any() or (left < 0).any() or (bottom > h).any() or (right > w).any()):
        return None
    height, width = (bottom - top).clamp(min=1), (right - left).clamp(min=1)
    return torch.stack([torch.minimum(top, h - height), torch.minimum(left, w - width), height, width], 1)


def resize_each(images: torch.Tensor, boxes: list[list[int]], flips: list[bool], size: int,
                interpolation: str = "bilinear") -> torch.Tensor:
    """Each box through torch's antialiased uint8 resize, one image at a time, the images shared among as many
    threads as torch uses. Written as a loop on purpose: on a CPU that vectorised uint8 kernel (what
    ``transforms.v2.functional.resized_crop`` calls) is several times faster than any float resample of the whole
    batch (``benchmarks/augment_speed.py`` measures both), and at these sizes the loop's own cost is small beside the
    pixels. The kernel releases the GIL but keeps to one core on one image, hence the threads (a pool per call, so
    forked data-loader workers never inherit one)."""
    out = torch.empty(len(images), images.shape[1], size, size, dtype=torch.uint8)
    mode = kernel_of(interpolation)

    def resize(i: int) -> None:
        top, left, height, width = boxes[i]
        box = images[i:i + 1, :, top:top + height, left:left + width]
        resized = F.interpolate(box, size=(size, size), mode=mode, antialias=True, align_corners=False)
        out[i] = resized[0].flip(-1) if flips[i] else resized[0]

    workers = max(1, min(torch.get_num_threads(), len(boxes)))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda first: [resize(i) for i in range(first, len(boxes), workers)], range(workers)))
    return out


def resample(images: torch.Tensor, views: Views, size: int, boxes: torch.Tensor | None = None,
             interpolation: str = "bilinear") -> torch.Tensor:
    """Every image's own box resized to ``size`` x ``size`` and flipped where its view says, float32 (0..255),
    the whole batch at once: separable resampling, rows first (one ``index_select`` of whole rows per tap) then
    columns (one ``gather`` per tap), each image with its own :func:`taps` (antialiased as ``interpolate`` is, to
    float precision). ``boxes``: (N, 4) top, left, height, width in pixels (default: the views' own, unsnapped).
    ``roi_align`` or ``grid_sample`` would take every image's box in one call too, but neither antialiases a
    shrink."""
    n, c, h, w = images.shape
    p = views.params.to(images.device)
    if boxes is None:
        boxes = torch.stack([p[:, COL["top"]] * h, p[:, COL["left"]] * w, p[:, COL["height"]] * h,
                             p[:, COL["width"]] * w], 1)
    boxes = boxes.to(device=images.device, dtype=torch.float64)
    rows, row_w = taps(boxes[:, 0], boxes[:, 2], h, size, interpolation)
    cols, col_w = taps(boxes[:, 1], boxes[:, 3], w, size, interpolation)
    flip = p[:, COL["flip"]] > 0
    if bool(flip.any()):  # a mirrored view reads its columns right to left
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
        col_w = torch.where(flip[:, None, None], col_w.flip(1), col_w)
    flat = images.reshape(n * c * h, w)
    first_row = (torch.arange(n * c, device=images.device) * h).view(n, c, 1)
    out_rows = None
    for t in range(rows.shape[-1]):
        picked = flat.index_select(0, (first_row + rows[:, None, :, t]).flatten()).view(n, c, size, w).float()
        weight = row_w[:, None, :, t, None]
        out_rows = picked.mul_(weight) if out_rows is None else out_rows.addcmul_(picked, weight)
    out = None
    for t in range(cols.shape[-1]):
        picked = out_rows.gather(3, cols[:, None, None, :, t].expand(n, c, size, size))
        weight = col_w[:, None, None, :, t]
        out = picked.mul_(weight) if out is None else out.addcmul_(picked, weight)
    return out.clamp_(0, 255) if kernel_of(interpolation) == "bicubic" else out  # a cubic overshoots edges


LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale weighs the channels


def colour_matrices(views: Views, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brightness b, contrast c and saturation s of each view as one affine colour map, y = M x + t:
    brightness scales, contrast pulls towards the image's mean luma (``means``: (N, 3) channel means before the
    map), saturation towards each pixel's own luma. Composed without clamping in between, the three are one 3x3
    matrix and an offset per image, so the whole jitter is a single batched multiply over the pixels."""
    p = views.params.to(means.device).double()
    b, c, s = (p[:, COL[k]] for k in ("brightness", "contrast", "saturation"))
    luma = torch.tensor(LUMA, dtype=torch.float64, device=means.device)
    eye = torch.eye(3, dtype=torch.float64, device=means.device)
    sat = s[:, None, None] * eye + (1 - s)[:, None, None] * luma.expand(3, 3)  # every row sees the same luma
    matrix = (c * b)[:, None, None] * sat
    mean_luma = b * (means.double() @ luma)
    offset = ((1 - c) * mean_luma)[:, None] * sat.sum(-1)
    return matrix.float(), offset.float()


def colour(x: torch.Tensor, views: Views) -> torch.Tensor:
    """The views' colour jitter: float images (N, 3, H, W) through their colour maps; returned as given (uint8
    included) when no view changes colour."""
    p = views.params
    if bool(((p[:, COL["brightness"]] == 1) & (p[:, COL["contrast"]] == 1) & (p[:, COL["saturation"]] == 1)).all()):
        return x
    n, c, h, w = x.shape
    x = x.float()
    matrix, offset = colour_matrices(views, x.mean((2, 3)))
    return torch.baddbmm(offset[:, :, None], matrix, x.reshape(n, c, h * w)).view(n, c, h, w)


def apply_op(img: torch.Tensor, op: int, magnitude: float) -> torch.Tensor:
    """One TrivialAugment / RandAugment operation on one uint8 image, through transforms.v2.functional.
    ``magnitude`` in [-1, 1] scales the operation's range; its sign is the direction of a signed operation."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    name, top, signed = OPS[op]
    m = (magnitude if signed else abs(magnitude)) * top
    size = img.shape[-1]
    if name == "identity":
        return img
    if name in ("shear_x", "shear_y"):
        shear = [math.degrees(math.atan(m)), 0.0] if name == "shear_x" else [0.0, math.degrees(math.atan(m))]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=InterpolationMode.NEAREST, center=[0, 0])
    if name in ("translate_x", "translate_y"):
        shift = int(m * size / 32)  # torchvision's 32-pixel range, relative to the image size
        return TF.affine(img, angle=0.0, translate=[shift, 0] if name == "translate_x" else [0, shift], scale=1.0,
                         shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST)
    if name == "rotate":
        return TF.rotate(img, m, interpolation=InterpolationMode.NEAREST)
    if name == "brightness":
        return TF.adjust_brightness(img, 1 + m)
    if name == "color":
        return TF.adjust_saturation(img, 1 + m)
    if name == "contrast":
        return TF.adjust_contrast(img, 1 + m)
    if name == "sharpness":
        return TF.adjust_sharpness(img, 1 + m)
    if name == "posterize":
        return TF.posterize(img, 8 - int(m))
    if name == "solarize":
        return TF.solarize(img, 255.0 - m)
    if name == "autocontrast":
        return TF.autocontrast(img)
    return TF.equalize(img)


def operations_per_image(x: torch.Tensor, views: Views) -> torch.Tensor:
    """The drawn TrivialAugment / RandAugment operations, image by image through ``transforms.v2.functional`` (each
    image has its own operation and strength, and v2's functional ops take one setting per call): the reference
    that :func:`operations` matches."""
    p = views.params.cpu()
    rows = torch.nonzero(p[:, COL["op1"]] >= 0).flatten().tolist()
    if not rows:
        return x
    x = x.clone()
    for i in rows:
        img = x[i]
        for k in (1, 2):
            op = int(p[i, COL[f"op{k}"]])
            if op >= 0:
                img = apply_op(img, op, float(p[i, COL[f"mag{k}"]]))
        x[i] = img
    return x


def operations(x: torch.Tensor, views: Views) -> torch.Tensor:
    """The drawn TrivialAugment / RandAugment operations, batched: the images that drew one operation go through it
    together, each at its own strength (the same arithmetic as ``transforms.v2.functional``, which takes one
    strength per call, so its formulas are written here with a strength per row; the result equals
    :func:`operations_per_image` pixel for pixel)."""
    p = views.params.cpu()
    if not bool((p[:, COL["op1"]] >= 0).any()):
        return x
    x = x.clone()
    for k in (1, 2):
        ops = p[:, COL[f"op{k}"]].long()
        for op in ops.unique().tolist():
            if op < 0 or OPS[op][0] == "identity":
                continue
            rows = torch.nonzero(ops == op).flatten()
            signed = p[rows, COL[f"mag{k}"]] if OPS[op][2] else p[rows, COL[f"mag{k}"]].abs()
            at = rows.to(x.device)  # index_select / index_copy_: whole images copied, not pixels indexed one by one
            x.index_copy_(0, at, apply_op_batched(x.index_select(0, at), op, signed * OPS[op][1]))
    return x


def _factor(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row factors as (N, 1, 1, 1) float32 beside ``like``."""
    return values.to(device=like.device, dtype=torch.float32).view(-1, 1, 1, 1)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``transforms.v2.functional``'s blend of uint8 images with a ratio per row: image * r + other * (1 - r),
    clamped and truncated to uint8 as v2 does. v2 adds with ``add_(other, alpha=1 - r)`` (one fused multiply-add);
    ``addcmul`` is the same arithmetic with a tensor for alpha, bit for bit."""
    r = _factor(ratio, image)
    one_minus = _factor(1.0 - ratio, image)
    return torch.addcmul(image.mul(r), other, one_minus).clamp_(0, 255).to(torch.uint8)


def _gray(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def _inverse_affine(size: int, angle: float, translate: tuple[float, float], shear: tuple[float, float],
                    centre: float) -> list[float]:
    """torchvision's inverse affine matrix (``_get_inverse_affine_matrix``, scale 1), for one image: the matrix the
    sampling grid is made from. ``centre``: the centre in v2's coordinates (0 is the image centre)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx = cy = centre
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def _warp(images: torch.Tensor, matrices: list[list[float]]) -> torch.Tensor:
    """Nearest-neighbour resampling of every image through its own inverse affine matrix in one grid_sample:
    v2's ``_affine_grid`` with a matrix per row (zeros outside, rounded back to uint8)."""
    n, _, h, w = images.shape
    dev = images.device
    theta = torch.tensor(matrices, dtype=torch.float32, device=dev).view(n, 2, 3)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=dev)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=dev))
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _translate(images: torch.Tensor, shifts: list[int], dim: int) -> torch.Tensor:
    """Whole-pixel shifts along ``dim`` (-1: right for a positive shift, -2: down), zeros where nothing moved in:
    what v2's nearest-neighbour affine gives for a translation, as slice copies instead of a sampling grid."""
    out = torch.zeros_like(images)
    size = images.shape[dim]
    for i, s in enumerate(shifts):
        if abs(s) >= size:
            continue
        src, dst = images[i].narrow(dim, max(-s, 0), size - abs(s)), out[i].narrow(dim, max(s, 0), size - abs(s))
        dst.copy_(src)
    return out


def apply_op_batched(images: torch.Tensor, op: int, m: torch.Tensor) -> torch.Tensor:
    """One TrivialAugment / RandAugment operation on uint8 images (N, 3, H, W), strength ``m`` per row (float64,
    already scaled to the operation's range and signed where it is signed), as :func:`apply_op` does image by
    image."""
    from torchvision.transforms.v2 import functional as TF

    name = OPS[op][0]
    size = images.shape[-1]
    values = m.tolist()
    if name in ("shear_x", "shear_y"):
        shears = [(math.degrees(math.atan(v)), 0.0) if name == "shear_x" else (0.0, math.degrees(math.atan(v)))
                  for v in values]
        return _warp(images, [_inverse_affine(size, 0.0, (0.0, 0.0), s, -size * 0.5) for s in shears])
    if name in ("translate_x", "translate_y"):
        return _translate(images, [int(v * size / 32) for v in values], -1 if name == "translate_x" else -2)
    if name == "rotate":
        angles = [v % 360 for v in values]
        if any(a in (0.0, 90.0, 180.0, 270.0) for a in angles):  # v2's exact fast paths: image by image
            return torch.stack([apply_op(img, op, v / OPS[op][1]) for img, v in zip(images, values, strict=True)])
        return _warp(images, [_inverse_affine(size, -a, (0.0, 0.0), (0.0, 0.0), 0.0) for a in angles])
    if name == "brightness":
        return images.mul(_factor(1 + m, images)).clamp_(0, 255).to(torch.uint8)
    if name == "color":
        return _blend(images, _gray(images), 1 + m)
    if name == "contrast":
        mean = _gray(images).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(images, mean, 1 + m)
    if name == "sharpness":
        return torch.stack([TF.adjust_sharpness(img, 1 + v) for img, v in zip(images, values, strict=True)]) \
            if images.shape[-1] <= 2 else _sharpen(images, 1 + m)
    if name == "posterize":
        bits = (8 - m.long()).clamp(0, 8)
        mask = ((1 << bits) - 1) << (8 - bits)
        return images & mask.to(device=images.device, dtype=torch.uint8).view(-1, 1, 1, 1)
    if name == "solarize":
        # v2 compares the uint8 pixels with a float threshold; for whole numbers that is >= its ceiling, in uint8
        threshold = torch.ceil(_factor(255.0 - m, images)).clamp_(0, 255).to(torch.uint8)
        return torch.where(images >= threshold, 255 - images, images)
    if name == "autocontrast":
        return TF.autocontrast(images)
    return TF.equalize(images)


def _sharpen(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """v2's ``adjust_sharpness`` with a factor per row: the inner pixels blended with a 3x3 smoothing (1s around
    a 5, over 13), the border kept."""
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32, device=images.device)
    out = images.to(torch.float32, copy=True)
    blurred = F.conv2d(out, kernel.expand(3, 1, 3, 3), groups=3).round_()
    view = out[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view) * _factor(1.0 - factor, images))
    return out.clamp_(0, 255).to(torch.uint8)


def render_own(images: torch.Tensor, views: Views, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Crop, flip, colour and operations of each image's view, before any mixing: uint8 (N, 3, size, size). The
    colour map works on the crop's pixels before they are rounded, so a view is rounded to uint8 once before the
    operations (which work on uint8, as torchvision's do)."""
    x = colour(crop_resize(images, views, size, interpolation), views)
    if x.dtype != torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return operations(x, views)


def render(images: torch.Tensor, views: Views, size: int, partners: torch.Tensor | None = None,
           interpolation: str = "bilinear") -> torch.Tensor:
    """The views of ``images`` at ``size`` x ``size`` (uint8), resampled with ``interpolation`` (a model's own:
    bilinear or bicubic). ``partners`` holds each row's mix partner image (any image where there is none); the
    partner is rendered with the same view and then blended (MixUp) or pasted into the cut-out box (CutMix)."""
    x = render_own(images, views, size, interpolation)
    if partners is None or not views.mixes:
        return x
    other = render_own(partners, views, size, interpolation).float()
    p = views.params.to(x.device)
    lam = p[:, COL["lam"]].float().view(-1, 1, 1, 1)
    grid = (torch.arange(size, device=x.device, dtype=torch.float64) + 0.5) / size
    inside_y = (grid[None] >= p[:, COL["cut_top"], None]) & (grid[None] < (p[:, COL["cut_top"]] +
                                                                         p[:, COL["cut_height"]])[:, None])
    inside_x = (grid[None] >= p[:, COL["cut_left"], None]) & (grid[None] < (p[:, COL["cut_left"]] +
                                                                          p[:, COL["cut_width"]])[:, None])
    box = (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)
    is_cut = (p[:, COL["cut_height"]] > 0).view(-1, 1, 1, 1)
    has_partner = (p[:, COL["partner"]] >= 0).view(-1, 1, 1, 1)
    blended = lam * x.float() + (1 - lam) * other
    mixed = torch.where(is_cut, torch.where(box, other, x.float()), blended)
    return torch.where(has_partner, mixed, x.float()).round_().clamp_(0, 255).to(torch.uint8)


def model_views(preprocess, images: torch.Tensor, views: Views, partners: torch.Tensor | None = None) -> torch.Tensor:
    """A model's normalised input for the views: rendered at its input size with its own interpolation (a teacher
    probed on bicubic-resized images and shown bilinear views of upscaled 8 x 8 digits agreed with their labels on
    24% of them, on 100% of the same images resized as it was probed), then normalised as it was trained."""
    return preprocess.normalise(render(images, views, preprocess.size, partners, preprocess.interpolation))


def soft_targets(labels: torch.Tensor, views: Views | None, partner_labels: torch.Tensor | None,
                 num_classes: int) -> torch.Tensor:
    """Label distributions for the views: one-hot, mixed by lam with the partner's label; a row whose image or
    partner is unlabelled (-1) is all zeros (no label loss for it)."""
    own = F.one_hot(labels.clamp_min(0), num_classes).float() * (labels >= 0).float()[:, None]
    if views is None or partner_labels is None or not views.mixes:
        return own
    p = views.params.to(labels.device)
    lam = p[:, COL["lam"]].float()[:, None]
    has = (p[:, COL["partner"]] >= 0)
    other = F.one_hot(partner_labels.clamp_min(0), num_classes).float()
    known = (labels >= 0) & (partner_labels >= 0)
    mixed = (lam * own + (1 - lam) * other) * known.float()[:, None]
    return torch.where(has[:, None], mixed, own)


# ---------------------------------------------------------------- where a batch's views come from


class OnlineViews:
    """Views drawn afresh for every batch from the epoch's generator; None when augmentation is off."""

    def __init__(self, cfg: AugmentConfig, num_images: int, image_size: int) -> None:
        self.cfg, self.num_images, self.image_size = cfg, num_images, image_size

    def __call__(self, index: torch.Tensor, epoch: int, generator: torch.Generator) -> Views | None:
        if not self.cfg.active:
            return None
        return draw_views(len(index), self.cfg, generator, self.num_images, self.image_size)


class StoredViews:
    """Views drawn once, K per image, and replayed: epoch e shows every image its view e mod K (FKD's schedule),
    with the view's slot recorded so a task can look up what the teacher said about exactly that view."""

    def __init__(self, params: torch.Tensor) -> None:
        self.params = params  # (N, K, len(COLUMNS))

    @property
    def per_image(self) -> int:
        return int(self.params.shape[1])

    def __call__(self, index: torch.Tensor, epoch: int, generator: torch.Generator | None = None) -> Views:
        slot = epoch % self.per_image
        rows = self.params[index.cpu(), slot].clone()
        rows[:, COL["slot"]] = slot
        return Views(rows)


def draw_stored_views(num_images: int, per_image: int, cfg: AugmentConfig, seed: int, image_size: int) -> torch.Tensor:
    """``per_image`` views for each of ``num_images`` images, (N, K, len(COLUMNS)), from ``seed`` alone, so the
    same data and settings always give the same views (on any machine and any number of processes)."""
    generator = torch.Generator().manual_seed(seed)
    flat = draw_views(num_images * per_image, cfg, generator, num_images, image_size).params
    return flat.view(per_image, num_images, -1).transpose(0, 1).contiguous()
