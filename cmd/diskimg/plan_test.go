package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/limits"
)

// The sizes the Huawei import and export paths turn on. The disks hold a
// small bootable Linux in their first MiBs and nothing after.
var boundarySizes = []struct {
	name string
	size int64
}{
	{"127G", 127 << 30}, {"128G", 128 << 30}, {"128G+1", 128<<30 + 1}, {"1T", 1 << 40}, {"1T+1", 1<<40 + 1},
}

func planJSON(t *testing.T, args ...string) (limits.Decision, int) {
	t.Helper()
	out, stderr, code := runCLI(t, append([]string{"plan", "--output=json"}, args...)...)
	var d limits.Decision
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("plan %v: exit %d, %v: %s%s", args, code, err, out, stderr)
	}
	return d, code
}

// sparseRaw makes a raw file of n bytes that holds no data.
func sparseRaw(t *testing.T, dir, name string, n int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(n); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPlanHuaweiBoundaries drives `plan --cloud huawei-ims` over sparse
// images made at the sizes where the path changes, in several formats, for
// import and export.
func TestPlanHuaweiBoundaries(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	type want struct{ path, format string }
	for i, b := range boundarySizes {
		raw := bootableRaw(t, dir, fmt.Sprintf("disk%d.raw", i), b.size)
		qcow := filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
		formattest.Convert(t, raw, qcow, "qcow2")
		vhdx := filepath.Join(dir, fmt.Sprintf("disk%d.vhdx", i))
		formattest.Convert(t, raw, vhdx, "vhdx")
		for _, tc := range []struct {
			args []string
			want want
		}{
			// RAW uploaded as it is: the file's size decides the path.
			{[]string{"--upload-format", "raw", raw}, [...]want{{"normal", "raw"}, {"normal", "raw"}, {"fast", "raw"}, {"fast", "raw"}, {"refused", "raw"}}[i]},
			// A mostly empty RAW converted to qcow2 fits the normal path up to the 1 TB system disk limit.
			{[]string{raw}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"refused", "qcow2"}}[i]},
			// A mostly empty qcow2 goes as it is; over 1 TB the system disk limit refuses it.
			{[]string{qcow}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"refused", "qcow2"}}[i]},
			// A vhdx's 32 MiB blocks are mostly holes, which a qcow2 leaves
			// out: smaller converted, until the qcow2's tables for 1 TB
			// outgrow the vhdx.
			{[]string{vhdx}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "vhdx"}, {"refused", "vhdx"}}[i]},
			// A data disk may be up to 2048 GB.
			{[]string{"--disk", "data", qcow}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}}[i]},
			// Export: the image's size decides; over 128 GB only fast export (ZVHD2), over 1 TB refused.
			{[]string{"--direction", "export", qcow}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"fast", "zvhd2"}, {"fast", "zvhd2"}, {"refused", ""}}[i]},
		} {
			name := b.name + " " + strings.Join(tc.args[:len(tc.args)-1], " ") + " " + filepath.Ext(tc.args[len(tc.args)-1])
			t.Run(name, func(t *testing.T) {
				d, code := planJSON(t, append([]string{"--cloud", "huawei-ims"}, tc.args...)...)
				if d.Path != tc.want.path || d.UploadFormat != tc.want.format {
					t.Errorf("path %q, upload %q; want %q, %q\nfindings: %+v", d.Path, d.UploadFormat, tc.want.path, tc.want.format, d.Findings)
				}
				wantCode := 0
				if tc.want.path == limits.Refused {
					wantCode = exitRefused
				}
				if code != wantCode {
					t.Errorf("exit %d, want %d", code, wantCode)
				}
			})
		}
	}
}

