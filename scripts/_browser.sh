# Sourced by scripts/test: makes sure Debian's chromium is present for the Playwright tests.
# Playwright drives the system browser (executable_path=/usr/bin/chromium), so no browser
# download from Playwright's CDN is needed; apt runs only when the binary is missing.

ensure_browser() {
    local browser="${NALU_STUDY_CHROMIUM:-/usr/bin/chromium}"
    if [ -x "$browser" ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "==> installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
}
