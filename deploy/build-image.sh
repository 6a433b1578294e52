#!/usr/bin/env bash
# Build the vxnet agent image (deploy/Containerfile) on a base made from Debian packages only,
# for machines that reach Debian's archive and PyPI but no container registry. `make image` runs
# it; so does the image's end-to-end test (tests/e2e/test_image.py).
#
#   1. The base, localhost/vxnet-base:bookworm: mmdebstrap (minbase + python3, python3-venv,
#      iproute2, nftables, iptables, ca-certificates; no docs, man pages or locales), `podman
#      import`ed.
#      Built only when missing or when its recipe (the label vxnet.base.recipe) changed.
#   2. The image, localhost/vxnet:VERSION and localhost/vxnet:VERSION-gCOMMIT[-dirty], from this
#      working tree (the files git tracks or would track under vxnet/, pyproject.toml,
#      README.md), with `vxnet --version` saying VERSION+gCOMMIT[.dirty]. Skipped when an image
#      of exactly these sources on exactly this base is already there (the label vxnet.source).
#
# pip in the build reaches PyPI over the host's network, trusting the host's CA bundle ($PIP_CERT
# or /etc/ssl/certs/ca-certificates.crt, mounted for the build only).
# Environment: IMAGE (default localhost/vxnet), BASE_IMAGE (localhost/vxnet-base:bookworm),
# MIRROR (http://deb.debian.org/debian), SUITE (bookworm), FORCE=1 to rebuild the image anyway.
# Prints the image's name (IMAGE:VERSION-gCOMMIT...) as its last line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
IMAGE=${IMAGE:-localhost/vxnet}
BASE_IMAGE=${BASE_IMAGE:-localhost/vxnet-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# what podman needs on these machines (crun refuses the hybrid cgroup layout; hard limits of 1024)
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
RUNOPTS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network host)

say() { echo "build-image: $*" >&2; }
label() {  # label IMAGE KEY: the image's label, empty when the image or the label is missing
    "${PODMAN[@]}" image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# --- 1. the base -------------------------------------------------------------------------------
BASE_ARGS=(--variant=minbase --include=python3,python3-venv,iproute2,nftables,iptables,ca-certificates
           # merged /usr by the hook, not by the usrmerge package (which drags in perl: 50 MB)
           --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
           --dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/info/*
           --dpkgopt=path-exclude=/usr/share/locale/* --dpkgopt=path-exclude=/usr/share/lintian/*
           --dpkgopt=path-exclude=/usr/share/doc/* --dpkgopt=path-include=/usr/share/doc/*/copyright
           "$SUITE")
recipe=$(printf '%s\n' "${BASE_ARGS[@]}" "$MIRROR" | sha256sum | cut -c1-16)
if [ "$(label "$BASE_IMAGE" vxnet.base.recipe)" != "$recipe" ]; then
    command -v mmdebstrap >/dev/null || { say "mmdebstrap is missing (make image installs it)"; exit 1; }
    old=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    tmp=$(mktemp -d /tmp/vxnet-base.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    say "building the base $BASE_IMAGE from $MIRROR ($SUITE)"
    start=$SECONDS
    mmdebstrap --quiet "${BASE_ARGS[@]}" "$tmp/rootfs.tar" "$MIRROR" >"$tmp/log" 2>&1 ||
        { tail -40 "$tmp/log" >&2; say "mmdebstrap failed"; exit 1; }
    "${PODMAN[@]}" import --quiet --change "LABEL vxnet.base.recipe=$recipe" \
        --change 'CMD ["/bin/bash"]' --message "mmdebstrap ${BASE_ARGS[*]} $MIRROR" \
        "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    [ -z "$old" ] || "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true  # the superseded one
    say "base built in $((SECONDS - start)) s"
fi
base_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE")

# --- 2. the image ------------------------------------------------------------------------------
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
local_version="" tag_suffix=""
if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
    local_version="g$commit" tag_suffix="-g$commit"
    if [ -n "$(git status --porcelain -- vxnet pyproject.toml README.md deploy/Containerfile)" ]; then
        local_version+=".dirty" tag_suffix+="-dirty"  # built from uncommitted changes
    fi
fi

# The build context: only what the Containerfile copies, no caches or virtual environments.
ctx=$(mktemp -d /tmp/vxnet-context.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
if [ -n "$local_version" ]; then
    git ls-files -z --cached --others --exclude-standard -- vxnet pyproject.toml README.md |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -C "$ctx" -xf -
else
    tar --exclude=__pycache__ -cf - vxnet pyproject.toml README.md | tar -C "$ctx" -xf -
fi
source_hash=$( { (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
                 sha256sum deploy/Containerfile; echo "$base_id $local_version"; } |
               sha256sum | cut -c1-16)

name="$IMAGE:$version$tag_suffix"
if [ "${FORCE:-}" != 1 ] && [ "$(label "$name" vxnet.source)" = "$source_hash" ]; then
    say "$name is up to date (sources $source_hash)"
    "${PODMAN[@]}" tag "$name" "$IMAGE:$version"
else
    say "building $name (vxnet $version${local_version:++$local_version}) on $BASE_IMAGE"
    start=$SECONDS
    # pip in the build trusts what this host trusts (a proxy's CA, say): its CA bundle, mounted
    trust=()
    ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    [ ! -f "$ca" ] || trust=(--volume "$ca:/run/build-host-ca.crt:ro"
                             --build-arg PIP_CERT=/run/build-host-ca.crt)
    "${PODMAN[@]}" build --quiet "${RUNOPTS[@]}" "${trust[@]}" -f deploy/Containerfile \
        --build-arg "BASE=$BASE_IMAGE" --build-arg "VXNET_LOCAL_VERSION=$local_version" \
        --label "vxnet.source=$source_hash" \
        --label "org.opencontainers.image.version=$version${local_version:++$local_version}" \
        --label "org.opencontainers.image.revision=${commit:-}" \
        --label "org.opencontainers.image.base.name=$BASE_IMAGE" \
        -t "$name" -t "$IMAGE:$version" "$ctx" >/dev/null
    say "image built in $((SECONDS - start)) s"
fi

# Tidy up after earlier builds: other builds from uncommitted trees (the -dirty tags) and the
# untagged images earlier builds left (the image a tag moved away from, their stages' last
# layers), each known by its vxnet.source label; this build's are kept (its layer cache).
# Images of commits keep their tags. An image a container still uses stays.
for t in $("${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' "$IMAGE"); do
    [[ "$t" != *-dirty || "$t" == "$name" ]] || "${PODMAN[@]}" untag "$t" "$t" >/dev/null 2>&1 || true
done
for id in $("${PODMAN[@]}" images --quiet --filter dangling=true --filter label=vxnet.source); do
    [ "$(label "$id" vxnet.source)" = "$source_hash" ] || "${PODMAN[@]}" rmi "$id" >/dev/null 2>&1 || true
done

said=$("${PODMAN[@]}" run --rm "${RUNOPTS[@]}" "$name" --version)
want="vxnet, version $version${local_version:++$local_version}"
[ "$said" = "$want" ] || { say "the image says '$said', not '$want'"; exit 1; }
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$name")
say "$name: $said, $((size / 1000000)) MB"
echo "$name"
