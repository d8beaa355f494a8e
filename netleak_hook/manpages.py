"""Man pages made from the text --help prints, so that the two cannot drift:
netleak.8 from the click group, netleak-exec.1 and netleak-hook.1 from
their HELP strings.

python3 -m netleak_hook.manpages OUTDIR writes the three into OUTDIR.
"""
from __future__ import annotations

import datetime
import inspect
import os
import re
import sys
import textwrap

import click

from . import __version__, cli, execcmd, hook

# a page's date when neither SOURCE_DATE_EPOCH nor pyproject.toml gives one
FALLBACK_DATE = "2026-12-04"
PAGES = {"netleak": "8", "netleak-exec": "1", "netleak-hook": "1"}
SECTION_TITLES = {"1": "User Commands", "8": "System Administration"}
USAGE = "usage: python3 -m netleak_hook.manpages OUTDIR"

_METAVAR = re.compile(r"[A-Z][A-Z0-9_]*")
_ENV_ENTRY = re.compile(r"[A-Z][A-Z0-9_]*=")     # NAME=... among the options


def escape(text: str, code: bool = False) -> str:
    """TEXT made safe on roff text lines: backslashes as \\e, a line's leading
    . or ' kept from being read as a request, and hyphens as \\- (the minus
    one types) in options, commands and paths, or everywhere with CODE. A
    hyphen between the letters of a plain word (point-to-point) stays one."""
    return re.sub(r"^(?=[.'])", r"\\&", _inline(text, code), flags=re.M)


def _inline(text: str, code: bool) -> str:
    """TEXT escaped for the middle of a line: backslashes and hyphens."""
    def hyphens(m: re.Match) -> str:
        word = m.group()
        if code or word.lstrip("([\"'").startswith(("-", "netleak")) or \
                any(c in word for c in "/=@"):
            return word.replace("-", r"\-")
        return re.sub(r"(?<![A-Za-z])-|-(?![A-Za-z])", r"\\-", word)
    return re.sub(r"\S+", hyphens, text.replace("\\", r"\e"))


def _quoted(text: str) -> str:
    """TEXT as one quoted macro argument."""
    return '"' + escape(text, code=True).replace('"', r"\(dq") + '"'


def _fonts(word: str) -> list[tuple[str, str]]:
    """A word of a command line in (font, text) runs: metavars (IFACE,
    [ARG]...) italic; names, options and values bold; brackets roman."""
    lead, inner, tail = re.fullmatch(r"([\[(]*)(.*?)([\]),.]*)", word).groups()
    name, eq, value = inner.partition("=")
    if _METAVAR.fullmatch(inner):
        middle = [("I", inner)]
    elif eq and _METAVAR.fullmatch(value):
        middle = [("B", name + eq), ("I", value)]
    else:
        middle = [("B", inner)]
    return [("R", lead), *middle, ("R", tail)]


def _command_line(text: str) -> str:
    """TEXT, a command line or an option's names, as one line of roff."""
    out, font = "", "R"
    for i, word in enumerate(text.split()):
        runs = [(new, part) for new, part in _fonts(word) if part]
        if i:
            if runs[0][0] != font != "R":       # a space between two fonts is roman
                out, font = out + r"\fR", "R"
            out += " "
        for new, part in runs:
            if new != font:
                out, font = out + rf"\f{new}", new
            out += _inline(part, code=True)
    out += r"\fR" if font != "R" else ""
    return "\\&" + out if out.startswith((".", "'")) else out


def _paragraphs(text: str) -> list[list[str]]:
    """TEXT's paragraphs: runs of lines between blank ones."""
    return [[line.rstrip() for line in para.strip("\n").splitlines()]
            for para in re.split(r"\n[ \t]*\n", text) if para.strip()]


