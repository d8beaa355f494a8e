"""netleak_hook.manpages: the pages say what --help says, render without
warnings, and come out the same on every build."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import click
import pytest

from netleak_hook import __version__, cli, execcmd, hook, manpages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATE = "2026-01-02"
HOOK_HELP = """\
usage: netleak-hook [STAGE]

The OCI hook: a container annotated so is put under control first.

stages:
  createRuntime    put the container's cgroup under control

options:
  -h, --help       this help

examples:
  podman run --annotation io.netleak.interface=wg0 IMAGE CMD
"""


def roff(name: str) -> str:
    """An option's or a command's name as the pages spell it."""
    return name.replace("-", r"\-")


@pytest.fixture
def pages(monkeypatch) -> dict[str, str]:
    monkeypatch.setattr(hook, "HELP", HOOK_HELP, raising=False)
    return manpages.pages(DATE)


# ---------- escaping ----------

def test_escape_leading_dot_and_quote():
    assert manpages.escape(".hidden") == r"\&.hidden"
    assert manpages.escape("'quoted' word") == r"\&'quoted' word"
    assert manpages.escape("one\n.two\n'three") == "one\n\\&.two\n\\&'three"
    assert manpages.escape("a.b 'c'") == "a.b 'c'"      # only at a line's start


def test_escape_backslashes():
    assert manpages.escape(r"C:\dir \fB") == r"C:\edir \efB"
    assert manpages.escape(".\\") == r"\&.\e"


def test_escape_hyphens():
    assert manpages.escape("--proxy-file FILE") == r"\-\-proxy\-file FILE"
    assert manpages.escape("with -u, or (--via)") == r"with \-u, or (\-\-via)"
    assert manpages.escape("see netleak-exec") == r"see netleak\-exec"
    assert manpages.escape("/usr/lib/x-y a=b-c") == r"/usr/lib/x\-y a=b\-c"
    assert manpages.escape("point-to-point") == "point-to-point"    # a word's hyphens
    assert manpages.escape("1-2") == r"1\-2"
    assert manpages.escape("point-to-point", code=True) == r"point\-to\-point"


def test_command_line_fonts():
    assert manpages._command_line("-u, --user USER") == r"\fB\-u\fR, \fB\-\-user\fR \fIUSER\fR"
    assert manpages._command_line("[OPTIONS] IFACE [ARG]...") == \
        r"[\fIOPTIONS\fR] \fIIFACE\fR [\fIARG\fR]..."
    assert manpages._command_line("netleak-exec wg0 CMD") == r"\fBnetleak\-exec wg0\fR \fICMD\fR"
    assert manpages._command_line("./run a=VALUE B") == r"\fB./run a=\fIVALUE B\fR"
    assert manpages._command_line(". x") == r"\&. \fBx\fR"


# ---------- netleak-exec.1 ----------

def documented_options() -> list[str]:
    """The long options HELP's options block tells about."""
    block = execcmd.HELP.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^  (?:-\w, )?--([\w-]+)", block, flags=re.M)


