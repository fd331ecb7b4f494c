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