def _entries(lines: list[str]) -> list[tuple[str, str]]:
    """An indented block as --help lays it out, in (term, text) pairs: an
    entry starts two spaces in, two spaces or more part term and text, lines
    indented further continue the text; but a NAME=... line (an environment
    variable told about among the options) is an entry of its own."""
    entries: list[list[str]] = []
    for line in lines:
        body = line.strip()
        if len(line) - len(line.lstrip()) <= 2 or _ENV_ENTRY.match(body) or not entries:
            parts = re.split(r"\s{2,}", body, maxsplit=1)
            if len(parts) == 1 and _ENV_ENTRY.match(body):
                parts = body.split(" ", 1)
            entries.append([parts[0], parts[1] if len(parts) > 1 else ""])
        else:
            entries[-1][1] = f"{entries[-1][1]} {body}".strip()
    return [(term, text) for term, text in entries]


def _list(entries: list[tuple[str, str]]) -> list[str]:
    """Entries as a .TP list: the term on the tag line, its text below."""
    out: list[str] = []
    for term, text in entries:
        out += [".TP", _command_line(term)]
        if text.strip():
            out.append(escape(textwrap.fill(" ".join(text.split()), 78,
                                            break_long_words=False, break_on_hyphens=False)))
    return out


def _prose(lines: list[str]) -> list[str]:
    return [escape(line.strip()) for line in lines]


def _preformatted(lines: list[str]) -> list[str]:
    """A paragraph click keeps as written (\\b): "heading:" over a two-column
    table becomes the heading and a .TP list, anything else stays verbatim."""
    if lines[0].endswith(":") and lines[1:] and all(
            row.startswith(" ") and re.search(r"\S\s{2,}\S", row) for row in lines[1:]):
        return _prose(lines[:1]) + _list(_entries(lines[1:]))
    return [".nf", *(escape(line) for line in lines), ".fi"]


def _join(chunks: list[list[str]]) -> list[str]:
    """Chunks of one section, a .PP between them (a .TP list starts its own)."""
    out: list[str] = []
    for chunk in chunks:
        if out and chunk and chunk[0] != ".TP":
            out.append(".PP")
        out += chunk
    return out


def _click_text(text: str | None) -> list[list[str]]:
    """Click help TEXT as chunks, as click reads it: \\b keeps a paragraph's
    lines, and what follows \\f is for the code only."""
    return [_preformatted(p[1:]) if p[0] == "\b" and p[1:] else _prose(p)
            for p in _paragraphs(inspect.cleandoc(text or "").partition("\f")[0])]


def _summary(lines: list[str]) -> str:
    """The NAME line's description, one line for whatis: the first sentence
    up to a colon (what follows one explains), lower case first."""
    sentence = re.split(r"(?<=\.)\s|:\s", " ".join(" ".join(lines).split()), maxsplit=1)[0]
    sentence = sentence.rstrip(".")
    if sentence and not sentence.split()[0].isupper():
        sentence = sentence[0].lower() + sentence[1:]
    return sentence


def page_date(environ: dict | None = None) -> str:
    """The pages' date, the same on every build of one source: from
    SOURCE_DATE_EPOCH, else pyproject.toml's time, else FALLBACK_DATE."""
    epoch = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH")
    if epoch and not epoch.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
    if not epoch:
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            epoch = str(int(os.stat(os.path.join(top, "pyproject.toml")).st_mtime))
        except OSError:
            return FALLBACK_DATE
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
    return when.strftime("%Y-%m-%d")


def _page(name: str, date: str, summary: str, synopsis: list[str],
          sections: list[tuple[str, list[str]]]) -> str:
    """A whole page: header, NAME, SYNOPSIS, SECTIONS, then SEE ALSO."""
    section = PAGES[name]
    out = [r'.\" Made by python3 -m netleak_hook.manpages from the --help text: edit that.',
           f".TH {_quoted(name.upper())} {section} {_quoted(date)} "
           f"{_quoted('netleak-hook ' + __version__)} {_quoted(SECTION_TITLES[section])}",
           ".nh", ".ad l",     # neither hyphenated nor justified: options stay whole
           ".SH NAME", f"{escape(name, code=True)} \\- {escape(summary)}", ".SH SYNOPSIS"]
    for i, line in enumerate(synopsis):
        out += [".br"] * bool(i) + [_command_line(line)]
    for title, lines in sections:
        out += [f".SH {title}", *lines] if lines else []
    others = [n for n in sorted(PAGES) if n != name]
    out.append(".SH SEE ALSO")
    out += [f".BR {escape(n, code=True)} ({PAGES[n]}){',' * (n != others[-1])}" for n in others]
    return "\n".join(out) + "\n"


