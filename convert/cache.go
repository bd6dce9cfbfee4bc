package convert

import (
	"fmt"
	"strings"
)

// Cache is a qemu-img cache mode (convert -t for the output, -T for the
// source), as the file is opened and flushed.
type Cache struct {
	// Direct opens the file with O_DIRECT, bypassing the page cache, where
	// its filesystem allows it (none, directsync).
	Direct bool
	// Sync opens an output with O_DSYNC: every write is durable when it
	// returns (writethrough, directsync).
	Sync bool
	// NoFlush skips the final fsync of the output (unsafe): it is complete
	// when renamed, but a crash may lose it.
	NoFlush bool
}

// CacheModes are qemu's cache mode names, in qemu's order.
var CacheModes = []string{"none", "writeback", "writethrough", "directsync", "unsafe"}

// ParseCache reads a qemu cache mode. "writeback", diskimg's default, is
// qemu's: the page cache, then an fsync when the output is complete
// (qemu-img convert's own default is "unsafe", which never syncs).
func ParseCache(mode string) (Cache, error) {
	switch mode {
	case "", "writeback":
		return Cache{}, nil
	case "unsafe":
		return Cache{NoFlush: true}, nil
	case "writethrough":
		return Cache{Sync: true}, nil
	case "none":
		return Cache{Direct: true}, nil
	case "directsync":
		return Cache{Direct: true, Sync: true}, nil
	}
	return Cache{}, fmt.Errorf("invalid cache mode %q (valid: %s)", mode, strings.Join(CacheModes, ", "))
}
