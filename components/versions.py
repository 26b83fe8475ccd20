"""The installed version of a distribution, for health rows and for the keys of what depends
on a library's behaviour (cached conversions, kept measurements)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None