def help_page(name: str, text: str, date: str) -> str:
    """The page of a command whose --help is TEXT: "usage:" and alternatives
    parted by "  or  ", prose (the DESCRIPTION, wherever it stands), and
    "name:" blocks, each a section (options: OPTIONS, examples: EXAMPLES)."""
    paras = _paragraphs(text)
    usage = " ".join(line.strip() for line in paras[0])
    if not usage.startswith("usage: "):
        raise ValueError(f"{name}: the help text does not start with 'usage: '")
    prose: list[list[str]] = []
    blocks: list[tuple[str, list[str]]] = []
    for para in paras[1:]:
        if re.fullmatch(r"[a-z][a-z ]*:", para[0]) and para[1:] and \
                all(line.startswith(" ") for line in para[1:]):
            blocks.append((para[0][:-1].upper(), _list(_entries(para[1:]))))
        else:
            prose.append(para)
    return _page(name, date, _summary(prose[0]) if prose else name,
                 usage[len("usage: "):].split("  or  "),
                 [("DESCRIPTION", _join([_prose(p) for p in prose])), *blocks])


def hook_help() -> str:
    """netleak-hook's --help, or else its module docstring made into one
    (its first line is "netleak-hook [STAGE]: what it is.")."""
    if getattr(hook, "HELP", None):
        return hook.HELP
    first, _, rest = inspect.cleandoc(hook.__doc__ or "").partition("\n")
    usage, _, what = first.partition(": ")
    return f"usage: {usage}\n\n{what[:1].upper()}{what[1:]}\n{rest}"


def _options(ctx: click.Context, skip_help: bool) -> list[str]:
    """The options of CTX's command as a .TP list, leaving out hidden ones,
    arguments without help and, with SKIP_HELP, -h/--help."""
    entries = []
    for param in ctx.command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or getattr(param, "hidden", False) or \
                (isinstance(param, click.Argument) and not record[1]) or \
                (skip_help and set(param.opts) <= set(ctx.help_option_names)):
            continue
        entries.append(record)
    return _list(entries)


def netleak_page(date: str, group: click.Group = cli.main, name: str = "netleak") -> str:
    """The page of the click GROUP: its help, its options, and a subsection
    for each of its commands but the hidden ones."""
    ctx = click.Context(group, info_name=name, **group.context_settings)
    helps = _command_line(", ".join(ctx.help_option_names))
    commands = [f"Every command also takes {helps}: its help."]
    for sub_name in group.list_commands(ctx):
        cmd = group.get_command(ctx, sub_name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=sub_name, parent=ctx, **cmd.context_settings)
        usage = " ".join([name, sub_name, *cmd.collect_usage_pieces(sub)])
        commands += [f".SS {_quoted(usage)}", *_join(
            _click_text(cmd.help) + [_options(sub, skip_help=True)] + _click_text(cmd.epilog))]
    first = _paragraphs(inspect.cleandoc(group.help or name))[0]
    return _page(name, date, _summary(first), [" ".join([name, *group.collect_usage_pieces(ctx)])],
                 [("DESCRIPTION", _join(_click_text(group.help))),
                  ("OPTIONS", _options(ctx, skip_help=False)), ("COMMANDS", commands)])


def pages(date: str | None = None) -> dict[str, str]:
    """The three pages by file name."""
    date = date or page_date()
    return {"netleak.8": netleak_page(date),
            "netleak-exec.1": help_page("netleak-exec", execcmd.HELP, date),
            "netleak-hook.1": help_page("netleak-hook", hook_help(), date)}


def main(argv: list[str]) -> int:
    """Write the pages into the directory ARGV names; quiet unless it fails."""
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write(f"netleak_hook.manpages: {USAGE}\n")
        return 2
    try:
        os.makedirs(argv[0], exist_ok=True)
        for filename, text in pages().items():
            with open(os.path.join(argv[0], filename), "w", encoding="utf-8") as f:
                f.write(text)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"netleak_hook.manpages: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