// TestPlanGolden golden-tests plan's text output for each profile on the
// bundled demo image.
func TestPlanGolden(t *testing.T) {
	for _, cloud := range limits.Profiles() {
		t.Run(cloud, func(t *testing.T) {
			out, stderr, code := runCLI(t, "plan", "--cloud", cloud, "../../testdata/demo.qcow2")
			if code != 0 && code != exitRefused {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			golden(t, "plan-"+cloud+".txt", out)
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "4K": 4096, "40G": 40 << 30, "1T": 1 << 40, "7b": 7} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "99999999999E"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// TestCloudConvertHuawei runs the Huawei path end to end: plan, convert to
// ZVHD2, verify, and re-plan the output.
func TestCloudConvertHuawei(t *testing.T) {
	dir := t.TempDir()
	src := bootableRaw(t, dir, "vm.raw", 200<<30)
	f, _ := os.OpenFile(src, os.O_WRONLY, 0)
	f.WriteAt([]byte("some data at 5 GiB"), 5<<30)
	f.WriteAt([]byte("and at 150 GiB"), 150<<30)
	f.Close()
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	stdout, stderr, code := runCLI(t, "convert", "--cloud", "huawei-ims", "--upload-format", "zvhd2", src, out)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "vm.zvhd2: zvhd2") || !strings.Contains(stdout, "verified") {
		t.Errorf("stdout %q", stdout)
	}
	if _, _, code := runCLI(t, "compare", src, filepath.Join(out, "vm.zvhd2")); code != 0 {
		t.Errorf("compare with the source: exit %d", code)
	}
	// Refused images write nothing.
	big := sparseRaw(t, dir, "huge.raw", 1<<40+1<<20)
	_, _, code = runCLI(t, "convert", "--cloud", "huawei-ims", big, out)
	if code != exitRefused {
		t.Errorf("convert --cloud of a 1 TiB+ system disk: exit %d, want %d", code, exitRefused)
	}
	if got := listDir(t, out); len(got) != 1 {
		t.Errorf("output directory holds %v", got)
	}
}

// TestPlanHuaweiFastZVHD2 plans an image whose data is over 128 GiB: the
// fast path with ZVHD2. Every cluster of the qcow2 maps to one cluster of
// data, so it holds 200 GiB of data in a sparse file of that size
// allocating a few MiB; holding no OS, it goes as a data disk.
func TestPlanHuaweiFastZVHD2(t *testing.T) {
	formattest.RequireQemu(t)
	path := filepath.Join(t.TempDir(), "big.qcow2")
	sharedClusterQcow2(t, path, "200G")
	d, code := planJSON(t, "--cloud", "huawei-ims", "--disk", "data", path)
	if code != 0 || d.Path != "fast" || d.UploadFormat != "zvhd2" || d.Conversion == nil || d.Conversion.Format != "zvhd2" {
		t.Errorf("exit %d, decision %+v", code, d)
	}
	d, _ = planJSON(t, "--cloud", "huawei-ims", "--disk", "data", "--upload-format", "raw", path)
	if d.Path != "fast" || d.UploadFormat != "raw" || !strings.Contains(strings.Join(d.Commands, "\n"), "CreateMF.jar") {
		t.Errorf("raw upload: %+v", d)
	}
}

// sharedClusterQcow2 makes a qcow2 of the given size with 2 MiB clusters
// in which every cluster is allocated and maps to the same host cluster,
// full of data: all of the disk is data, in a file allocating a few
// clusters.
// (qemu-img check would count the shared cluster's references as wrong.)
func sharedClusterQcow2(t *testing.T, path, size string) {
	t.Helper()
	const cs = 2 << 20
	formattest.Create(t, path, "qcow2", size, "-o", "preallocation=metadata,cluster_size=2M")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	be := binary.BigEndian
	var h [48]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		t.Fatal(err)
	}
	clusters := (int64(be.Uint64(h[24:])) + cs - 1) / cs
	var l1 [8]byte
	if _, err := f.ReadAt(l1[:], int64(be.Uint64(h[40:]))); err != nil {
		t.Fatal(err)
	}
	l2Off := int64(be.Uint64(l1[:]) &^ (1 << 63))
	l2 := make([]byte, clusters*8)
	if _, err := f.ReadAt(l2, l2Off); err != nil || clusters > cs/8 {
		t.Fatalf("L2 table at %d: %v (%d clusters)", l2Off, err, clusters)
	}
	first := be.Uint64(l2)
	for i := int64(1); i < clusters; i++ {
		be.PutUint64(l2[i*8:], first)
	}
	host := int64(first &^ (1 << 63))
	if _, err := f.WriteAt(l2, l2Off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x55}, cs), host); err != nil {
		t.Fatal(err)
	}
}
