#!/bin/sh
# mk/embed.sh FILE SYMBOL: prints a C file defining `const char SYMBOL[]`,
# FILE's bytes followed by a NUL, so a page ships inside the binary
# (src/http/dashboard.html -> lmcd_dashboard_html). POSIX od + sed only.
set -e
[ -f "$1" ] || { echo "mk/embed.sh: no such file: $1" >&2; exit 1; }
printf '/* Generated from %s by mk/embed.sh: do not edit. */\n' "$1"
printf 'extern const char %s[];\nconst char %s[] = {\n' "$2" "$2"
od -An -v -tx1 "$1" | sed -e 's/[0-9a-f][0-9a-f]/0x&,/g' -e 's/^ *//' -e '/^$/d'
printf '0x00 };\n'
