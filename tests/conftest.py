"""Shared test fixtures."""

from __future__ import annotations

import pytest

from sharpscope.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``code, stdout, stderr = cli([...])``."""
    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(args)
        out = capsys.readouterr()
        return info.value.code, out.out, out.err
    return run
