package format_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
)

func findingsText(fs []format.Finding) string {
	var s []string
	for _, f := range fs {
		s = append(s, f.String())
	}
	return strings.Join(s, "\n")
}

func wantFinding(t *testing.T, fs []format.Finding, kind string, parts ...string) {
	t.Helper()
	for _, f := range fs {
		ok := f.Kind == kind
		for _, p := range parts {
			ok = ok && strings.Contains(f.Message, p)
		}
		if ok {
			return
		}
	}
	t.Errorf("no %s finding mentioning %q in:\n%s", kind, parts, findingsText(fs))
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	formattest.WriteFile(t, path, data)
}

func TestFindingsReferences(t *testing.T) {
	root := formattest.QemuDir(t)
	dir := filepath.Join(root, "images")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "bait.raw"), make([]byte, 1<<20))
	writeFile(t, filepath.Join(dir, "base.raw"), make([]byte, 1<<20))
	outside := filepath.Join(dir, "outside.qcow2")
	inside := filepath.Join(dir, "inside.qcow2")
	// -u: qemu-img records the name without opening the file.
	formattest.Create(t, outside, "qcow2", "1M", "-u", "-b", "../bait.raw", "-F", "raw")
	formattest.Create(t, inside, "qcow2", "1M", "-u", "-b", "base.raw", "-F", "raw")

	open := func(path string, p format.Policy) format.Image {
		p.NoBacking = true
		img, err := format.Open(path, "", p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		return img
	}
	fs := format.Findings(outside, open(outside, format.Policy{}), format.Policy{})
	wantFinding(t, fs, format.FindingReference, `backing file "../bait.raw"`, "refused", `".."`)

	untrusted := format.Policy{Untrusted: true}
	fs = format.Findings(outside, open(outside, untrusted), untrusted)
	wantFinding(t, fs, format.FindingReference, `"../bait.raw"`, "untrusted mode", "default policy refuses it too")

	fs = format.Findings(inside, open(inside, format.Policy{}), format.Policy{})
	wantFinding(t, fs, format.FindingReference, `"base.raw"`, "allowed by policy")
	fs = format.Findings(inside, open(inside, untrusted), untrusted)
	wantFinding(t, fs, format.FindingReference, `"base.raw"`, "refused", "default policy would open "+filepath.Join(dir, "base.raw"))

	// Nothing referenced, nothing confused: no findings.
	clean := filepath.Join(dir, "clean.qcow2")
	formattest.Create(t, clean, "qcow2", "1M")
	if fs := format.Findings(clean, open(clean, format.Policy{}), format.Policy{}); len(fs) != 0 {
		t.Errorf("findings on a clean image:\n%s", findingsText(fs))
	}
}

// mbrDisk returns a raw disk of size bytes with an MBR whose one partition
// starts at byte start.
func mbrDisk(size, start int64, typ byte) []byte {
	d := make([]byte, size)
	d[446+4] = typ
	binary.LittleEndian.PutUint32(d[446+8:], uint32(start/512))
	binary.LittleEndian.PutUint32(d[446+12:], uint32((size-start)/512))
	d[510], d[511] = 0x55, 0xaa
	return d
}

func TestFindingsConfusion(t *testing.T) {
	dir := t.TempDir()
	qcow2Header := []byte("QFI\xfb\x00\x00\x00\x03")
	cases := []struct {
		name, force string
		data        func() []byte
		want        []string // parts of one confusion finding; nil: none
	}{
		{"mbr-partition-qcow2", "", func() []byte {
			d := mbrDisk(4<<20, 1<<20, 0x83)
			copy(d[1<<20:], qcow2Header)
			return d
		}, []string{"partition at byte 1048576", "qcow2 header"}},
		{"gpt-partition-vmdk", "", func() []byte {
			d := mbrDisk(4<<20, 512, 0xee)
			le := binary.LittleEndian
			copy(d[512:], "EFI PART")
			le.PutUint64(d[512+72:], 2)
			le.PutUint32(d[512+80:], 128)
			le.PutUint32(d[512+84:], 128)
			e := d[1024+128:] // the second entry; the first is unused
			e[0] = 0xaf
			le.PutUint64(e[32:], 2048)
			copy(d[2048*512:], "KDMV")
			return d
		}, []string{"partition at byte 1048576", "vmdk header"}},
		{"mbr-partition-vdi", "", func() []byte {
			d := mbrDisk(4<<20, 2<<20, 0x07)
			copy(d[2<<20+0x40:], "\x7f\x10\xda\xbe")
			return d
		}, []string{"partition at byte 2097152", "vdi header"}},
		{"forced-raw-qcow2", "raw", func() []byte {
			d := make([]byte, 1<<20)
			copy(d, qcow2Header)
			return d
		}, []string{"opened as raw", "starts with a qcow2 header"}},
		{"raw-with-vhd-footer", "raw", func() []byte {
			d := make([]byte, 1<<20)
			copy(d[len(d)-512:], "conectix")
			return d
		}, []string{"vpc (VHD) footer"}},
		{"two-formats", "raw", func() []byte {
			// A qcow2 magic at the start and a VHD footer at the end.
			d := make([]byte, 1<<20)
			copy(d, qcow2Header)
			copy(d[len(d)-512:], "conectix")
			return d
		}, []string{"several formats", "qcow2", "vpc"}},
		{"partition-without-header", "", func() []byte { return mbrDisk(4<<20, 1<<20, 0x83) }, nil},
		{"plain-raw", "", func() []byte { return make([]byte, 1<<20) }, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".img")
			writeFile(t, path, c.data())
			img := formattest.Open(t, path, c.force)
			fs := format.Findings(path, img, format.Policy{})
			if c.want == nil {
				if len(fs) != 0 {
					t.Errorf("unexpected findings:\n%s", findingsText(fs))
				}
				return
			}
			wantFinding(t, fs, format.FindingConfusion, c.want...)
		})
	}
}

func TestFindingsHostilePartitionTable(t *testing.T) {
	// Absurd GPT fields are ignored, not followed.
	d := mbrDisk(1<<20, 512, 0xee)
	le := binary.LittleEndian
	copy(d[512:], "EFI PART")
	le.PutUint64(d[512+72:], 1<<60)
	le.PutUint32(d[512+80:], 0xffffffff)
	le.PutUint32(d[512+84:], 0xffffffff)
	f := &formattest.MemFile{Data: d, Path: "x.img"}
	if fs := format.Confusion(f, "raw"); len(fs) != 0 {
		t.Errorf("findings:\n%s", findingsText(fs))
	}
}

func TestFindingsSize(t *testing.T) {
	dir := formattest.QemuDir(t)
	huge := filepath.Join(dir, "huge.qcow2")
	formattest.Create(t, huge, "qcow2", "64T")
	img := formattest.Open(t, huge, "")
	wantFinding(t, format.Findings(huge, img, format.Policy{}), format.FindingSize, "virtual size 70368744177664 bytes")

	small := filepath.Join(dir, "small.qcow2")
	formattest.Create(t, small, "qcow2", "1T")
	img2 := formattest.Open(t, small, "")
	if fs := format.Findings(small, img2, format.Policy{}); len(fs) != 0 {
		t.Errorf("findings on an empty 1 TiB qcow2:\n%s", findingsText(fs))
	}
}
