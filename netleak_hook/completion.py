"""Shell completion for netleak and netleak-exec (bash and zsh).

    python3 -m netleak_hook.completion bash netleak-exec > .../completions/netleak-exec
    python3 -m netleak_hook.completion zsh netleak > .../vendor-completions/_netleak

netleak's scripts are click's own; the functions below give its arguments
their values (interfaces, session ids, systemd units) as shell_complete
callbacks. netleak-exec is no click program: its scripts are made here from
execcmd's option tables and help, so they follow them. They read interface
names from $NETLEAK_SYS_CLASS_NET (default /sys/class/net; for tests, not a
netleak setting).

cli.py imports this for its callbacks: nothing else is imported until used.
"""
from __future__ import annotations

import os
import sys

from .core.errors import NetleakError

TYPE_CHECKING = False
if TYPE_CHECKING:  # click's types, for checkers only
    from click.shell_completion import CompletionItem

SYS_CLASS_NET = "/sys/class/net"
SYSTEMCTL = ("systemctl", "list-units", "--type=service,scope", "--all", "--plain",
             "--no-legend", "--no-pager")
SYSTEMCTL_TIMEOUT = 2.0
SHELLS = ("bash", "zsh")
PROGS = ("netleak", "netleak-exec")
USAGE = (f"usage: python3 -m netleak_hook.completion {'|'.join(SHELLS)} "
         f"{'|'.join(PROGS)}")

# What execcmd's tables do not say (an option missing here is still offered,
# with no value completion): how values complete, which options repeat, which
# stand alone, which are hidden, and the options that change what IFACE is.
VALUE_ACTIONS = {"user": ("-u", "_users"), "proxy-file": ("-f", "_files")}  # compgen, zsh
REPEATABLE = ("via", "dns", "allow", "deny")
STANDALONE = ("help", "version", "dump-bpf")
HIDDEN = ("dump-bpf",)
NO_IFACE = ("block",)                     # no IFACE at all
IFACE_OPTIONAL = ("proxy", "proxy-file")  # IFACE only when a word names one
AFTER_IFACE = ("proxy", "proxy-file")     # `IFACE --proxy URL COMMAND` (execcmd._proxy_after_iface)


# ---------- completion data ----------

def interfaces(incomplete: str = "") -> list[str]:
    """Network interface names starting with INCOMPLETE, sorted; not lo."""
    try:
        names = os.listdir(SYS_CLASS_NET)
    except OSError:
        return []
    return sorted(n for n in names if n != "lo" and n.startswith(incomplete))


def session_ids(incomplete: str = "", detachable: bool = False) -> list[str]:
    """Ids of this network namespace's sessions starting with INCOMPLETE,
    from the daemon's state file (root's only: [] for anyone else).
    DETACHABLE: only those `netleak detach` takes (not netleak-exec's)."""
    if os.geteuid() != 0:
        return []
    try:
        from .core.config import Config
        from .rundir.store import Store, run_dir
        store = Store(run_dir(Config.from_env(os.environ)))
        try:
            sessions = store.load().sessions if store.check() else {}
        finally:
            store.close()
    except (OSError, ValueError, NetleakError):
        return []
    return sorted(sid for sid, s in sessions.items()
                  if sid.startswith(incomplete) and not (detachable and s.exec_session))


