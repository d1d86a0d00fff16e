"""Checkpoint model source: a cell's backdoored model read from a published file instead of the train stage.

A sweep's ``model`` entry names the architecture and the file::

    model: {name: wrn16_1, checkpoint: ../shared/released/nad.tar, normalize: none, sha256: 97815be5...}

* ``checkpoint``: the file (relative paths from the working directory, like ``--data-root``): a bare
  ``state_dict`` or a dict holding one under ``state_dict`` (NAD / ABL save ``{epoch, state_dict, best_prec,
  optimizer}``); a ``module.`` prefix (``nn.DataParallel``) is stripped.  Read with ``weights_only=True``: a
  checkpoint is data, never code.
* ``normalize`` (required: a wrong guess silently wrecks the model): the input normalisation it was trained
  with: ``none`` (inputs in [0, 1], NAD and ABL, whose loaders apply only ``ToTensor``), ``dataset`` (the
  dataset's mean/std) or ``{mean: [...], std: [...]}``.  Deviation from the issue's ``[mean, std]``: a YAML
  list inside a sweep entry is a sweep axis, a mapping is one value.
* ``sha256`` (optional): checked against the file; the resolved cell always carries the file's sha256, which
  is what the job key hashes (the path is stored with the job but is not part of its key).

A profile's or ``--set``'s model overlay does not apply to a checkpoint entry: the file fixes the architecture
(the mini profile's small CNN could not load a WRN-16-1); dataset and defense overlays still do.

Everything is checked when the sweep is resolved, before anything runs (bad input: one line naming the file,
what is wrong and what would be valid).  The architecture check compares key names and tensor shapes with the
named zoo model built for the checkpoint's own class and channel counts (read from its classifier and stem);
that those match the dataset is checked when the model is loaded (the dataset is not read at resolve time).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

CHECKPOINT_KEYS = ("checkpoint", "normalize", "sha256")
_VALID_FILE = "a torch.save'd state_dict of the named model, or a dict with it under 'state_dict'"
_VALID_NORMALIZE = "none | dataset | {mean: [...], std: [...]} (per channel, in [0, 1] units)"


def is_checkpoint(spec: Any) -> bool:
    return isinstance(spec, Mapping) and "checkpoint" in spec


def resolve_checkpoint(spec: Mapping[str, Any], path: str, resolve: Callable[[dict], dict]) -> dict[str, Any]:
    """Check a checkpoint model entry; return the resolved spec ``{name, options..., checkpoint (absolute),
    normalize, sha256 (of the file)}``.  ``resolve`` resolves the architecture part (name + options).

    Raises:
        ConfigError: the file is missing or unreadable, its sha256 differs from the one given, it does not fit
        the named architecture, or ``normalize`` is missing or malformed.
    """
    from bench.config import ConfigError
    from bench.store import sha256_file

    opts = {k: v for k, v in spec.items() if k not in CHECKPOINT_KEYS}
    model = resolve(opts)
    raw = spec["checkpoint"]
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{path}.checkpoint", f"expected the path of a checkpoint file, got {raw!r}")
    file = Path(raw).expanduser().resolve()
    where = f"{path}.checkpoint"
    if not file.is_file():
        raise ConfigError(where, f"{raw}: no such file (looked at {file}); valid: {_VALID_FILE}")
    normalize = _normalize(spec.get("normalize"), f"{path}.normalize", raw)
    digest = sha256_file(file)
    want = spec.get("sha256")
    if want is not None and (not isinstance(want, str) or want.lower() != digest):
        raise ConfigError(f"{path}.sha256", f"{raw}: the file's sha256 is {digest}, the sweep gives {want!r}; "
                                            "valid: the sha256 of this file (or leave sha256 out)")
    try:
        state = read_state_dict(file)
    except ValueError as err:
        raise ConfigError(where, f"{raw}: {err}; valid: {_VALID_FILE}") from None
    problem = architecture_mismatch(model, state)
    if problem:
        raise ConfigError(where, f"{raw}: not a {model['name']} checkpoint: {problem}; valid: {_VALID_FILE}")
    return {**model, "checkpoint": str(file), "normalize": normalize, "sha256": digest}


def _normalize(value: Any, where: str, raw: str) -> Any:
    from bench.config import ConfigError

    if value in ("none", "dataset"):
        return value
    if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std]) \
            if isinstance(mean, list) and isinstance(std, list) else False
        if numbers and len(mean) == len(std) > 0 and all(s > 0 for s in std):
            return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    got = "missing" if value is None else f"got {value!r}"
    raise ConfigError(where, f"{raw}: the input normalisation the checkpoint was trained with is {got}; "
                             f"valid: {_VALID_NORMALIZE}")


def read_state_dict(file: str | Path) -> dict[str, Any]:
    """The tensors of a checkpoint file: a bare state_dict or ``ckpt['state_dict']``, ``module.`` stripped.

    Raises:
        ValueError: unreadable (not a torch file, or holds objects beyond tensors and plain data), or no
        state_dict inside.
    """
    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a file it cannot read
        raise ValueError(f"unreadable as a torch checkpoint ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:160] if str(err).strip() else 'no detail'})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"holds no state_dict (found {what})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def architecture_mismatch(model: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """'' when ``state`` fits the zoo model ``model`` (built for the checkpoint's own class and channel
    counts), else what differs: missing / unexpected keys, shape mismatches (a few of each, with counts)."""
    from bench.models import create_model

    opts = {k: v for k, v in model.items() if k != "name"}
    ref = create_model(model["name"], 10, 3, **opts).state_dict()
    stem = next(k for k, v in ref.items() if v.dim() == 4)
    classes = state["fc.weight"].shape[0] if "fc.weight" in ref and "fc.weight" in state else 10
    channels = state[stem].shape[1] if stem in state and state[stem].dim() == 4 else 3
    ref = create_model(model["name"], classes, channels, **opts).state_dict()
    missing = [k for k in ref if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in ref]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ref.items()
              if k in state and state[k].shape != v.shape]
    parts = [f"{label} {len(items)} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
             for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if items]
    return "; ".join(parts)


def load_checkpoint_model(spec: Mapping[str, Any], info):
    """The checkpoint's model for a dataset: the file re-checked against the spec's sha256, loaded strictly.

    Raises:
        ValueError: the file changed since the sweep was resolved, or its class/channel counts do not match
        the dataset.
    """
    from bench.models import create_from_spec
    from bench.store import sha256_file

    file = spec["checkpoint"]
    if sha256_file(Path(file)) != spec["sha256"]:
        raise ValueError(f"{file}: the file changed since the sweep was resolved (sha256 is no longer "
                         f"{spec['sha256']})")
    state = read_state_dict(file)
    model = create_from_spec(spec, info)
    want = model.state_dict()
    for key, value in want.items():           # checkpoints from before BatchNorm counted its batches
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    bad = [k for k, v in want.items() if state[k].shape != v.shape]
    if bad:
        raise ValueError(f"{file}: shape {tuple(state[bad[0]].shape)} of {bad[0]} does not fit {info.name} "
                         f"({info.num_classes} classes, {info.in_channels} channels): expected "
                         f"{tuple(want[bad[0]].shape)}")
    model.load_state_dict(state)
    return model.eval()
