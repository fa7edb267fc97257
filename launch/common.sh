# shellcheck shell=bash
# Shared by the launchers (sourced): usage errors, argument checks, and running or, with --dry-run
# (DRY_RUN=1), printing commands.

# Prints the error and the launcher's header comment (its usage text), then exits with 2.
usage() { echo "Error: $1" >&2; sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" >&2; exit 2; }

# Exits with the usage unless the training arguments ($@) set --workdir.
require_workdir() {
  [[ " $* " =~ \ --workdir[=\ ] ]] || usage "the training arguments need --workdir"
}

# Prints a command as one shell line, quoting only the words that need it.
show() {
  local word line=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then line+=("$word")
    else line+=("${word@Q}"); fi
  done
  echo "${line[*]}"
}

run() { if [[ -n ${DRY_RUN:-} ]]; then show "$@"; else "$@"; fi; }
