package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/qcow2"
)

// snapshotImage makes a qcow2 image with options opts holding three
// snapshots with data written before, between and after them, the last
// taken after the disk grew (qemu grows no version 2 image with
// snapshots); it returns its path.
func snapshotImage(t *testing.T, dir, opts string) string {
	t.Helper()
	path := filepath.Join(dir, "snap.qcow2")
	formattest.Create(t, path, "qcow2", "6M", "-o", opts)
	formattest.QemuIO(t, "qcow2", path, "write -P 0x11 0 1M", "write -P 0x12 5M 70000")
	formattest.Qemu(t, "snapshot", "-c", "first", path)
	formattest.QemuIO(t, "qcow2", path, "write -P 0x21 512k 1M", "write -z 5M 64k", "write -c -P 0x22 2M 64k")
	formattest.Qemu(t, "snapshot", "-c", "second snapshot", path)
	formattest.QemuIO(t, "qcow2", path, "discard 0 512k", "write -P 0x31 3M 4k")
	if !strings.Contains(opts, "compat=0.10") {
		formattest.Qemu(t, "resize", path, "40M")
		formattest.QemuIO(t, "qcow2", path, "write -P 0x32 38M 1M")
	}
	formattest.Qemu(t, "snapshot", "-c", "2", path) // a name that is another's id
	formattest.QemuIO(t, "qcow2", path, "write -P 0x41 1M 1M")
	return path
}

var snapshotVariants = []string{"cluster_size=64k", "cluster_size=512", "compat=0.10", "extended_l2=on", "refcount_bits=8"}

// TestSnapshotsInfo: the snapshot list equals qemu-img info's, and each
// snapshot reads as qemu-img convert -l reads it.
func TestSnapshotsInfo(t *testing.T) {
	formattest.RequireQemu(t)
	for _, opts := range snapshotVariants {
		t.Run(opts, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := snapshotImage(t, dir, opts)
			formattest.Check(t, path, formattest.Options{})
			img := formattest.Open(t, path, "")
			if n := len(img.Info().Snapshots); n != 3 {
				t.Fatalf("%d snapshots, want 3", n)
			}
			for _, sel := range []string{"1", "2", "3"} {
				compareSnapshot(t, path, "snapshot.id="+sel, sel, "")
			}
			compareSnapshot(t, path, "snapshot.name=second snapshot", "", "second snapshot")
		})
	}
}

// compareSnapshot reads snapshot (id, name) of the image at path with
// LoadSnapshot and compares every byte with qemu-img convert -l arg.
func compareSnapshot(t *testing.T, path, arg, id, name string) {
	t.Helper()
	ref := filepath.Join(t.TempDir(), "ref.raw")
	formattest.Qemu(t, "convert", "-O", "raw", "-l", arg, path, ref)
	want := formattest.ReadFile(t, ref)
	img := formattest.Open(t, path, "")
	if err := format.LoadSnapshot(img, id, name); err != nil {
		t.Fatalf("LoadSnapshot(%q, %q): %v", id, name, err)
	}
	if err := formattest.Validate(img); err != nil {
		t.Errorf("%s: %v", arg, err)
	}
	got := make([]byte, img.Size())
	if n, err := img.ReadAt(got, 0); n != len(got) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if i := formattest.FirstDiff(got, want); i >= 0 {
		t.Errorf("%s: byte %d differs from qemu-img convert -l", arg, i)
	}
}

// snapshotEntry returns the file offset of snapshot table entry i of d.
func snapshotEntry(d []byte, i int) int {
	be := binary.BigEndian
	pos := int(be.Uint64(d[64:]))
	for ; i > 0; i-- {
		pos = (pos + 7) &^ 7
		pos += 40 + int(be.Uint32(d[pos+36:])) + int(be.Uint16(d[pos+12:])) + int(be.Uint16(d[pos+14:]))
	}
	return (pos + 7) &^ 7
}

