package qed_test

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

var checks = formattest.CheckSuite{
	Format: "qed", QemuChecks: true, Seeds: "../../testdata/qed", Huge: "2T",
	Clean: append(formattest.BasicClean(16<<20), []formattest.CleanImage{
		{Name: "zeros", Size: 3 << 20, Content: formattest.Zeros},
		{Name: "cluster4k", Size: 8 << 20, Content: formattest.Sparse, Args: []string{"-o", "cluster_size=4096"}},
		{Name: "cluster1m", Size: 40 << 20, Content: formattest.Sparse, Args: []string{"-o", "cluster_size=1M"}},
	}...),
}

type corruption formattest.Corruption

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

// TestCheckCorrupt patches L2 entries of a qemu-made image and expects
// qemu-img's verdict and counts and a problem naming the entry.
func TestCheckCorrupt(t *testing.T) {
	data := checks.Image(t, 3<<20, formattest.Dense)
	le := binary.LittleEndian
	cs := uint64(le.Uint32(data[4:]))
	l1 := le.Uint64(data[40:])
	l2 := le.Uint64(data[l1:])
	entry := func(d []byte, j int) uint64 { return le.Uint64(d[l2+8*uint64(j):]) }
	at := func(j int) string {
		return fmt.Sprintf("L2 table entry %d of L1 entry 0 at offset %d", j, l2+8*uint64(j))
	}
	formattest.Corrupt(t, checks, data, []corruption{
		{"past-eof", func(d []byte) []byte {
			le.PutUint64(d[l2+8:], uint64(len(d))+10*cs)
			return d
		}, 2, at(1) + ": data cluster"},
		{"duplicate", func(d []byte) []byte {
			le.PutUint64(d[l2+8:], entry(d, 0))
			return d
		}, 2, at(1) + ": cluster at offset"},
		{"unaligned", func(d []byte) []byte {
			le.PutUint64(d[l2+8:], entry(d, 1)+512)
			return d
		}, 2, at(1) + ": data cluster offset"},
		{"leak", func(d []byte) []byte {
			le.PutUint64(d[l2+8*5:], 0)
			return d
		}, 3, "Leaked cluster at offset"},
		{"tail", func(d []byte) []byte {
			return append(d, make([]byte, 2*cs)...)
		}, 3, fmt.Sprintf("Leaked cluster at offset %d", len(data))},
		{"l2-over-l1", func(d []byte) []byte {
			le.PutUint64(d[l1+8:], l1) // L1 entry 1 names the L1 table itself
			return d
		}, 2, fmt.Sprintf("L1 table entry 1 at offset %d: cluster at offset %d is used twice", l1+8, l1)},
	})
}
