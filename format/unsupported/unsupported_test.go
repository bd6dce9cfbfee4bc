package unsupported_test

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
)

// header is a minimal synthetic file of one format: size bytes with the
// given bytes written at their offsets.
type header struct {
	name  string
	file  string // file name in the test's directory
	size  int
	parts map[int]string
	want  string // the format it must be refused as; "" when it is raw
}

func le32(v uint32) string {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return string(b[:])
}
func be16(v uint16) string { var b [2]byte; binary.BigEndian.PutUint16(b[:], v); return string(b[:]) }
func be32(v uint32) string { var b [4]byte; binary.BigEndian.PutUint32(b[:], v); return string(b[:]) }

const cloop = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"

func bochs(version uint32) map[int]string {
	return map[int]string{0: "Bochs Virtual HD Image\x00", 32: "Redolog\x00", 48: "Growing\x00", 64: le32(version)}
}

var headers = []header{
	{"bochs v2", "a.img", 512, bochs(0x00020000), "bochs"},
	{"bochs v1", "a.img", 4096, bochs(0x00010000), "bochs"},
	{"bochs short file", "a.img", 68, bochs(0x00020000), "bochs"}, // qemu zero-pads its probe buffer
	{"bochs version 3", "a.img", 512, bochs(0x00030000), ""},
	{"bochs undoable", "a.img", 512, map[int]string{0: "Bochs Virtual HD Image\x00", 32: "Redolog\x00", 48: "Undoable\x00", 64: le32(0x00020000)}, ""},
	{"cloop", "a.img", 1024, map[int]string{0: cloop}, "cloop"},
	{"cloop cut", "a.img", len(cloop) - 1, map[int]string{0: cloop[:len(cloop)-1]}, ""},
	{"luks1", "a.img", 4096, map[int]string{0: "LUKS\xba\xbe" + be16(1) + "aes"}, "luks"},
	{"luks2", "a.img", 32768, map[int]string{0: "LUKS\xba\xbe" + be16(2)}, "luks"},
	{"luks2 secondary only", "a.img", 1 << 20, map[int]string{0x8000: "SKUL\xba\xbe" + be16(2)}, "luks"},
	{"luks version 3", "a.img", 4096, map[int]string{0: "LUKS\xba\xbe" + be16(3)}, ""},
	{"dmg trailer", "a.img", 4096, map[int]string{4096 - 512: "koly" + be32(4) + be32(512)}, "dmg"},
	{"dmg odd size", "a.img", 4000, map[int]string{4000 - 512: "koly" + be32(4) + be32(512)}, "dmg"},
	{"dmg by name", "disk.dmg", 4096, nil, "dmg"},
	{"koly without version", "a.img", 4096, map[int]string{4096 - 512: "koly"}, ""},
	{"parallels", "a.img", 1 << 20, map[int]string{0: "WithoutFreeSpace" + le32(3)}, ""}, // version 3 is no parallels image
}

func write(t *testing.T, h header) string {
	t.Helper()
	d := make([]byte, h.size)
	for off, s := range h.parts {
		copy(d[off:], s)
	}
	path := filepath.Join(t.TempDir(), h.file)
	formattest.WriteFile(t, path, d)
	return path
}

// TestRefusedByName opens each synthetic header: a format diskimg does
// not read is refused with an error naming it, never read as raw; a near
// miss is raw.
func TestRefusedByName(t *testing.T) {
	for _, h := range headers {
		t.Run(h.name, func(t *testing.T) {
			path := write(t, h)
			img, err := format.Open(path, "", format.Policy{})
			if h.want == "" {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer img.Close()
				if got := img.Info().Format; got != "raw" {
					t.Fatalf("opened as %s, want raw", got)
				}
				return
			}
			if err == nil {
				img.Close()
				t.Fatalf("opened as %s, want %s refused", img.Info().Format, h.want)
			}
			var ue *format.UnsupportedError
			if !errors.As(err, &ue) || ue.Format != h.want || !strings.Contains(err.Error(), h.want+" images are not supported") {
				t.Fatalf("error %v, want %s refused by name", err, h.want)
			}
			// The safety findings name it too.
			found := false
			for _, f := range format.Findings(path, nil, format.Policy{Untrusted: true}) {
				found = found || strings.Contains(f.Message, "a "+h.want+" image")
			}
			if !found {
				t.Errorf("findings %v do not name %s", format.Findings(path, nil, format.Policy{Untrusted: true}), h.want)
			}
			// Forced as raw, it opens, and the findings say what it is.
			img, err = format.Open(path, "raw", format.Policy{})
			if err != nil {
				t.Fatal(err)
			}
			img.Close()
			if h.want != "dmg" || h.file != "disk.dmg" {
				f, _ := format.OpenFile(path)
				defer f.Close()
				if c := format.Confusion(f, "raw"); len(c) == 0 {
					t.Errorf("opened as raw, no finding names %s", h.want)
				}
			}
		})
	}
}

// TestForcedFormat: -f with a format that is not read refuses any file.
func TestForcedFormat(t *testing.T) {
	f := &formattest.MemFile{Data: make([]byte, 4096), Path: filepath.Join(t.TempDir(), "x")}
	_, err := format.NewOpener(format.Policy{}).OpenImage(f, "cloop")
	if err == nil || !strings.Contains(err.Error(), "cloop images are not supported") {
		t.Fatalf("error %v", err)
	}
	for _, ft := range format.Formats() {
		if ft.Unread {
			t.Errorf("Formats lists %s, which is not read", ft.Name)
		}
	}
}

// TestEveryQemuProbe: every format qemu-img 7.2 probes (its block
// drivers with a probe function) is registered under qemu's name.
func TestEveryQemuProbe(t *testing.T) {
	for _, name := range []string{"bochs", "cloop", "luks", "dmg", "parallels", "raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi", "qed", "qcow"} {
		if _, err := format.Lookup(name); err != nil {
			t.Errorf("qemu probes %s; diskimg does not recognise the name: %v", name, err)
		}
	}
}

// FuzzProbe runs every registered probe, and the safety findings that
// name what they match, on arbitrary files: none may panic or read
// without bound.
func FuzzProbe(f *testing.F) {
	for _, h := range headers {
		d := make([]byte, min(h.size, 64<<10))
		for off, s := range h.parts {
			if off+len(s) <= len(d) {
				copy(d[off:], s)
			}
		}
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &formattest.MemFile{Data: data, Path: "x.img"}
		for _, ft := range format.Recognised() {
			ft.Probe(m)
		}
		format.Confusion(m, "")
		format.Confusion(m, "raw")
	})
}
