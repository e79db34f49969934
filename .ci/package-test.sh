#!/usr/bin/env bash
# Builds the Debian package, installs it on this machine with dpkg -i, checks
# what an admin gets (binary and version, user, file modes, unit, man pages,
# completions), then purges it and checks that the backups are kept.
# Run as root by .ci/run; leaves the machine as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }

bash packaging/build-deb.sh
deb="$(ls -t dist/synbak_*.deb | head -n1)"
version="$(dpkg-deb -f "$deb" Version)"
echo "package-test: $deb ($(du -h "$deb" | cut -f1), installed $(dpkg-deb -f "$deb" Installed-Size) KiB)"

if dpkg -s synbak >/dev/null 2>&1; then
  fail "a synbak package is already installed here; remove it first (dpkg --purge synbak)"
fi
trap 'dpkg --purge synbak >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb"

out="$(/usr/bin/synbak version)"
echo "$out"
grep -qx "synbak $version" <<<"$out" || fail "synbak version does not say $version"
grep -q "^commit: [0-9a-f]\{40\}" <<<"$out" || fail "synbak version has no commit"
grep -q "^go: go1" <<<"$out" || fail "synbak version has no Go version"

getent passwd synbak >/dev/null || fail "no synbak user"
[ "$(stat -c '%a %U:%G' /etc/synbak/synbak.yaml)" = "640 root:synbak" ] || fail "/etc/synbak/synbak.yaml: $(stat -c '%a %U:%G' /etc/synbak/synbak.yaml)"
[ "$(stat -c '%a %U' /var/lib/synbak)" = "700 synbak" ] || fail "/var/lib/synbak: $(stat -c '%a %U' /var/lib/synbak)"
[ "$(stat -c '%a %U' /var/backups/synbak)" = "700 synbak" ] || fail "/var/backups/synbak: $(stat -c '%a %U' /var/backups/synbak)"
grep -qx /etc/synbak/synbak.yaml /var/lib/dpkg/info/synbak.conffiles || fail "synbak.yaml is not a conffile"

unit=/lib/systemd/system/synbak.service
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
score="$(systemd-analyze security --offline=yes "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for synbak.service: \([0-9.]*\).*/\1/p')"
echo "package-test: systemd-analyze security: $score"

awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "unit exposure $score, want <= 2.0"
grep -q '^RestartPreventExitStatus=2' "$unit" || fail "unit restarts on exit status 2"

zcat /usr/share/man/man1/synbak-restore.1.gz | grep -q -- '--target-time' || fail "man page synbak-restore(1) lacks --target-time"
grep -q '__start_synbak' /usr/share/bash-completion/completions/synbak || fail "bash completion"

# The service's user on a machine without Synapse's config or the dsn file:
# the configuration is refused with exit 2 (which the unit does not
# restart), naming what is missing.
set +e
msg="$(runuser -u synbak -- /usr/bin/synbak -c /etc/synbak/synbak.yaml config check 2>&1 >/dev/null)"
rc=$?
set -e
[ "$rc" = 2 ] || fail "config check of the packaged config here exited $rc, want 2: $msg"
grep -q -E '/etc/(matrix-synapse|synbak)/' <<<"$msg" || fail "the refusal names no missing file: $msg"

dpkg --purge synbak
trap - EXIT
[ ! -e /usr/bin/synbak ] || fail "/usr/bin/synbak left after purge"
[ ! -e /etc/synbak/synbak.yaml ] || fail "/etc/synbak/synbak.yaml left after purge"
[ -d /var/backups/synbak ] || fail "purge removed the backups"
rmdir /var/backups/synbak /var/lib/synbak 2>/dev/null || true
echo "package-test: ok"
