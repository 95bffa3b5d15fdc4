#!/usr/bin/env bash
# The configuration files' reference, made from the programs' own --help: one table per file
# (key, default, environment variable, what it is). docs/operations.md holds its output between
# the `config-reference` markers; tests/packaging/run.sh fails when they differ.
#   scripts/config-reference.sh [BIN_DIR]           print it (BIN_DIR default target/debug)
#   scripts/config-reference.sh --write [BIN_DIR]   put it into docs/operations.md
set -euo pipefail
cd "$(dirname "$0")/.."
write=0
[ "${1:-}" = --write ] && { write=1; shift; }
bin=${1:-target/debug}

# table PROGRAM ARGS...: the keys of `PROGRAM ARGS --help` as Markdown rows.
table() {
    "$bin/$1" "${@:2}" --help | awk '
        function row() {
            if (key == "") return
            d = desc; env = ""; def = ""
            if (match(d, /\[env: [A-Z_]+/)) env = "`" substr(d, RSTART + 6, RLENGTH - 6) "`"
            if (match(d, /\[default: [^]]*\]/)) def = "`" substr(d, RSTART + 10, RLENGTH - 11) "`"
            if (match(d, /\[possible values: [^]]*\]/)) pv = " (" substr(d, RSTART + 1, RLENGTH - 2) ")"; else pv = ""
            gsub(/ *\[(env|default|possible values): [^]]*\]/, "", d)
            gsub(/\|/, "\\|", d)
            printf "| `%s` | %s | %s | %s%s |\n", key, def, env, d, pv
            key = ""
        }
        /^ +(-[A-Za-z], )?--[a-z0-9-]+/ {
            row()
            l = $0; sub(/^ +(-[A-Za-z], )?--/, "", l); sub(/[ =<].*/, "", l)
            key = (l == "help" || l == "version" || l == "config") ? "" : l
            gsub(/-/, "_", key); desc = ""; next
        }
        /^          / && key != "" { t = $0; sub(/^ +/, "", t); desc = desc (desc == "" ? "" : " ") t; next }
        /^[^ ]/ { row() }
        END { row() }'
}

section() { # section TITLE FILE PROGRAM ARGS...
    echo "#### \`$2\` (\`$3${4:+ $4}\`)"
    echo
    echo "| key | default | environment | what |"
    echo "|---|---|---|---|"
    table "${@:3}"
    echo
}

reference() {
    echo "<!-- config-reference:begin (scripts/config-reference.sh --write; checked in CI) -->"
    echo
    section "controller" /etc/vgpu/controller.toml vgpu-controller serve
    echo "\`vgpu-controller up\` reads no file unless given \`--config\` (it is the one-host pool of a"
    echo "checkout); its own keys besides those above:"
    echo
    echo "| key | default | environment | what |"
    echo "|---|---|---|---|"
    comm -13 <(table vgpu-controller serve | cut -d'|' -f2 | sort) <(table vgpu-controller up | cut -d'|' -f2 | sort) |
        while read -r k; do table vgpu-controller up | grep -F "| $k |"; done
    echo
    section "agent" /etc/vgpu/agent.toml vgpu-agent
    section "workers" /etc/vgpu/vhost-gpu.toml vhost-gpu
    echo "<!-- config-reference:end -->"
}

if [ $write = 1 ]; then
    doc=docs/operations.md
    new=$(mktemp)
    ref=$(mktemp)
    reference >"$ref"
    awk -v ref="$ref" '
        /<!-- config-reference:begin/ { while ((getline l < ref) > 0) print l; skip = 1; next }
        /<!-- config-reference:end/ { skip = 0; next }
        !skip { print }' "$doc" >"$new"
    mv "$new" "$doc"
    rm -f "$ref"
else
    reference
fi
