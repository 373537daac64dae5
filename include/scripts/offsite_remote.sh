#!/usr/bin/env bash
# Runs on the offsite host of the rsync target, sent by dbops.offsite.rsync as the script of
# `ssh <host> bash -c <this file> offsite_remote <command> <argument>...` (every argument
# shell-quoted; stdin stays free for the data: offsite.json, a file's bytes, or names
# separated by NUL). One command per call; the caller validated every name and path.
#
# Needs bash, GNU find (-printf), coreutils sha256sum (-z) and sync FILE... (coreutils >= 8.24;
# an older sync ignores its arguments and flushes everything, which is durable too).
set -euo pipefail

# the same names as dbops.offsite.common / dbops.offsite.rsync (a unit test compares them)
STAGING_DIR=.staging
DELETING_DIR=.deleting
PARTIAL_DIR=.rsync-partial
ENVELOPE_NAME=offsite.json

die() {
    echo "offsite_remote: $*" >&2
    exit 2
}

plain_name() {
    [[ -n "$1" && "$1" != . && "$1" != .. && "$1" != */* ]] || die "not a plain name: '$1'"
}

absolute() {
    [[ "$1" == /* && "/$1/" != */../* ]] || die "not an absolute path without '..': '$1'"
}

# catalog ROOT: 'S <mtime> <path>' of every staging entry and 'F <size> <path>' of every file
# outside .staging and .deleting, NUL-terminated; nothing when ROOT does not exist yet
cmd_catalog() {
    local root="$1"
    absolute "$root"
    [[ -d "$root" ]] || return 0
    cd -- "$root"
    find . -name "$DELETING_DIR" -prune -o -path "*/$STAGING_DIR/*" -prune -printf 'S %T@ %P\0' \
        -o -type f -printf 'F %s %P\0'
}

# folder-state FOLDER NAME...: '<size> <path>' of every file under FOLDER, then 'HASHES',
# then sha256sum -z of NAME... (a missing or unreadable one is left out: the caller reports it)
cmd_folder_state() {
    local folder="$1"
    shift
    absolute "$folder"
    cd -- "$folder"
    find . -type f -printf '%s %P\0'
    printf 'HASHES\0'
    if (($#)); then
        sha256sum -z -- "$@" 2>/dev/null || true
    fi
}

# mkdir PATH: a private folder (and its parents)
cmd_mkdir() {
    absolute "$1"
    umask 077
    mkdir -p -- "$1"
}

# publish ROOT SERIES BACKUP_ID [EXTRA...]: the checked SERIES/.staging/BACKUP_ID becomes
# SERIES/BACKUP_ID in one mv, with offsite.json (stdin) written into it first. Every staged
# file and folder is flushed to disk before the mv, the folders holding the result after it.
cmd_publish() {
    local root="$1" series="$2" bid="$3"
    shift 3
    absolute "$root"
    absolute "$series"
    plain_name "$bid"
    [[ "$series" == "$root"/* ]] || die "series folder '$series' is not under '$root'"
    local stage="$STAGING_DIR/$bid"
    local remove=("$stage/$PARTIAL_DIR") extra
    for extra in "$@"; do
        [[ "/$extra/" != */../* ]] || die "refusing the staged name '$extra'"
        remove+=("$stage/$extra")
    done
    umask 077
    cd -- "$series"
    if [[ -e "$bid" ]]; then
        echo "backup $bid already exists offsite, not replacing it" >&2
        exit 3
    fi
    rm -rf -- "${remove[@]}"
    local envelope_tmp="$stage/.$ENVELOPE_NAME.tmp"
    cat >"$envelope_tmp"
    mv -f -- "$envelope_tmp" "$stage/$ENVELOPE_NAME"
    find "$stage" -exec sync -- {} +
    mv -- "$stage" "$bid"
    # the series folder, its staging folder, then every folder up to the root
    local holders=("$series" "$series/$STAGING_DIR") dir="${series%/*}"
    while [[ "$dir" == "$root"/* ]]; do
        holders+=("$dir")
        dir="${dir%/*}"
    done
    holders+=("$root")
    sync -- "${holders[@]}"
}

# delete SERIES BACKUP_ID TOKEN: renamed out of sight first (it stops looking complete), then removed
cmd_delete() {
    local series="$1" bid="$2" token="$3"
    absolute "$series"
    plain_name "$bid"
    plain_name "$token"
    umask 077
    cd -- "$series"
    [[ -d "$bid" ]] || return 0
    local gone="$DELETING_DIR/$bid.$token"
    mkdir -p -- "$DELETING_DIR"
    mv -- "$bid" "$gone"
    rm -rf -- "$gone"
}

# remove PATH: one staging entry (or any path the caller named)
cmd_remove() {
    absolute "$1"
    rm -rf -- "$1"
}

# housekeeping ROOT: removes the .deleting leftovers of interrupted deletions; their paths, NUL-terminated
cmd_housekeeping() {
    absolute "$1"
    cd -- "$1" 2>/dev/null || return 0
    find . -mindepth 2 -maxdepth 3 -type d -name "$DELETING_DIR" -prune -printf '%P\0' -exec rm -rf -- {} +
}

# list-files FOLDER: '<size> <name>' of every file directly in FOLDER, NUL-terminated
cmd_list_files() {
    absolute "$1"
    [[ -d "$1" ]] || return 0
    cd -- "$1"
    find . -mindepth 1 -maxdepth 1 -type f -printf '%s %P\0'
}

# sync-files FOLDER: flushes the files named on stdin (NUL-separated) and FOLDER itself
cmd_sync_files() {
    absolute "$1"
    cd -- "$1"
    xargs -0 -r sync --
    sync -- .
}

# delete-files FOLDER: removes the files named on stdin (NUL-separated); no FOLDER, nothing to do
cmd_delete_files() {
    absolute "$1"
    cd -- "$1" 2>/dev/null || return 0
    xargs -0 -r rm -f --
}

# exists FOLDER: prints yes when FOLDER is a folder
cmd_exists() {
    absolute "$1"
    if [[ -d "$1" ]]; then
        echo yes
    fi
}

# read-file PATH: Y and the file's bytes, or N when there is no such file
cmd_read_file() {
    absolute "$1"
    if [[ -f "$1" ]]; then
        printf Y
        cat -- "$1"
    else
        printf N
    fi
}

# write-file PATH TOKEN: stdin replaces PATH in one mv, flushed to disk before and after
cmd_write_file() {
    local path="$1" token="$2"
    absolute "$path"
    plain_name "$token"
    local folder="${path%/*}" name="${path##*/}"
    plain_name "$name"
    local tmp="$folder/.$name.tmp-$token"
    umask 077
    mkdir -p -- "$folder"
    cat >"$tmp"
    sync -- "$tmp"
    mv -f -- "$tmp" "$path"
    sync -- "$folder"
}

# cat PATH: the file's bytes (read back for the deep check)
cmd_cat() {
    absolute "$1"
    cat -- "$1"
}

main() {
    (($# >= 1)) || die "usage: offsite_remote <command> <argument>..."
    local command="$1" wanted
    shift
    case "$command" in
        catalog | remove | housekeeping | list-files | sync-files | delete-files | exists | read-file | cat | mkdir)
            wanted=1 ;;
        write-file) wanted=2 ;;
        delete) wanted=3 ;;
        folder-state) wanted=-1 ;;
        publish) wanted=-3 ;;
        *) die "unknown command '$command'" ;;
    esac
    if ((wanted >= 0 && $# != wanted)) || ((wanted < 0 && $# < -wanted)); then
        die "$command: wrong number of arguments ($#)"
    fi
    "cmd_${command//-/_}" "$@"
}

main "$@"
