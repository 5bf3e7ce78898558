"""The patched expanda: the hand edit of site-packages as a rule, and the import of its private copy.

`patch_expanda` copies the installed expanda 1.3.1 into a private folder and
applies patches/*.patch there (site-packages is never touched); the corpus
jobs import that copy ahead of site-packages.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from gpt2 import UserError
from gpt2.files import atomic_dir, file_digest

EXPANDA_VERSION = "1.3.1"


def installed_expanda() -> Path:
    """The installed expanda package folder, checked to be the version the patches target."""
    try:
        version = importlib.metadata.version("expanda")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("expanda is not installed: run `make setup`") from None
    if version != EXPANDA_VERSION:
        raise UserError(f"expanda {version} is installed, but patches/ target {EXPANDA_VERSION}: "
                        f"pip install expanda=={EXPANDA_VERSION}")
    spec = importlib.util.find_spec("expanda")
    return Path(spec.submodule_search_locations[0])


def _apply_patch(patch: Path, tree: Path) -> None:
    cmd = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d", str(tree), "-i",
           str(patch.resolve())]
    dry = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
    if dry.returncode != 0:
        target, reason = "?", dry.stdout.strip().splitlines()[-1:] or [dry.stderr.strip()]
        for line in dry.stdout.splitlines():
            if line.startswith(("checking file ", "patching file ")):
                target = line.split(" file ", 1)[1].strip()
            if "FAILED" in line or "Reversed" in line or "can't find file" in line:
                reason = [line.strip()]
                break
        raise UserError(f"patch {patch.name} does not apply to expanda/{target}: {reason[0]}")
    subprocess.run(cmd, check=True, capture_output=True)


def patch_expanda(out: Path, patches: list[Path]) -> list[dict]:
    """Copy the installed expanda to `out`/expanda and apply `patches` in name order."""
    found = sorted(map(Path, patches), key=lambda p: p.name)
    if not found:
        raise UserError("no patches given: pass the *.patch files of patches/")
    applied = []
    with atomic_dir(out, "patch-expanda") as staging:
        tree = staging / "expanda"
        shutil.copytree(installed_expanda(), tree, ignore=shutil.ignore_patterns("__pycache__"))
        for patch in found:
            _apply_patch(patch, tree)
            applied.append({"patch": patch.name, "sha256": file_digest(patch)})
            print(f"applied {patch.name}", file=sys.stderr)
        (staging / "patches.json").write_text(json.dumps(applied, indent=2) + "\n")
    return applied


def import_patched(expanda: Path):
    """The patched expanda package of `patch_expanda`, imported ahead of site-packages."""
    sys.path.insert(0, str(Path(expanda).resolve()))
    import expanda as module

    if Path(module.__file__).resolve().parent != (Path(expanda) / "expanda").resolve():
        raise UserError(f"expanda was imported from {module.__file__}, not from {expanda}")
    return module
