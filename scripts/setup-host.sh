#!/usr/bin/env bash
# Install what vmigrate needs on a Debian 12 host, as root. Idempotent: when everything is
# already installed it does nothing (no apt-get update), so `make test` stays quick.
set -euo pipefail

PACKAGES=(
  qemu-system-x86 qemu-utils qemu-block-extra   # the hypervisor, qemu-img, the nfs:// driver
  nfs-ganesha nfs-ganesha-vfs rpcbind           # userspace NFS server for the storage host
  busybox-static cpio gzip xz-utils zstd kmod   # guest initramfs
  gcc libc6-dev                                 # the static guest agent, the client tool
  iproute2                                      # namespaces, bridges, veth, tap, tbf
  procps iputils-ping                           # ps and ping, for humans and tests
  chromium fonts-dejavu-core                    # headless browser: report.html tests
)
# QEMU >= 9: QEMU 7.2 (Debian 12's own) loses guest writes when it live-migrates a TCG guest
# (fixed upstream in 9.0). On Debian 12 these come from bookworm-backports.
BACKPORTS_PACKAGES=(qemu-system-x86 qemu-utils qemu-block-extra)
BACKPORTS_LIST=/etc/apt/sources.list.d/vmigrate-backports.sources
MIN_QEMU=1:9.0

if [ "$(id -u)" != 0 ]; then
  echo "setup-host: run as root (sudo make setup)" >&2
  exit 2
fi

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
refresh=0
if [ "$codename" = bookworm ] && [ ! -e "$BACKPORTS_LIST" ]; then
  printf '%s\n' \
    "# Added by vmigrate (scripts/setup-host.sh): QEMU >= 9 for live migration under TCG." \
    "Types: deb" \
    "URIs: http://deb.debian.org/debian" \
    "Suites: bookworm-backports" \
    "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" > "$BACKPORTS_LIST"
  refresh=1
fi

qemu_too_old() {
  local version
  version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  [ -z "$version" ] || dpkg --compare-versions "$version" lt "$MIN_QEMU"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

# The guest image build resolves the kernel package through apt's lists: make sure they exist.
if [ ${#missing[@]} -gt 0 ] || [ "$refresh" = 1 ] || qemu_too_old \
   || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "setup-host: installing ${missing[*]:-nothing new}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d 101: packages must not start their daemons (rpcbind!) in the root namespace.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  if [ "$codename" = bookworm ]; then
    # QEMU first, from backports, so the plain install below finds it satisfied.
    qemu_too_old && apt-get install -y -q --no-install-recommends -t bookworm-backports \
      "${BACKPORTS_PACKAGES[@]}"
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi
if qemu_too_old; then
  echo "setup-host: QEMU $(dpkg-query -W -f='${Version}' qemu-system-x86) is older than 9.0:" \
       "live migration under TCG would lose guest writes (vmigrate pads guest RAM to avoid it)"
fi
echo "setup-host: system packages ok"
