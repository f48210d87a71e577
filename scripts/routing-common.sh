# shellcheck shell=bash
# Shared by route-up, route-down, gateway-up and gateway-down. Sourced, not run.
#
# Every change the up scripts make is first written to a state file (an undo
# log, one tab-separated record per line) and only then made. The down scripts
# replay the log backwards. Recording before changing means a crash of the up
# script itself leaves nothing unrecorded; undoing a record whose change never
# happened (or is already gone, e.g. routes of a TUN that vanished with a
# SIGKILLed sockstun) is harmless: "not found" counts as undone.
#
# Record kinds:
#   rule   FAMILY ARGS...        ip -FAMILY rule del ARGS
#   route  FAMILY ARGS...        ip -FAMILY route del ARGS
#   sysctl PATH OLDVALUE         write OLDVALUE back to /proc/sys/PATH
#   nft    FAMILY TABLE          nft delete table FAMILY TABLE
#   resolv FILE BACKUP WRITTEN   copy BACKUP over FILE in place, if FILE still holds WRITTEN
#   resolved LINK                resolvectl revert LINK
#   (route-up --uid/--cgroup adds an `nft` table and `sysctl`s of the TUN)

ST_PROG=${0##*/}

die() {
    printf '%s: error: %s\n' "$ST_PROG" "$*" >&2
    exit 1
}
warn() { printf '%s: warning: %s\n' "$ST_PROG" "$*" >&2; }
info() { [[ ${ST_QUIET:-0} == 1 ]] || printf '%s: %s\n' "$ST_PROG" "$*" >&2; }

need_root() {
    [[ $(id -u) == 0 ]] || die "must run as root (it changes routes, rules and the resolver)"
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install ${2:-$1}"
}

# Serialise runs on one state file, so two concurrent up/down runs cannot
# interleave their records.
lock_state() {
    local state=$1
    mkdir -p "$(dirname "$state")"
    exec {ST_LOCK_FD}>"$state.lock"
    flock -w 30 "$ST_LOCK_FD" || die "another run holds $state.lock"
}

# Append one record (fields joined by tabs) and flush it to disk.
record() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$ST_STATE"
    sync -- "$ST_STATE" 2>/dev/null || true
}

# True if a command's stderr only says the thing is already gone.
gone_msg() {
    grep -qiE 'no such (file|process|device)|cannot find device|not exist|does not exist|No such' <<<"$1"
}

# Undo one record; returns non-zero only for real failures.
undo_record() {
    local kind=$1
    shift
    local err rc=0
    case $kind in
    rule | route)
        local fam=$1
        shift
        err=$(ip "-$fam" "$kind" del "$@" 2>&1) || rc=$?
        if ((rc != 0)) && ! gone_msg "$err"; then
            warn "ip -$fam $kind del $*: $err"
            return 1
        fi
        ;;
    sysctl)
        local path=$1 old=$2
        if [[ -e /proc/sys/$path ]]; then
            printf '%s\n' "$old" >"/proc/sys/$path" || {
                warn "cannot restore /proc/sys/$path to $old"
                return 1
            }
        fi
        ;;
    nft)
        local fam=$1 table=$2
        if nft list table "$fam" "$table" >/dev/null 2>&1; then
            nft delete table "$fam" "$table" || return 1
        fi
        ;;
    resolv)
        local file=$1 backup=$2 written=$3
        [[ -e $backup ]] || return 0
        if [[ ! -e $file ]]; then
            warn "$file is gone; not recreating it"
        elif [[ $(sha256sum <"$file") == "$written" ]]; then
            # cat > keeps the inode: bind mounts and watchers of the file see the change.
            cat -- "$backup" >"$file" || return 1
        else
            warn "$file was changed by someone else since we wrote it; left as it is"
        fi
        rm -f -- "$backup"
        ;;
    resolved)
        local link=$1
        if ip link show dev "$link" >/dev/null 2>&1; then
            resolvectl revert "$link" || return 1
        fi
        ;;
    *)
        warn "unknown record '$kind' in state file; skipped"
        ;;
    esac
    return 0
}

