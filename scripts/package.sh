#!/usr/bin/env bash
# Builds the Debian package target/debian/mongoq_<version>_<arch>.deb:
# /usr/bin/mongoq, mongoq.service and the template mongoq@.service, the man
# page, bash/zsh/fish completions, and /etc/mongoq/mongoq.env (a conffile,
# mode 0600). Installs cargo-deb when missing (a few minutes, once).
#
#   scripts/package.sh && sudo apt install ./target/debian/mongoq_*.deb
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$MONGOQ_ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_DEB_VERSION="3.8.0"
if ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi

# The same release build the demo and the bench use, stripped into the
# package's assets: one optimized build serves all three.
cargo build --release --quiet
assets=target/package-assets
rm -rf "$assets" && mkdir -p "$assets"
bin="$assets/mongoq"
strip -o "$bin" target/release/mongoq
"$bin" man | gzip -9n > "$assets/mongoq.1.gz"
"$bin" completions bash > "$assets/mongoq.bash"
"$bin" completions zsh > "$assets/_mongoq"
"$bin" completions fish > "$assets/mongoq.fish"
# --no-build: the stripped binary above is the one packaged.
deb="$(cargo deb --no-build --quiet 2>/dev/null | tail -n 1)"
[ -f "$deb" ] || deb="$(ls -t target/debian/mongoq_*.deb | head -n 1)"
deb="$(realpath "$deb")"
log "built $deb"
echo "$deb"
