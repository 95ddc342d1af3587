"""The docs cannot drift silently: what README.md and docs/*.md say is checked against the code.

- every `rbzoo …` command (in shell code blocks and in inline code) parses against the real CLI:
  its subcommands and options exist, flags take no value, and no command gets more arguments than
  it declares (resolved from the click command tree; nothing is run, torch is not imported);
- the Python examples of docs/api.md run as doctests;
- docs/format.md's required-keys table is the checkpoint reader's `REQUIRED_KEYS`;
- the module table of docs/api.md and the layer drawing of docs/contracts.md name exactly the
  modules that exist, and the drawing's layers are true: every import points to its own line or below.
"""

from __future__ import annotations

import doctest
import functools
import re
import shlex
from pathlib import Path

import pytest
import typer.main

from test_imports import import_graph

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTS = {">", ">>", "<", "2>", "2>>", "&>"}  # the shell's, with the file they name
COMMAND_LINE = re.compile(r"(^|&&|;|\|)\s*(\$\s+)?rbzoo\s")
PLACEHOLDER_VALUE = re.compile(r"^(<.*>|[A-Z][A-Z0-9_]*…?|N|K|P)$")  # <commit>, DIR, CKPT, N


# --- 1. every `rbzoo …` command parses ----------------------------------------------------------------


def _code_blocks(text: str):
    """(language, first line number, lines) of each fenced block."""
    lang, start, lines = None, 0, []
    for no, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1), no + 1, []
        elif fence:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def _shell_commands(lines: list[str], start: int):
    """(line number, argv after `rbzoo`) of every rbzoo command in shell lines (comments, `&&`,
    pipes and continuation lines handled by shlex)."""
    text, first = "", None
    for no, line in enumerate(lines, start):
        if not text and not COMMAND_LINE.search(line):
            continue  # not a command line (a plain block may hold JSON or a drawing)
        first = no if first is None else first
        if line.rstrip().endswith("\\"):
            text += line.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(text + line, comments=True)
        text, at = "", first
        first = None
        segment: list[str] = []
        redirect = False
        for tok in [*tokens, ";"]:
            if redirect or tok in REDIRECTS or re.fullmatch(r"\d?>&\d", tok):
                redirect = tok in REDIRECTS
                continue
            if tok in SEPARATORS:
                if segment[:1] == ["$"]:
                    segment = segment[1:]
                if segment[:1] == ["rbzoo"]:
                    yield at, segment[1:]
                segment = []
            else:
                segment.append(tok)


