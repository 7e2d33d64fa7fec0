"""What a Postfix configuration directory holds now, as ``postconf`` reads it.

Never parsed by hand: ``postconf -n`` gives the parameters set in main.cf (continuation lines
joined), ``postconf -d`` the built-in defaults, ``postconf -M`` every master.cf entry on one
line. Comparing with a snippet then only needs :func:`normalize` (postconf joins continuation
lines with one space; master.cf columns are padded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from postward.wiring.postfix_tools import PostfixCommandError, run_checked, sbin_tool
from postward.wiring.snippets import SnippetError, logical_lines


def normalize(value: str) -> str:
    """A value or master.cf entry as postconf compares: whitespace runs count as one space."""
    return " ".join(value.split())


def postconf_argv(config_dir: Path | None, *args: str) -> list[str]:
    """``postconf [-c DIR] ARGS``; without a directory, postconf's own default (/etc/postfix)."""
    directory = ["-c", str(config_dir)] if config_dir is not None else []
    return [sbin_tool("postconf"), *directory, *args]


def postfix_argv(config_dir: Path | None, *args: str) -> list[str]:
    directory = ["-c", str(config_dir)] if config_dir is not None else []
    return [sbin_tool("postfix"), *directory, *args]


@dataclass(frozen=True)
class PostfixState:
    config_dir: Path
    explicit: dict[str, str]   # set in main.cf
    defaults: dict[str, str]   # built-in defaults of the parameters asked about
    services: dict[str, str]   # "name/type" -> master.cf entry on one line

    def value(self, name: str) -> str | None:
        """The effective value: main.cf's, else the default, else None (a user-defined
        parameter that is not set)."""
        return self.explicit.get(name, self.defaults.get(name))

    def is_default(self, name: str) -> bool:
        if name not in self.explicit:
            return True
        return name in self.defaults and normalize(self.explicit[name]) == normalize(
            self.defaults[name])


def _pairs(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq:
            pairs[name.strip()] = value.strip()
    return pairs


def _services(text: str) -> dict[str, str]:
    services = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8:
            services[f"{fields[0]}/{fields[1]}"] = line.strip()
    return services


def _unreferenced(directory: Path, names: set[str]) -> dict[str, str]:
    """Parameters of ``names`` that main.cf sets but ``postconf -n`` hides: a user-defined
    parameter (postward_*) that nothing refers to yet is "unused", not shown. Read from main.cf
    itself, the last setting winning as in Postfix."""
    path = directory / "main.cf"
    try:
        lines = logical_lines(path.read_text(errors="replace"), str(path))
    except (OSError, SnippetError):
        return {}
    found = {}
    for _number, line in lines:
        name, eq, value = line.partition("=")
        if eq and name.strip() in names:
            found[name.strip()] = value.strip()
    return found


def read_state(config_dir: Path | None, names: Iterable[str]) -> PostfixState:
    """Read the configuration (``names``: the parameters whose defaults matter).
    PostfixCommandError if postconf cannot read it."""
    try:
        directory = config_dir or Path(
            run_checked(postconf_argv(None, "-h", "config_directory")).strip())
        explicit = _pairs(run_checked(postconf_argv(directory, "-n")))
        explicit.update(_unreferenced(directory, set(names) - set(explicit)))
        # Unknown (user-defined) names only earn a warning and no line: no default.
        defaults = _pairs(run_checked(postconf_argv(directory, "-d", *sorted(set(names)))))
        services = _services(run_checked(postconf_argv(directory, "-M")))
    except FileNotFoundError as e:
        raise PostfixCommandError(f"{e.filename}: not found (is Postfix installed?)") from None
    return PostfixState(directory, explicit, defaults, services)
