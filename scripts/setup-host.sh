#!/usr/bin/env bash
# Install what vmigrate needs on a Debian 12 host, as root. Idempotent: when every package is
# already installed it does nothing (no apt-get update), so `make test` stays quick.
set -euo pipefail

PACKAGES=(
  qemu-system-x86 qemu-utils qemu-block-extra   # the hypervisor, qemu-img, the nfs:// driver
  nfs-ganesha nfs-ganesha-vfs rpcbind           # userspace NFS server for the storage host
  busybox-static cpio gzip xz-utils zstd kmod   # guest initramfs
  gcc libc6-dev                                 # the static guest agent
  iproute2                                      # namespaces, bridges, veth, tap, tbf
  procps iputils-ping                           # ps and ping, for humans and tests
  chromium fonts-dejavu-core                    # headless browser + a font, for the HTML report test
)

if [ "$(id -u)" != 0 ]; then
  echo "setup-host: run as root (sudo make setup)" >&2
  exit 2
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

# The guest image build resolves the kernel package through apt's lists: make sure they exist.
if [ ${#missing[@]} -gt 0 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "setup-host: installing ${missing[*]:-nothing new (refreshing apt lists)}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  if [ ${#missing[@]} -gt 0 ]; then
    # policy-rc.d 101: packages must not start their daemons (rpcbind!) in the root namespace.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ "$created_policy" = 1 ] && rm -f "$policy"
  fi
fi
echo "setup-host: system packages ok"
