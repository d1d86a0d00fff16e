"""Sweep files: a YAML grid expanded into fully resolved cells, checked before anything runs.

Grammar (explicit lists, no string DSL)::

    name: table1                      # required
    seeds: [0, 1]                     # product axis (default [0])
    profile: mini                     # optional; --profile on the command line wins
    curves: false                     # ask defenses for per-epoch curves
    grid:                             # every key below is a product axis; a scalar is a one-item list
      dataset: [cifar10, {name: gtsrb, resolution: 32}]
      model: wrn16_1                  # or a published model: {name: wrn16_1, checkpoint: FILE, normalize: none}
      recipe: mcl_paper
      attack:  [{name: badnets, target: 5}, {name: sig, delta: [20, 40]}]   # a list inside an entry
      defense: [none, ft, {name: mcl, tau: [0.1, 0.5]}]                    #   expands locally
      clean_ratio: 0.05
      clean_stratified: false
    zip: [[dataset, recipe]]          # these axes advance together (equal lengths) instead of crossing
    exclude: [{dataset: gtsrb, attack.name: sig}]                          # drop matching cells
    include: [{dataset: mnist, model: small_cnn}]   # the grid with these keys replaced; its cells are added

Inside a method entry a list expands unless the option's type is itself a list (``milestones: [2, 10]`` is
one value; ``milestones: [[2, 10], [5, 15]]`` is two).

Overlays (a profile file ``sweeps/profiles/NAME.yaml`` and ``--set``) share one form, keyed by component::

    dataset: {train_limit: 5000, cifar10: {test_limit: 2000}}  # fields for all entries, or per name
    model:   {wrn16_1: {name: small_cnn, width: 16}}           # per name: a replacement (with 'name') or options
    recipe:  {epochs: 10, milestones: [4, 7]}
    attack:  {cl: {pgd_steps: 3}}
    defense: {ft: {epochs: 5}, mcl: {epochs: 5}}

Resolution order of every option, lowest first (the one place it is written):
    plugin defaults (paper values) < plugin ``per_dataset`` < sweep entry < profile < ``--set``.
A profile deliberately beats the sweep entry: ``--profile mini`` must shrink a table whose file spells out
the paper's values.  ``--set KEY=VALUE`` takes a top-level key (``seeds=[0,1,2]``, ``grid.clean_ratio=0.1``)
or an overlay path (``defense.ft.epochs=3``, ``recipe.epochs=2``); VALUE is parsed as YAML.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from bench import budget
from bench.config import ConfigError, closest, coerce, digest, hints_of, is_sequence_type, load_yaml, to_plain
from bench.registry import DATASETS, MODELS, RECIPES, REGISTRIES, Registry

TOP_KEYS = ("name", "description", "seeds", "grid", "zip", "include", "exclude", "profile", "curves")
GRID_KEYS = ("dataset", "model", "recipe", "attack", "defense", "clean_ratio", "clean_stratified")
COMPONENTS = ("dataset", "model", "recipe", "attack", "defense")
OVERLAY_KEYS = ("name", "description", "scale", "budget") + COMPONENTS
PROFILES_DIR = Path(__file__).resolve().parent.parent / "sweeps" / "profiles"


@dataclass(frozen=True)
class Cell:
    """One fully resolved cell of a sweep: the plain configs of every stage plus the seed."""

    dataset: dict[str, Any]          # {"name": ..., <resolved DatasetConfig fields>}
    model: dict[str, Any]
    recipe: dict[str, Any]
    attack: dict[str, Any]
    defense: dict[str, Any]
    clean_ratio: float
    clean_stratified: bool
    seed: int
    curves: bool = False
    profile: str | None = None
    scale: str = "full"             # the profile's ``scale`` (e.g. mini); "full" without a profile
    # recipe and defense as resolved without the profile (what the profile's step budget scaled from); not
    # part of the cell's identity
    paper: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # a digest of what the user wrote for this cell (see ``written_digest``); not part of its identity
    written: str = field(default="", compare=False, repr=False)

    def label(self) -> dict[str, Any]:
        """The short, human-facing identity of the cell (for tables and ``bench ls``)."""
        return {"dataset": self.dataset["name"], "model": self.model["name"], "recipe": self.recipe["name"],
                "attack": self.attack["name"], "defense": self.defense["name"], "clean_ratio": self.clean_ratio,
                "seed": self.seed}

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("paper", "written")}


@dataclass
class Sweep:
    name: str
    file: str
    cells: list[Cell]
    profile: str | None = None
    scale: str = "full"
    document: dict[str, Any] = field(default_factory=dict)   # the expanded document, as stored with the sweep
    partial: bool = False                 # only some cells (``--only``) or overridden ones (``--set``): they add
    overrides: tuple[str, ...] = ()       # to the stored cell list, never replace it (see ``build_sweep``)


# ----------------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------------
def load_sweep(path: str | Path, sets: Iterable[str] = (), profile: str | None = None,
               profiles_dir: Path | None = None, only: Iterable[str] = ()) -> Sweep:
    """Read, override, expand and resolve a sweep file.

    Raises:
        ConfigError: one line naming the file, the key path and what would be valid.
    """
    path = Path(path)
    file = str(path)
    try:
        doc = load_yaml(path.read_text(), file)
    except FileNotFoundError:
        raise ConfigError("", f"no such sweep file (looked at {path.resolve()})", file) from None
    try:
        return build_sweep(doc, file, sets, profile, profiles_dir, only)
    except ConfigError as err:
        raise (err if err.file else err.with_file(file)) from None


def build_sweep(doc: Any, file: str, sets: Iterable[str] = (), profile: str | None = None,
                profiles_dir: Path | None = None, only: Iterable[str] = ()) -> Sweep:
    if not isinstance(doc, Mapping):
        raise ConfigError("", "a sweep file must be a mapping with 'name' and 'grid'")
    doc = copy.deepcopy(dict(doc))
    set_overlay: dict[str, Any] = {}
    for item in sets:
        _apply_set(doc, set_overlay, item)
    for key in doc:
        if key not in TOP_KEYS:
            raise ConfigError(str(key), f"unknown key; {closest(str(key), TOP_KEYS)}")
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ConfigError("name", "required: a non-empty string naming the sweep")
    if not isinstance(doc.get("grid"), Mapping):
        raise ConfigError("grid", "required: a mapping of axes (dataset, model, recipe, attack, defense, ...)")
    profile = profile or doc.get("profile")
    prof_overlay = load_profile(profile, profiles_dir) if profile else {}
    _check_overlay(set_overlay, "--set")
    seeds = _seeds(doc.get("seeds", [0]))
    curves = coerce(doc.get("curves", False), bool, "curves")
    raw = expand(doc)
    keep = _only_matcher(only)
    cells, seen = [], set()
    resolver = _Resolver(prof_overlay, set_overlay, bool(profile))
    for _path, entry in raw:
        for seed in seeds:
            cell = resolve_cell(entry, seed, prof_overlay, set_overlay, curves, profile, resolver)
            cell = dataclasses.replace(cell, written=written_digest(entry, seed, set_overlay, curves, profile))
            if keep and not _only_keeps(entry, cell.as_dict(), keep):
                continue
            key = repr(cell.as_dict())
            if key not in seen:
                seen.add(key)
                cells.append(cell)
    if keep and not cells:
        raise ConfigError("--only", f"no cell of the sweep matches {keep}")
    scale = prof_overlay.get("scale", profile) if profile else "full"
    # A run with --set or --only adds its cells to the sweep's stored list instead of replacing it: after
    # `--set seeds=[4,5]` the seed 0-3 cells stay listed (ls, export, report), and cells whose options were
    # overridden show as variants (ft[lr=1e+09]) beside the file's own.  Only a plain run of the file redefines it.
    sets = tuple(sets)
    return Sweep(doc["name"], file, cells, profile, scale, doc, partial=bool(keep) or bool(sets), overrides=sets)


def written_digest(entry: Mapping[str, Any], seed: int, sets: Mapping[str, Any], curves: bool,
                   profile: str | None) -> str:
    """What the user wrote for one cell: its grid entry as the file has it, its seed, the profile's name and the
    ``--set`` options its components receive.  A harness change (a default, a profile's caps) changes the cell's
    resolved config but not this, so a block re-run after such a change replaces the listed cell instead of
    listing the old result beside the new one; a ``--set`` that reaches the cell makes it a variant."""
    reached = {}
    for kind in COMPONENTS:
        over, spec = sets.get(kind) or {}, entry.get(kind)
        name = spec if isinstance(spec, str) else (spec or {}).get("name")
        part = over.get(name) if kind == "model" else _overlay_for(REGISTRIES[kind], over, str(name))
        if part:
            reached[kind] = part
    what = {"entry": {k: v for k, v in entry.items() if k != "_paths"}, "seed": seed, "curves": curves,
            "profile": profile, "set": reached}
    return digest(what)


def load_profile(name: str, profiles_dir: Path | None = None, _within: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile's overlays.  ``extends: BASE`` starts from profile BASE and overrides it key by key (mappings
    merged, anything else replaced): a probe such as ``mini_x3`` (mini with three times the recipe cap) states
    only what it changes."""
    base = profiles_dir or PROFILES_DIR
    path = base / f"{name}.yaml"
    if not path.exists():
        known = [p.stem for p in base.glob("*.yaml")] if base.exists() else []
        raise ConfigError("profile", f"unknown profile {name!r} (looked in {base}); {closest(name, known)}")
    data = load_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, Mapping):
        raise ConfigError("", "a profile must be a mapping of overlays (dataset, model, recipe, ...)", str(path))
    data = dict(data)
    if "extends" in data:
        parent = data.pop("extends")
        if not isinstance(parent, str) or parent in (*_within, name):
            raise ConfigError("extends", f"expected the name of another profile (not {[*_within, name]}), "
                                         f"got {parent!r}", str(path))
        data = _overridden(load_profile(parent, profiles_dir, (*_within, name)), data)
    try:
        _check_overlay(data, "profile")
    except ConfigError as err:
        raise err.with_file(str(path)) from None
    return data