// TestSnapshotFields: fields qemu-img snapshot -c leaves at zero (VM
// state sizes, the guest clock, a missing instruction count) are listed
// as qemu-img lists them.
func TestSnapshotFields(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := snapshotImage(t, dir, "cluster_size=64k")
	d := formattest.ReadFile(t, path)
	be := binary.BigEndian
	e0, e1, e2 := snapshotEntry(d, 0), snapshotEntry(d, 1), snapshotEntry(d, 2)
	be.PutUint32(d[e0+32:], 123456)                 // vm_state_size, overridden by the large one
	be.PutUint64(d[e0+40:], 5<<30+7)                // vm_state_size_large
	be.PutUint64(d[e0+24:], 3723_456_789_012)       // vm_clock_nsec: 1:02:03.456
	be.PutUint64(d[e1+56:], 0xffffffffffffffff)     // icount: none
	be.PutUint64(d[e2+56:], 987654321)              // icount
	be.PutUint32(d[e2+16:], 0)                      // date_sec: the epoch
	be.PutUint64(d[e2+24:], 100*3600*1_000_000_000) // 100 hours
	patched := filepath.Join(dir, "fields.qcow2")
	formattest.WriteFile(t, patched, d)
	img := formattest.Open(t, patched, "")
	ours, _ := json.Marshal(img.Info().Snapshots)
	var a, b any
	json.Unmarshal(ours, &a)
	theirs, _ := json.Marshal(formattest.QemuInfo(t, patched)["snapshots"])
	json.Unmarshal(theirs, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("snapshots differ:\ndiskimg  %s\nqemu-img %s", ours, theirs)
	}
}

