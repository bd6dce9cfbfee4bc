#!/usr/bin/env bash
# Rebuilds testdata/demo.qcow2, the small default image the README runs
# diskimg on: a 64 MiB GPT disk with an EFI System partition (FAT16) and an
# ext4 root holding a minimal Linux tree, stored as compressed qcow2.
# Needs: sgdisk (gdisk), mkfs.vfat (dosfstools), mkfs.ext4 (e2fsprogs), qemu-img.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

disk=$work/disk.raw
truncate -s 64M "$disk"
sgdisk -U 5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0001 \
  -n 1:2048:+16M -t 1:ef00 -c 1:"EFI System" -u 1:5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0002 \
  -n 2:0:0 -t 2:8300 -c 2:"root" -u 2:5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0003 "$disk" >/dev/null

# EFI System partition: sectors 2048..34815.
truncate -s 16M "$work/esp.img"
mkfs.vfat -F 16 -n EFI -i 1234abcd "$work/esp.img" >/dev/null
dd if="$work/esp.img" of="$disk" bs=512 seek=2048 conv=notrunc status=none

# Root: a tiny Linux tree.
root=$work/root
mkdir -p "$root/etc/cloud" "$root/bin" "$root/usr/lib/modules/6.1.0-demo/kernel/drivers/virtio"
cat > "$root/etc/os-release" <<'OS'
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
OS
echo "datasource_list: [ None ]" > "$root/etc/cloud/cloud.cfg"
cp /bin/true "$root/bin/sh"
: > "$root/usr/lib/modules/6.1.0-demo/kernel/drivers/virtio/virtio_blk.ko"
start=$((34816))
sectors=$(( (64*1024*1024/512) - 34 - start ))
truncate -s $((sectors*512)) "$work/root.img"
mkfs.ext4 -q -F -L root -U 5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0004 -E root_owner=0:0 \
  -d "$root" "$work/root.img"
dd if="$work/root.img" of="$disk" bs=512 seek=$start conv=notrunc status=none

qemu-img convert -f raw -O qcow2 -c "$disk" demo.qcow2
echo "wrote $(pwd)/demo.qcow2"
