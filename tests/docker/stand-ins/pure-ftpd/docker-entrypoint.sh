#!/bin/bash
# Starts Debian's pure-ftpd as stilliard/pure-ftpd:hardened does, for what docker-compose.yml
# relies on: the virtual user FTP_USER_NAME with the password FTP_USER_PASS and the home
# FTP_USER_HOME (default /home/ftpusers/<user>, made on first login), files owned by ftpuser
# (uid 1000); passive ports FTP_PASSIVE_PORTS (default 30000:30009) announced with the address
# of PUBLICHOST; no anonymous login, everyone chrooted; the hardened image's flags; at most
# FTP_MAX_CLIENTS clients and FTP_MAX_CONNECTIONS per address (default 5 each). Extra flags:
# ADDED_FLAGS, or arguments to the container. The health check needs only bash and head.
set -euo pipefail

# Debian's pure-ftpd takes these capabilities at start and exits (252, with no word on stderr)
# when it cannot: say so instead.
effective=$((16#$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)))
for cap in 2:DAC_READ_SEARCH 23:SYS_NICE; do
    if ((((effective >> ${cap%%:*}) & 1) == 0)); then
        echo "pure-ftpd stand-in: the container lacks CAP_${cap#*:}: run it with cap_add: [DAC_READ_SEARCH, SYS_NICE]" >&2
        exit 1
    fi
done

passwd=/etc/pure-ftpd/passwd/pureftpd.passwd
pdb=/etc/pure-ftpd/pureftpd.pdb

if [[ -n "${FTP_USER_NAME:-}" && -n "${FTP_USER_PASS:-}" ]]; then
    home="${FTP_USER_HOME:-/home/ftpusers/$FTP_USER_NAME}"
    # Made afresh at every start, from the environment, as the original does.
    rm -f "$passwd"
    printf '%s\n%s\n' "$FTP_USER_PASS" "$FTP_USER_PASS" \
        | pure-pw useradd "$FTP_USER_NAME" -f "$passwd" -u ftpuser -g ftpgroup -d "$home" >/dev/null
    pure-pw mkdb "$pdb" -f "$passwd"
    mkdir -p "$home"
    chown ftpuser:ftpgroup "$home"
fi
if [[ ! -f "$pdb" ]]; then
    echo "pure-ftpd stand-in: no user (set FTP_USER_NAME and FTP_USER_PASS)" >&2
    exit 1
fi

flags=(
    -l "puredb:$pdb"
    -E -j -R
    -P "${PUBLICHOST:-localhost}"
    -p "${FTP_PASSIVE_PORTS:-30000:30009}"
    -c "${FTP_MAX_CLIENTS:-5}" -C "${FTP_MAX_CONNECTIONS:-5}"
    # The hardened image's: no anonymous reads of ftp-owned files, chroot everyone, customer
    # proof, no DNS look-ups, IPv4 only, no renames, no dot files.
    -s -A -Z -H -4 -G -X -x
)
# shellcheck disable=SC2206 # ADDED_FLAGS is a list of words, as in the original
flags+=(${ADDED_FLAGS:-})
echo "pure-ftpd stand-in: user ${FTP_USER_NAME:-?}, passive ports ${FTP_PASSIVE_PORTS:-30000:30009}, public host ${PUBLICHOST:-localhost}"
exec /usr/sbin/pure-ftpd "${flags[@]}" "$@"
