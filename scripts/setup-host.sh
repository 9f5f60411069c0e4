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
  iptables                                      # the link-loss fault (statistic match)
  tcpdump                                       # the packet capture that referees the probe
  procps iputils-ping                           # ps and ping, for humans and tests
  chromium fonts-dejavu-core                    # headless browser: report.html tests
  pkg-config python3-dev                        # build libvirt-python from its sdist
  openssh-server                                # sshd inside test hosts (hosts.ssh test only)
)
# The libvirt backend: libvirtd with its QEMU driver (no libvirt-daemon-system: it would install
# and enable the system units), virsh, and the headers libvirt-python builds against. On Debian
# 12 they come from bookworm-backports, like QEMU (libvirt 9.0 passes QEMU 10 the removed
# -no-acpi and refuses multifd zstd). Every package that pins the exact libvirt version is
# listed, so that apt takes exactly these from backports and everything else (systemd!) from
# the release itself.
LIBVIRT_PACKAGES=(
  libvirt0 libvirt-common libvirt-daemon-common libvirt-daemon-log
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
)
MIN_LIBVIRT=11.0
LIBVIRT_UNITS=(
  libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket
  virtlogd.service virtlogd.socket virtlogd-admin.socket libvirt-guests.service
)
# openssh-server is for the tests of `hosts.ssh`, which start their own sshd inside a testbed
# host: the machine's own sshd must not start (policy-rc.d below) nor be enabled for the boot.
SSH_UNITS=(ssh.service ssh.socket)
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

libvirt_needed() {  # a libvirt package is missing, or (on bookworm) older than backports'
  local pkg status version
  for pkg in "${LIBVIRT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || return 0
  done
  version=$(dpkg-query -W -f='${Version}' libvirt-daemon 2>/dev/null || true)
  [ "$codename" = bookworm ] && dpkg --compare-versions "$version" lt "$MIN_LIBVIRT"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

# The guest image build resolves the kernel package through apt's lists: make sure they exist.
if [ ${#missing[@]} -gt 0 ] || [ "$refresh" = 1 ] || qemu_too_old || libvirt_needed \
   || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  news=("${missing[@]}")
  libvirt_needed && news+=(libvirt)
  echo "setup-host: installing ${news[*]:-nothing new}"
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
  if libvirt_needed; then
    suffix=
    [ "$codename" = bookworm ] && suffix=/bookworm-backports
    apt-get install -y -q --no-install-recommends "${LIBVIRT_PACKAGES[@]/%/$suffix}"
    # The packages enable their units: at the next boot a libvirtd would start in the root
    # namespace. vmigrate runs its own, one per testbed host. (`systemctl enable` them to
    # have the machine's own libvirtd.)
    systemctl disable --quiet "${LIBVIRT_UNITS[@]}" 2>/dev/null || true
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
      systemctl disable --quiet "${SSH_UNITS[@]}" 2>/dev/null || true
    fi
  fi
fi
if qemu_too_old; then
  echo "setup-host: QEMU $(dpkg-query -W -f='${Version}' qemu-system-x86) is older than 9.0:" \
       "live migration under TCG would lose guest writes (vmigrate pads guest RAM to avoid it)"
fi
# libvirtd wants its QEMU user even when configured to run QEMU as root; Debian's
# libvirt-daemon-driver-qemu creates it, this is for a machine where it went missing. The
# directories are the mount points of each testbed daemon's own (bind-mounted) copies.
if ! getent passwd libvirt-qemu >/dev/null; then
  getent group kvm >/dev/null || groupadd --system kvm
  useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
    --gid kvm libvirt-qemu
fi
mkdir -p /etc/libvirt /var/lib/libvirt /var/log/libvirt/qemu /var/cache/libvirt
echo "setup-host: system packages ok"