def _inline_commands(text: str):
    """(line number, argv after `rbzoo`) of every `rbzoo …` inline code span outside code blocks.
    `a|b` in a span means either: each alternative is checked."""
    in_block = False
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*```", line):
            in_block = not in_block
            continue
        if in_block:
            continue
        for span in re.findall(r"`(rbzoo\s[^`]+)`", line):
            tokens = shlex.split(span)[1:]
            cut = [i for i, tok in enumerate(tokens) if tok in REDIRECTS or tok in SEPARATORS]
            tokens = tokens[:cut[0]] if cut else tokens  # the rest is the shell's
            alternatives = [[]]
            for tok in tokens:
                options = tok.split("|") if "|" in tok and not tok.startswith("-") else [tok]
                alternatives = [a + [o] for a in alternatives for o in options]
            for argv in alternatives:
                yield no, argv


def documented_commands() -> list[tuple[str, list[str]]]:
    """("file:line", argv) for every rbzoo command written in the README and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text("utf-8")
        name = path.relative_to(ROOT).as_posix()
        for lang, start, lines in _code_blocks(text):
            if lang in SHELL_BLOCKS:
                found += [(f"{name}:{no}", argv) for no, argv in _shell_commands(lines, start)]
        found += [(f"{name}:{no}", argv) for no, argv in _inline_commands(text)]
    return found


def _clean(argv: list[str]) -> list[str]:
    """Doc notation out: `[--json]` → `--json`, `…` (any subcommand, more inputs) dropped."""
    out = []
    for tok in argv:
        tok = tok[1:-1] if tok.startswith("[") and tok.endswith("]") else tok  # an optional part
        if tok in ("…", "...") or not tok:
            continue
        out.append(tok.rstrip("…") if tok.endswith("…") and len(tok) > 1 else tok)
    return out


def resolve(argv: list[str], command=None, path: str = "rbzoo") -> str:
    """Walk `argv` through the CLI's click tree the way click would parse it; raise AssertionError
    naming the first thing that does not exist. Returns the resolved command path.

    Duck-typed: recent typer builds its tree from its own vendored click (`typer._click`)."""
    command = command or _tree()
    options = {}
    for p in command.params:
        if p.param_type_name == "option":
            options.update({name: p for name in (*p.opts, *p.secondary_opts)})
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    capacity = float("inf") if any(a.nargs < 0 for a in arguments) else sum(a.nargs for a in arguments)
    positional = 0
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--help":
            continue
        if tok.startswith("-") and tok != "-":
            name, eq, value = tok.partition("=")
            opt = options.get(name)
            assert opt is not None, f"`{path}` has no option {name}"
            takes_value = not (opt.is_flag or opt.count)
            assert takes_value or not eq, f"`{path} {name}` is a flag and takes no value"
            if takes_value and not eq:
                if i == len(argv):
                    continue  # prose naming an option ("a folder written by `rbzoo push --to`")
                value, i = argv[i], i + 1
            if takes_value and hasattr(getattr(opt, "type", None), "choices") and not PLACEHOLDER_VALUE.match(value):
                choices = [str(c) for c in opt.type.choices]
                fold = (lambda s: s.lower()) if not opt.type.case_sensitive else (lambda s: s)
                assert fold(value) in map(fold, choices), f"`{path} {name}`: {value!r} is not one of {choices}"
            continue
        if hasattr(command, "commands"):  # a group: the first word is its subcommand
            sub = command.commands.get(tok)
            assert sub is not None, f"`{path}` has no subcommand {tok!r} (it has: {', '.join(sorted(command.commands))})"
            return resolve(argv[i:], sub, f"{path} {tok}")
        positional += 1
        assert positional <= capacity, f"`{path}` takes at most {capacity} argument(s); got {tok!r} too"
    return path


@functools.cache
def _tree():
    from rbzoo.cli import app

    return typer.main.get_command(app)


COMMANDS = documented_commands()


def test_the_docs_hold_commands_to_check():
    # The extraction itself: a regression here would make the parse test vacuous.
    files = {where.split(":")[0] for where, _ in COMMANDS}
    assert len(COMMANDS) >= 80 and {"README.md", "docs/training.md", "docs/zoo.md", "docs/evaluation.md"} <= files
    assert ("README.md", ("train", "--config", "quickstart", "--out", "runs/qs")) in {
        (w.split(":")[0], tuple(a)) for w, a in COMMANDS}


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w} rbzoo {' '.join(a)}"[:90] for w, a in COMMANDS])
def test_documented_command_parses(where, argv):
    try:
        resolve(_clean(argv))
    except AssertionError as e:
        raise AssertionError(f"{where}: rbzoo {' '.join(argv)}: {e}") from None


def test_the_resolver_catches_what_drifts():
    # Each kind of drift the check exists for is reported, and sound commands pass.
    for argv, what in [(["trian"], "no subcommand 'trian'"), (["eval", "m", "--n-exampels", "5"], "no option --n-exampels"),
                       (["eval", "m", "extra"], "at most 1 argument"), (["eval", "m", "--clean-only=yes"], "is a flag"),
                       (["data", "imagenet200"], "no subcommand"), (["pull", "--lst"], "no option --lst")]:
        with pytest.raises(AssertionError, match=re.escape(what)):
            resolve(argv)
    assert resolve(["eval", "x", "--n-examples", "N", "--subset", "random"]) == "rbzoo eval"
    assert resolve(["data", "imagenet100", "--help"]) == "rbzoo data imagenet100"
    assert _clean(["info", "CKPT", "[--json]"]) == ["info", "CKPT", "--json"]


# --- 2. docs/api.md runs ----------------------------------------------------------------------------


def test_api_examples_run_as_doctests(tmp_path, monkeypatch, one_thread):
    """Every `>>>` example of docs/api.md, in a fresh folder with its own rbzoo state."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "rbzoo-home"))
    monkeypatch.setenv("RBZOO_CARDS", str(tmp_path / "cards"))
    path = ROOT / "docs" / "api.md"
    # Code fences end an example's expected output (doctest would read them as output); line numbers stay.
    text = re.sub(r"^```.*$", "", path.read_text("utf-8"), flags=re.M)
    test = doctest.DocTestParser().get_doctest(text, {}, "docs/api.md", str(path), 0)
    assert len(test.examples) >= 10, "docs/api.md lost its examples"
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.append)
    assert not result.failed, "".join(report)
    print(f"docs/api.md: {result.attempted} doctest examples run")


# --- 3. format.md's key table -----------------------------------------------------------------------


def test_format_required_keys_table_is_the_readers():
    from rbzoo.checkpoint import REQUIRED_KEYS

    text = (ROOT / "docs" / "format.md").read_text("utf-8")
    table = text.split("Required metadata keys:", 1)[1].split("\n\n", 2)[1]
    keys = re.findall(r"^\| `(rbzoo\.[a-z0-9_]+)` \|", table, flags=re.M)
    assert keys == list(REQUIRED_KEYS), f"docs/format.md lists {keys}; the reader requires {list(REQUIRED_KEYS)}"


# --- 4. module tables -------------------------------------------------------------------------------


def _top_modules() -> set[str]:
    """Every top-level module and subpackage of rbzoo (by name, `cli` for the CLI package)."""
    pkg = ROOT / "rbzoo"
    names = {p.stem for p in pkg.glob("*.py")} | {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()}
    return names - {"__init__", "__main__"}


def test_api_module_table_lists_the_public_modules():
    text = (ROOT / "docs" / "api.md").read_text("utf-8")
    rows = [line for line in text.splitlines() if re.match(r"^\| `rbzoo\.", line)]
    listed = {m for row in rows for m in re.findall(r"`rbzoo\.([a-z_0-9]+)`", row.split("|")[1])}
    public = {m for m in _top_modules() if not m.startswith("_") and m != "cli"}
    assert listed == public, f"docs/api.md's module table misses {sorted(public - listed)}, names missing {sorted(listed - public)}"


def _drawn_layers() -> list[set[str]]:
    """The layer drawing of docs/contracts.md, top line first, each line's module names."""
    text = (ROOT / "docs" / "contracts.md").read_text("utf-8")
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.strip().splitlines():
        names = re.sub(r"\(.*?\)", "", line.split("  ")[0])  # the description follows after two spaces
        layers.append({n.strip() for part in names.split("·") for n in part.split("/") if n.strip() != "*"})
    return layers


def test_contracts_layer_drawing_is_true():
    layers = _drawn_layers()
    drawn = [m for layer in layers for m in layer]
    assert len(drawn) == len(set(drawn)), "a module is drawn twice"
    assert set(drawn) == _top_modules(), (f"docs/contracts.md's layers miss {sorted(_top_modules() - set(drawn))}, "
                                         f"name missing {sorted(set(drawn) - _top_modules())}")
    level = {m: i for i, layer in enumerate(layers) for m in layer}
    top = lambda dotted: dotted.split(".")[1] if dotted.count(".") and dotted.split(".")[1] in level else None  # noqa: E731
    upward = sorted({(top(a), top(b)) for a, deps in import_graph().items() for b in deps
                     if top(a) and top(b) and top(a) != top(b) and level[top(b)] < level[top(a)]})
    assert not upward, "imports that point up the drawing in docs/contracts.md: " + ", ".join(f"{a} → {b}" for a, b in upward)


def test_no_merge_conflict_markers():
    """A half-resolved merge leaves markers that every other check may skip (a table row, a comment)."""
    markers = ("<" * 7 + " ", ">" * 7 + " ")
    found = []
    for path in [ROOT / "README.md", ROOT / "pyproject.toml", *(p for d in ("rbzoo", "docs", "bench", "tests", "cards", ".ci")
                                                                 for p in (ROOT / d).rglob("*") if p.is_file())]:
        if path.suffix in (".pyc", ".png", ".safetensors") or "__pycache__" in path.parts:
            continue
        try:
            lines = path.read_text("utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{path.relative_to(ROOT)}:{i + 1}" for i, line in enumerate(lines) if line.startswith(markers)]
    assert not found, "merge conflict markers: " + ", ".join(found)
