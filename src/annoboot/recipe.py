"""Recipes: the config schema composed from the registries, YAML files, overrides, validation.

Above everything it composes: the core dataclasses (annoboot/config.py), the options each
registered method declares (``Method.config_options``, methods/registry.py), each source kind's
(data/registry.py) and the probes' checks (eval/registry.py). A recipe YAML is merged onto the
composed defaults, then ``key=value`` overrides onto that; unknown keys and values of the wrong
type are rejected with an :class:`AnnobootError` naming the key, the value and where it came
from, and every option is checked by the code that owns it before anything runs.
"""

from __future__ import annotations

import copy
from dataclasses import field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, get_type_hints

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from annoboot.config import (
    Config,
    MethodConfig,
    ModelConfig,
    ViewsConfig,
    _columns,
    _copy_field,
    check_core,
    check_source,
)
from annoboot.errors import AnnobootError
from annoboot.eval.probes import check_probe_config
from annoboot.methods import DEFAULT_METHOD, METHODS
from annoboot.option_ranges import check_ranges

# Sections a method can add options to, with their core dataclass.
_EXTENSIBLE = {"model": ModelConfig, "views": ViewsConfig, "method": MethodConfig}
_SCHEMA: Dict[str, type] = {}  # the composed dataclasses, for the methods registered in _SCHEMA_FOR
_SCHEMA_FOR: List[tuple] = []  # (name, class) of the registered methods the schema was built for
# The current schema's defaults as a DictConfig, built once and copied per load; keyed by the
# schema class, which is new whenever the schema is rebuilt.
_DEFAULTS: Dict[type, DictConfig] = {}


def forget_schema() -> None:
    """Drop the composed schema (it is rebuilt on next use; a change of the method registry
    rebuilds it anyway)."""
    _SCHEMA.clear()


def method_option_classes() -> Dict[str, Dict[str, tuple]]:
    """method name -> section -> its option dataclasses, of every registered method."""
    return {name: dict(cls.config_options) for name, cls in METHODS.items()}


def _unique_option_classes(per_method: Dict[str, Dict[str, tuple]]) -> List[tuple]:
    """(section, option class) of every registered method, each class once, in registration order."""
    seen: Dict[type, str] = {}
    for options in per_method.values():
        for section, classes in options.items():
            for option_class in classes:
                seen.setdefault(option_class, section)
    return [(section, option_class) for option_class, section in seen.items()]


def config_schema() -> type:
    """The Config dataclass of this installation: the core sections, with the options of every
    registered method added to the model, views and method sections. One flat namespace per
    section, so recipes, overrides, saved configs and run hashes read as before."""
    registered = list(METHODS.items())
    if _SCHEMA_FOR != registered:  # a method registered or removed since: build afresh
        _SCHEMA.clear()
        _SCHEMA_FOR[:] = registered
    if not _SCHEMA:
        columns = {section: [(f.name, get_type_hints(core)[f.name], _copy_field(f)) for f in fields(core)]
                   for section, core in _EXTENSIBLE.items()}
        owners = {section: {f.name: core for f in fields(core)} for section, core in _EXTENSIBLE.items()}
        for section, option_class in _unique_option_classes(method_option_classes()):
            columns[section] += _columns(option_class, owners[section], section)
        columns["method"][0] = ("name", str, field(default=DEFAULT_METHOD))
        for section, core in _EXTENSIBLE.items():
            _SCHEMA[section] = _schema_class(f"Composed{core.__name__}", columns[section], core)
        _SCHEMA["config"] = _schema_class(
            "ComposedConfig", [(name, _SCHEMA[name], field(default_factory=_SCHEMA[name])) for name in _EXTENSIBLE], Config
        )
    return _SCHEMA["config"]


def _schema_class(name: str, columns: List[tuple], base: type) -> type:
    cls = make_dataclass(name, columns, bases=(base,))
    cls.__module__ = __name__  # picklable by name: the module's __getattr__ returns it
    return cls


def __getattr__(name: str) -> type:
    if name.startswith("Composed"):
        config_schema()
        for cls in _SCHEMA.values():
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



def _explain(exc: OmegaConfBaseException, origin: str, key: str = "?") -> AnnobootError:
    key = getattr(exc, "full_key", None) or key
    msg = (getattr(exc, "msg", None) or str(exc)).strip().splitlines()[0]
    return AnnobootError(f"bad config in {origin}: key '{key}': {msg}")


