"""What to install for an optional feature, named as its packages.

ifedit installs from its source, so a hint to pip-install `ifedit[serve]` would fetch whatever package holds the name
`ifedit` on the index; the packages an extra declares (read from this install's own metadata) are safe to name.
"""

from __future__ import annotations

import importlib.metadata
import shlex

from packaging.requirements import Requirement


def install_command(extra: str) -> str:
    """A pip command that installs what `extra` adds, e.g. "pip install 'gguf>=0.10'"."""
    packages = _packages(extra)
    if not packages:  # no metadata to read (run from a source tree without installing)
        return f'pip install ".[{extra}]" in the ifedit source folder'
    return "pip install " + " ".join(shlex.quote(package) for package in packages)


def _packages(extra: str) -> list[str]:
    try:
        declared = importlib.metadata.requires("ifedit") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    packages: list[str] = []
    for line in declared:
        requirement = Requirement(line)
        if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
            continue
        if requirement.name == "ifedit":  # an extra that includes another (ui includes video)
            packages += [package for included in sorted(requirement.extras) for package in _packages(included)]
        else:
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            packages.append(f"{requirement.name}{extras}{requirement.specifier}")
    return list(dict.fromkeys(packages))
