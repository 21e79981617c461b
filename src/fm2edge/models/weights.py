"""Weights from elsewhere: a state dict saved by plain PyTorch or another run, loaded into a registered
architecture (``--model.weights``, ``--model.init``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fm2edge.errors import Fm2EdgeError

PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, wrapper modules and torch.compile add these


def read_state_dict(path: str | Path) -> dict:
    """Tensors from a .safetensors file, or from a .pt / .pth file read with ``weights_only=True`` (never code);
    a checkpoint dict that nests them under "state_dict" or "model" is unwrapped."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise Fm2EdgeError(f"--model.weights '{path}' is not a file; give a .safetensors, .pt or .pth state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise Fm2EdgeError(f"'{path}' holds more than tensors, so it is not loaded (it could run code); save "
                               f"it with torch.save(model.state_dict(), ...) or as .safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise Fm2EdgeError(f"'{path}' is not a state dict (name -> tensor)")
    return state


def strip_prefixes(state: dict) -> dict:
    """Drop the prefixes wrappers add to every key (``module.`` from DDP, ``model.``, ``_orig_mod.``)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def load_weights(model: nn.Module, path: str | Path, skip_head: bool | None = False) -> str:
    """Load a state dict saved by plain PyTorch (or another fm2edge run) into ``model``: a whole classifier's
    (``backbone.*`` and ``head.*``) or the bare network's (loaded into the backbone). ``skip_head`` keeps the
    model's own head (True), or does so when the saved head has another number of classes (None). Mismatches are
    one error listing missing and unexpected keys. Returns what was loaded, for the log."""
    state = strip_prefixes(read_state_dict(path))
    target = model.state_dict()
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    if skip_head is None:
        saved = state.get("head.weight")
        skip_head = saved is not None and tuple(saved.shape) != tuple(target["head.weight"].shape)
    if skip_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing = [k for k in target if k not in state and not (k.startswith("head.") and (skip_head or not any(
        s.startswith("head.") for s in state)))]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
             if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                 f"wrong shapes {few(wrong)}" if wrong else ""]
        raise Fm2EdgeError(f"the weights in '{path}' do not fit {model.name}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)
    head = "with its head" if any(k.startswith("head.") for k in state) else "backbone only, new head"
    return f"{len(state)} tensors from {path} ({head})"
