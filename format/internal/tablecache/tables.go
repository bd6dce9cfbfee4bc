package tablecache

import (
	"encoding/binary"
	"fmt"

	"github.com/diskimg/diskimg/format"
)

// Tables is a two-level cluster map as qcow and QED lay it out: an L1
// table of the file offsets of L2 tables (0: none), each of 1<<Bits
// 64-bit entries, one per guest cluster.
type Tables struct {
	File     format.File
	Format   string // the format's name, for errors
	Order    binary.ByteOrder
	L1       []uint64
	L1Offset int64 // file offset of the L1 table
	Bits     uint  // log2 of the entries of an L2 table
	Cache    *Cache
}

// LoadL1 reads the n entries of the L1 table at t.L1Offset and keeps
// them in t.L1. check validates each allocated entry; its error is
// reported against the entry.
func (t *Tables) LoadL1(n int64, check func(e uint64) error) error {
	if err := format.CheckTable(t.Format, "l1_table_offset", t.L1Offset, n*8, t.File.Size()); err != nil {
		return err
	}
	raw := make([]byte, n*8)
	if err := format.ReadFull(t.File, raw, t.L1Offset, t.Format, "L1 table"); err != nil {
		return err
	}
	t.L1 = make([]uint64, n)
	for i := range t.L1 {
		e := t.Order.Uint64(raw[8*i:])
		if e != 0 {
			if err := check(e); err != nil {
				return format.Errorf(t.Format, fmt.Sprintf("L1 table entry %d", i), t.L1Offset+8*int64(i), "%v", err)
			}
		}
		t.L1[i] = e
	}
	return nil
}

// L2 returns the L2 table of L1 entry i, which is allocated.
func (t *Tables) L2(i int64) ([]uint64, error) {
	return t.Cache.Get(t.File, int64(t.L1[i]), 8<<t.Bits, t.Order, t.Format, func() string { return fmt.Sprintf("L2 table of L1 entry %d", i) })
}

// Holding returns the L2 table that holds guest cluster c; nil when the
// L1 table has none for it.
func (t *Tables) Holding(c int64) ([]uint64, error) {
	if t.L1[c>>t.Bits] == 0 {
		return nil, nil
	}
	return t.L2(c >> t.Bits)
}

// Index returns the index of guest cluster c's entry in its L2 table.
func (t *Tables) Index(c int64) int64 { return c & (1<<t.Bits - 1) }

// EntryError reports a bad L2 entry: that of guest cluster c.
func (t *Tables) EntryError(c int64, reason string, args ...any) error {
	j, i := t.Index(c), c>>t.Bits
	return format.Errorf(t.Format, fmt.Sprintf("L2 table entry %d of L1 entry %d", j, i), int64(t.L1[i])+8*j, reason, args...)
}

// Run returns where the run of guest clusters that starts at first ends:
// the first cluster after it, at most last+1, that does not continue it.
// A missing L2 table continues the run when missing is set; an entry of
// a present table when cont(table, c) says so.
func (t *Tables) Run(first, last int64, missing bool, cont func(table []uint64, c int64) (bool, error)) (int64, error) {
	next := first + 1
	for next <= last {
		i := next >> t.Bits
		if t.L1[i] == 0 {
			if !missing {
				break
			}
			next = (i + 1) << t.Bits // a whole missing L2 table
			continue
		}
		table, err := t.L2(i)
		if err != nil {
			return 0, err
		}
		// Scan the table without going through the cache for each entry.
		for end := (i + 1) << t.Bits; next < end && next <= last; next++ {
			ok, err := cont(table, next)
			if err != nil {
				return 0, err
			}
			if !ok {
				return next, nil
			}
		}
	}
	return next, nil
}
