package parallels

import (
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

var checks = formattest.CheckSuite{
	Format: Name, QemuChecks: true, Seeds: seeds, Huge: "250G", // a 2 TiB one has an 8 MiB catalog, whose clusters qemu counts as leaked
	Clean: append(formattest.BasicClean(9<<20+3*512), []formattest.CleanImage{
		{Name: "4k", Size: 5 << 20, Content: formattest.Sparse, Args: []string{"-o", "cluster_size=4k"}},
		{Name: "3584", Size: 3 << 20, Content: formattest.Dense, Args: []string{"-o", "cluster_size=3584"}},
	}...),
}

type corruption formattest.Corruption

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

// TestCheckCorrupt: the in-use flag, space after the last cluster and
// fragmented clusters get qemu-img check's verdicts and counts.
func TestCheckCorrupt(t *testing.T) {
	data := checks.Image(t, 4<<20, formattest.Sparse, "-o", "cluster_size=64k")
	formattest.Corrupt(t, checks, data, []corruption{
		{"in-use", func(d []byte) []byte { put32(d, hdrInUse, inUseMagic); return d }, 2, "ERROR image was not closed correctly"},
		{"leak", func(d []byte) []byte { return append(d, make([]byte, 70000)...) }, 3, "ERROR space leaked at the end of the image 70000"},
		{"in-use-and-leak", func(d []byte) []byte {
			put32(d, hdrInUse, inUseMagic)
			return append(d, make([]byte, 512)...)
		}, 2, "ERROR space leaked at the end of the image 512"},
		{"swapped", func(d []byte) []byte { // clusters 0 and 1 swapped: fragmented
			a, b := headerSize, headerSize+4
			x := string(d[a : a+4])
			copy(d[a:], d[b:b+4])
			copy(d[b:], x)
			return d
		}, 0, ""},
	})
	// An empty image whose catalog takes more than one cluster: qemu
	// counts the catalog's clusters after the first as leaked.
	dir := t.TempDir()
	p := filepath.Join(dir, "e.hds")
	formattest.Create(t, p, Name, "64M", "-o", "cluster_size=4k")
	if r := checks.Check(t, p); formattest.Verdict(r) != 3 || r.Leaks != 16 {
		t.Errorf("empty image with a 17-cluster catalog: %+v", r)
	}
}

// TestCheckOutside: a cluster past the end of the file makes Open fail;
// CheckFile still reports it as qemu-img check does.
func TestCheckOutside(t *testing.T) {
	data := checks.Image(t, 1<<20, formattest.Dense, "-o", "cluster_size=64k")
	dir := t.TempDir()
	p := formattest.Patched(t, dir, "outside.hds", data, func(d []byte) []byte {
		put32(d, headerSize+4*5, 1000) // cluster 5 at 64 MB
		return d
	})
	qrc, qm, stderr := formattest.QemuCheck(t, Name, p)
	r := formattest.CheckFile(t, p, CheckFile)
	if v := formattest.Verdict(r); v != qrc || float64(r.Corruptions) != qm["corruptions"] || float64(r.ImageEndOffset) != qm["image-end-offset"] ||
		float64(r.AllocatedClusters) != qm["allocated-clusters"] || float64(r.FragmentedClusters) != qm["fragmented-clusters"] {
		t.Errorf("diskimg %d %+v; qemu-img %d %v %s", v, r, qrc, qm, stderr)
	}
	if len(r.Problems) == 0 || r.Problems[0] != "ERROR cluster 5 is outside image" {
		t.Errorf("problems %q", r.Problems)
	}
}
