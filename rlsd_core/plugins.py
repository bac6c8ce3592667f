"""Plugin discovery and the name -> record registries.

Start-up data flow: hook specs are added, every entry point of the `rlsd` group is loaded (the
built-ins are listed there too, exactly like a third-party plugin), each plugin's declared API
range (`RLSD_API`) is checked against `API_VERSION`, `check_pending()` catches plugins that
implement hooks that do not exist, and the provider hooks are called once, plugin by plugin, to
fill the registries. After that the trainer looks records up by name; no hook is dispatched in
the hot loop. Every hook call, provider hooks included, goes through pluggy, so tracing sees it.

Environment variables:
  RLSD_LOAD_PLUGINS     comma-separated allow-list of entry-point or distribution names
                        (empty string: load no entry points at all)
  RLSD_DISABLE_PLUGINS  comma-separated block-list of entry-point or distribution names
  RLSD_TRACE_PLUGINS    set to 1 to print every hook call and its result to stderr
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from . import hookspecs
from .hookspecs import API_VERSION
from .records import RECORD_TYPES, RecordError

ENTRY_POINT_GROUP = "rlsd"
PROVIDER_HOOKS = {
    "verifier": "rlsd_verifiers",
    "injector": "rlsd_injectors",
    "scheduler": "rlsd_schedulers",
    "task_source": "rlsd_task_sources",
    "objective": "rlsd_objectives",
}


class PluginError(RuntimeError):
    """A plugin could not be loaded or handed over something rlsd cannot use."""


class ApiVersionError(PluginError):
    """A plugin declares an API range (`RLSD_API`) that excludes this rlsd's `API_VERSION`."""


class UnknownNameError(LookupError):
    """A config names a record that no installed plugin provides."""


def api_range(declared: Any) -> SpecifierSet:
    """The API versions a plugin's `RLSD_API` admits: a PEP 440 specifier set (">=1.0,<2"), or a
    bare version "1.2", which means ">=1.2,<2" (that version or a later one of the same major)."""
    if not isinstance(declared, str) or not declared.strip():
        raise ValueError(f"RLSD_API must be a string such as '>=1.0,<2', got {declared!r}")
    text = declared.strip()
    try:
        if text[0].isdigit():
            bare = Version(text)
            return SpecifierSet(f">={bare},<{bare.major + 1}")
        return SpecifierSet(text)
    except (InvalidSpecifier, InvalidVersion) as exc:
        raise ValueError(f"RLSD_API {declared!r} is not a version range such as '>=1.0,<2': "
                         f"{exc}") from exc


@dataclass(frozen=True)
class Origin:
    """Where a plugin came from, for messages and `rlsd plugins`."""

    plugin: str
    distribution: str
    version: str
    entry_point: str = ""
    api: str = ""  # the plugin's declared RLSD_API range ("" when it declares none)

    def __str__(self) -> str:
        if self.distribution == "<inline>":  # registered in code, not installed
            return f"inline plugin '{self.plugin}'"
        where = f"distribution '{self.distribution} {self.version}'"
        if self.entry_point:
            where += f", entry point '{self.entry_point}'"
        return where


@dataclass(frozen=True)
class Registered:
    record: Any
    origin: Origin


@dataclass
class Registry:
    """name -> Registered, per kind."""

    by_kind: dict[str, dict[str, Registered]] = field(
        default_factory=lambda: {kind: {} for kind in RECORD_TYPES})

    def get(self, kind: str, name: str):
        table = self.by_kind[kind]
        if name not in table:
            installed = sorted(table)
            close = difflib.get_close_matches(name, installed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"no {kind} named {name!r} is installed.{hint} Installed {kind}s: "
                f"{', '.join(installed) or '(none)'}. Install a plugin that provides it "
                f"(pip install ...), or check `rlsd plugins`.")
        return table[name].record

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind[kind])

    def rows(self) -> list[dict]:
        """Flat listing for `rlsd plugins`."""
        out = []
        for kind, table in self.by_kind.items():
            for name in sorted(table):
                reg = table[name]
                out.append({
                    "kind": kind, "name": name, "distribution": reg.origin.distribution,
                    "distribution_version": reg.origin.version, "record_version": reg.record.version,
                    "plugin": reg.origin.plugin, "description": reg.record.description,
                    "api": reg.origin.api,
                })
        return out

    def verifier(self, name: str):
        return self.get("verifier", name)

    def injector(self, name: str):
        return self.get("injector", name)

    def scheduler(self, name: str):
        return self.get("scheduler", name)

    def task_source(self, name: str):
        return self.get("task_source", name)

    def objective(self, name: str):
        return self.get("objective", name)


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