def _default_config() -> DictConfig:
    """A fresh DictConfig of the schema's defaults. Building one from the dataclasses takes
    about 15x longer than copying it, and every load, override check and test starts here."""
    schema = config_schema()
    if schema not in _DEFAULTS:
        _DEFAULTS.clear()
        _DEFAULTS[schema] = OmegaConf.structured(schema)
    return copy.deepcopy(_DEFAULTS[schema])


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Config:
    """Defaults <- recipe YAML at ``path`` <- ``key=value`` overrides; validated and typed."""
    cfg = _default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AnnobootError(f"config file not found: {path}")
        try:
            _merge_into(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as exc:
            raise _explain(exc, str(path)) from None
        except Exception as exc:  # YAML syntax errors
            raise AnnobootError(f"cannot parse config file {path}: {exc}") from None
    return _finish(_apply_overrides(cfg, overrides))


def config_from_saved(saved: Dict[str, Any], overrides: Optional[List[str]] = None, origin: str = "a saved config") -> Config:
    """The config stored in a checkpoint, with ``key=value`` overrides (e.g. for evaluation)."""
    try:
        cfg = _default_config()
        _merge_into(cfg, OmegaConf.create(saved))
    except OmegaConfBaseException as exc:
        # Typically a key a newer or older annoboot wrote; name it rather than fail deep inside.
        raise _explain(exc, f"{origin} (written by another annoboot version?)") from None
    return _finish(_apply_overrides(cfg, overrides))


def _merge_into(cfg: DictConfig, loaded: DictConfig) -> None:
    """Merge a recipe, a saved config or an override into ``cfg``, field by field, except that
    each free-form dict it sets (model.backbone_kwargs) replaces the one there: merged, a {} for
    a CNN or a {depth: 4} would keep the default's patch_size."""
    cfg.merge_with(loaded)
    for key in _free_dicts(cfg, loaded):
        OmegaConf.update(cfg, key, OmegaConf.select(loaded, key), merge=False)


def _free_dicts(cfg: DictConfig, loaded: DictConfig, prefix: str = "") -> List[str]:
    """The keys of ``loaded`` whose value is a dict for a field of ``cfg`` that is not a dataclass."""
    keys = []
    for name, value in loaded.items_ex(resolve=False):
        key = f"{prefix}{name}"
        if isinstance(value, DictConfig):
            keys += _free_dicts(cfg, value, key + ".") if _is_structured(cfg, key) else [key]
    return keys


def _apply_overrides(cfg: DictConfig, overrides: Optional[List[str]]) -> DictConfig:
    for item in overrides or []:
        if "=" not in item:
            raise AnnobootError(f"override '{item}' is not of the form key=value (e.g. train.steps=100)")
    for item in overrides or []:
        key = item.split("=", 1)[0]
        try:
            parsed = OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:  # the value is parsed as YAML
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise AnnobootError(f"override '{item}': its value is not valid YAML ({problem}); write a dict as "
                                "{key: value, ...}, with a space after each colon, and a list as [a, b]") from None
        except OmegaConfBaseException as exc:
            raise _explain(exc, "command-line overrides", key) from None
        try:
            value = OmegaConf.select(parsed, key)
            if isinstance(value, ListConfig):
                OmegaConf.update(cfg, key, value, merge=False)
            else:
                # In place (cfg is this load's own copy); `model.backbone_kwargs={}` and
                # `model={backbone_kwargs: {}}` both replace the recipe's dict.
                _merge_into(cfg, parsed)
        except OmegaConfBaseException as exc:
            raise _explain(exc, "command-line overrides", key) from None
    return cfg


def _is_structured(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is a dataclass field (e.g. ``eval.retrieval``), which a dict merges into."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return False
    node = parent._get_node(leaf)
    return is_dataclass(node._metadata.ref_type) or is_dataclass(OmegaConf.get_type(node))


def _finish(cfg: DictConfig) -> Config:
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(config)
    return config


def validate(cfg: Config) -> None:
    """Every check of a loaded config, by the code that owns the option (AnnobootError naming
    the key): the core sections' (config.check_core), each source's kind and options
    (config.check_source), each registered method's option classes (their ``check``, told
    whether the configured method uses them, and ``CHOICES``), and the probes'
    (eval.probes.check_probe_config), all before anything is built or trained. First the range
    every numeric option declares (option_ranges.py), so no check below meets a NaN or a
    negative size."""
    per_method = method_option_classes()
    check_ranges(cfg)
    check_core(cfg)
    if cfg.method.name not in per_method:
        raise AnnobootError(f"bad config: key 'method.name' is '{cfg.method.name}'; choose one of {', '.join(per_method)}")
    sources = {"data.annotation": cfg.data.annotation, "data.bootstrap": cfg.data.bootstrap,
               "eval.train": cfg.eval.train, "eval.test": cfg.eval.test, "eval.retrieval": cfg.eval.retrieval}
    for key, source in sources.items():
        if source is not None:
            check_source(source, key)
    check_probe_config(cfg.eval)
    selected = {c for classes in per_method[cfg.method.name].values() for c in classes}
    for section, option_class in _unique_option_classes(per_method):
        for key, allowed in getattr(option_class, "CHOICES", {}).items():
            value = getattr(getattr(cfg, section), key)
            if value not in allowed:
                raise AnnobootError(f"bad config: key '{section}.{key}' is '{value}'; choose one of {', '.join(allowed)}")
        if hasattr(option_class, "check"):
            option_class.check(cfg, option_class in selected)


__all__ = ["config_from_saved", "config_schema", "forget_schema", "load_config", "method_option_classes", "validate"]
