#!/bin/sh
# Debian packages the bench needs besides the venv: rclone (a peer), libfuse2 (fusepy's
# library, for the walk section's NAS-like mount) and strace (the syscall count).
# Installs what is missing when run as root; otherwise says what to install.
set -u
need=""
command -v rclone >/dev/null 2>&1 || need="$need rclone"
command -v strace >/dev/null 2>&1 || need="$need strace"
ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need="$need libfuse2"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "bench: missing Debian packages:$need; install them with: sudo apt-get install -y$need"
    exit 0
fi
echo "bench: installing$need (apt-get)"
apt-get install -y -q $need >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $need >/dev/null
} || echo "bench: could not install$need; the bench will say which sections need them"
