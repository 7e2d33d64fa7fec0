"""The whole of postward.conf: the shared sections and one section per daemon.

Every daemon reads the same file, so every daemon knows every section; each daemon's own section
type lives in its subpackage and is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postward.classifier.settings import ClassifierSettings
from postward.core.config import DEFAULT_PATH, load_sections
from postward.core.settings import DnsSettings, LoggingSettings, MetricsSettings, RedisSettings
from postward.dkim.settings import DkimSettings
from postward.policyd.greylist_settings import GreylistSettings
from postward.policyd.settings import PolicydSettings

SCHEMA: dict[str, type] = {
    "redis": RedisSettings,
    "dns": DnsSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
    "policyd": PolicydSettings,
    "greylist": GreylistSettings,
    "dkim": DkimSettings,
    "classifier": ClassifierSettings,
}


@dataclass(frozen=True)
class Config:
    path: Path
    redis: RedisSettings
    dns: DnsSettings
    metrics: MetricsSettings
    logging: LoggingSettings
    policyd: PolicydSettings
    greylist: GreylistSettings
    dkim: DkimSettings
    classifier: ClassifierSettings


def load_config(path: Path = DEFAULT_PATH) -> Config:
    """Read and check ``path``; raises ConfigError listing every problem as file:line: reason."""
    sections = load_sections(path, SCHEMA)
    return Config(path=path, **sections)
