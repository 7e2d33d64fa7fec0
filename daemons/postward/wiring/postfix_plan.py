"""What ``postward postfix-config`` would change: the snippets against the current config.

Every decision is made here, once, and both the printed commands and ``--apply`` follow it, so
running the printed lines gives the same main.cf and master.cf as ``--apply``.

Per main.cf parameter of a snippet:

- already the snippet's value (postconf's normalised form): nothing to do;
- a ``postward_*`` address the admin set to something else: kept (that is what the parameter
  is for: the daemon runs elsewhere);
- ``milter_default_action`` the admin set: kept, with a note (it applies to every milter);
- a list (:data:`~postward.wiring.postfix_lists.LIST_PARAMS`) that is Postfix's default: set
  to the snippet's value, unless postward's entry already acts from another restriction list;
- a list of the admin's: merged (:func:`~postward.wiring.postfix_lists.merge`): postward's
  entries under another spelling are respelled in place, missing ones added; nothing of the
  admin's is removed. A restriction list no snippet sets is respelled too, when it holds one
  of postward's entries (the guide's FILTER in ``smtpd_client_restrictions``);
- otherwise set.

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
from postward.wiring.postfix_lists import (
    LIST_PARAMS,
    RESTRICTION_LISTS,
    Entry,
    holder,
    items,
    join,
    merge,
    reference,
    snippet_entries,
)
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
# Set by a snippet, but the admin's explicit value is a choice postward only advises on: why.
ADVISED = {
    "milter_default_action": (
        "while a milter is down, mail waits in the queue instead of going out unsigned; it "
        "applies to every milter, or to postward's alone written as "
        "{ $postward_dkim_milter, default_action=tempfail } in smtpd_milters"),
}


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
    notes: tuple[str, ...] = ()     # why it (or part of it) is kept
    warnings: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()   # a merged list: what changes, one line per entry


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
        """The snippets' parameters, then the restriction lists postward's entries may be in."""
        names = [name for s in self.snippets if s.kind == "main" for name, _ in s.entries]
        return names + [name for name in RESTRICTION_LISTS if name not in names]


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
    lists = _Lists(state, wanted)
    for name, (origin, value) in wanted.items():
        plan.params.append(lists.step(origin, name, value) if name in LIST_PARAMS
                           else _param_step(state, origin, name, value))
    # postward's entries in restriction lists of the admin's that no snippet sets: respelled
    for name in RESTRICTION_LISTS:
        if name not in wanted and not state.is_default(name):
            step = lists.step(None, name, None)
            if step.action is Action.SET:
                plan.params.append(step)
    for snippet in wiring.snippets:
        if snippet.kind == "master":
            for key, entry in snippet.entries:
                # One space between words, as postconf -M prints it (the snippet aligns columns).
                entry = normalize(_localize(entry, wiring.maps, state.config_dir))
                plan.services.append(_service_step(state, snippet.path.name, key, entry))
                plan.notes += _pipe_notes(key, entry)
    plan.maps = [_map_step(source, state.config_dir) for source in wiring.maps]
    return plan


def _param_step(state: PostfixState, snippet: str, name: str, value: str) -> ParamStep:
    old, effective = state.explicit.get(name), state.value(name)
    step = ParamStep(snippet, name, value, old, effective, Action.SET)
    if effective is not None and normalize(effective) == normalize(value):
        return _with(step, Action.SAME)
    if name.startswith("postward_") and old:
        return _with(step, Action.KEPT, notes=(
            f"{name} = {old} is yours: kept (postward's default: {value})",))
    if name in ADVISED and old:
        return _with(step, Action.KEPT, notes=(
            f"{name} = {old} is yours: kept (postward's snippet has {value}: {ADVISED[name]})",))
    return step


class _Lists:
    """The list parameters: postward's entries per snippet list, merged into the admin's."""

    def __init__(self, state: PostfixState, wanted: dict[str, tuple[str, str]]) -> None:
        self.state = state
        snippet_lists = {n: v for n, (_, v) in wanted.items() if n in LIST_PARAMS}
        self.own = {n: snippet_entries(n, v, LIST_PARAMS[n], wanted[n][0], snippet_lists)
                    for n, v in snippet_lists.items()}
        # $references expand to the values postward leaves: the admin's, and its postward_*
        # defaults where the admin has none; list parameters stay references.
        self.params = {n: v for n, v in state.explicit.items() if n not in LIST_PARAMS}
        self.params.update({n: v for n, (_, v) in wanted.items()
                            if n.startswith("postward_") and not state.explicit.get(n)})
        self.after: dict[str, str] = {}  # the lists as the plan leaves them

    def _known(self, kind: str) -> list[Entry]:
        every = [e for n, es in self.own.items() if LIST_PARAMS[n] == kind for e in es]
        return list({e.item: e for e in every}.values())

    def _elsewhere(self, name: str) -> dict[str, str]:
        """The other lists where one of postward's entries acts as well: a restriction acts
        from any smtpd restriction list, a milter only from its own list."""
        if LIST_PARAMS[name] != "restrictions":
            return {}
        return {n: self.state.explicit[n] for n in RESTRICTION_LISTS
                if n != name and n in self.state.explicit}

    def step(self, snippet: str | None, name: str, value: str | None) -> ParamStep:
        """A snippet's list (``value``), or (``value`` None) a list only to respell."""
        state, kind = self.state, LIST_PARAMS[name]
        old, effective = state.explicit.get(name), state.value(name)
        step = ParamStep(snippet or "", name, value or "", old, effective, Action.SET)
        own = self.own.get(name, [])
        if value is not None and effective is not None and normalize(effective) == normalize(
                value):
            self.after[name] = value
            return _with(step, Action.SAME)
        self.after[name] = effective or ""
        if value is not None and (old is None or state.is_default(name)):
            # Postfix's default: the snippet's list, unless its entries act from another list.
            merged = merge(name, "", kind, own, (), self._elsewhere(name), self.params)
            if own and not merged.changes:
                return _with(step, Action.KEPT, notes=tuple(merged.notes))
            self.after[name] = value
            return _with(step, Action.SET, changes=tuple(self._brings(name, value)))
        merged = merge(name, old or "", kind, own, self._known(kind), self._elsewhere(name),
                       self.params)
        if merged.items == items(old or "", kind):
            return _with(step, Action.KEPT, notes=tuple(merged.notes),
                         warnings=tuple(merged.warnings))
        new = self.after[name] = join(merged.items, old or "")
        origin = snippet or ", ".join(dict.fromkeys(e.snippet for e in merged.respelled))
        return ParamStep(origin, name, new, old, effective, Action.SET, tuple(merged.notes),
                         tuple(merged.warnings), tuple(merged.changes))

    def _brings(self, name: str, value: str) -> list[str]:
        """What a reference to another list brings along besides postward's entries
        (``non_smtpd_milters = $smtpd_milters`` with the admin's milters in smtpd_milters)."""
        lines = []
        for item in items(value, LIST_PARAMS[name]):
            ref = reference(item)
            if ref in self.after and ref in self.own:
                kind = LIST_PARAMS[ref]
                theirs = [i for i in items(self.after[ref], kind) if not any(
                    holder([i], e, kind, self.params) for e in self.own[ref])]
                if theirs:
                    lines.append(f"{item} brings your {', '.join(theirs)} to {name} as well")
        return lines


def _with(step: ParamStep, action: Action, notes: tuple[str, ...] = (),
          warnings: tuple[str, ...] = (), changes: tuple[str, ...] = ()) -> ParamStep:
    return ParamStep(step.snippet, step.name, step.new, step.old, step.effective, action,
                     notes, warnings, changes)


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
