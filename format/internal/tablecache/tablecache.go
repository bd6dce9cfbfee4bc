// Package tablecache keeps the second-level tables of a two-level cluster
// map (qcow's and QED's L2 tables) that were read last, within a memory
// budget.
package tablecache

import (
	"encoding/binary"
	"sync"

	"github.com/diskimg/diskimg/format"
)

// Cache holds tables of 64-bit entries by file offset. When a table would
// take it past its budget it starts empty again: the tables of a
// sequential read are used in turn, so this costs one reread per table.
// It is safe for concurrent use.
type Cache struct {
	mu     sync.Mutex
	budget int64
	bytes  int64
	tables map[int64][]uint64
}

// New returns a cache of at most budget bytes of tables.
func New(budget int64) *Cache {
	return &Cache{budget: budget, tables: map[int64][]uint64{}}
}

// Get returns the table of n bytes at file offset off of f, in byte order
// order, reading it when it is not cached; a short read is an error naming
// the field (built only then).
func (c *Cache) Get(f format.File, off, n int64, order binary.ByteOrder, formatName string, field func() string) ([]uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tables[off]; ok {
		return t, nil
	}
	raw := make([]byte, n)
	if err := format.ReadFull(f, raw, off, formatName, field()); err != nil {
		return nil, err
	}
	t := make([]uint64, n/8)
	for j := range t {
		t[j] = order.Uint64(raw[8*j:])
	}
	if c.bytes+n > c.budget {
		clear(c.tables)
		c.bytes = 0
	}
	c.tables[off] = t
	c.bytes += n
	return t, nil
}
