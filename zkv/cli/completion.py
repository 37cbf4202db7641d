"""``zkv completion bash|zsh``: a completion script built from the parser."""

from __future__ import annotations

import argparse

from zkv.cli._common import (
    EXIT_OK,
)


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """Print a completion script: commands, then each command's options (else file names)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands: dict[str, list[str]] = {}
    for name, sub in subparsers.choices.items():
        commands[name] = sorted(
            option
            for action in sub._actions
            if action.help != argparse.SUPPRESS
            for option in action.option_strings
            if option.startswith("--")
        )
    cases = "\n".join(
        f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in commands.items()
    )
    names = " ".join(commands)
    if shell == "bash":
        print(f"""# zkv bash completion: source <(zkv completion bash)
_zkv() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} opts=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{names} --help --version" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _zkv zkv""")
    else:
        helps = {a.dest: a.help or "" for a in subparsers._choices_actions}
        described = "\n".join(
            f"        '{name}:{helps.get(name, '').replace(chr(39), '').replace(':', '')}'"
            for name in commands
        )
        print(f"""#compdef zkv
# zkv zsh completion: source <(zkv completion zsh)
_zkv() {{
    local -a commands
    local opts=""
    commands=(
{described}
    )
    if (( CURRENT == 2 )); then
        _describe 'zkv command' commands
        return
    fi
    case $words[2] in
{cases}
    esac
    if [[ $PREFIX == -* ]]; then
        compadd -- ${{=opts}} --help
    else
        _files
    fi
}}
compdef _zkv zkv""")
    return EXIT_OK
