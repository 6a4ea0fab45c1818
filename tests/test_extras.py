"""Install hints name an extra's packages, read from this install's metadata, never `ifedit[...]` (ifedit installs
from its source: that name on a package index may be anyone's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ifedit.extras import install_command

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


@pytest.mark.parametrize("extra", ["video", "ui", "gguf", "serve", "bench"])
def test_every_hinted_extra_names_its_declared_packages(extra):
    command = install_command(extra)
    assert command.startswith("pip install ") and "ifedit" not in command, command
    named = set(re.findall(r"'([^']+)'", command))
    for declared in EXTRAS[extra]:
        if declared.startswith("ifedit["):  # an extra that includes another: its packages are named instead
            included = declared.removeprefix("ifedit[").removesuffix("]")
            assert set(EXTRAS[included]) <= named, command
        else:
            assert declared.replace(" ", "") in named, command


def test_an_extra_this_install_does_not_declare_points_to_the_source_folder():
    assert install_command("no-such-extra") == 'pip install ".[no-such-extra]" in the ifedit source folder'


def test_every_hint_in_the_code_is_for_a_declared_extra():
    source = Path(__file__).parents[1] / "src" / "ifedit"
    hinted = {name for path in source.rglob("*.py") for name in re.findall(r"install_command\('(\w+)'\)",
                                                                            path.read_text())}  # fmt: skip
    assert hinted and hinted <= EXTRAS.keys(), hinted
    assert not [path for path in source.rglob("*.py") if "pip install 'ifedit[" in path.read_text()]
