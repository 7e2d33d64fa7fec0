"""What ``postward postfix-config`` would change: the snippets against the current config.

Every decision is made here, once, and both the printed commands and ``--apply`` follow it, so
running the printed lines gives the same main.cf and master.cf as ``--apply``.

Per main.cf parameter of a snippet:

- already the snippet's value (postconf's normalised form): nothing to do;
- a ``postward_*`` address the admin set to something else: kept (that is what the parameter
  is for: the daemon runs elsewhere);
- a list (:data:`~postward.wiring.postfix_lists.LIST_PARAMS`) that already has the snippet's
  items in order, with more of the admin's own: kept;
- otherwise set; a list that was not Postfix's default gets a warning saying what it loses
  (the backup of main.cf keeps it).

A master.cf service is set unless its entry already has the snippet's words. A map is
installed into the config directory unless the admin has one there (kept, said so).
"""

from __future__ import annotations

import enum
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

from postward.wiring.files import FileInstall, FileState, missing_paths
from postward.wiring.postfix_lists import LIST_PARAMS, contains, replacement
from postward.wiring.postfix_state import PostfixState, normalize
from postward.wiring.snippets import Snippet, logical_lines, read_text

# What each --only name wires in: snippets, then maps installed into the config directory.
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "policyd": (("policyd.main.cf",), ()),
    "dkim": (("dkim.main.cf",), ()),
    "classifier": (("classifier.main.cf", "classifier.master.cf"), ("dspam_filter_access",)),
}
# Where the snippets expect Postfix's configuration (maps are named by absolute path).
DEFAULT_CONFIG_DIR = Path("/etc/postfix")


class Action(enum.Enum):
    SET = "set"
    SAME = "same"
    KEPT = "kept"


@dataclass(frozen=True)
class ParamStep:
    snippet: str
    name: str
    new: str
    old: str | None         # as set in main.cf (None: not set)
    effective: str | None   # main.cf's or the default
    action: Action
    notes: tuple[str, ...] = ()   # why it is kept
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceStep:
    snippet: str
    key: str
    new: str
    old: str | None
    action: Action


@dataclass(frozen=True)
class MapStep:
    file: FileInstall
    state: FileState
    same_rules: bool  # differs only in comments and spacing

    @property
    def action(self) -> Action:
        return Action.SET if self.state is FileState.ABSENT else (
            Action.SAME if self.state is FileState.SAME else Action.KEPT)