# Replay the state file backwards. Records that fail for a real reason are
# kept in the state file so that a later run can retry them.
undo_state() {
    local state=$1
    [[ -s $state ]] || {
        rm -f -- "$state"
        return 0
    }
    local -a lines failed=()
    mapfile -t lines <"$state"
    local i rec
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        rec=${lines[i]}
        [[ -z $rec || $rec == \#* ]] && continue
        local -a f
        IFS=$'\t' read -r -a f <<<"$rec"
        undo_record "${f[@]}" || failed=("$rec" "${failed[@]}")
    done
    if ((${#failed[@]})); then
        printf '%s\n' "${failed[@]}" >"$state"
        warn "could not undo everything; what is left is in $state (run again to retry)"
        return 1
    fi
    rm -f -- "$state"
}

# --- address helpers -------------------------------------------------------

is_ipv4() {
    local re='^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$'
    [[ $1 =~ $re ]] || return 1
    local o
    for o in "${BASH_REMATCH[@]:1}"; do ((10#$o <= 255)) || return 1; done
}
is_ipv6() { [[ $1 == *:* && $1 =~ ^[0-9A-Fa-f:.]+$ ]]; }

# Validate ADDR or ADDR/LEN; prints "4 CIDR" or "6 CIDR" (host addresses get /32 or /128).
parse_cidr() {
    local s=$1 addr len
    addr=${s%/*}
    if [[ $s == */* ]]; then len=${s##*/}; else len=; fi
    if is_ipv4 "$addr"; then
        [[ -z $len ]] && len=32
        [[ $len =~ ^[0-9]+$ ]] && ((len <= 32)) || return 1
        echo "4 $addr/$len"
    elif is_ipv6 "$addr"; then
        [[ -z $len ]] && len=128
        [[ $len =~ ^[0-9]+$ ]] && ((len <= 128)) || return 1
        echo "6 $addr/$len"
    else
        return 1
    fi
}

# Proxy given as ADDR, ADDR:PORT, [V6]:PORT, CIDR or a host name: print
# "FAMILY CIDR" lines for each of its addresses.
parse_proxy() {
    local s=$1 out
    s=${s#*://}
    s=${s##*@}
    if [[ $s =~ ^\[([0-9A-Fa-f:.]+)\](:[0-9]+)?$ ]]; then
        s=${BASH_REMATCH[1]}
    elif [[ $s =~ ^([^:]+):[0-9]+$ ]]; then
        s=${BASH_REMATCH[1]}
    fi
    if out=$(parse_cidr "$s"); then
        echo "$out"
        return 0
    fi
    [[ $s =~ ^[A-Za-z0-9.-]+$ ]] || return 1
    local addrs
    addrs=$(getent ahosts "$s" | awk '{print $1}' | sort -u) || return 1
    [[ -n $addrs ]] || return 1
    local a
    for a in $addrs; do parse_cidr "$a"; done
}

# First IPv4 address of DEV plus one: an address inside the TUN's own subnet
# that the kernel routes into the TUN, where the virtual DNS answers.
default_dns_for() {
    local dev=$1 a
    a=$(ip -4 -o addr show dev "$dev" 2>/dev/null | awk '{print $4; exit}')
    a=${a%/*}
    is_ipv4 "$a" || return 1
    local IFS=.
    # shellcheck disable=SC2086
    set -- $a
    local n=$((($1 << 24) + ($2 << 16) + ($3 << 8) + $4 + 1))
    echo "$(((n >> 24) & 255)).$(((n >> 16) & 255)).$(((n >> 8) & 255)).$((n & 255))"
}

# First global IPv6 address of DEV plus one (last group incremented), or nothing.
default_dns6_for() {
    local dev=$1 a
    a=$(ip -6 -o addr show dev "$dev" scope global 2>/dev/null | awk '{print $4; exit}')
    a=${a%/*}
    [[ -n $a ]] || return 1
    [[ $a == *:: ]] && a=${a}0
    local last=${a##*:} head=${a%:*}
    [[ $last =~ ^[0-9A-Fa-f]{1,4}$ ]] || return 1
    printf '%s:%x\n' "$head" $(((16#$last + 1) & 0xffff))
}

# A host address inside ADDR/LEN other than ADDR itself (for probing routes).
probe_host() {
    local a=${1%/*} len=${1##*/}
    is_ipv4 "$a" && [[ $len =~ ^[0-9]+$ ]] && ((len <= 30)) || return 1
    local IFS=.
    # shellcheck disable=SC2086
    set -- $a
    local n=$((($1 << 24) + ($2 << 16) + ($3 << 8) + $4))
    local mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
    local h=$(((n & mask) + 1))
    ((h == n)) && h=$((h + 1))
    echo "$(((h >> 24) & 255)).$(((h >> 16) & 255)).$(((h >> 8) & 255)).$((h & 255))"
}

# Wait up to SECONDS for DEV to exist and be administratively up.
wait_device() {
    local dev=$1 secs=$2 i
    for ((i = 0; i <= secs * 10; i++)); do
        if ip link show dev "$dev" 2>/dev/null | head -1 | grep -q '[<,]UP[,>]'; then
            return 0
        fi
        ((i < secs * 10)) && sleep 0.1
    done
    return 1
}

# A routing table number we may take: not unspec (0) or default/main/local.
valid_table() {
    [[ $1 =~ ^[1-9][0-9]{0,9}$ ]] && (($1 < 4294967295 && $1 != 253 && $1 != 254 && $1 != 255))
}
# A first rule preference P such that P..P+SPAN come before the main table (32766).
valid_priority() {
    [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] && (($1 + $2 < 32766))
}

# Rule preferences in use for a family.
prefs_in_use() {
    ip "-$1" rule show | sed -n 's/^\([0-9]\+\):.*/\1/p'
}

# Fail unless preferences FROM..TO are free in both families.
check_prefs_free() {
    local from=$1 to=$2 fam p
    for fam in 4 6; do
        for p in $(prefs_in_use "$fam"); do
            if ((p >= from && p <= to)); then
                die "ip -$fam rule preference $p (in $from..$to) is already in use; choose another --priority"
            fi
        done
    done
}

check_table_empty() {
    local t=$1 fam
    for fam in 4 6; do
        if [[ -n $(ip "-$fam" route show table "$t" 2>/dev/null) ]]; then
            die "routing table $t (IPv$fam) is not empty; choose another --table"
        fi
    done
}

# Make a change after recording it: add_rule FAMILY ARGS...
# A change the kernel refused never happened: its record is dropped again.
add_rule() {
    local fam=$1
    shift
    record rule "$fam" "$@"
    ip "-$fam" rule add "$@" || { unrecord; return 1; }
}
add_route() {
    local fam=$1
    shift
    record route "$fam" "$@"
    ip "-$fam" route add "$@" || { unrecord; return 1; }
}
unrecord() { sed -i '$d' "$ST_STATE"; }
set_sysctl() {
    local path=$1 new=$2 old
    old=$(<"/proc/sys/$path")
    [[ $old == "$new" ]] && return 0
    record sysctl "$path" "$old"
    printf '%s\n' "$new" >"/proc/sys/$path"
}

# --- per-user / per-cgroup selection (route-up --uid / --cgroup) -------------

# A user name, a uid or a uid range A-B: prints "A-B" (uids of names from
# the user database).
parse_uid() {
    local s=$1 a b
    if [[ $s =~ ^([0-9]{1,10})-([0-9]{1,10})$ ]]; then
        a=$((10#${BASH_REMATCH[1]})) b=$((10#${BASH_REMATCH[2]}))
    elif [[ $s =~ ^[0-9]{1,10}$ ]]; then
        a=$((10#$s)) b=$a
    elif [[ $s =~ ^[A-Za-z_][A-Za-z0-9_.-]*[$]?$ ]]; then
        a=$(getent passwd -- "$s" | cut -d: -f3) || return 1
        [[ $a =~ ^[0-9]+$ ]] || return 1
        b=$a
    else
        return 1
    fi
    ((a <= b && b < 4294967295)) || return 1
    echo "$a-$b"
}

# A cgroup v2 path as systemd shows it ("/system.slice/foo.service",
# "user.slice/user-1000.slice"): prints it without leading and trailing
# slashes. Characters that nft's string syntax cannot carry are refused.
norm_cgroup() {
    local p=$1 c
    while [[ $p == /* ]]; do p=${p#/}; done
    while [[ $p == */ ]]; do p=${p%/}; done
    [[ -n $p && $p =~ ^[A-Za-z0-9_.@:+=,/-]+$ ]] || return 1
    local IFS=/
    for c in $p; do
        [[ -n $c && $c != . && $c != .. ]] || return 1
    done
    echo "$p"
}

# The depth of a normalised cgroup path below the root: nft's `socket cgroupv2
# level N` compares the socket's ancestor at that depth.
cgroup_level() {
    local IFS=/
    # shellcheck disable=SC2086
    set -- $1
    echo $#
}

# Where the cgroup v2 hierarchy is mounted in this mount namespace (first
# mount), or nothing: /sys/fs/cgroup (unified layout), /sys/fs/cgroup/unified
# (hybrid layout), none under `ip netns exec` (which remounts /sys).
cgroup2_mount() {
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
        /proc/self/mountinfo
}

# Run a command with the cgroup v2 hierarchy at /sys/fs/cgroup, the only place
# nft looks up `socket cgroupv2` paths (it stats /sys/fs/cgroup/PATH for the
# cgroup's id). Directly when it is already there; otherwise in a private
# mount namespace with a fresh cgroup2 mount over /sys/fs/cgroup, which
# nobody else sees and which goes away with the command.
with_cgroup2() {
    if [[ $(stat -f -c %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then
        "$@"
    else
        unshare --mount --propagation private -- \
            sh -c 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"' sh "$@"
    fi
}

# IPv6 usable on DEV (module loaded and not disabled on the device)?
ipv6_on() {
    [[ -e /proc/sys/net/ipv6/conf/$1/disable_ipv6 ]] && [[ $(<"/proc/sys/net/ipv6/conf/$1/disable_ipv6") == 0 ]]
}
