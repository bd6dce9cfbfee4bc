package inspect

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// ELF identification and header fields.
const (
	elfMagic      = "\x7fELF"
	elfClass      = 4  // 1: 32-bit, 2: 64-bit
	elfData       = 5  // 1: little-endian, 2: big-endian
	elfMachine    = 18 // u16 e_machine
	elfHeaderRead = 20
)

// elfMachines names e_machine values as uname -m does.
var elfMachines = map[uint16]string{
	3:      "i386",
	8:      "mips",
	20:     "ppc",
	21:     "ppc64",
	22:     "s390x",
	40:     "arm",
	62:     "x86_64",
	183:    "aarch64",
	243:    "riscv",
	258:    "loongarch64",
	0x9026: "alpha",
}

// System binaries whose ELF header names the architecture.
var elfCandidates = []string{"/bin/sh", "/usr/bin/bash", "/bin/bash", "/usr/lib/systemd/systemd", "/bin/ls", "/usr/bin/ls"}

// linuxOS detects a Linux root filesystem on fs; nil when it is not one.
func linuxOS(fs *extFS) *OS {
	var rel []byte
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		if b, err := fs.readPath(p, 64<<10); err == nil {
			rel = b
			break
		}
	}
	if rel == nil {
		return nil
	}
	o := &OS{Type: "linux"}
	sc := bufio.NewScanner(bytes.NewReader(rel))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		} else {
			v = strings.Trim(v, `"'`)
		}
		switch k {
		case "ID":
			o.Distro = v
		case "VERSION_ID":
			o.Version = v
		case "PRETTY_NAME":
			o.PrettyName = v
		}
	}
	for _, p := range elfCandidates {
		if h, err := fs.readPath(p, elfHeaderRead); err == nil && len(h) == elfHeaderRead && string(h[:4]) == elfMagic {
			o.Arch, o.Bits = elfArch(h)
			break
		}
	}
	return o
}

func elfArch(h []byte) (string, int) {
	bits := 0
	switch h[elfClass] {
	case 1:
		bits = 32
	case 2:
		bits = 64
	}
	var m uint16
	if h[elfData] == 2 {
		m = be.Uint16(h[elfMachine:])
	} else {
		m = le.Uint16(h[elfMachine:])
	}
	name := elfMachines[m]
	switch {
	case name == "":
		name = "unknown-" + strconv.Itoa(int(m))
	case name == "riscv":
		name += strconv.Itoa(bits)
	case name == "ppc64" && h[elfData] == 1:
		name = "ppc64le"
	case name == "aarch64" && bits == 32:
		name = "arm"
	}
	return name, bits
}
