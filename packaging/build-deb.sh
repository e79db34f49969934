#!/usr/bin/env bash
# Builds dist/synbak_<version>_<arch>.deb from this checkout with dpkg-deb
# alone (Debian's own tool; nothing to install): the binary with its version
# and commit, the systemd unit, /etc/synbak/synbak.yaml as a conffile, man
# pages, shell completions, the example PostgreSQL settings, the changelog.
#
#   bash packaging/build-deb.sh            # -> dist/synbak_0.9.0_amd64.deb
#   SYNBAK_VERSION=0.9.1~rc1 bash packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The version is the newest entry of CHANGELOG.md ("## 0.9.0 - ...").
version="${SYNBAK_VERSION:-$(sed -n 's/^## \([0-9][0-9A-Za-z.~+-]*\).*/\1/p' CHANGELOG.md | head -n1)}"
[ -n "$version" ] || { echo "build-deb: no version in CHANGELOG.md" >&2; exit 1; }
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then
  commit="$commit-modified"
fi
arch="$(dpkg --print-architecture)"
goarch="$(go env GOARCH)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/synbak" \
  "$root/usr/share/man/man1" "$root/usr/share/doc/synbak/examples" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"

echo "build-deb: synbak $version ($commit) for $arch"
CGO_ENABLED=0 GOARCH="$goarch" go build -trimpath -buildvcs=false \
  -ldflags "-s -w -X main.version=$version -X main.commit=$commit" \
  -o "$root/usr/bin/synbak" ./cmd/synbak

"$root/usr/bin/synbak" gendocs --man "$work/man" --completions "$work/compl"
for f in "$work"/man/*.1; do gzip -9n -c "$f" > "$root/usr/share/man/man1/$(basename "$f").gz"; done
install -m 0644 "$work/compl/synbak.bash" "$root/usr/share/bash-completion/completions/synbak"
install -m 0644 "$work/compl/_synbak" "$root/usr/share/zsh/vendor-completions/_synbak"
install -m 0644 "$work/compl/synbak.fish" "$root/usr/share/fish/vendor_completions.d/synbak.fish"

install -m 0644 examples/debian/synbak.service "$root/lib/systemd/system/synbak.service"
install -m 0640 examples/debian/synbak.yaml "$root/etc/synbak/synbak.yaml"
install -m 0644 examples/debian/postgresql-synbak.conf examples/debian/synbak-role.sql examples/debian/synbak.yaml \
  "$root/usr/share/doc/synbak/examples/"
gzip -9n -c CHANGELOG.md > "$root/usr/share/doc/synbak/changelog.gz"
gzip -9n -c README.md > "$root/usr/share/doc/synbak/README.md.gz"
install -m 0644 packaging/deb/copyright "$root/usr/share/doc/synbak/copyright"

installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$installed_kb/" \
  packaging/deb/control > "$root/DEBIAN/control"
install -m 0644 packaging/deb/conffiles "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "packaging/deb/$s" "$root/DEBIAN/$s"; done

mkdir -p dist
out="dist/synbak_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "build-deb: $out ($(du -h "$out" | cut -f1))"