def _overridden(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(base.get(key), Mapping)
        out[key] = _overridden(base[key], value) if both else value
    return out


# ----------------------------------------------------------------------------------------------------------
# --set
# ----------------------------------------------------------------------------------------------------------
def _apply_set(doc: dict, overlay: dict, item: str) -> None:
    """``KEY=VALUE`` into the document (top-level keys) or the ``--set`` overlay (component options).  A number
    in the key indexes a list (``grid.defense.1.epochs=3``); a name there becomes ``{name: ...}`` first."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"expected KEY=VALUE such as defense.ft.epochs=3, got {item!r}")
    try:
        value = load_yaml(text)
    except ConfigError:
        value = text
    parts = key.strip().split(".")
    if parts[0] in COMPONENTS:
        target: Any = overlay
    elif parts[0] in TOP_KEYS:
        target = doc
    else:
        raise ConfigError(f"--set {key}", f"unknown key; {closest(parts[0], TOP_KEYS + COMPONENTS)}")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i])
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                raise ConfigError(f"--set {key}", f"{where!r} is a list of {len(target)}; index it with "
                                                  f"0..{len(target) - 1} or replace it whole: {where}=[...]")
            if last:
                target[int(part)] = value
                return
            if isinstance(target[int(part)], str) and parts[i - 1] in COMPONENTS:
                target[int(part)] = {"name": target[int(part)]}
            nxt = target[int(part)]
        elif isinstance(target, dict):
            if last:
                target[part] = value
                return
            nxt = target.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}", f"{where!r} is {target!r}, not a mapping or a list")
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"--set {key}", f"{'.'.join(parts[:i + 1])!r} is {nxt!r}, not a mapping or a list; "
                                              f"set it whole: {'.'.join(parts[:i + 1])}=...")
        target = nxt


def _check_overlay(overlay: Mapping[str, Any], where: str) -> None:
    for key, value in overlay.items():
        if key not in OVERLAY_KEYS:
            raise ConfigError(f"{where}.{key}", f"unknown key; {closest(key, OVERLAY_KEYS)}")
        if key == "budget":
            budget.check_caps(value, f"{where}.budget")
            continue
        if key in COMPONENTS and not isinstance(value, Mapping):
            raise ConfigError(f"{where}.{key}", "expected a mapping of options or of per-name options")
        if key == "model":
            for sub in value:
                if sub not in MODELS:
                    raise ConfigError(f"{where}.model.{sub}", f"not a model name; {closest(sub, MODELS.names())}")
        elif key in COMPONENTS:
            reg = REGISTRIES[key]
            for sub in value:
                if sub not in reg and not _is_field_of_any(reg, sub):
                    raise ConfigError(f"{where}.{key}.{sub}",
                                      f"neither a {key} name nor an option; {closest(sub, reg.names())}")


def _is_field_of_any(reg: Registry, name: str) -> bool:
    return any(name in e.config.__dataclass_fields__ for e in reg.entries())


# ----------------------------------------------------------------------------------------------------------
# expansion
# ----------------------------------------------------------------------------------------------------------
def _seeds(value: Any) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    return [coerce(s, int, f"seeds[{i}]") for i, s in enumerate(seeds)]


def _axis(grid: Mapping[str, Any], key: str, where: str) -> list[tuple[str, Any]]:
    """The values of one grid axis as (key path, value) pairs, method entries expanded locally."""
    if key not in grid:
        raise ConfigError(f"{where}.{key}", "required axis is missing")
    values = grid[key]
    items = values if isinstance(values, list) else [values]
    if not items:
        raise ConfigError(f"{where}.{key}", "empty list: give at least one value")
    out = []
    for i, item in enumerate(items):
        path = f"{where}.{key}[{i}]" if isinstance(values, list) else f"{where}.{key}"
        if key in COMPONENTS:
            out += [(path, v) for v in _expand_entry(REGISTRIES[key], item, path)]
        else:
            out.append((path, item))
    return out


def _expand_entry(reg: Registry, item: Any, path: str) -> list[Any]:
    """``{name: mcl, tau: [0.1, 0.5]}`` -> two entries; a list-typed option keeps its list."""
    if isinstance(item, str) or not isinstance(item, Mapping):
        return [item]
    entry, opts = reg.split(item, path)
    hints = hints_of(entry.config)
    axes = []
    for key, value in opts.items():
        seq = key in hints and is_sequence_type(hints[key])
        expands = isinstance(value, list) and (not seq or (value and all(isinstance(v, list) for v in value)))
        axes.append([(key, v) for v in value] if expands else [(key, value)])
        if expands and not value:
            raise ConfigError(f"{path}.{key}", "empty list: give at least one value")
    return [{"name": entry.name, **dict(combo)} for combo in itertools.product(*axes)]


DEFAULT_AXES = {"clean_ratio": 0.05, "clean_stratified": False}


def expand(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The raw cells (before resolution) of the grid and each include, minus the excludes."""
    cells = _expand_grid(doc["grid"], "grid", doc.get("zip") or [])
    for i, inc in enumerate(doc.get("include") or []):
        if not isinstance(inc, Mapping):
            raise ConfigError(f"include[{i}]", "expected a mapping of grid keys")
        for key in inc:
            if key not in GRID_KEYS:
                raise ConfigError(f"include[{i}].{key}", f"unknown key; {closest(key, GRID_KEYS)}")
        cells += _expand_grid({**doc["grid"], **inc}, f"include[{i}]", [])
    excludes = doc.get("exclude") or []
    if not isinstance(excludes, list):
        raise ConfigError("exclude", "expected a list of mappings")
    for i, ex in enumerate(excludes):
        _check_matcher(ex, f"exclude[{i}]")
    return [(p, c) for p, c in cells if not any(_matches(c, ex) for ex in excludes)]


def _expand_grid(grid: Mapping[str, Any], where: str, zips: list) -> list[tuple[str, dict[str, Any]]]:
    for key in grid:
        if key not in GRID_KEYS:
            raise ConfigError(f"{where}.{key}", f"unknown key; {closest(str(key), GRID_KEYS)}")
    grid = {**DEFAULT_AXES, **grid}
    axes = {k: _axis(grid, k, where) for k in GRID_KEYS}
    groups: list[list[str]] = []
    for i, group in enumerate(zips):
        if not isinstance(group, list) or len(group) < 2:
            raise ConfigError(f"zip[{i}]", "expected a list of two or more grid keys")
        for key in group:
            if key not in GRID_KEYS:
                raise ConfigError(f"zip[{i}]", f"unknown grid key {key!r}; {closest(str(key), GRID_KEYS)}")
            if any(key in g for g in groups):
                raise ConfigError(f"zip[{i}]", f"{key!r} is already zipped with another group")
        lengths = {key: len(axes[key]) for key in group}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"zip[{i}]", f"zipped axes need equal lengths, got {lengths}")
        groups.append(group)
    zipped = {k for g in groups for k in g}
    units: list[list[list[tuple[str, str, Any]]]] = []
    for group in groups:
        units.append([[(k, *axes[k][j]) for k in group] for j in range(len(axes[group[0]]))])
    for key in GRID_KEYS:
        if key not in zipped:
            units.append([[(key, *v)] for v in axes[key]])
    cells = []
    for combo in itertools.product(*units):
        flat = [t for part in combo for t in part]
        cell = {k: v for k, _, v in flat}
        paths = {k: p for k, p, _ in flat}
        cells.append((paths.get("defense", where), cell | {"_paths": paths}))
    return cells