def test_exec_page_has_every_documented_option(pages):
    page = pages["netleak-exec.1"]
    longs = [o.rstrip("=") for o in execcmd.LONG_OPTIONS]
    documented = documented_options()
    assert documented and set(documented) <= set(longs)
    options = page.split(".SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    for name in documented:
        assert re.search(rf"^\.TP\n(.*, )?\\fB\\-\\-{re.escape(roff(name))}\\fR", options,
                         re.M), name
    for short in execcmd.SHORT_OPTIONS.replace(":", ""):
        assert rf"\fB\-{short}\fR, " in page


def test_exec_page_sections(pages):
    page = pages["netleak-exec.1"]
    assert page.startswith(r'.\"')
    assert f'.TH "NETLEAK\\-EXEC" 1 "{roff(DATE)}" "netleak\\-hook {__version__}" ' in page
    name = page.split(".SH NAME\n", 1)[1].split("\n", 1)[0]
    assert name.startswith(r"netleak\-exec \- run COMMAND so that everything")
    synopsis = page.split(".SH SYNOPSIS\n", 1)[1].split(".SH", 1)[0]
    alternatives = [line for line in synopsis.splitlines() if line != ".br"]
    assert len(alternatives) == len(execcmd.USAGE.split("  or  ")) == 3
    assert all(line.startswith(r"\fBnetleak\-exec") for line in alternatives)
    for title in ("DESCRIPTION", "OPTIONS", "EXAMPLES", "SEE ALSO"):
        assert f"\n.SH {title}\n" in page
    assert ".BR netleak (8),\n.BR netleak\\-hook (1)\n" in page
    assert "COMMAND keeps this process's PID" in page    # the prose after examples


def test_exec_page_env_variable_is_its_own_entry(pages):
    page = pages["netleak-exec.1"]
    assert ".TP\n\\fBNETLEAK_PROXY_PASSWORD=\\fR...\nin the environment: the password" in page
    file_entry = page.split(r"\fB\-\-proxy\-file\fR \fIFILE\fR", 1)[1].split(".TP", 1)[0]
    assert "NETLEAK_PROXY_PASSWORD" not in file_entry


def test_exec_page_examples(pages):
    examples = pages["netleak-exec.1"].split(".SH EXAMPLES\n", 1)[1].split(".SH", 1)[0]
    assert ".TP\n\\fBnetleak\\-exec wg0 curl https://example.org\\fR\none command through wg0\n" \
        in examples
    assert examples.count(".TP\n") == execcmd.HELP.split("\nexamples:\n")[1].split(
        "\n\n")[0].count("\n") + 1


# ---------- netleak.8 ----------

def visible_commands(group: click.Group):
    ctx = click.Context(group, info_name="netleak", **group.context_settings)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if not cmd.hidden:
            yield name, cmd, click.Context(cmd, info_name=name, parent=ctx)


def test_netleak_page_has_every_command_and_option(pages):
    page = pages["netleak.8"]
    commands = list(visible_commands(cli.main))
    assert len(commands) > 5
    for name, cmd, ctx in commands:
        assert f'\n.SS "netleak {roff(name)} ' in page, name
        section = page.split(f'.SS "netleak {roff(name)} ', 1)[1].split("\n.SS ", 1)[0]
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in param.opts:
                    assert rf"\fB{roff(opt)}" in section, (name, opt)
    assert r"\-\-foreground" not in page             # daemon's hidden option
    for opt in ("--version", "-h", "--help"):
        assert rf"\fB{roff(opt)}\fR" in page.split(".SH OPTIONS\n", 1)[1]


def test_netleak_page_click_markers(pages):
    page = pages["netleak.8"]
    assert r"\fBnetleak status\fR" + "\nsessions of this network namespace" in page
    events = page.split('.SS "netleak events ', 1)[1].split("\n.SS ", 1)[0]
    assert ".nf\nThe kernel reports them" in events and "\b" not in page
    attach = page.split('.SS "netleak attach [OPTIONS] [IFACE]"\n', 1)[1].split("\n.SS", 1)[0]
    assert "Name the cgroup in one of three ways:" in attach          # the epilog


def test_hidden_commands_and_options_left_out():
    @click.group()
    def group():
        """A group."""

    @group.command()
    @click.option("--shown", help="seen")
    @click.option("--secret", hidden=True, help="not seen")
    def visible(shown, secret):
        """Visible."""

    @group.command(hidden=True)
    def ghost():
        """Hidden."""

    page = manpages.netleak_page(DATE, group=group)
    assert r"\-\-shown" in page and "secret" not in page
    assert '.SS "netleak visible [OPTIONS]"' in page and "ghost" not in page


# ---------- netleak-hook.1 ----------

def test_hook_page_from_help(pages):
    page = pages["netleak-hook.1"]
    assert "\n.SH NAME\nnetleak\\-hook \\- the OCI hook\n" in page
    assert "\\fBnetleak\\-hook\\fR [\\fISTAGE\\fR]" in page
    for title in ("DESCRIPTION", "STAGES", "OPTIONS", "EXAMPLES"):
        assert f"\n.SH {title}\n" in page
    assert "\\fBpodman run \\-\\-annotation io.netleak.interface=wg0\\fR \\fIIMAGE CMD\\fR" in page


def test_hook_page_from_docstring_without_help(monkeypatch):
    monkeypatch.delattr(hook, "HELP", raising=False)
    page = manpages.help_page("netleak-hook", manpages.hook_help(), DATE)
    assert "\n.SH NAME\nnetleak\\-hook \\- the OCI hook" in page
    assert "\\fBnetleak\\-hook\\fR [\\fISTAGE\\fR]" in page
    assert "createRuntime" in page.split(".SH DESCRIPTION\n", 1)[1]


# ---------- rendering ----------

@pytest.mark.parametrize("filename", ["netleak.8", "netleak-exec.1", "netleak-hook.1"])
def test_pages_render_without_warnings(pages, filename, tmp_path):
    path = tmp_path / filename
    path.write_text(pages[filename], encoding="utf-8")
    ran = False
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                           capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (0, "")
        ran = True
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", str(path)],
                           capture_output=True, text=True, env={**os.environ, "MANWIDTH": "80"})
        assert (r.returncode, r.stderr) == (0, "")
        assert filename.split(".")[0].upper() in r.stdout
        ran = True
    if not ran:
        pytest.skip("neither groff nor man is installed")


# ---------- reproducible ----------

def test_same_bytes_every_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767312000")
    first, second = manpages.pages(), manpages.pages()
    assert first == second
    assert '"2026\\-01\\-02"' in first["netleak.8"]


def test_date(monkeypatch, tmp_path):
    assert manpages.page_date({"SOURCE_DATE_EPOCH": "0"}) == "1970-01-01"
    assert manpages.page_date({"SOURCE_DATE_EPOCH": "1767312000"}) == "2026-01-02"
    with pytest.raises(ValueError):
        manpages.page_date({"SOURCE_DATE_EPOCH": "soon"})
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", manpages.page_date({}))
    assert manpages.page_date({}) == manpages.page_date({})


# ---------- the command line ----------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netleak_hook.manpages", *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1767312000"})


def test_cli_writes_the_three_pages_quietly(tmp_path):
    out = tmp_path / "new" / "man"
    r = run_cli(str(out))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert sorted(os.listdir(out)) == ["netleak-exec.1", "netleak-hook.1", "netleak.8"]
    again = tmp_path / "again"
    run_cli(str(again))
    for name in os.listdir(out):
        assert (out / name).read_bytes() == (again / name).read_bytes()


@pytest.mark.parametrize("args", [(), ("a", "b"), ("--help",)])
def test_cli_bad_usage(args):
    r = run_cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "usage:" in r.stderr
