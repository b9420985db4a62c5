"""Where an analysis command keeps its result, and the one rule that no result is replaced
without being asked.

Every analysis verb (hessian, surface, interpolate, sharpness, gradcos, weights) saves its
numbers by default: ``hessian``, ``sharpness``, ``gradcos`` and ``weights`` as
``<run>/analyses/<name>.json`` (``--json PATH`` instead, ``--json -`` on stdout only),
``surface`` and ``interpolate`` in their output folder as before. Before any work, the
command claims the files it will write (:func:`claim`): if one exists, it refuses with one
line naming ``--overwrite``; with ``--overwrite`` it removes, just before writing, every file
of the earlier result (the claimed ones, and the figures and data the earlier JSON lists in
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


def analyses_folder(checkpoint: Path) -> Path:
    """Where an analysis of ``checkpoint`` keeps its numbers by default: ``<run>/analyses`` for a
    run folder or its ``checkpoint.pt``, ``<folder>/analyses/<file stem>`` for any other file
    (a snapshot ``checkpoints/epoch_0003.pt``, a checkpoint of one's own)."""
    if checkpoint.is_file() and checkpoint.name != "checkpoint.pt":
        return checkpoint.parent / "analyses" / checkpoint.stem
    return run_folder(checkpoint) / "analyses"


def json_target(json_out: str | None, checkpoint: Path, name: str) -> Path | None:
    """The file the command writes its JSON to: ``--json PATH``, none for ``--json -`` (stdout
    only), else ``analyses_folder(checkpoint) / f"{name}.json"``."""
    if json_out == "-":
        return None
    return Path(json_out) if json_out is not None else analyses_folder(checkpoint) / f"{name}.json"


def figure_files(folder: Path, stems: Iterable[str], pdf: bool) -> list[Path]:
    """The files the figures ``folder/stem`` are written as: PNG, and PDF with ``--pdf``."""
    return [folder / f"{stem}.{fmt}" for stem in stems for fmt in (("png", "pdf") if pdf else ("png",))]


def saved(where: Path | None, console: object) -> None:
    """Say where the numbers were saved (nothing for stdout)."""
    if where is not None:
        console.print(f"saved {where}", highlight=False, soft_wrap=True)  # type: ignore[attr-defined]


def claim_analysis(checkpoint: Path, json_out: str | None, name: str, figures: list[str], plot_dir: Path | None,
                   pdf: bool, overwrite: bool) -> tuple[Path | None, Path, Claim]:
    """Claim what an analysis of ``checkpoint`` saved under ``<run>/analyses`` writes: its JSON
    (:func:`json_target` of ``name``) and the ``figures`` (stems) in ``plot_dir`` (default: the
    run folder). Returns (the JSON's path or None for stdout, the figures' folder, the claim)."""
    target = json_target(json_out, checkpoint, name)
    folder = plot_dir or run_folder(checkpoint)
    outputs = claim([target, *figure_files(folder, figures, pdf)], overwrite, "--json PATH (and --out DIR)",
                    records=[target], folders=[folder])
    return target, folder, outputs


def save_report(report: dict, target: Path | None, console: object, context: AnalysisContext | None = None) -> None:
    """Write an analysis's JSON to ``target`` (None: stdout) and say where it was saved."""
    write_json(report, "-" if target is None else str(target), context)
    saved(target, console)


def announce(written: Iterable[Path], console: object) -> list[str]:
    """Say 'wrote FILE' for each figure written; their paths as strings, for the JSON."""
    written = list(written)
    for p in written:
        console.print(f"wrote {p}", highlight=False)  # type: ignore[attr-defined]
    return [str(p) for p in written]


@dataclass
class Claim:
    """The files an analysis will write, checked before it runs; :meth:`clear` removes the
    earlier result (with ``--overwrite``) just before the new one is written."""

    files: list[Path]
    overwrite: bool
    records: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # where else the earlier result may have files

    def stale(self) -> list[Path]:
        """The earlier result's files: the claimed files that exist, and the figures and data
        listed by an earlier JSON among them that lie in a folder this result writes to."""
        folders = {f.parent.resolve() for f in self.files} | {f.resolve() for f in self.folders}
        out = [f for f in self.files if f.is_file()]
        for record in (r for r in self.records if r.is_file()):
            for listed in _listed_files(record):
                if (listed.suffix in _RESULT_SUFFIXES and listed.parent.resolve() in folders and listed.is_file()
                        and listed not in out):
                    out.append(listed)
        return out

    def clear(self) -> list[Path]:
        """Remove the earlier result's files (rank 0; only with ``--overwrite``: without, the
        claim refused already). Returns what was removed."""
        if not self.overwrite or not is_main():
            return []
        removed = self.stale()
        for f in removed:
            f.unlink(missing_ok=True)
        return removed


def _listed_files(record: Path) -> list[Path]:
    """The files an earlier result's JSON names: its ``figures`` and ``npz`` entries (and a
    hessian-directions comparison's ``random.npz``); [] if it cannot be read."""
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
    """Claim ``files`` (None entries skipped) for a new result: a :class:`ConfigError` naming
    ``--overwrite`` when one holds an earlier result and ``overwrite`` is False. ``elsewhere``
    says how to write the new result elsewhere instead (e.g. "--out DIR"); ``records`` are the
    JSON files of an earlier result that may list more of its files, removed too where they
    lie in the folders of ``files`` or in ``folders`` (where this analysis writes figures)."""
    wanted = [Path(f) for f in files if f is not None]
    found = [f for f in wanted if f.exists()]
    if found and not overwrite:
        more = f" (and {len(found) - 1} more of its files)" if len(found) > 1 else ""
        raise ConfigError(f"{found[0]} holds an earlier result{more}; pass --overwrite to replace it, "
                          f"or {elsewhere} to keep both")
    return Claim(wanted, overwrite, [Path(r) for r in records if r is not None], [Path(f) for f in folders])