def _only_matcher(items: Iterable[str]) -> dict[str, Any]:
    """``--only dataset=cifar10 --only attack.name=[badnets,blend]`` -> one matcher (all keys must match)."""
    matcher: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--only", f"expected KEY=VALUE such as dataset=cifar10, got {item!r}")
        try:
            matcher[key.strip()] = load_yaml(value)
        except ConfigError:
            raise ConfigError(f"--only {key}", f"not a YAML value: {value!r}") from None
    if matcher:
        _check_matcher(matcher, "--only")
    return matcher


def _value_at(cell: Mapping[str, Any], dotted: str) -> Any:
    head, _, rest = dotted.partition(".")
    value = cell.get(head)
    if head in COMPONENTS:
        value = {"name": value} if isinstance(value, str) else dict(value)
        return value.get(rest or "name")
    return value


def _check_matcher(ex: Any, where: str) -> None:
    if not isinstance(ex, Mapping) or not ex:
        raise ConfigError(where, "expected a non-empty mapping such as {dataset: gtsrb, attack.name: sig}")
    for key in ex:
        if key.split(".")[0] not in GRID_KEYS:
            raise ConfigError(f"{where}.{key}", f"unknown key; {closest(key.split('.')[0], GRID_KEYS)}")


def _only_keeps(entry: Mapping[str, Any], resolved: Mapping[str, Any], keep: Mapping[str, Any]) -> bool:
    """--only: every key matches the cell as the file wrote it or as it resolved (a default the file left out:
    ``defense.mode=dst`` keeps a bare ``dst``; ``model=resnet18`` keeps the cell a profile maps to a CNN)."""
    return all(_matches(entry, {k: v}) or _matches(resolved, {k: v}) for k, v in keep.items())


