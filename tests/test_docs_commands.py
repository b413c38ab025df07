"""Docs that cannot go stale: every command on README.md and the site's pages parses as written.

Commands are read from the fenced code blocks of every page (continuations joined, comments dropped) and
from the captions of figures, and checked in this process, on a working folder that looks like a fresh
clone (the repository's files, no `runs/`, no `.venv/`):

- `varlit fit | validate | sample | eval | pretrain | world | compare | export | push | download | bench`:
  the real parser runs with `--print_config` appended and must exit 0 (it parses, it does not run: no
  weights, photos or run folders are needed);
- `varlit sweep ...` / `python -m varlit.sweeps ...` and `varlit data ...`: their argparse parser must
  accept the arguments (it is stopped right after parsing); a sweep that trains is then planned and its
  first run's `varlit fit` and `varlit eval` commands (variant overrides and `ARGS` included) are parsed
  as above;
- `make TARGET VAR=...`: `make -n` with those arguments must exit 0, every variable must be one the
  Makefile reads, and the `varlit` commands make would run are checked as above.

Also: every figure names the command that made it; every repository path a page names exists; the README's
tables are copies of the pages'; no page states a count of passed tests; every code fence is well formed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs_pages import (
    DOCS,
    INLINE_CODE,
    README,
    REPO,
    blocks,
    fence_errors,
    page,
    pages,
    paragraphs,
    shell_lines,
)
from varlit.cli import main

# Commands that cannot be checked, each with its reason (prefix of the command as written -> why). Every
# entry must still match a command on some page, so the list cannot outlive what it excuses.
UNCHECKED: dict[str, str] = {}

PRINT_CONFIG = {
    "fit",
    "validate",
    "sample",
    "eval",
    "pretrain",
    "world",
    "compare",
    "export",
    "push",
    "download",
    "bench",
}
ARGPARSE = {"sweep", "data"}
MAKEFILE = (REPO / "Makefile").read_text()


@dataclass
class Command:
    where: str  # page:line, or page:line -> what make -n printed
    words: list[str]
    redirect: str | None = None  # `> FILE`: the command's standard output goes there


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _strip_env(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    return words


def _kind(words: list[str]) -> tuple[str, list[str]] | None:
    """('varlit', argv) or ('make', args) of a shell command, or None for any other program."""
    words = _strip_env(words)
    if not words:
        return None
    head = words[0]
    if head == "varlit" or head.endswith("/varlit"):
        return "varlit", words[1:]
    if (head == "python" or re.search(r"(^|/)python3?$", head)) and words[1:3] == ["-m", "varlit.sweeps"]:
        return "varlit", ["sweep", *words[3:]]
    if (head == "python" or re.search(r"(^|/)python3?$", head)) and words[1:3] == ["-m", "varlit.cli"]:
        return "varlit", words[3:]
    if head == "make":
        return "make", words[1:]
    return None


def _command(where: str, text: str) -> Command | None:
    words = shlex.split(text, comments=True)
    redirect = None
    if ">" in words:
        i = words.index(">")
        words, redirect = words[:i], words[i + 1]
    if _kind(words) is None:
        return None
    return Command(where, words, redirect)


SHELL = ("bash", "sh", "shell", "console")


def page_commands() -> list[Command]:
    """Every varlit / make command in the shell code blocks of README.md and docs/*.md."""
    out = []
    for path in pages():
        for block in blocks(path.read_text(), SHELL):
            for line, text in shell_lines(block):
                where = f"{path.relative_to(REPO)}:{line}"
                try:
                    cmd = _command(where, text)
                except ValueError as err:  # unbalanced quotes: not a command a shell would run
                    raise AssertionError(f"{where}: {err}: {text}") from None
                if cmd is not None:
                    out.append(cmd)
    return out


def _figures(path: Path) -> list[tuple[int, str, list[Command]]]:
    """(line, image, commands named next to it) for every figure of a page: the commands of the
    paragraph (or code block) just before or just after the image, in inline code or in the block."""
    text = path.read_text()
    paras = paragraphs(text)
    code = {b.line - 1: b for b in blocks(text)}  # opening fence line -> block
    ends = {b.line + len(b.lines): b for b in blocks(text)}  # closing fence line -> block
    out = []
    for k, (start, _end, body) in enumerate(paras):
        if not body.lstrip().startswith("!["):
            continue
        commands: list[Command] = []
        for j in (k - 1, k + 1):
            if not 0 <= j < len(paras):
                continue
            first, last, neighbour = paras[j]
            block = ends.get(first) if j < k else code.get(first)
            if block is not None:
                texts = [t for _, t in shell_lines(block)]
            else:
                texts = [" ".join(m.split()) for m in INLINE_CODE.findall(neighbour)]
            for t in texts:
                try:
                    cmd = _command(f"{path.relative_to(REPO)}:{first} (figure at line {start})", t)
                except ValueError:
                    cmd = None
                if cmd is not None:
                    commands.append(cmd)
        out.append((start, body.strip(), commands))
    return out


# ---------------------------------------------------------------------------------------------- checking


class _Parsed(BaseException):
    """Raised by argparse right after a successful parse, so that nothing runs."""

    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def _run_main(argv: list[str]) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def _print_config(cmd: Command, argv: list[str], report: Report) -> str | None:
    code, out, err = _run_main([*argv, "--print_config"])
    if code != 0 or not out.strip():
        report.failures.append(f"{cmd.where}: `varlit {shlex.join(argv)}` does not parse:\n{err[-1500:]}")
        return None
    report.checked.append(f"varlit {argv[0]}")
    return out


def _argparse_only(cmd: Command, argv: list[str], report: Report, monkeypatch) -> argparse.Namespace | None:
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(argv)
        except _Parsed as done:
            report.checked.append(f"varlit {argv[0]}")
            return done.namespace
        except SystemExit:
            pass
    report.failures.append(
        f"{cmd.where}: `varlit {shlex.join(argv)}` is not accepted by its parser:\n{err.getvalue()[-1500:]}"
    )
    return None


def _check_sweep_plan(cmd: Command, argv: list[str], ns: argparse.Namespace, report: Report) -> None:
    """A sweep that trains: its first planned run's fit and eval commands must parse too."""
    from varlit.sweeps.cli import parse_seeds
    from varlit.sweeps.definitions import get_sweep
    from varlit.sweeps.runner import SweepOptions, plan
    from varlit.sweeps.subjects import split_names

    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    if ns.command == "job":
        subjects, variants, seeds = (
            split_names(ns.subject),
            [ns.variant],
            [] if ns.seed is None else [ns.seed],
        )
    else:
        subjects, variants, seeds = split_names(ns.subjects), split_names(ns.variants), parse_seeds(ns.seeds)
    opts = SweepOptions(
        configs=list(ns.config),
        subjects=subjects,
        steps=ns.steps,
        root=ns.root,
        variants=variants,
        extra=extra,
        evaluate=not ns.no_eval,
        seeds=seeds,
    )
    try:
        specs = plan(get_sweep(ns.sweep), opts)
    except (ValueError, FileNotFoundError) as err:
        report.failures.append(f"{cmd.where}: the sweep cannot be planned: {err}")
        return
    spec = specs[0]
    sub = Command(f"{cmd.where} -> its first run", list(spec.fit_args))
    _print_config(sub, list(spec.fit_args), report)
    if opts.evaluate:
        _print_config(sub, list(spec.eval_args), report)


def check_varlit(cmd: Command, argv: list[str], report: Report, monkeypatch) -> None:
    if not argv:
        report.failures.append(f"{cmd.where}: `varlit` without a command")
        return
    if argv[0] in PRINT_CONFIG:
        out = _print_config(cmd, argv, report)
        if out is not None and cmd.redirect:
            Path(cmd.redirect).write_text(out)  # the working folder is a scratch copy
        return
    if argv[0] in ARGPARSE:
        ns = _argparse_only(cmd, argv, report, monkeypatch)
        if ns is not None and argv[0] == "sweep" and ns.command in ("run", "launch", "job"):
            _check_sweep_plan(cmd, argv, ns, report)
        return
    report.failures.append(f"{cmd.where}: `varlit {argv[0]}` is not a varlit command")


def _make_env() -> dict[str, str]:
    inherited = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")  # set when `make test` runs us
    return {**{k: v for k, v in os.environ.items() if k not in inherited}, "LC_ALL": "C"}


def _made_commands(stdout: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", stdout)
    return [line.strip() for line in joined.splitlines() if line.strip()]


def _run_make(args_list: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`make -n ARGS` for each, all at once (each is a process start; together they take one)."""
    procs = [
        subprocess.Popen(
            ["make", "-n", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_make_env(),
        )
        for args in args_list
    ]
    done = []
    for args, proc in zip(args_list, procs):
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(["make", "-n", *args], proc.returncode, out, err))
    return done


def check_make(cmds: list[Command], report: Report) -> list[Command]:
    """`make -n` for each make command; returns the varlit commands make would run."""
    made: list[Command] = []
    for cmd, proc in zip(cmds, _run_make([_kind(c.words)[1] for c in cmds])):
        args = _kind(cmd.words)[1]
        targets = [a for a in args if "=" not in a and not a.startswith("-")]
        if not targets:
            report.failures.append(f"{cmd.where}: `make` without a target")
        for var in (a.split("=", 1)[0] for a in args if "=" in a):
            if not re.search(rf"\$\({var}\)|^{var}\s*[?:]?=", MAKEFILE, re.M):
                report.failures.append(f"{cmd.where}: the Makefile never reads {var}")
        if proc.returncode != 0:
            report.failures.append(f"{cmd.where}: `make -n {shlex.join(args)}` fails:\n{proc.stderr[-1500:]}")
            continue
        report.checked.append(f"make {targets[0] if targets else ''}")
        for line in _made_commands(proc.stdout):
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            kind = _kind(words)
            if kind is not None and kind[0] == "varlit":
                made.append(Command(f"{cmd.where} -> make runs `{line[:80]}`", words))
    return made


def check_all(cmds: list[Command], report: Report, monkeypatch) -> None:
    """Every command once (the same text on several pages is checked once), make commands first: the
    varlit commands they expand to join the rest."""
    distinct: dict[str, Command] = {}
    for cmd in cmds:
        text = shlex.join(cmd.words) + (f" > {cmd.redirect}" if cmd.redirect else "")
        if not any(text.startswith(prefix) for prefix in UNCHECKED):
            distinct.setdefault(text, cmd)
    makes = [c for c in distinct.values() if _kind(c.words)[0] == "make"]
    varlits = [c for c in distinct.values() if _kind(c.words)[0] == "varlit"]
    seen = {shlex.join(_kind(c.words)[1]) for c in varlits}
    for cmd in check_make(makes, report):
        argv = _kind(cmd.words)[1]
        if shlex.join(argv) not in seen:
            seen.add(shlex.join(argv))
            varlits.append(cmd)
    for cmd in varlits:  # in page order: a command may read what an earlier one wrote (`> FILE`)
        check_varlit(cmd, _kind(cmd.words)[1], report, monkeypatch)


def check(cmd: Command, report: Report, monkeypatch) -> None:
    check_all([cmd], report, monkeypatch)


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch) -> Path:
    """A working folder with the repository's files (linked) and nothing a run or an install leaves."""
    skip = {".git", ".venv", "runs", "site", "data", "wandb", ".pytest_cache", ".ruff_cache"}
    for entry in REPO.iterdir():
        if entry.name not in skip and not entry.name.endswith(".egg-info"):
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------- tests


def test_every_command_on_the_pages_parses(fresh_clone, monkeypatch):
    commands = page_commands()
    figure_commands = [c for path in pages() for _, _, cs in _figures(path) for c in cs]
    report = Report()
    check_all([*commands, *figure_commands], report, monkeypatch)
    assert not report.failures, "\n\n".join(report.failures)
    # the checks reached every kind of command the pages show
    kinds = {c.split()[1] if c.startswith("varlit") else "make" for c in report.checked}
    assert {"fit", "validate", "sample", "eval", "pretrain", "sweep", "data", "make"} <= kinds, kinds
    assert len(commands) >= 40, len(commands)


def test_the_unchecked_list_is_short_and_each_entry_is_used():
    assert len(UNCHECKED) <= 3
    texts = [shlex.join(c.words) for c in page_commands()]
    for prefix, reason in UNCHECKED.items():
        assert reason.strip(), prefix
        assert any(t.startswith(prefix) for t in texts), f"unused UNCHECKED entry: {prefix}"


def test_a_bad_flag_a_bad_value_or_a_missing_target_is_caught(fresh_clone, monkeypatch):
    """The checker itself: what it must reject, it rejects."""
    bad = [
        "varlit fit --config experiments/world.yaml --data.subjectt dog",
        "varlit fit --config experiments/world.yaml --trainer.max_steps many",
        "varlit sample --preset world --seedz '[0]'",
        "varlit eval --config experiments/world.yaml --eval.judgee world-judge",
        "varlit fit --config experiments/no-such-config.yaml",
        "python -m varlit.sweeps run ablate-nothing --config experiments/world.yaml",
        "python -m varlit.sweeps run ablate-layers --config experiments/world.yaml --stepz 3",
        "python -m varlit.sweeps run ablate-layers --config experiments/world.yaml -- --trainer.max_stepz=3",
        "varlit data dreambench --outt data/db",
        "varlit frobnicate --now",
        "make ablate-everything",
        "make ablate-layers SUBJECTZ=all",
        "make bench BENCH_ARGS='--preset world --threadz 2'",
    ]
    for text in bad:
        report = Report()
        check(_command("test", text), report, monkeypatch)
        assert report.failures, f"not caught: {text}"
    report = Report()  # and commands that need files a fresh clone lacks still parse
    good = [
        "varlit fit --config experiments/world.yaml --data.subject_dir my_photos --data.class_word cup",
        "varlit sample --adapter runs/nowhere/adapter.safetensors --prompts '[\"a photo of a cup\"]'",
        "make ablate-layers CONFIG=experiments/tiny.yaml STEPS=5",
    ]
    check_all([_command("test", text) for text in good], report, monkeypatch)
    assert not report.failures, report.failures


def test_every_figure_names_the_command_that_made_it():
    missing = []
    count = 0
    for path in pages():
        for line, image, commands in _figures(path):
            count += 1
            if not commands:
                missing.append(f"{path.relative_to(REPO)}:{line}: {image[:80]}")
    assert count >= 7  # the demo picture (README and results), the world's samples, the v2 sweep charts
    assert not missing, "figures without the command that made them:\n" + "\n".join(missing)


def test_every_code_fence_is_well_formed():
    errors = [f"{p.relative_to(REPO)} {e}" for p in pages() for e in fence_errors(p.read_text())]
    assert not errors, "\n".join(errors)
    assert fence_errors("```python\nx = 1\n``` Sampling is\nmore\n```\n")  # the README's old broken fence
    assert fence_errors("```bash make demo\n```\n")


TEST_COUNT = re.compile(
    r"\b\d[\d,]*\s+(?:tests?\s+|unit tests\s+)?(?:passed|failed|skipped|xfailed|xpassed|errors?)\b"
    r"|\b\d[\d,]*\s+(?:unit\s+)?tests\b"
    r"|\b(?:passed|tests)\s*[:=]\s*\d",
    re.I,
)


def test_no_page_states_a_count_of_passed_tests():
    found = [
        f"{p.relative_to(REPO)}: {m.group(0)!r}" for p in pages() for m in TEST_COUNT.finditer(p.read_text())
    ]
    why = "a test count goes stale with every new test; say what passed instead"
    assert not found, why + ":\n" + "\n".join(found)
    assert TEST_COUNT.search("557 passed in 5 min") and TEST_COUNT.search("all 557 tests")


PATH = re.compile(r"(?<![\w./-])((?:varlit|tests|experiments|bench|sweeps|docs)/[\w./+-]*)")
TEST_NAME = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def test_every_repository_path_a_page_names_exists():
    missing = []
    for path in pages():
        text = path.read_text()
        for m in PATH.finditer(text):
            name = m.group(1).rstrip(".,:;")
            if not (REPO / name).exists():
                missing.append(f"{path.relative_to(REPO)}: {name}")
        for m in TEST_NAME.finditer(text):
            source = REPO / m.group(1)
            if not source.is_file() or not re.search(rf"^\s*def {m.group(2)}\(", source.read_text(), re.M):
                missing.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not missing, "pages name paths or tests that do not exist:\n" + "\n".join(sorted(set(missing)))


def test_the_readme_links_to_files_that_exist():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local
    assert all((REPO / link).exists() for link in local), [
        link for link in local if not (REPO / link).exists()
    ]
    for name in sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md"):  # every page is linked
        assert f"](docs/{name})" in text, name


def _table_rows(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.startswith("|") and not re.fullmatch(r"\|[\s|:-]+\|", line.strip())
    ]


def test_the_readme_tables_are_copies_of_the_pages():
    """A figure stated twice must not drift: each README table row is a row of some page."""
    rows = {row for p in pages() if p != README for row in _table_rows(p.read_text())}
    readme = [row.replace("](docs/", "](") for row in _table_rows(README.read_text())]
    assert readme
    missing = [row for row in readme if row not in rows]
    assert not missing, "README table rows found on no page:\n" + "\n".join(missing)


def test_the_readme_starts_with_the_two_set_up_commands():
    first = blocks(README.read_text())[0]
    commands = [shlex.join(shlex.split(t, comments=True)) for _, t in shell_lines(first)]
    assert commands == ["make demo", "make test"]
    assert len(README.read_text().splitlines()) <= 200
    assert "docs/world_demo.png" in README.read_text()


def test_mkdocs_nav_lists_every_page():
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = {next(iter(item.values())) for item in config["nav"]}
    assert listed == {p.name for p in DOCS.glob("*.md")}
    assert page("results.md").startswith("# Results")


def test_commands_are_in_shell_blocks():
    """A command in an unlabelled block would escape the checks: blocks that hold commands say `bash`."""
    hidden = []
    for path in pages():
        for block in blocks(path.read_text()):
            if block.lang in SHELL:
                continue
            for n, line in enumerate(block.lines, block.line):
                if re.match(r"\s*(varlit|make|python -m varlit)\s", line):
                    hidden.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hidden, "\n".join(hidden)