// TestSnapshotsHostile: a snapshot table qemu would refuse is refused at
// open, naming the field; a snapshot whose L1 table is bad opens (qemu-img
// info lists it) and fails only when loaded.
func TestSnapshotsHostile(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := filepath.Join(dir, "s.qcow2")
	formattest.Create(t, path, "qcow2", "1M", "-o", "cluster_size=512")
	formattest.QemuIO(t, "qcow2", path, "write -P 0x42 0 4096")
	formattest.Qemu(t, "snapshot", "-c", "s1", path)
	formattest.Qemu(t, "snapshot", "-c", "s2", path)
	orig := formattest.ReadFile(t, path)
	be := binary.BigEndian
	e1 := snapshotEntry(orig, 1)
	cases := []hostile{
		{"too many", "", func(d []byte) []byte { be.PutUint32(d[60:], 65537); return d }, "nb_snapshots at offset 60: 65537 snapshots exceed qemu's 65536", formattest.AtOpen},
		{"count past the table", "", func(d []byte) []byte { be.PutUint32(d[60:], 60000); return d }, "snapshot table entry 2", formattest.AtOpen},
		{"table unaligned", "", func(d []byte) []byte { be.PutUint64(d[64:], be.Uint64(d[64:])+8); return d }, "snapshots_offset at offset 64", formattest.AtOpen},
		{"table unaligned, none", "", func(d []byte) []byte {
			be.PutUint32(d[60:], 0)
			be.PutUint64(d[64:], 100)
			return d
		}, "snapshots_offset at offset 64", formattest.AtOpen},
		{"table past EOF", "", func(d []byte) []byte { be.PutUint64(d[64:], 1<<40); return d }, "snapshot table entry 0 at offset 1099511627776", formattest.AtOpen},
		{"table offset huge", "", func(d []byte) []byte { be.PutUint64(d[64:], 1<<63); return d }, "snapshots_offset", formattest.AtOpen},
		{"extra data", "", func(d []byte) []byte { be.PutUint32(d[e1+36:], 1025); return d }, "snapshot table entry 1 at offset " + itoa(e1+36) + ": 1025 bytes of extra data exceed qemu's 1024", formattest.AtOpen},
		{"extra data past EOF", "", func(d []byte) []byte { be.PutUint32(d[e1+36:], 1024); return d[:e1+100] }, "snapshot table entry 1 extra data", formattest.AtOpen},
		{"id past EOF", "", func(d []byte) []byte { be.PutUint16(d[e1+12:], 0xffff); return d }, "snapshot table entry 1 id", formattest.AtOpen},
		{"name past EOF", "", func(d []byte) []byte { be.PutUint16(d[e1+14:], 0xffff); return d }, "snapshot table entry 1 name", formattest.AtOpen},
	}
	formattest.RunHostileOn(t, "qcow2", func(string) []byte { return orig }, cases)

	// Bad L1 tables: info works, loading fails.
	for _, c := range []struct {
		name  string
		patch func(d []byte)
		want  string
	}{
		{"l1 too large", func(d []byte) { be.PutUint32(d[e1+8:], 4<<20+1) }, "exceeds qemu's 33554432 bytes"},
		{"l1 unaligned", func(d []byte) { be.PutUint64(d[e1:], be.Uint64(d[e1:])+8) }, "not cluster-aligned"},
		{"l1 past EOF", func(d []byte) { be.PutUint64(d[e1:], 1<<40) }, "extends past the end of the file"},
		{"l1 offset huge", func(d []byte) { be.PutUint64(d[e1:], 1<<63) }, "not cluster-aligned"},
		{"l1 long", func(d []byte) { be.PutUint32(d[e1+8:], 4<<20) }, "extends past the end of the file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := bytes.Clone(orig)
			c.patch(d)
			img, err := formattest.OpenMem(t, "qcow2", d)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			if len(img.Info().Snapshots) != 2 {
				t.Fatalf("snapshots %v", img.Info().Snapshots)
			}
			err = format.LoadSnapshot(img, "2", "")
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "snapshot 2 l1_table_offset") {
				t.Fatalf("LoadSnapshot: %v, want %q", err, c.want)
			}
			// The active state still reads.
			if err := formattest.ReadAll(img); err != nil {
				t.Errorf("read after a failed load: %v", err)
			}
		})
	}
	img, err := formattest.OpenMem(t, "qcow2", orig)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, sel := range [][2]string{{"3", ""}, {"", "s3"}, {"1", "s2"}} {
		var nf *format.SnapshotNotFoundError
		if err := format.LoadSnapshot(img, sel[0], sel[1]); !errors.As(err, &nf) {
			t.Errorf("LoadSnapshot(%q, %q) = %v, want not found", sel[0], sel[1], err)
		}
	}
	if _, ok := any(&qcow2.Image{}).(format.SnapshotLoader); !ok {
		t.Error("qcow2.Image is no SnapshotLoader")
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

const snapshotSeed = "../../testdata/qcow2/snapshots-512.qcow2"

// TestSnapshotSeed checks that the fuzz seed with snapshots opens and
// each snapshot loads. With QCOW2_WRITE_SEEDS=1 it first writes it with
// qemu-img: 512-byte clusters, two snapshots with data between them.
func TestSnapshotSeed(t *testing.T) {
	if os.Getenv("QCOW2_WRITE_SEEDS") == "1" {
		path := filepath.Join(t.TempDir(), "s.qcow2")
		formattest.Create(t, path, "qcow2", "64k", "-o", "cluster_size=512")
		formattest.QemuIO(t, "qcow2", path, "write -P 0x42 0 1k", "write -P 0x43 40k 512")
		formattest.Qemu(t, "snapshot", "-c", "one", path)
		formattest.QemuIO(t, "qcow2", path, "write -P 0x44 512 1k", "write -z 40k 512")
		formattest.Qemu(t, "snapshot", "-c", "two", path)
		formattest.QemuIO(t, "qcow2", path, "write -P 0x45 8k 512")
		d := formattest.ReadFile(t, path)
		formattest.WriteFiles(t, filepath.Dir(snapshotSeed), map[string][]byte{filepath.Base(snapshotSeed): d})
	}
	d := formattest.ReadFile(t, snapshotSeed)
	img, err := formattest.OpenMem(t, "qcow2", d)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, s := range img.Info().Snapshots {
		if err := format.LoadSnapshot(img, s.ID, ""); err != nil {
			t.Errorf("snapshot %s: %v", s.ID, err)
		}
		if err := formattest.Validate(img); err != nil {
			t.Errorf("snapshot %s: %v", s.ID, err)
		}
	}
}

// FuzzQcow2Snapshots opens arbitrary files and reads every snapshot they
// list: loading one must fail cleanly or give an image that reads.
func FuzzQcow2Snapshots(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/qcow2")
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := formattest.OpenMem(t, "qcow2", data)
		if err != nil {
			return
		}
		defer img.Close()
		for i, s := range img.Info().Snapshots {
			if i == 4 {
				break
			}
			if format.LoadSnapshot(img, s.ID, s.Name) == nil {
				formattest.ExerciseImage(t, img)
			}
		}
	})
}