def _matches(cell: Mapping[str, Any], ex: Mapping[str, Any]) -> bool:
    for key, want in ex.items():
        have = _value_at(cell, key)
        wants = want if isinstance(want, list) else [want]
        if have not in wants:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------
# resolution: raw entry + overlays -> frozen configs -> plain dicts
# ----------------------------------------------------------------------------------------------------------
def _overlay_for(reg: Registry, overlay: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Fields for all entries of this kind, then the per-name ones."""
    general = {k: v for k, v in overlay.items() if k not in reg}
    specific = overlay.get(name, {}) if name in reg else {}
    return {**general, **(specific or {})}


def _resolve(kind: str, spec: Any, path: str, overlays: list[tuple[str, Mapping]], dataset: str | None) -> dict:
    reg = REGISTRIES[kind]
    entry, opts = reg.split(spec, path)
    for where, overlay in overlays:
        over = overlay.get(kind) or {}
        if kind == "model":
            rep = over.get(entry.name)
            if isinstance(rep, str) or (isinstance(rep, Mapping) and "name" in rep):
                entry, opts = reg.split(rep, f"{where}.model.{entry.name}")
            elif isinstance(rep, Mapping):
                opts = {**opts, **rep}
            continue
        extra = {k: v for k, v in _overlay_for(reg, over, entry.name).items()
                 if k in entry.config.__dataclass_fields__ or k in (entry.name,)}
        unknown = set(_overlay_for(reg, over, entry.name)) - set(extra)
        specific = set((over.get(entry.name) or {})) if entry.name in reg and entry.name in over else set()
        if unknown & specific:
            key = sorted(unknown & specific)[0]
            raise ConfigError(f"{where}.{kind}.{entry.name}.{key}",
                              f"unknown key; {closest(key, entry.config.__dataclass_fields__)}")
        opts = {**opts, **extra}
    cfg = entry.parse(opts, path, dataset)
    return {"name": entry.name, **to_plain(cfg)}


class _Resolver:
    """Memoised ``_resolve``: a 10,000-cell grid has only a few distinct entries per component.

    With a profile, a recipe, defense or attack is first resolved without it (the paper-scale config, kept in
    ``paper``); the profile's step budget (bench/budget.py) derives the scaled schedule fields and mapped
    models from it, below the profile's and ``--set``'s explicit values.
    """

    def __init__(self, profile: Mapping, sets: Mapping, scaled: bool = False):
        self.profile, self.scaled = profile, scaled
        self.overlays = [("profile", profile), ("--set", sets)]
        self.memo: dict[tuple, dict] = {}
        self.paper: dict[tuple, dict] = {}

    def __call__(self, kind: str, spec: Any, path: str, dataset: str | None, ds: Mapping | None = None) -> dict:
        key = (kind, repr(spec), dataset, repr(ds))
        if key not in self.memo and kind == "model" and isinstance(spec, Mapping) and "checkpoint" in spec:
            from bench.models.checkpoint import resolve_checkpoint  # a model from a file: checked here

            # no profile or --set model overlay: the file fixes the architecture (mini's small_cnn cannot load it)
            self.memo[key] = resolve_checkpoint(spec, path, lambda s: _resolve(kind, s, path, [], dataset))
        if key not in self.memo:
            overlays = self.overlays
            if ds is not None:
                paper = self.paper[key] = _resolve(kind, spec, path, [], dataset)
                if self.scaled:
                    explicit = {}
                    for _, overlay in overlays:
                        explicit |= _overlay_for(REGISTRIES[kind], overlay.get(kind) or {}, paper["name"])
                    derived = budget.scaled(kind, paper, ds, self.profile, explicit)
                    overlays = [("profile budget", {kind: {paper["name"]: derived}}), *overlays]
            self.memo[key] = _resolve(kind, spec, path, overlays, dataset)
        return dict(self.memo[key])

    def cell_paper(self, *keys: tuple) -> dict[str, Any]:
        return {k[0]: self.paper[k] for k in keys if k in self.paper}


def resolve_cell(raw: Mapping[str, Any], seed: int, profile: Mapping, sets: Mapping, curves: bool,
                 profile_name: str | None, resolver: _Resolver | None = None) -> Cell:
    paths = raw.get("_paths", {})
    res = resolver or _Resolver(profile, sets, bool(profile_name))
    ds = res("dataset", raw["dataset"], paths.get("dataset", "dataset"), None)
    name = ds["name"]
    recipe = res("recipe", raw["recipe"], paths.get("recipe", "recipe"), name, ds)
    defense = res("defense", raw["defense"], paths.get("defense", "defense"), name, ds)
    attack = res("attack", raw["attack"], paths.get("attack", "attack"), name, ds)
    paper = res.cell_paper(*[(k, repr(raw[k]), name, repr(ds)) for k in ("recipe", "defense", "attack")])
    return Cell(
        dataset=ds,
        model=res("model", raw["model"], paths.get("model", "model"), name),
        recipe=recipe,
        attack=attack,
        defense=defense,
        clean_ratio=_ratio(raw["clean_ratio"], paths.get("clean_ratio", "clean_ratio")),
        clean_stratified=coerce(raw["clean_stratified"], bool, paths.get("clean_stratified", "clean_stratified")),
        seed=seed, curves=curves, profile=profile_name,
        scale=(profile or {}).get("scale", profile_name) if profile_name else "full", paper=paper,
    )


def _ratio(value: Any, path: str) -> float:
    v = coerce(value, float, path)
    if not 0 < v <= 1:
        raise ConfigError(path, f"clean_ratio must be in (0, 1], got {value!r}")
    return v


__all__ = ["Cell", "Sweep", "load_sweep", "build_sweep", "expand", "load_profile", "DATASETS", "MODELS", "RECIPES"]
