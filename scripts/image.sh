#!/usr/bin/env bash
# Builds the chatd image from ./Dockerfile with podman and smoke-tests it.
#
# No registry is reachable here, so the two Debian base images the Dockerfile
# names (debian:bookworm, debian:bookworm-slim) are made locally from a
# debootstrap'ed bookworm and imported under those names; the build then runs
# with --pull=never. podman keeps its own storage under $CACHE (not the
# machine's default), so repeated runs reuse the base and the apt layers and
# nothing else on the machine is touched.
#
# Smoke test: `podman run` cannot start a container on these machines (crun's
# setrlimit(RLIMIT_NOFILE) is refused by the sandbox), so the test runs the
# image's own filesystem instead: a container is created (not started), its
# root is mounted with `podman mount`, and chatd runs there under chroot as
# the image's user (10001:10001): `chatd --version`, every shared library
# resolved by the image's loader, the image config (user, entrypoint, health
# check), then tests/deploy/image_smoke.py: an all-in-one chatd from the image
# serving a real WebSocket chat against Redis and PostgreSQL on loopback.
#
#   CHATD_IMAGE        tag to build (default localhost/chatd:latest)
#   CHATD_IMAGE_CACHE  base tarball + podman storage (default /var/tmp/chatd-image)
#   CHATD_IMAGE_FRESH  1 = debootstrap a new base even if one is cached
#   DEBIAN_MIRROR      debootstrap mirror (default http://deb.debian.org/debian)
#   CHATD_IMAGE_SAVE   also write the image there as a docker-archive tarball
#                      (for `kind load image-archive`, `docker load`, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${CHATD_IMAGE:-localhost/chatd:latest}
CACHE=${CHATD_IMAGE_CACHE:-/var/tmp/chatd-image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TAR=$CACHE/bookworm-minbase.tar
SLIM_TAR=$CACHE/bookworm-slim.tar
PY=/usr/bin/python3

bash scripts/deps.sh podman debootstrap
mkdir -p "$CACHE"
# One image build at a time per cache (the storage is not shared-safe across
# concurrent builds of the same tag).
exec 9>"$CACHE/lock"
flock 9

P=(podman --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs
   --cgroup-manager cgroupfs --events-backend file)
t0=$(date +%s)
step() { echo "image: $* ($(($(date +%s) - t0))s)"; }

# ---- base images -------------------------------------------------------
make_bases() {
    local root="$CACHE/rootfs.$$"
    rm -rf "$root"
    step "debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap.log"; echo "image: debootstrap failed" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$BASE_TAR.tmp" .
    # bookworm-slim the way Debian's official slim images are made: dpkg
    # excludes docs, man pages and locales, and what is there goes.
    cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
           "$root"/usr/share/lintian/*
    tar -C "$root" --numeric-owner -cf "$SLIM_TAR.tmp" .
    rm -rf "$root"
    mv "$SLIM_TAR.tmp" "$SLIM_TAR"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    # Re-import: the images below must be these tarballs.
    "${P[@]}" rmi -f docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim \
        >/dev/null 2>&1 || true
}

if [ "${CHATD_IMAGE_FRESH:-0}" = 1 ] || [ ! -s "$BASE_TAR" ] || [ ! -s "$SLIM_TAR" ]; then
    make_bases
fi
for tag in bookworm:"$BASE_TAR" bookworm-slim:"$SLIM_TAR"; do
    name=docker.io/library/debian:${tag%%:*}
    if ! "${P[@]}" image exists "$name"; then
        step "import ${tag#*:} as $name"
        "${P[@]}" import --quiet --change 'CMD ["bash"]' "${tag#*:}" "$name" >/dev/null
    fi
done

# ---- build ---------------------------------------------------------------
step "podman build --isolation=chroot -t $IMAGE"
# docker format: OCI image configs have no HEALTHCHECK field.
"${P[@]}" build --isolation=chroot --pull=never --format docker --layers \
    -t "$IMAGE" -f Dockerfile . > "$CACHE/build.log" 2>&1 \
    || { tail -n 40 "$CACHE/build.log"; echo "image: build failed (log: $CACHE/build.log)" >&2; exit 1; }
"${P[@]}" image prune -f >/dev/null 2>&1 || true
step "built $IMAGE, $("${P[@]}" image inspect --format '{{.Size}}' "$IMAGE") bytes"

# ---- smoke test ----------------------------------------------------------
ctr=chatd-smoke-$$
"${P[@]}" create --name "$ctr" "$IMAGE" >/dev/null
cleanup() {
    "${P[@]}" umount "$ctr" >/dev/null 2>&1 || true
    "${P[@]}" rm -f "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
root=$("${P[@]}" mount "$ctr")

cfg=$("${P[@]}" image inspect "$IMAGE")
$PY - "$cfg" "$CACHE/healthcheck.json" <<'EOF'
import json, sys
img = json.loads(sys.argv[1])[0]
c, hc = img["Config"], img.get("Healthcheck") or {}
errs = []
if c.get("User") != "10001:10001":
    errs.append(f"user {c.get('User')!r}, want 10001:10001")
if c.get("Entrypoint") != ["/usr/local/bin/chatd"]:
    errs.append(f"entrypoint {c.get('Entrypoint')!r}")
if "/healthz" not in " ".join(hc.get("Test") or []):
    errs.append(f"no HEALTHCHECK on /healthz: {hc!r}")
if errs:
    sys.exit("image: config: " + "; ".join(errs))
json.dump(hc["Test"], open(sys.argv[2], "w"))
print("image: config ok: user", c["User"], "entrypoint", c["Entrypoint"], "healthcheck", hc["Test"][0])
EOF

ver=$(chroot --userspec=10001:10001 "$root" /usr/local/bin/chatd --version)
[[ $ver =~ ^chatd\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "image: chatd --version said '$ver'" >&2; exit 1; }
step "chatd --version in the image: $ver"
if chroot "$root" /usr/bin/ldd /usr/local/bin/chatd | grep -q 'not found'; then
    chroot "$root" /usr/bin/ldd /usr/local/bin/chatd | grep 'not found' >&2
    echo "image: shared libraries missing in the image" >&2
    exit 1
fi
for tool in gcc cc make curl; do
    if chroot "$root" /bin/sh -c "command -v $tool" >/dev/null; then
        echo "image: runtime image has $tool, it should only carry chatd's libraries" >&2
        exit 1
    fi
done

wrapper=$CACHE/chatd-in-image
cat > "$wrapper" <<EOF
#!/bin/sh
# chatd from the image's filesystem, as the image's user (made by scripts/image.sh).
exec chroot --userspec=10001:10001 "$root" /usr/local/bin/chatd "\$@"
EOF
chmod 755 "$wrapper"
hc=$(cat "$CACHE/healthcheck.json")
step "all-in-one smoke test from the image (tests/deploy/image_smoke.py)"
CHATD_BIN=$wrapper CHATD_IMAGE_ROOT=$root CHATD_IMAGE_HEALTHCHECK=$hc \
    $PY -m pytest -q -p no:cacheprovider tests/deploy/image_smoke.py
if [ -n "${CHATD_IMAGE_SAVE:-}" ]; then
    "${P[@]}" save --format docker-archive -o "$CHATD_IMAGE_SAVE" "$IMAGE"
    step "saved $IMAGE to $CHATD_IMAGE_SAVE"
fi
step "done"