def unit_names(incomplete: str = "") -> list[str]:
    """systemd service and scope units starting with INCOMPLETE ([] without
    systemctl, or when it fails or takes over 2 seconds)."""
    import subprocess
    try:
        out = subprocess.run(SYSTEMCTL, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=SYSTEMCTL_TIMEOUT,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = (line.split(None, 1)[0] for line in out.decode("utf-8", "replace").splitlines()
             if line.strip())
    return sorted({n for n in names if n.endswith((".service", ".scope"))
                   and n.startswith(incomplete)})


def _items(values: list[str]) -> list["CompletionItem"]:
    from click.shell_completion import CompletionItem
    return [CompletionItem(v) for v in values]


def complete_iface(ctx: object, param: object, incomplete: str) -> list["CompletionItem"]:
    """shell_complete= for an IFACE argument."""
    return _items(interfaces(incomplete))


def complete_session(ctx: object, param: object, incomplete: str) -> list["CompletionItem"]:
    """shell_complete= for a session id (events --session)."""
    return _items(session_ids(incomplete))


def complete_detachable(ctx: object, param: object,
                        incomplete: str) -> list["CompletionItem"]:
    """shell_complete= for detach --id: the sessions detach takes."""
    return _items(session_ids(incomplete, detachable=True))


def complete_unit(ctx: object, param: object, incomplete: str) -> list["CompletionItem"]:
    """shell_complete= for --unit."""
    return _items(unit_names(incomplete))


# ---------- netleak: click's scripts ----------

def click_script(shell: str) -> str:
    """The script click makes for netleak in SHELL (ValueError if unknown)."""
    from click.shell_completion import BashComplete, ZshComplete
    from . import cli
    classes = {"bash": BashComplete, "zsh": ZshComplete}
    if shell not in classes:
        raise ValueError(f"no completion for shell {shell!r}: {' or '.join(SHELLS)}")
    text = classes[shell](cli.main, {}, "netleak", "_NETLEAK_COMPLETE").source()
    if shell == "zsh":
        text = _autoloadable(text)
    return text


ZSH_REGISTER = "compdef _netleak_completion netleak;"


def _autoloadable(text: str) -> str:
    """Click 8.1's zsh script (Debian 12's) only registers its function
    when run, so loaded from the fpath the first TAB completes nothing;
    later clicks end as below already."""
    if ZSH_REGISTER not in text:
        return text
    return text.replace(ZSH_REGISTER, (
        "if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then\n"
        "    _netleak_completion \"$@\"\n"
        "else\n"
        "    compdef _netleak_completion netleak\n"
        "fi"))


# ---------- netleak-exec: scripts from execcmd's tables ----------

class Option:
    """One of netleak-exec's options, as its tables and help describe it."""

    def __init__(self, name: str, takes_value: bool, short: str = "",
                 metavar: str = "", help: str = "") -> None:
        self.name, self.takes_value, self.short = name, takes_value, short
        self.metavar, self.help = metavar or "VALUE", help or name


def exec_options() -> list[Option]:
    """netleak-exec's long options (LONG_OPTIONS), each with the short
    option, value name and first words of its help line in HELP."""
    import re
    from . import execcmd
    helps: dict[str, tuple[str, str, str]] = {}
    current = ""
    for line in execcmd.HELP.splitlines():
        m = re.match(r"  (?:-(\w), )?--([\w-]+)(?: ([A-Z]+))?\s{2,}(\S.*)", line)
        if m:
            current = m.group(2)
            helps[current] = (m.group(1) or "", m.group(3) or "", m.group(4))
        elif current and re.match(r"\s{6,}\S", line):
            short, metavar, text = helps[current]
            helps[current] = (short, metavar, f"{text} {line.strip()}")
        else:
            current = ""
    options = []
    for spec in execcmd.LONG_OPTIONS:
        name = spec.rstrip("=")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            continue        # nothing a shell script could take as it is
        short, metavar, text = helps.get(name, ("", "", ""))
        text = re.split(r" \(|: |; |\. ", text, maxsplit=1)[0]
        options.append(Option(name, spec.endswith("="), short, metavar, text))
    return options


def _short_options() -> list[tuple[str, bool]]:
    """SHORT_OPTIONS as (letter, takes a value)."""
    from .execcmd import SHORT_OPTIONS
    return [(c, SHORT_OPTIONS[i + 1:i + 2] == ":") for i, c in enumerate(SHORT_OPTIONS)
            if c != ":" and c.isalnum()]


def _named(options: list[Option], names: tuple[str, ...]) -> list[Option]:
    return [o for o in options if o.name in names]


def _pattern(alternatives: list[str]) -> str:
    """A shell case pattern matching any of ALTERNATIVES (none: nothing)."""
    return "|".join(alternatives) or "''"


def bash_exec_script() -> str:
    """The bash script for netleak-exec."""
    options = exec_options()
    longs = {o.short: o for o in options if o.short}
    shorts = _short_options()
    offered = [f"-{c}" for c, _ in shorts] + [f"--{o.name}" for o in options
                                              if o.name not in HIDDEN]
    values = [f"        {o.name}=) {'compopt -o filenames 2>/dev/null; ' if act == '-f' else ''}"
              f"mapfile -t COMPREPLY < <(compgen -P \"$3\" {act} -- \"$2\") ;;"
              for o in options if o.takes_value
              for act in [VALUE_ACTIONS.get(o.name, ("", ""))[0]] if act]
    short_cases = []
    for c, takes_value in shorts:
        o = longs.get(c)
        short_cases.append(f"        {c}) REPLY={o.name if o else ''}"
                           f"{'=' if takes_value else ''} ;;")
    after = _named(options, AFTER_IFACE)
    fill = {
        "LONG": " ".join(o.name + "=" * o.takes_value for o in options),
        "OFFERED": " ".join(offered),
        "AFTER_IFACE": " ".join(f"--{o.name}" for o in after),
        "AFTER_IFACE_WORD": _pattern([f"--{o.name}" for o in after]),
        "AFTER_IFACE_JOINED": _pattern([f"--{o.name}=*" for o in after]),
        "NO_IFACE": _pattern([o.name + "=" * o.takes_value
                              for o in _named(options, NO_IFACE)]),
        "IFACE_OPTIONAL": _pattern([o.name + "=" * o.takes_value
                                    for o in _named(options, IFACE_OPTIONAL)]),
        "SHORT_CASES": "\n".join(short_cases),
        "VALUE_CASES": "\n".join(values) or "        *) ;;",
    }
    return _fill(BASH_EXEC, fill)


def zsh_exec_script() -> str:
    """The zsh script for netleak-exec."""
    options = exec_options()
    shorts = dict(_short_options())
    specs = []
    for o in options:
        action = VALUE_ACTIONS.get(o.name, ("", " "))[1]
        value = f":{o.metavar.lower()}:{action}" if o.takes_value else ""
        text = o.help.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
        forms = [(f"--{o.name}", "=")] + ([(f"-{o.short}", "+")] if o.short in shorts else [])
        group = " ".join(f for f, _ in forms)
        for form, joiner in forms:
            if o.name in HIDDEN:
                spec = f"!{form}{joiner * o.takes_value}{value}"
            elif o.name in STANDALONE:
                spec = f"(- *){form}[{text}]"
            else:
                excl = "*" if o.name in REPEATABLE else f"({group})"
                spec = f"{excl}{form}{joiner * o.takes_value}[{text}]{value}"
            specs.append("        " + _zsh_quote(spec) + " \\")
    for c in sorted(set(shorts) - {o.short for o in options}):    # a short option alone
        spec = f"-{c}+[-{c}]:value: " if shorts[c] else f"-{c}[-{c}]"
        specs.append("        " + _zsh_quote(spec) + " \\")

    def given(names: tuple[str, ...]) -> str:
        return " || ".join(f"$+opt_args[--{o.name}]" for o in _named(options, names)) or "0"
    after = _named(options, AFTER_IFACE)
    value_arms = []
    for o in after:
        action = VALUE_ACTIONS.get(o.name, ("", ""))[1] or \
            f"_message -e values {_zsh_quote(o.metavar.lower())}"
        value_arms.append(f"            (--{o.name}) {action} ;;")
    fill = {
        "SPECS": "\n".join(specs),
        "NO_IFACE_GIVEN": given(NO_IFACE),
        "IFACE_OPTIONAL_GIVEN": given(IFACE_OPTIONAL),
        "AFTER_IFACE": " ".join(f"--{o.name}" for o in after),
        "AFTER_IFACE_WORD": _pattern([f"--{o.name}" for o in after]),
        "AFTER_IFACE_JOINED": _pattern([f"--{o.name}=*" for o in after]),
        "AFTER_IFACE_VALUES": "\n".join(value_arms) or "            (*) ;;",
    }
    return _fill(ZSH_EXEC, fill)


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


def exec_script(shell: str) -> str:
    """netleak-exec's script for SHELL (ValueError if unknown)."""
    if shell == "bash":
        return bash_exec_script()
    if shell == "zsh":
        return zsh_exec_script()
    raise ValueError(f"no completion for shell {shell!r}: {' or '.join(SHELLS)}")


def script(shell: str, prog: str) -> str:
    """PROG's completion script for SHELL (ValueError if either is unknown)."""
    if prog not in PROGS:
        raise ValueError(f"no completion for {prog!r}: {' or '.join(PROGS)}")
    return click_script(shell) if prog == "netleak" else exec_script(shell)


def main(argv: list[str] | None = None) -> int:
    """python3 -m netleak_hook.completion SHELL PROG: print the script."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in SHELLS or args[1] not in PROGS:
        sys.stderr.write(f"{USAGE} (got: {' '.join(args) or 'nothing'})\n")
        return 2
    sys.stdout.write(script(args[0], args[1]))
    return 0


BASH_EXEC = r'''# bash completion for netleak-exec, made by:
#   python3 -m netleak_hook.completion bash netleak-exec
# Interface names are read from ${NETLEAK_SYS_CLASS_NET:-/sys/class/net}.

# The long option --$1 stands for, as netleak-exec reads it (itself, or the
# one it is a unique prefix of; "user=": it takes a value), in REPLY.
_netleak_exec_long() {
    local o found=()
    REPLY=
    for o in @LONG@; do
        [[ $o == "$1"* ]] && found+=("$o")
    done
    for o in "${found[@]}"; do
        if [[ $o == "$1" || $o == "$1=" ]]; then
            REPLY=$o
            return
        fi
    done
    if (( ${#found[@]} == 1 )); then
        REPLY=${found[0]}
    fi
}

# The long option of short option -$1, in REPLY ("=" at its end: it takes a value).
_netleak_exec_short() {
    case $1 in
@SHORT_CASES@
        *) REPLY= ;;
    esac
}

# The value of option $1 ("user="): $2 typed so far, after $3 in its word.
_netleak_exec_value() {
    case $1 in
@VALUE_CASES@
    esac
}

# COMP_WORDS up to the cursor as netleak-exec will see them, in words: bash
# splits "--user=alice" at "=" (and URLs at ":": COMP_WORDBREAKS); pieces
# COMP_LINE shows with no space between are put back together. at[k]: the
# index in COMP_WORDS where words[k] starts.
_netleak_exec_words() {
    local line=${COMP_LINE-} pos=0 j w glued
    line=${line:0:${COMP_POINT:-${#line}}}
    words=() at=()
    for (( j = 0; j <= COMP_CWORD; j++ )); do
        w=${COMP_WORDS[j]-}
        glued=$(( j > 0 ))
        while [[ ${line:pos:1} == [[:space:]] ]]; do
            (( pos += 1 ))
            glued=0
        done
        if [[ -n $line && ${line:pos:${#w}} == "$w" ]]; then
            (( pos += ${#w} ))
        else
            line= glued=0
        fi
        if (( glued )); then
            words[${#words[@]}-1]+=$w
        else
            words+=("$w")
            at+=("$j")
        fi
    done
}

# What of the current word bash keeps (up to its last COMP_WORDBREAKS
# character, as "--user="), in pre; the replies must not repeat it.
_netleak_exec_pre() {
    local k c
    pre=
    for (( k = ${#cur}; k > 0; k-- )); do
        c=${cur:k-1:1}
        if [[ $c != [[:space:]] && ${COMP_WORDBREAKS-} == *"$c"* ]]; then
            pre=${cur:0:k}
            return
        fi
    done
}

_netleak_exec_ifaces() {
    local f n
    for f in "${NETLEAK_SYS_CLASS_NET:-/sys/class/net}"/*; do
        n=${f##*/}
        [[ -e $f && $n != lo && $n == "$cur"* ]] && COMPREPLY+=("$n")
    done
}

_netleak_exec_commands() {
    mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen -c -- "$cur")
}

_netleak_exec() {
    local -a words at
    local cur pre i=1 w n block=0 proxy=0 ended=0 REPLY
    COMPREPLY=()
    _netleak_exec_words
    local cword=$(( ${#words[@]} - 1 ))
    cur=${words[cword]}
    _netleak_exec_pre
    _netleak_exec_main
    (( ${#COMPREPLY[@]} )) && [[ -n $pre ]] && COMPREPLY=("${COMPREPLY[@]#"$pre"}")
    return 0
}

_netleak_exec_main() {
    # the options before IFACE, as netleak-exec's getopt reads them
    while (( i < cword )) && [[ ${words[i]} == -?* ]]; do
        w=${words[i]}
        (( i += 1 ))
        if [[ $w == -- ]]; then
            ended=1
            break
        elif [[ $w == --* ]]; then
            n=${w#--}
            _netleak_exec_long "${n%%=*}"
            case $REPLY in
                @NO_IFACE@) block=1 ;;
                @IFACE_OPTIONAL@) proxy=1 ;;
            esac
            if [[ $REPLY == *= && $w != *=* ]]; then
                (( i == cword )) && { _netleak_exec_value "$REPLY" "$cur" ""; return; }
                (( i += 1 ))
            fi
        else
            w=${w#-}
            while [[ -n $w ]]; do
                _netleak_exec_short "${w:0:1}"
                w=${w:1}
                if [[ $REPLY == *= ]]; then
                    if [[ -z $w ]]; then
                        (( i == cword )) && { _netleak_exec_value "$REPLY" "$cur" ""; return; }
                        (( i += 1 ))
                    fi
                    break
                fi
            done
        fi
    done

    # an option being typed: --name, --name=value, -u, -uvalue
    if (( i == cword && ! ended )) && [[ $cur == -* ]]; then
        if [[ $cur == --*=* ]]; then
            n=${cur#--}
            _netleak_exec_long "${n%%=*}"
            _netleak_exec_value "$REPLY" "${cur#*=}" "${cur%%=*}="
            return
        fi
        if [[ $cur != --* ]]; then
            w=${cur:1}
            n=-
            while [[ -n $w ]]; do
                _netleak_exec_short "${w:0:1}"
                n+=${w:0:1}
                w=${w:1}
                if [[ $REPLY == *= && -n $w ]]; then
                    _netleak_exec_value "$REPLY" "$w" "$n"
                    return
                fi
            done
        fi
        mapfile -t COMPREPLY < <(compgen -W "@OFFERED@" -- "$cur")
        return
    fi

    # IFACE: none with --block; with --proxy, only a word that names one
    if (( ! block )); then
        if (( i == cword )); then
            _netleak_exec_ifaces
            (( proxy )) && _netleak_exec_commands
            return
        fi
        if (( proxy )); then
            if (( ! ended )) && [[ -e ${NETLEAK_SYS_CLASS_NET:-/sys/class/net}/${words[i]} ]]; then
                (( i += 1 ))
            fi
        else
            (( i += 1 ))
            # IFACE --proxy URL COMMAND: the one option taken after IFACE
            if (( i == cword )) && [[ $cur == -* ]]; then
                n=${cur#--}
                case $cur in
                    @AFTER_IFACE_JOINED@) _netleak_exec_value "${n%%=*}=" "${cur#*=}" "${cur%%=*}=" ;;
                    *) mapfile -t COMPREPLY < <(compgen -W "@AFTER_IFACE@ --" -- "$cur") ;;
                esac
                return
            fi
            case ${words[i]} in
                @AFTER_IFACE_WORD@)
                    (( i + 1 == cword )) && { _netleak_exec_value "${words[i]#--}=" "$cur" ""; return; }
                    (( i += 2 )) ;;
                @AFTER_IFACE_JOINED@) (( i += 1 )) ;;
            esac
        fi
    fi

    # COMMAND (after a "--"), then its arguments as COMMAND's completion has them
    if (( i < cword )) && [[ ${words[i]} == -- ]]; then
        (( i += 1 ))
    fi
    if (( i >= cword )); then
        _netleak_exec_commands
    elif declare -F _comp_command_offset >/dev/null; then
        pre=
        _comp_command_offset "${at[i]}"
    elif declare -F _command_offset >/dev/null; then
        pre=
        _command_offset "${at[i]}"
    else
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "${cur#"$pre"}")
        pre=
    fi
}

complete -F _netleak_exec netleak-exec
'''

ZSH_EXEC = r'''#compdef netleak-exec
# zsh completion for netleak-exec, made by:
#   python3 -m netleak_hook.completion zsh netleak-exec
# Interface names are read from ${NETLEAK_SYS_CLASS_NET:-/sys/class/net}.

_netleak_exec() {
    local curcontext=$curcontext state state_descr line expl ret=1
    local -A opt_args
    local -a ifaces
    ifaces=( ${NETLEAK_SYS_CLASS_NET:-/sys/class/net}/*(N:t) )
    ifaces=( ${ifaces:#lo} )

    _arguments -s -S -C : \
@SPECS@
        '*::argument:->args' && ret=0
    [[ $state == args ]] || return ret

    # the "--" that ends the options, if any
    local ended=0
    if [[ $words[1] == -- ]] && (( CURRENT > 1 )); then
        shift words
        (( CURRENT-- ))
        ended=1
    fi
    # IFACE: none with --block; with --proxy, only a word that names one
    if (( ! (@NO_IFACE_GIVEN@) )); then
        if (( @IFACE_OPTIONAL_GIVEN@ )); then
            if (( CURRENT == 1 )); then
                _alternative 'interfaces:interface:compadd -a ifaces' \
                    'commands:command:_command_names -e'
                return
            fi
            if (( ! ended && ${ifaces[(Ie)$words[1]]} )); then
                shift words
                (( CURRENT-- ))
            fi
        else
            if (( CURRENT == 1 )); then
                _wanted interfaces expl interface compadd -a ifaces
                return
            fi
            shift words
            (( CURRENT-- ))
            # IFACE --proxy URL COMMAND: the one option taken after IFACE
            if (( CURRENT == 1 )) && [[ $PREFIX == -* ]]; then
                _wanted options expl option compadd -- @AFTER_IFACE@ --
                return
            fi
            case $words[1] in
                (@AFTER_IFACE_WORD@)
                    if (( CURRENT == 2 )); then
                        case $words[1] in
@AFTER_IFACE_VALUES@
                        esac
                        return
                    fi
                    shift 2 words
                    (( CURRENT -= 2 )) ;;
                (@AFTER_IFACE_JOINED@)
                    shift words
                    (( CURRENT-- )) ;;
            esac
        fi
    fi

    # COMMAND (after a "--"), then its arguments as COMMAND's completion has them
    if [[ $words[1] == -- ]] && (( CURRENT > 1 )); then
        shift words
        (( CURRENT-- ))
    fi
    _normal
}

if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _netleak_exec "$@"
else
    compdef _netleak_exec netleak-exec
fi
'''


if __name__ == "__main__":
    sys.exit(main())
