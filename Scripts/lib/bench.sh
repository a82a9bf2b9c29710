# Scripts/lib/bench.sh — pieces the benchmark scripts share. Source it after
# defining `me` (the script's name, for messages).

die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 1; }
log() { printf '%s: %s\n' "$me" "$*" >&2; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 > 0)); }

# Root, python3 and a store: sets and exports CRSNAP_STORE.
bench_require() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    command -v python3 >/dev/null || die "python3 is needed for the statistics"
    store=${CRSNAP_STORE:-${CRSNAP_TEST_STORE:-}}
    [[ -n $store ]] || die "no store: set CRSNAP_STORE, or run under Scripts/testenv (which exports CRSNAP_TEST_STORE), e.g. Scripts/testenv Scripts/$me"
    export CRSNAP_STORE=$store
}

# Sets `bin`: $CRSNAP_BIN, or a release build of this checkout.
bench_binary() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    if [[ -n ${CRSNAP_BIN:-} ]]; then
        bin=$CRSNAP_BIN
        [[ -x $bin ]] || die "CRSNAP_BIN=$bin is not executable"
        log "using crsnap binary from CRSNAP_BIN: $bin"
    else
        log "building: swift build -c release --product crsnap (in $repo)"
        (cd "$repo" && swift build -c release --product crsnap >&2)
        bin=$repo/.build/release/crsnap
        [[ -x $bin ]] || die "build produced no $bin"
        log "using release build: $bin"
    fi
}

# The store's btrfs root (differs from the store path when the store is an
# image file): scratch directories for bare dumps go there, on the same
# filesystem as take's images.
bench_store_root() {
    "$bin" init --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["root"])'
}

# Waits (up to SECONDS) until container NAME has printed a line starting with
# PREFIX; prints that line.
bench_wait_ready() {
    local name=$1 prefix=$2 seconds=$3 text
    for _ in $(seq 1 $((seconds * 10))); do
        text=$("$bin" logs "$name" 2>/dev/null || true)
        if [[ $text == "$prefix"* || $text == *$'\n'"$prefix"* ]]; then
            grep -m1 "^$prefix" <<<"$text"
            return 0
        fi
        sleep 0.1
    done
    "$bin" logs "$name" >&2 || true
    die "container $name did not print its ready line within $seconds s"
}

# Refuses a size the machine cannot hold: the MiB it needs must leave the
# floor every run keeps free (CRSNAP_TEST_MEM_FLOOR_MB, 3072 by default).
# Memory-backed files are not freed by the OOM killer: check before, not after.
bench_need_memory() {  # MIB WHAT
    local need=$1 what=$2 avail floor=${CRSNAP_TEST_MEM_FLOOR_MB:-3072}
    avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
    ((avail - need >= floor)) ||
        die "$what needs about $need MiB of memory; $avail MiB are available, and the floor of $floor MiB must stay free"
    log "memory: $what needs about $need MiB, $avail MiB available (floor $floor MiB)"
}

# The same for disk: MIB free on the filesystem of PATH, above the floor.
bench_need_disk() {  # PATH MIB WHAT
    local path=$1 need=$2 what=$3 avail floor=${CRSNAP_TEST_DISK_FLOOR_MB:-3072}
    avail=$(df -Pk -- "$path" | awk 'NR == 2 {print int($4 / 1024)}')
    ((avail - need >= floor)) ||
        die "$what needs about $need MiB on $path; $avail MiB are free, and the floor of $floor MiB must stay free"
}