@dataclass
class Plan:
    config_dir: Path
    components: list[str]
    params: list[ParamStep] = field(default_factory=list)
    services: list[ServiceStep] = field(default_factory=list)
    maps: list[MapStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things to fix outside Postfix's config

    @property
    def main_cf_changes(self) -> list[ParamStep]:
        return [p for p in self.params if p.action is Action.SET]

    @property
    def master_cf_changes(self) -> list[ServiceStep]:
        return [s for s in self.services if s.action is Action.SET]

    @property
    def map_installs(self) -> list[MapStep]:
        return [m for m in self.maps if m.action is Action.SET]

    @property
    def changes_anything(self) -> bool:
        return bool(self.main_cf_changes or self.master_cf_changes or self.map_installs)


@dataclass(frozen=True)
class Wiring:
    """The snippets and maps of the chosen components, read and parsed."""

    snippets: tuple[Snippet, ...]
    maps: tuple[Path, ...]

    @property
    def param_names(self) -> list[str]:
        return [name for s in self.snippets if s.kind == "main" for name, _ in s.entries]


def load_wiring(directory: Path, components: list[str]) -> Wiring:
    """Read the components' files from the snippet directory (SnippetError names a bad one)."""
    snippets, maps = [], []
    for component in components:
        names, map_names = COMPONENTS[component]
        snippets += [Snippet.load(directory / name) for name in names]
        for name in map_names:
            read_text(directory / name)  # readable now, not half-way through --apply
            maps.append(directory / name)
    return Wiring(tuple(snippets), tuple(maps))


def _localize(value: str, maps: tuple[Path, ...], config_dir: Path) -> str:
    """A snippet names its maps in /etc/postfix; another config directory has its own."""
    if config_dir == DEFAULT_CONFIG_DIR:
        return value
    for source in maps:
        value = value.replace(str(DEFAULT_CONFIG_DIR / source.name), str(config_dir / source.name))
    return value


def build_plan(state: PostfixState, wiring: Wiring, components: list[str]) -> Plan:
    plan = Plan(state.config_dir, components)
    # name -> (snippet file, value); a later snippet wins, as postconf -e would
    wanted: dict[str, tuple[str, str]] = {}
    for snippet in wiring.snippets:
        if snippet.kind == "main":
            for name, value in snippet.entries:
                wanted[name] = (snippet.path.name, _localize(value, wiring.maps, state.config_dir))
    values = {name: value for name, (_, value) in wanted.items()}
    expand_with = {**state.explicit, **values}
    for name, (origin, value) in wanted.items():
        plan.params.append(_param_step(state, origin, name, value, values, expand_with))
    for snippet in wiring.snippets:
        if snippet.kind == "master":
            for key, entry in snippet.entries:
                # One space between words, as postconf -M prints it (the snippet aligns columns).
                entry = normalize(_localize(entry, wiring.maps, state.config_dir))
                plan.services.append(_service_step(state, snippet.path.name, key, entry))
                plan.notes += _pipe_notes(key, entry)
    plan.maps = [_map_step(source, state.config_dir) for source in wiring.maps]
    return plan


def _param_step(state: PostfixState, snippet: str, name: str, value: str,
                values: dict[str, str], expand_with: dict[str, str]) -> ParamStep:
    old, effective = state.explicit.get(name), state.value(name)
    step = ParamStep(snippet, name, value, old, effective, Action.SET)
    if effective is not None and normalize(effective) == normalize(value):
        return _with(step, Action.SAME)
    if name.startswith("postward_") and old:
        return _with(step, Action.KEPT, notes=(
            f"{name} = {old} is yours: kept (postward's default: {value})",))
    kind = LIST_PARAMS.get(name)
    if kind is None or old is None or state.is_default(name):
        return step
    if contains(old, value, kind):
        return _with(step, Action.KEPT, notes=(
            f"{name} already has postward's {value!r} among your entries: kept",))
    others = {n: v for n, v in values.items() if n != name and LIST_PARAMS.get(n) == kind}
    lines = replacement(old, value, kind, expand_with, others)
    return _with(step, Action.SET, warnings=(
        f"{name} was {old!r}; {snippet} replaces the whole list (the backup of main.cf keeps "
        "the old one):", *(f"  {line}" for line in lines)))


def _with(step: ParamStep, action: Action, notes: tuple[str, ...] = (),
          warnings: tuple[str, ...] = ()) -> ParamStep:
    return ParamStep(step.snippet, step.name, step.new, step.old, step.effective, action,
                     notes, warnings)


def _service_step(state: PostfixState, snippet: str, key: str, entry: str) -> ServiceStep:
    old = state.services.get(key)
    same = old is not None and old.split() == entry.split()
    return ServiceStep(snippet, key, entry, old, Action.SAME if same else Action.SET)


def _pipe_notes(key: str, entry: str) -> list[str]:
    """What a pipe service needs that Postfix does not check: its user and its program."""
    notes = []
    _head, _, argv = entry.partition(" argv=")
    user = re.search(r"\buser=([^\s:]+)", entry)
    if user:
        try:
            pwd.getpwnam(user.group(1))
        except KeyError:
            notes.append(f"{key} runs as user {user.group(1)}, which does not exist yet")
    notes += [f"{key} runs {path}, which is not there yet" for path in missing_paths(argv)]
    return notes


def _map_step(source: Path, config_dir: Path) -> MapStep:
    install = FileInstall(source, config_dir / source.name, source.read_bytes())
    state = install.state()
    same_rules = state is FileState.DIFFERS and _rules(install.current_text()) == _rules(
        install.content.decode())
    return MapStep(install, state, same_rules)


def _rules(text: str) -> list[str]:
    try:
        return [normalize(line) for _, line in logical_lines(text, "map")]
    except ValueError:
        return []
