"""Where an analysis command keeps its result, and the rule that no result is replaced unasked.

Before any work a command claims the files it will write (:func:`claim`): one that exists is
refused with a line naming ``--overwrite``; with ``--overwrite``, just before writing, every
file of the earlier result goes (the claimed ones, and the figures and data its JSON lists in
the same folders), so no stale figure is left beside new numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ._common import AnalysisContext, is_main, write_json

# Only files of these kinds, listed by an earlier result in a folder this result writes to, are removed.
_RESULT_SUFFIXES = (".json", ".npz", ".png", ".pdf")


def run_folder(checkpoint: Path) -> Path:
    """The folder of a checkpoint argument: the run folder itself, or the file's folder."""
    return checkpoint if not checkpoint.is_file() else checkpoint.parent


def json_target(json_out: str | None, checkpoint: Path, name: str) -> Path | None:
    """Where the JSON goes: ``--json PATH``, None for ``--json -`` (stdout only), else
    ``<run>/analyses/<name>.json`` (``<folder>/analyses/<file stem>/`` for a checkpoint file
    other than a run's ``checkpoint.pt``, e.g. a snapshot)."""
    if json_out is not None:
        return None if json_out == "-" else Path(json_out)
    if checkpoint.is_file() and checkpoint.name != "checkpoint.pt":
        return checkpoint.parent / "analyses" / checkpoint.stem / f"{name}.json"
    return run_folder(checkpoint) / "analyses" / f"{name}.json"


def figure_files(folder: Path, stems: Iterable[str], pdf: bool) -> list[Path]:
    """The files the figures ``folder/stem`` are written as: PNG, and PDF with ``--pdf``."""
    return [folder / f"{stem}.{fmt}" for stem in stems for fmt in (("png", "pdf") if pdf else ("png",))]


def claim_analysis(checkpoint: Path, json_out: str | None, name: str, figures: list[str], plot_dir: Path | None,
                   pdf: bool, overwrite: bool) -> tuple[Path | None, Path, Claim]:
    """Claim an analysis's JSON (:func:`json_target`) and its ``figures`` (stems) in ``plot_dir``
    (default: the run folder); returns (the JSON's path or None, the figures' folder, the claim)."""
    target = json_target(json_out, checkpoint, name)
    folder = plot_dir or run_folder(checkpoint)
    outputs = claim([target, *figure_files(folder, figures, pdf)], overwrite, "--json PATH (and --out DIR)",
                    records=[target], folders=[folder])
    return target, folder, outputs


def save_report(report: dict, target: Path | None, console: object, context: AnalysisContext | None = None) -> None:
    """Write an analysis's JSON to ``target`` (None: stdout) and say where it was saved."""
    write_json(report, "-" if target is None else str(target), context)
    if target is not None:
        console.print(f"saved {target}", highlight=False, soft_wrap=True)  # type: ignore[attr-defined]


def announce(written: Iterable[Path], console: object) -> list[str]:
    """Say 'wrote FILE' for each figure written; their paths as strings, for the JSON."""
    written = list(written)
    for p in written:
        console.print(f"wrote {p}", highlight=False)  # type: ignore[attr-defined]
    return [str(p) for p in written]


@dataclass
class Claim:
    """The files an analysis will write; :meth:`clear` removes the earlier result (with
    ``--overwrite``) just before the new one is written."""

    files: list[Path]
    overwrite: bool
    records: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # where else the earlier result may have files

    def stale(self) -> list[Path]:
        """The claimed files that exist, and the files an earlier JSON among them lists in a
        folder this result writes to."""
        folders = {f.parent.resolve() for f in self.files} | {f.resolve() for f in self.folders}
        out = [f for f in self.files if f.is_file()]
        for record in (r for r in self.records if r.is_file()):
            for listed in _listed_files(record):
                if (listed.suffix in _RESULT_SUFFIXES and listed.parent.resolve() in folders and listed.is_file()
                        and listed not in out):
                    out.append(listed)
        return out

    def clear(self) -> list[Path]:
        """Remove (on rank 0, with ``--overwrite``) and return the earlier result's files."""
        if not self.overwrite or not is_main():
            return []
        removed = self.stale()
        for f in removed:
            f.unlink(missing_ok=True)
        return removed


def _listed_files(record: Path) -> list[Path]:
    """The ``figures`` and ``npz`` an earlier result's JSON names (its ``random`` part's too);
    [] if it cannot be read."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    names: list = []
    for part in (data, data.get("random") if isinstance(data.get("random"), dict) else {}):
        figures = part.get("figures")
        names += figures if isinstance(figures, list) else []
        names.append(part.get("npz"))
    return [Path(n) for n in names if isinstance(n, str) and n]


def claim(files: Iterable[Path | None], overwrite: bool, elsewhere: str,
          records: Iterable[Path | None] = (), folders: Iterable[Path] = ()) -> Claim:
    """Claim ``files`` (None skipped): a ConfigError naming ``--overwrite`` (and ``elsewhere``,
    how to write the new result elsewhere) when one exists and not ``overwrite``. ``records``
    are earlier results' JSON files whose listed files, in the folders of ``files`` or in
    ``folders``, are removed too."""
    wanted = [Path(f) for f in files if f is not None]
    found = [f for f in wanted if f.exists()]
    if found and not overwrite:
        more = f" (and {len(found) - 1} more of its files)" if len(found) > 1 else ""
        raise ConfigError(f"{found[0]} holds an earlier result{more}; pass --overwrite to replace it, "
                          f"or {elsewhere} to keep both")
    return Claim(wanted, overwrite, [Path(r) for r in records if r is not None], [Path(f) for f in folders])
