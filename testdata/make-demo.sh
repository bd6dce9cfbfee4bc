#!/usr/bin/env bash
# Rebuilds testdata/demo.qcow2, the small default image the README runs
# diskimg on: a 64 MiB GPT disk with an EFI System partition (FAT16) and an
# ext4 root holding a minimal Linux tree, stored as compressed qcow2. The
# boot loaders, kernel and modules are placeholder files where inspect
# looks for them: enough for inspect and plan, not for a VM to start.
# Needs: sgdisk (gdisk), mkfs.vfat (dosfstools), mmd/mcopy (mtools),
# mkfs.ext4 (e2fsprogs), qemu-img.
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
printf 'MZ' > "$work/loader.efi"
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$work/esp.img" "$work/loader.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$work/loader.efi" ::/EFI/debian/grubx64.efi
dd if="$work/esp.img" of="$disk" bs=512 seek=2048 conv=notrunc status=none

# Root: a tiny Linux tree.
root=$work/root
kver=6.1.0-demo
mods=$root/usr/lib/modules/$kver
mkdir -p "$root/etc/cloud" "$root/usr/bin" "$root/boot/grub" "$mods/kernel/drivers/block" \
  "$mods/kernel/drivers/scsi" "$mods/kernel/drivers/net/hyperv"
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
cat > "$root/etc/os-release" <<'OS'
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
OS
echo demo > "$root/etc/hostname"
cat > "$root/etc/fstab" <<'FSTAB'
UUID=5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0004 / ext4 errors=remount-ro 0 1
UUID=1234-ABCD /boot/efi vfat umask=0077 0 1
FSTAB
echo "datasource_list: [ None ]" > "$root/etc/cloud/cloud.cfg"
cp /bin/true "$root/usr/bin/sh"
: > "$root/boot/vmlinuz-$kver"
echo "set default=0" > "$root/boot/grub/grub.cfg"
for m in block/virtio_blk scsi/virtio_scsi net/virtio_net scsi/hv_storvsc net/hyperv/hv_netvsc; do
  : > "$mods/kernel/drivers/$m.ko"
  echo "kernel/drivers/$m.ko:" >> "$mods/modules.dep"
done
start=$((34816))
sectors=$(( (64*1024*1024/512) - 34 - start ))
truncate -s $((sectors*512)) "$work/root.img"
mkfs.ext4 -q -F -L root -U 5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0004 -E root_owner=0:0 \
  -d "$root" "$work/root.img"
dd if="$work/root.img" of="$disk" bs=512 seek=$start conv=notrunc status=none

qemu-img convert -f raw -O qcow2 -c "$disk" demo.qcow2
echo "wrote $(pwd)/demo.qcow2"
