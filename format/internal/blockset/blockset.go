// Package blockset is a set of block numbers, a bit each: the blocks
// (clusters, BAT blocks) of a disk that a writer stores.
package blockset

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/diskimg/diskimg/format"
)

// Set holds block numbers from 0 to its capacity.
type Set []uint64

// New returns an empty set for blocks 0 to n-1.
func New(n int64) Set { return make(Set, (n+63)/64) }

// Has reports whether block b is in the set.
func (s Set) Has(b int64) bool { return s[b/64]&(1<<(b%64)) != 0 }

// Add puts block b in the set.
func (s Set) Add(b int64) { s[b/64] |= 1 << (b % 64) }

// AddRange puts blocks [from, to) in the set.
func (s Set) AddRange(from, to int64) {
	for b := from; b < to; {
		if b%64 == 0 && to-b >= 64 {
			s[b/64] = math.MaxUint64
			b += 64
			continue
		}
		s.Add(b)
		b++
	}
}

// Count returns how many blocks the set holds.
func (s Set) Count() int64 {
	var n int
	for _, x := range s {
		n += bits.OnesCount64(x)
	}
	return int64(n)
}

// Next returns the first block of the set at or after b, or n when there
// is none below n.
func (s Set) Next(b, n int64) int64 {
	for b < n {
		word := s[b/64] >> (b % 64)
		if word != 0 {
			return min(b+int64(bits.TrailingZeros64(word)), n)
		}
		b = (b/64 + 1) * 64
	}
	return n
}

// Layout returns the blocks of unit bytes of a disk of size bytes that
// o.Layout, aligned to unit as the engine aligns it, calls Data (all the
// engine may send as data), and how many there are. name is the writer's
// format, for errors. With no layout the set is empty.
func Layout(o format.WriteOptions, size, unit int64, name string) (Set, int64, error) {
	s := New((size + unit - 1) / unit)
	if o.Layout == nil {
		return s, 0, nil
	}
	var count int64
	err := o.Layout.Align(o.Size, unit)(func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		if e.Start < 0 || e.End() > size {
			return fmt.Errorf("%s: layout range [%d,+%d) outside the disk of %d bytes", name, e.Start, e.Length, size)
		}
		for b := e.Start / unit; b*unit < e.End(); b++ {
			if !s.Has(b) {
				s.Add(b)
				count++
			}
		}
		return nil
	})
	return s, count, err
}

// Storage tracks the blocks a writer stores when its tables precede its
// blocks. On a file (Lazy) a block is stored when data arrives for it and
// the tables are written last. On a pipe, or front to back, the tables
// come first: the blocks stored are those the engine's data scan marks,
// or without a scan every block the layout calls data.
type Storage struct {
	Layout Set  // blocks the layout calls data: the most that may be stored
	Used   Set  // blocks stored
	Lazy   bool // stored as data arrives (a file)
	n      int64
	unit   int64
	size   int64 // the source's size: blocks arrive for [0, size)
	name   string
}

// NewStorage returns the storage of a disk of size bytes in blocks of
// unit bytes for a writer created with o on a destination that can seek
// or not, and how many blocks the layout calls data.
func NewStorage(o format.WriteOptions, size, unit int64, seekable bool, name string) (*Storage, int64, error) {
	layout, count, err := Layout(o, size, unit, name)
	if err != nil {
		return nil, 0, err
	}
	n := (size + unit - 1) / unit
	s := &Storage{Layout: layout, Used: New(n), Lazy: seekable && !o.FrontToBack, n: n, unit: unit, size: o.Size, name: name}
	if !s.Lazy {
		copy(s.Used, layout)
	}
	return s, count, nil
}

// NeedsDataScan is the writer's answer to the engine: a scan is wanted
// unless blocks are stored as data arrives. It forgets the layout's
// blocks, which MarkData then sets again.
func (s *Storage) NeedsDataScan() bool {
	if s.Lazy {
		return false
	}
	clear(s.Used)
	return true
}

// MarkData stores the blocks of [start, start+length), which the data
// scan says will arrive as data.
func (s *Storage) MarkData(start, length int64) {
	if start < 0 || length <= 0 || start+length > s.size {
		return
	}
	s.Used.AddRange(start/s.unit, (start+length-1)/s.unit+1)
}

// Take reports whether block b, which guest offset off is in, is stored;
// data says it arrives as data, which stores it on a file. Data for a
// block the layout or the data scan left out is an error.
func (s *Storage) Take(b, off int64, data bool) (bool, error) {
	if data {
		if !s.Layout.Has(b) {
			return false, fmt.Errorf("%s: data at guest offset %d, in block %d that the layout left unallocated", s.name, off, b)
		}
		if s.Lazy {
			s.Used.Add(b)
		}
		if !s.Used.Has(b) {
			return false, fmt.Errorf("%s: data at guest offset %d, in block %d that the data scan left unallocated", s.name, off, b)
		}
	}
	return s.Used.Has(b), nil
}

// Next returns the first stored block at or after b, or the number of
// blocks.
func (s *Storage) Next(b int64) int64 { return s.Used.Next(b, s.n) }
