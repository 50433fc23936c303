"""One recipe format for every experiment: a TOML file with the tables ``[data]``, ``[model]``,
``[loss]``, ``[train]`` and ``[sample]`` and a top-level ``kind``.

    kind = "gmflow"            # or "fm": the flow-matching baseline (K = 1, L2 loss)
    [data]                     # name = a registered dataset, other keys = its options
    name = "mnist"
    [model]                    # backbone = "gmdit" | "unet" | "mlp2d"; other keys = the backbone's config
    backbone = "gmdit"
    num_components = 8         # K (both backbones; GM-DiT's config calls it num_gaussians)
    [model.spectrum]           # optional SpectrumMLP (gmdit)
    layers = [64, 8]
    [loss]                     # LossConfig
    transition_ratio = 0.5
    [train]                    # gmfm.training.TrainConfig
    iterations = 3800
    [sample]                   # SampleConfig: what sampling / evaluation commands use by default
    solver = "gmode2"

Every key is checked: an unknown one is an error that lists the valid ones; values are checked when the
sections are built. Recipes shipped with gmfm (``gmfm/configs``, also reachable as ``configs/`` in a
checkout) are found by name: ``load_recipe("mnist_gmflow")``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.registry import dataset_options
from ..guidance import make_guidance
from ..math.validation import check_float_in, check_positive_int
from ..solvers.second_order import DEFAULT_COEFS, check_second_order_coefs
from ..training.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("gmflow", "fm")
BACKBONES = ("mlp2d", "gmdit", "unet")
SECTIONS = ("data", "model", "loss", "train", "sample")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class RecipeError(ValueError):
    """A recipe that cannot be used: the message names the file, the table and the key."""


@dataclass(frozen=True)
class LossConfig:
    """The ``[loss]`` table.

    transition_ratio: lambda of the transition loss (GMFlow; 1 = plain GM NLL of x0).
    transition_draws: M draws of x_low per x_high, averaged (1 = the official loss).
    time_sampler: "uniform" or "logit_normal" (``logit_mean``, ``logit_std``), then ``shift``.
    label_dropout: probability of the null label (class-conditional data).
    spectral_weight: weight of the SpectrumMLP loss (GMFlow with a spectrum net; default 1 then).
    weight: factor on the loss.
    """

    transition_ratio: float = 0.9
    transition_draws: int = 1
    time_sampler: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    label_dropout: float = 0.1
    spectral_weight: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_float_in("transition_ratio", self.transition_ratio, 0.0, 1.0, low_open=True)
        check_positive_int("transition_draws", self.transition_draws)
        if self.time_sampler not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampler must be 'uniform' or 'logit_normal', got {self.time_sampler!r}")
        check_float_in("logit_mean", self.logit_mean, -1e3, 1e3)
        check_float_in("logit_std", self.logit_std, 0.0, 1e3, low_open=True)
        check_float_in("shift", self.shift, 0.0, 1e3, low_open=True)
        check_float_in("label_dropout", self.label_dropout, 0.0, 1.0, high_open=True)
        if self.spectral_weight is not None:
            check_float_in("spectral_weight", self.spectral_weight, 0.0, 1e6)
        check_float_in("weight", self.weight, 0.0, 1e6, low_open=True)


@dataclass(frozen=True)
class SampleConfig:
    """The ``[sample]`` table: defaults of the sampling and evaluation commands.

    solver: a name of :data:`gmfm.solvers.SOLVER_NAMES` (None: gmode2 / gmsde2 for GMFlow images / 2-D,
        dpmpp2m / euler for the FM baseline).
    nfe: network evaluations. substeps: GM-ODE substeps (None: :func:`gmfm.solvers.default_substeps`).
    guidance_scale, orthogonal_guidance: probabilistic guidance; cfg_scale: vanilla CFG (1 = off).
    spectral: spectral sampling for GM-SDE when the model has a SpectrumMLP. shift: time shift of the grid.
    gm2_coefs: (ca, cb), the damping of the 2nd-order correction (official (0.005, 1)): ca damps the mean
        difference by the share of it that is noise.
    total_substeps, final_step_size_scale, temperature: the ``piflow`` solver's (pi-Flow students: Euler
        substeps per unit raw time, the last segment's relative length, the GM temperature or "auto").
    """

    solver: str | None = None
    nfe: int = 8
    substeps: int | None = None
    guidance_scale: float = 0.0
    orthogonal_guidance: float = 1.0
    cfg_scale: float = 1.0
    spectral: bool = True
    shift: float = 1.0
    gm2_coefs: tuple[float, float] = DEFAULT_COEFS
    total_substeps: int = 128
    final_step_size_scale: float = 1.0
    temperature: float | str = "auto"

    def __post_init__(self) -> None:
        from ..solvers.catalog import SOLVER_NAMES

        if self.solver is not None and self.solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {self.solver!r}")
        check_positive_int("nfe", self.nfe)
        if self.substeps is not None:
            check_positive_int("substeps", self.substeps)
        make_guidance(self.guidance_scale, self.orthogonal_guidance, self.cfg_scale)  # checks the three
        if not isinstance(self.spectral, bool):
            raise ValueError(f"spectral must be true or false, got {self.spectral!r}")
        check_float_in("shift", self.shift, 0.0, 1e3, low_open=True)
        object.__setattr__(self, "gm2_coefs", check_second_order_coefs(self.gm2_coefs))
        check_positive_int("total_substeps", self.total_substeps)
        check_float_in("final_step_size_scale", self.final_step_size_scale, 0.0, 1e3, low_open=True)
        if self.temperature != "auto":
            check_float_in("temperature", self.temperature, 0.0, 1e3)


@dataclass(frozen=True)
class Recipe:
    """A whole experiment. ``data`` / ``model`` hold their tables as dicts (validated against the dataset
    registry and the backbone's config); ``spectrum`` is ``[model.spectrum]`` or None."""

    kind: str
    data: dict[str, Any]
    model: dict[str, Any]
    loss: LossConfig
    train: TrainConfig
    sample: SampleConfig = field(default_factory=SampleConfig)
    spectrum: dict[str, Any] | None = None
    source: str = field(default="<recipe>", compare=False)

    @property
    def dataset_name(self) -> str:
        return self.data["name"]

    @property
    def backbone(self) -> str:
        return self.model["backbone"]

    def as_dict(self) -> dict[str, Any]:
        """The recipe as TOML-shaped tables (what :func:`recipe_from_dict` reads back)."""
        model = dict(self.model)
        if self.spectrum is not None:
            model["spectrum"] = dict(self.spectrum)
        return {"kind": self.kind, "data": dict(self.data), "model": model,
                "loss": dataclasses.asdict(self.loss), "train": dataclasses.asdict(self.train),
                "sample": dataclasses.asdict(self.sample)}

    def identity(self) -> dict[str, Any]:
        """The settings that define a run (a resume must not change them): everything but the length,
        logging, device and sampling defaults."""
        tables = self.as_dict()
        for key in ("iterations", "checkpoint_every", "log_every", "device", "tensorboard", "micro_batch_size",
                    "gradient_checkpointing"):
            tables["train"].pop(key, None)
        tables.pop("sample")
        return tables

    def with_overrides(self, **tables: dict[str, Any]) -> Recipe:
        """A copy with keys replaced, e.g. ``with_overrides(train={"iterations": 10})``; None values are
        ignored. Checked as a file would be."""
        raw = self.as_dict()
        for table, values in tables.items():
            if table == "kind":
                if values is not None:
                    raw["kind"] = values
                continue
            if table not in raw:
                raise RecipeError(f"{self.source}: unknown table [{table}]; tables: {', '.join(SECTIONS)}")
            raw[table].update({k: v for k, v in values.items() if v is not None})
        return recipe_from_dict(raw, self.source)


def _check_keys(source: str, table: str, values: dict[str, Any], valid: list[str] | tuple[str, ...]) -> None:
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: [{table}] must be a table, got {values!r}")
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {unknown} in [{table}]; valid keys: {', '.join(sorted(valid))}")


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


#: [model] keys renamed in recipes: old name -> new name (the old one still works, with a warning).
RENAMED_MODEL_KEYS = {"num_gaussians": "num_components"}


def backbone_options(backbone: str) -> list[str]:
    """The ``[model]`` keys a backbone accepts (its config's fields, K as ``num_components`` for both),
    besides ``backbone``."""
    if backbone == "mlp2d":
        from ..models.mlp2d import MLP2DConfig

        return [f for f in _fields(MLP2DConfig) if f != "num_classes"]
    if backbone == "unet":
        from ..models.unet import GMUNet2DModel as image_model
    else:
        from ..models.gmdit import GMDiTTransformer2DModel as image_model

    names = [p for p in inspect.signature(image_model.__init__).parameters if p != "self"]
    return [RENAMED_MODEL_KEYS.get(p, p) for p in names]


def _renamed_model_keys(model: dict[str, Any], source: str, warn: bool) -> dict[str, Any]:
    """``model`` with old key names replaced by the new ones (a warning names the file, when ``warn``)."""
    for old, new in RENAMED_MODEL_KEYS.items():
        if old in model:
            if new in model:
                raise RecipeError(f"{source}: [model] has both {old} and {new}; keep {new}")
            if warn:
                warnings.warn(f"{source}: [model] {old} is deprecated, use {new}", FutureWarning, stacklevel=3)
            model[new] = model.pop(old)
    return model


def upgrade_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved settings (:meth:`Recipe.identity` of an older gmfm) in today's key names, so that an
    older run folder resumes."""
    upgraded = copy.deepcopy(saved)
    if isinstance(upgraded.get("model"), dict):
        _renamed_model_keys(upgraded["model"], "saved settings", warn=False)
    return upgraded


def _build_section(source: str, table: str, cls: type, values: dict[str, Any]) -> Any:
    _check_keys(source, table, values, _fields(cls))
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{source}: [{table}] {err}") from err


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>", *, warn_renamed: bool = True) -> Recipe:
    """Build and check a :class:`Recipe` from TOML-shaped tables.

    Args:
        raw: the tables.
        source: names the recipe in error messages.
        warn_renamed: warn about old key names (off for recipes stored in older checkpoints).
    """
    raw = copy.deepcopy(raw)
    if isinstance(raw, dict) and "distill" in raw:
        raise RecipeError(f"{source} is a distillation recipe ([distill]): use gmfm distill / gmfm.distill")
    _check_keys(source, "top level", raw, ("kind", *SECTIONS))
    kind = raw.get("kind", "gmflow")
    if kind not in KINDS:
        raise RecipeError(f"{source}: kind must be one of {KINDS}, got {kind!r}")
    data = raw.get("data", {})
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise RecipeError(f"{source}: [data] needs a dataset name, e.g. name = \"mnist\"")
    _known(data["name"], source)
    _check_keys(source, "data", data, ["name", *dataset_options(data["name"])])
    if not isinstance(raw.get("model", {}), dict):
        raise RecipeError(f"{source}: [model] must be a table")
    model = dict(raw.get("model", {}))
    backbone = model.get("backbone", "gmdit" if data["name"] in _image_datasets() else "mlp2d")
    if backbone not in BACKBONES:
        raise RecipeError(f"{source}: [model] backbone must be one of {BACKBONES}, got {backbone!r}")
    model["backbone"] = backbone
    _renamed_model_keys(model, source, warn_renamed)
    spectrum = model.pop("spectrum", None)
    _check_keys(source, "model", model, ["backbone", *backbone_options(backbone)])
    if spectrum is not None:
        if backbone == "mlp2d" or kind != "gmflow":
            raise RecipeError(f"{source}: [model.spectrum] needs kind = \"gmflow\" and an image backbone (gmdit, unet)")
        _check_keys(source, "model.spectrum", spectrum, ["base_size", "layers"])
    loss = _build_section(source, "loss", LossConfig, raw.get("loss", {}))
    train_table = raw.get("train", {})
    missing = [k for k in ("iterations", "batch_size") if isinstance(train_table, dict) and k not in train_table]
    if missing:
        raise RecipeError(f"{source}: [train] needs {' and '.join(missing)}")
    train = _build_section(source, "train", TrainConfig, train_table)
    sample = _build_section(source, "sample", SampleConfig, raw.get("sample", {}))
    return Recipe(kind, data, model, loss, train, sample, spectrum, source)


def _image_datasets() -> tuple[str, ...]:
    from ..data.toy_distributions import TOY_DATASET_NAMES
    from ..data.registry import dataset_names

    return tuple(n for n in dataset_names() if n not in TOY_DATASET_NAMES)


def _known(name: str, source: str | None = None) -> bool:
    from ..data.registry import dataset_names

    if name in dataset_names():
        return True
    if source is None:
        return False
    raise RecipeError(f"{source}: [data] name {name!r} is not a known dataset; known: {', '.join(dataset_names())}")


def parse_option_pairs(pairs: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``key=value`` strings (e.g. the command line's dataset options) as a table; values are read as TOML
    scalars (numbers, true / false, quoted text), else kept as text.

    Raises:
        ValueError: naming ``flag``, when a pair is not ``key=value``.
    """
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} must be key=value, got {pair!r}")
        try:
            options[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = value
    return options


def config_names() -> tuple[str, ...]:
    """The recipes shipped with gmfm."""
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))


def resolve_config(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (with or without ``.toml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.stem if path.suffix == '.toml' else path.name}.toml"
    if shipped.is_file() and (path.parent == Path(".") or path.parent.name == "configs"):
        return shipped
    raise FileNotFoundError(f"config {name_or_path} does not exist (shipped recipes: {', '.join(config_names())})")


def load_recipe(name_or_path: str | Path, **overrides: dict[str, Any]) -> Recipe:
    """Read a recipe file (or a shipped recipe by name) and apply ``overrides`` (see
    :meth:`Recipe.with_overrides`)."""
    path = resolve_config(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    recipe = recipe_from_dict(raw, str(path))
    return recipe.with_overrides(**overrides) if overrides else recipe