class PluginManager:
    """A pluggy manager with rlsd's specs, entry-point loading and record registries."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, Origin] = {}
        self._registry: Registry | None = None
        self._undo_trace = None
        if os.environ.get("RLSD_TRACE_PLUGINS", "").strip() not in ("", "0"):
            self.enable_tracing()

    # -- registration ----------------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None, *, origin: Origin | None = None) -> str:
        """Register a plugin object (a module or class instance with @hookimpl functions).
        Raises ApiVersionError when its `RLSD_API` range excludes this rlsd's API_VERSION."""
        origin = origin or Origin(name or "<unnamed>", "<inline>", "-")
        declared = getattr(plugin, "RLSD_API", None)
        if declared is not None:
            origin = _with_api(origin, declared)
        registered = self.pm.register(plugin, name=name)
        if registered is None:  # pluggy returns None for blocked names
            raise PluginError(f"plugin {name!r} is blocked")
        if origin.plugin == "<unnamed>":
            origin = Origin(registered, origin.distribution, origin.version, origin.entry_point, origin.api)
        self._origins[registered] = origin
        self._registry = None
        return registered

    def origin(self, plugin_name: str) -> Origin:
        """Where the plugin registered under `plugin_name` came from."""
        return self._origins.get(plugin_name, Origin(plugin_name, "<inline>", "-"))

    def implementers(self, hook_name: str) -> list[str]:
        """Names of the plugins implementing `hook_name`, in the order pluggy calls them."""
        return [impl.plugin_name for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls())]

    def call_one(self, hook_name: str, plugin_name: str, **kwargs):
        """Call one plugin's implementation of a hook, through pluggy (so tracing and hook-call
        monitors see it), and return its result (None when it returned None)."""
        plugin = self.pm.get_plugin(plugin_name)
        if plugin is None:
            raise KeyError(f"no plugin named {plugin_name!r} is registered")
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        results = self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        return results[0] if results else None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._origins.pop(name, None)
        self._registry = None

    def load_entrypoints(self, group: str = ENTRY_POINT_GROUP, *,
                         names: Iterable[str] | None = None) -> list[str]:
        """Load every entry point of `group`, honouring RLSD_LOAD_PLUGINS / RLSD_DISABLE_PLUGINS;
        `names` (entry-point or distribution names) loads only those."""
        allow = list(names) if names is not None else _env_list("RLSD_LOAD_PLUGINS")
        deny = set(_env_list("RLSD_DISABLE_PLUGINS") or [])
        loaded = []
        for ep in sorted(md.entry_points(group=group), key=lambda e: (e.dist.name if e.dist else "", e.name)):
            dist = ep.dist.name if ep.dist else "<unknown>"
            dist_version = ep.dist.version if ep.dist else "?"
            keys = {ep.name, dist}
            if allow is not None and not keys & set(allow):
                continue
            if keys & deny:
                continue
            origin = Origin(ep.name, dist, dist_version, f"{ep.name} = {ep.value}")
            if self.pm.has_plugin(ep.name):
                other = self._origins.get(ep.name)
                raise PluginError(
                    f"two rlsd plugins use the entry-point name {ep.name!r}: {other} and {origin}. "
                    f"Uninstall one, or disable one with RLSD_DISABLE_PLUGINS=<distribution name>.")
            try:
                plugin = ep.load()
            except BaseException as exc:  # noqa: BLE001 - an import may raise anything
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise PluginError(
                    f"the rlsd plugin from {origin} failed to import: {type(exc).__name__}: {exc}. "
                    f"Fix: reinstall or upgrade '{dist}' (pip install -U {dist}), or skip it with "
                    f"RLSD_DISABLE_PLUGINS={ep.name}.") from exc
            self.register(plugin, name=ep.name, origin=origin)
            loaded.append(ep.name)
        self.check_pending()
        return loaded

    def check_pending(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            origin = self._origins.get(self.pm.get_name(exc.plugin) or "", None)
            raise PluginError(
                f"a plugin from {origin or exc.plugin} implements a hook rlsd does not define: {exc}. "
                f"Hooks are listed in docs/plugin-hooks.md; the plugin may target another rlsd "
                f"version.") from exc

    # -- tracing -----------------------------------------------------------------------------
    def enable_tracing(self, write=None) -> None:
        """Print each hook call (name, args) and its outcome, for debugging plugins."""
        write = write or (lambda line: print(line, file=sys.stderr))

        def before(hook_name, hook_impls, kwargs):
            write(f"[rlsd trace] call {hook_name}({', '.join(kwargs)}) -> "
                  f"{[impl.plugin_name for impl in hook_impls]}")

        def after(outcome, hook_name, hook_impls, kwargs):
            exc = outcome.exception
            write(f"[rlsd trace] done {hook_name}: " + (f"raised {exc!r}" if exc else
                                                         f"{_short(outcome.get_result())}"))

        self._undo_trace = self.pm.add_hookcall_monitoring(before, after)

    # -- registries --------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        reg = Registry()
        for kind, hook_name in PROVIDER_HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            record_type = RECORD_TYPES[kind]
            for impl in hook.get_hookimpls():
                origin = self.origin(impl.plugin_name)
                try:
                    # One plugin at a time, so that an error names its plugin; through pluggy,
                    # so that RLSD_TRACE_PLUGINS and monitors see provider hooks too.
                    produced = self.call_one(hook_name, impl.plugin_name)
                except Exception as exc:
                    raise PluginError(f"{hook_name}() of the plugin from {origin} raised "
                                      f"{type(exc).__name__}: {exc}") from exc
                for rec in _as_list(produced, hook_name, origin):
                    if not isinstance(rec, record_type):
                        raise PluginError(
                            f"{hook_name}() of the plugin from {origin} returned a "
                            f"{type(rec).__name__}; it must return {record_type.__name__} records.")
                    try:
                        rec.validate()
                    except RecordError as exc:
                        raise PluginError(f"malformed {kind} record from {origin}: {exc}") from exc
                    table = reg.by_kind[kind]
                    if rec.name in table:
                        first = table[rec.name].origin
                        raise PluginError(
                            f"two plugins register a {kind} named {rec.name!r}: {first} and {origin}. "
                            f"rlsd never lets one silently shadow the other: uninstall or disable one "
                            f"(RLSD_DISABLE_PLUGINS=<entry point or distribution>), or rename it.")
                    table[rec.name] = Registered(rec, origin)
        return reg

    # -- events ------------------------------------------------------------------------------
    @property
    def hook(self):
        return self.pm.hook


def _with_api(origin: Origin, declared: Any) -> Origin:
    """`origin` with the plugin's declared range, after checking that it admits API_VERSION."""
    try:
        admitted = api_range(declared)
    except ValueError as exc:
        raise ApiVersionError(f"the rlsd plugin from {origin} declares an unreadable API range: "
                              f"{exc}") from exc
    if Version(API_VERSION) not in admitted:
        raise ApiVersionError(
            f"the rlsd plugin from {origin} supports rlsd plugin API {admitted}, but this rlsd "
            f"provides API {API_VERSION}. Fix: install a version of "
            f"'{origin.distribution}' written for API {API_VERSION} (or an rlsd whose API it "
            f"admits), or skip it with RLSD_DISABLE_PLUGINS={origin.plugin}. "
            f"See docs/plugin-api.md.")
    return Origin(origin.plugin, origin.distribution, origin.version, origin.entry_point,
                  str(admitted))


def _as_list(produced, hook_name: str, origin: Origin) -> Iterable:
    if produced is None:
        return []
    if isinstance(produced, (list, tuple)):
        return produced
    raise PluginError(f"{hook_name}() of the plugin from {origin} returned {type(produced).__name__}; "
                      f"it must return a list of records.")


def _short(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def get_plugin_manager(*, load_entrypoints: bool = True) -> PluginManager:
    """A fresh manager (no global state): specs added, entry points loaded and checked."""
    pm = PluginManager()
    if load_entrypoints:
        pm.load_entrypoints()
    return pm
