package inspecttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// Linux describes a Linux root to write with Tree.
type Linux struct {
	OSRelease string // /etc/os-release; "" writes Debian 12's
	Hostname  string
	// UsrMerged makes /bin and /lib symlinks into /usr, as current
	// distributions do; modules then live in /usr/lib/modules.
	UsrMerged bool
	Kernels   []Kernel
	CloudInit bool
	Fstab     string // /etc/fstab; "" writes none
	// PersistentNet writes /etc/udev/rules.d/70-persistent-net.rules.
	PersistentNet bool
	Grub          bool // /boot/grub/grub.cfg
	SystemdBoot   bool // /boot/loader/loader.conf
}

// Kernel is an installed kernel: its image in /boot and its modules.
type Kernel struct {
	Version string
	Image   bool // /boot/vmlinuz-Version
	// Modules are paths under /lib/modules/Version; with Dep they are
	// also listed in modules.dep, else only the files tell.
	Modules []string
	Dep     bool
	Builtin []string // modules.builtin
}

// Debian12 is a Debian 12 kernel whose paravirtual drivers are modules
// listed in modules.dep (virtio's only when virtio is set); the virtio
// core is built in, as in Debian's kernel.
func Debian12(virtio bool) Kernel {
	k := Kernel{Version: "6.1.0-18-amd64", Image: true, Dep: true,
		Modules: []string{"kernel/fs/ext4/ext4.ko", "kernel/drivers/scsi/hv_storvsc.ko", "kernel/drivers/net/hyperv/hv_netvsc.ko",
			"kernel/drivers/block/xen-blkfront.ko", "kernel/drivers/net/xen-netfront.ko"},
		Builtin: []string{"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_pci.ko"}}
	if virtio {
		k.Modules = append(k.Modules, "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/scsi/virtio_scsi.ko", "kernel/drivers/net/virtio_net.ko")
	}
	return k
}

const debianRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n"

// Tree writes the root filesystem and the /boot tree under dir and
// returns their paths: boot is the same tree's /boot directory, to be
// copied into a separate partition when the disk has one.
func (l Linux) Tree(t testing.TB, dir string) (root, boot string) {
	t.Helper()
	root = filepath.Join(dir, "root")
	boot = filepath.Join(root, "boot")
	files := map[string][]byte{}
	rel := l.OSRelease
	if rel == "" {
		rel = debianRelease
	}
	files["etc/os-release"] = []byte(rel)
	if l.Hostname != "" {
		files["etc/hostname"] = []byte(l.Hostname + "\n")
	}
	if l.CloudInit {
		files["etc/cloud/cloud.cfg"] = []byte("datasource_list: [ NoCloud, OpenStack, Ec2 ]\n")
		files["usr/bin/cloud-init"] = []byte("#!/usr/bin/python3\n")
	}
	if l.Fstab != "" {
		files["etc/fstab"] = []byte(l.Fstab)
	}
	if l.PersistentNet {
		files["etc/udev/rules.d/70-persistent-net.rules"] = []byte(`SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="52:54:00:12:34:56", NAME="eth0"` + "\n")
	}
	if l.Grub {
		files["boot/grub/grub.cfg"] = []byte("set default=0\nmenuentry 'Debian' { linux /vmlinuz root=UUID=x }\n")
	}
	if l.SystemdBoot {
		files["boot/loader/loader.conf"] = []byte("default debian.conf\n")
	}
	lib := "lib"
	if l.UsrMerged {
		lib = "usr/lib"
	}
	for _, k := range l.Kernels {
		if k.Image {
			files["boot/vmlinuz-"+k.Version] = []byte("not really a kernel\n")
			files["boot/initrd.img-"+k.Version] = []byte("not really an initramfs\n")
		}
		mdir := lib + "/modules/" + k.Version + "/"
		for _, m := range k.Modules {
			files[mdir+m] = []byte("not really a module\n")
		}
		if k.Dep {
			var dep strings.Builder
			for _, m := range k.Modules {
				dep.WriteString(m + ":\n")
			}
			files[mdir+"modules.dep"] = []byte(dep.String())
		}
		if k.Builtin != nil {
			files[mdir+"modules.builtin"] = []byte(strings.Join(k.Builtin, "\n") + "\n")
		}
	}
	formattest.WriteFiles(t, root, files)
	// A real ELF shell, for the architecture.
	elf := formattest.ReadFile(t, "/bin/true")
	bin := "bin"
	if l.UsrMerged {
		bin = "usr/bin"
		for link, target := range map[string]string{"bin": "usr/bin", "lib": "usr/lib", "sbin": "usr/sbin"} {
			os.MkdirAll(filepath.Join(root, target), 0o755)
			if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
				t.Fatal(err)
			}
		}
	}
	formattest.WriteFiles(t, root, map[string][]byte{bin + "/dash": elf})
	if err := os.Symlink("dash", filepath.Join(root, bin, "sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(boot, 0o755); err != nil {
		t.Fatal(err)
	}
	return root, boot
}
