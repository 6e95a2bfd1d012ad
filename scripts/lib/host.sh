# Shared by scripts/install and scripts/uninstall: where things go on a
# Debian host, and how a change is told.

multiarch=$(gcc -print-multiarch 2>/dev/null || true)
multiarch=${multiarch:-x86_64-linux-gnu}
NSS_MODULE=/lib/$multiarch/libnss_imperium.so.2
PAM_MODULE=/lib/$multiarch/security/pam_imperium.so

# A change about to be made (or, with --dry-run, that would be).
say() {
    changes=$((changes + 1))
    if ((dry)); then echo "would: $*"; else echo "$*"; fi
}

refuse() {
    echo "$(basename "$0"): refused: $*" >&2
    exit 1
}
