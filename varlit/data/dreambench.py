"""DreamBench (google/dreambooth, CC BY 4.0): its layout, `prompts_and_classes.txt`, and a downloader.

The official archive unpacks to `dreambooth-main/dataset/<subject>/*.jpg` plus
`dataset/prompts_and_classes.txt`; a `root` may be either the folder holding `dataset/` or the dataset
folder itself (a downscaled copy may be the latter).

The prompts file gives subject -> class as CSV and two Python-looking lists of 25 templates,
`'a {0} {1} in the jungle'.format(unique_token, class_token)`, one for objects and one for live subjects.
The file does not say which subjects are live; the DreamBooth paper's live subjects are its 9 cats and dogs,
so `live` is inferred from the class word.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from varlit.data.subjects import PLACEHOLDER, Subject, SubjectError

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts_and_classes.txt"
ARCHIVE_URL = "https://github.com/google/dreambooth/archive/refs/heads/main.zip"
LIVE_CLASSES = frozenset({"cat", "dog"})
DREAMBENCH_ENV = "VARLIT_DREAMBENCH_DIR"

_CLASS_HEADER = "subject_name,class"
_TEMPLATE_LINE = re.compile(
    r"""^\s*(['"])(.*)\1\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?\s*$"""
)


class DreamBenchError(ValueError):
    """The DreamBench folder or its prompts file is missing or not in the official format."""


@dataclass(frozen=True)
class DreamBenchSpec:
    """Everything `prompts_and_classes.txt` says. Templates keep the official `{0}` (token), `{1}` (class)."""

    classes: dict[str, str]
    object_templates: tuple[str, ...]
    live_templates: tuple[str, ...]

    def is_live(self, subject: str) -> bool:
        return self.class_of(subject) in LIVE_CLASSES

    def class_of(self, subject: str) -> str:
        if subject not in self.classes:
            raise DreamBenchError(
                f"unknown DreamBench subject {subject!r}; valid names: {', '.join(sorted(self.classes))}"
            )
        return self.classes[subject]

    def prompts(self, subject: str, token: str = PLACEHOLDER) -> list[str]:
        """The 25 evaluation prompts of a subject, with `token` as the unique identifier."""
        templates = self.live_templates if self.is_live(subject) else self.object_templates
        return [t.format(token, self.class_of(subject)) for t in templates]


def parse_prompts_file(path: str | Path) -> DreamBenchSpec:
    """Parse the official `prompts_and_classes.txt`; any deviation is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DreamBenchError(f"{path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    section: str | None = None  # "classes", "object", "live"
    in_list = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        lower = line.lower()
        if not line:
            if section == "classes" and classes:
                section = None
            continue
        if lower == _CLASS_HEADER:
            section = "classes"
        elif section == "classes":
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not all(parts):
                raise DreamBenchError(f"{path}:{lineno}: expected 'subject,class', got {raw!r}")
            classes[parts[0]] = parts[1]
        elif lower.startswith("object prompts"):
            section = "object"
        elif lower.startswith("live subject prompts"):
            section = "live"
        elif section in ("object", "live") and line.startswith("prompt_list") and line.endswith("["):
            in_list = True
            lists[section] = []
        elif in_list and line == "]":
            in_list = False
        elif in_list:
            match = _TEMPLATE_LINE.match(line)
            if not match:
                raise DreamBenchError(f"{path}:{lineno}: cannot read prompt template {raw!r}")
            lists[section].append(match.group(2))  # type: ignore[index]
    found = {
        "classes": classes,
        "object prompts": lists.get("object"),
        "live subject prompts": lists.get("live"),
    }
    missing = [name for name, content in found.items() if not content]
    if missing:
        raise DreamBenchError(
            f"{path}: no {' / '.join(missing)} section found; is this DreamBench's {PROMPTS_FILE}?"
        )
    return DreamBenchSpec(classes, tuple(lists["object"]), tuple(lists["live"]))


def dataset_dir(root: str | Path) -> Path:
    """The folder that holds `prompts_and_classes.txt` and the subject folders, under `root`."""
    root = Path(root).expanduser()
    for candidate in (root / "dataset", root):
        if (candidate / PROMPTS_FILE).is_file():
            return candidate
    raise DreamBenchError(
        f"no DreamBench at {root} (no {PROMPTS_FILE} in it or in its dataset/ folder): download it with "
        f"`make dreambench` (into {DEFAULT_ROOT}) or `varlit data dreambench --out DIR`, then point varlit at "
        f"it with --data.dreambench_root DIR or {DREAMBENCH_ENV}=DIR"
    )


def load_spec(root: str | Path) -> DreamBenchSpec:
    return parse_prompts_file(dataset_dir(root) / PROMPTS_FILE)


def dreambench_subject(root: str | Path, name: str, live: bool | None = None) -> Subject:
    """A DreamBench subject by name; `live` overrides the class-based guess."""
    folder = dataset_dir(root)
    spec = parse_prompts_file(folder / PROMPTS_FILE)
    class_word = spec.class_of(name)
    if not (folder / name).is_dir():
        raise SubjectError(
            f"DreamBench subject {name!r} is listed in {folder / PROMPTS_FILE} but {folder / name} is missing"
        )
    return Subject(
        name=name,
        class_word=class_word,
        folder=folder / name,
        live=spec.is_live(name) if live is None else live,
    )


DEFAULT_ROOT = "data/dreambench"  # where `make dreambench` and `varlit data dreambench` put it


def default_root() -> Path:
    """`$VARLIT_DREAMBENCH_DIR`, else `data/dreambench` (relative to the working directory), the folder
    `make dreambench` downloads into."""
    return Path(os.environ.get(DREAMBENCH_ENV) or DEFAULT_ROOT)


# ---------------------------------------------------------------- download


def _safe_members(archive: zipfile.ZipFile, dest: Path) -> list[zipfile.ZipInfo]:
    dest = dest.resolve()
    members = archive.infolist()
    for m in members:
        target = (dest / m.filename).resolve()
        if not target.is_relative_to(dest):
            raise DreamBenchError(
                f"refusing archive member {m.filename!r}: it would be written outside {dest}"
            )
    return members


def _fetch(url: str, into: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(into, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts are OSErrors
        reason = getattr(err, "reason", err)
        raise DreamBenchError(
            f"could not download DreamBench from {url}: {reason}. Are you offline? On a machine with internet, "
            "download that zip, copy it here and run `varlit data dreambench --out DIR --url file:///path/to.zip`"
        ) from err


def download_dreambench(
    out_dir: str | Path, url: str = ARCHIVE_URL, timeout: float = 60.0, force: bool = False
) -> Path:
    """Download and unpack the official archive so that `out_dir/dataset` is a DreamBench root; returns it.

    Idempotent: an existing valid `out_dir/dataset` is kept unless `force`. The archive is unpacked in a
    temporary folder inside `out_dir` and moved into place only once it parses, so an interrupted download
    never leaves a half-written dataset behind.
    """
    out_dir = Path(out_dir).expanduser()
    final = out_dir / "dataset"
    if final.exists() and not force:
        try:
            spec = parse_prompts_file(final / PROMPTS_FILE)
            log.info(
                "DreamBench already at %s (%d subjects); pass force=True to download again",
                final,
                len(spec.classes),
            )
            return final
        except DreamBenchError as err:
            raise DreamBenchError(
                f"{final} exists but is not a valid DreamBench ({err}); remove it or use --force"
            ) from err
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".dreambench-") as tmp:
        tmp_dir = Path(tmp)
        zip_path = tmp_dir / "archive.zip"
        _fetch(url, zip_path, timeout)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(tmp_dir / "unpacked", members=_safe_members(archive, tmp_dir / "unpacked"))
        except zipfile.BadZipFile as err:
            raise DreamBenchError(f"the download from {url} is not a zip archive ({err})") from err
        found = sorted((tmp_dir / "unpacked").rglob(PROMPTS_FILE), key=lambda p: len(p.parts))
        if not found:
            raise DreamBenchError(f"the archive from {url} holds no {PROMPTS_FILE}; is it google/dreambooth?")
        unpacked = found[0].parent
        spec = parse_prompts_file(unpacked / PROMPTS_FILE)
        missing = [s for s in spec.classes if not (unpacked / s).is_dir()]
        if missing:
            raise DreamBenchError(f"the archive from {url} lacks subject folders: {', '.join(missing)}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    log.info("DreamBench (%d subjects) unpacked to %s", len(spec.classes), final)
    return final


def main(argv: list[str] | None = None) -> int:
    """`varlit data dreambench --out DIR [--url URL] [--force]`; returns a process exit code."""
    parser = argparse.ArgumentParser(prog="varlit data dreambench", description=download_dreambench.__doc__)
    parser.add_argument(
        "--out",
        default=DEFAULT_ROOT,
        help=f"folder to unpack into (default {DEFAULT_ROOT}, where varlit looks); the dataset lands in OUT/dataset",
    )
    parser.add_argument("--url", default=ARCHIVE_URL, help="archive to fetch (http(s):// or file://)")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    parser.add_argument("--force", action="store_true", help="download again even if OUT/dataset exists")
    args = parser.parse_args(argv)
    try:
        path = download_dreambench(args.out, url=args.url, timeout=args.timeout, force=args.force)
    except DreamBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
