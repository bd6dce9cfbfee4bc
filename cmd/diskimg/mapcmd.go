package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
)

func mapCommand() *cli.Command {
	return imageCommand("map", "FILE", "list which guest ranges hold data, zeros or nothing (like qemu-img map)",
		withImage(runMap), outputFlag)
}

// mapEntry is one line of `map --output=json`, as qemu-img prints it.
type mapEntry struct {
	start, length int64
	depth         int
	present, zero bool
	data          bool
	offset        int64 // -1: none
	compressed    bool
	file          string // the host file of offset when not the layer's own (a VMDK extent, a data file)
}

func runMap(c *cli.Context, mode, path string, img format.Image) error {
	layers := layerNames(path, img)
	var entries []mapEntry
	err := format.Walk(img, 0, func(e format.Extent) error {
		zero, data := e.MapFlags()
		m := mapEntry{start: e.Start, length: e.Length, depth: e.Depth,
			present: e.Status != format.Unallocated, zero: zero,
			data: data, offset: e.Offset, compressed: e.Compressed}
		if e.Depth == 0 && e.File != nil {
			m.file = e.File.Name()
		}
		// Merge with the previous entry as qemu-img does: same flags and
		// depth, and host offsets that continue.
		if n := len(entries); n > 0 {
			p := &entries[n-1]
			if p.depth == m.depth && p.present == m.present && p.zero == m.zero && p.data == m.data && p.compressed == m.compressed && p.file == m.file &&
				(p.offset < 0) == (m.offset < 0) && (p.offset < 0 || p.offset+p.length == m.offset) {
				p.length += m.length
				return nil
			}
		}
		entries = append(entries, m)
		return nil
	})
	if err != nil {
		return err
	}
	w := c.App.Writer
	if mode == "json" {
		writeMapJSON(w, entries)
		return nil
	}
	// qemu-img lists the data stored at a host offset (not the holes
	// under allocated blocks, which are zeros) and refuses images
	// with compressed clusters; diskimg lists those ranges as compressed
	// (and others without an offset, such as encrypted ones, as "-").
	fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	for _, e := range entries {
		if !e.data || e.zero {
			continue
		}
		name := path
		switch {
		case e.file != "":
			name = e.file
		case e.depth < len(layers):
			name = layers[e.depth]
		}
		to := hexNum(e.offset)
		switch {
		case e.compressed:
			to = "compressed"
		case e.offset < 0:
			to = "-"
		}
		fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", hexNum(e.start), hexNum(e.length), to, name)
	}
	return nil
}

func hexNum(n int64) string {
	if n == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", n)
}

func writeMapJSON(w io.Writer, entries []mapEntry) {
	fmt.Fprint(w, "[")
	for i, e := range entries {
		if i > 0 {
			fmt.Fprint(w, ",\n")
		}
		fmt.Fprintf(w, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
			e.start, e.length, e.depth, e.present, e.zero, e.data)
		if e.offset >= 0 {
			fmt.Fprintf(w, `, "offset": %d`, e.offset)
		}
		fmt.Fprint(w, "}")
	}
	fmt.Fprintln(w, "]")
}

// layerNames lists the file name of each layer of the backing chain.
func layerNames(path string, img format.Image) []string {
	names := []string{path}
	for info := img.Info(); info.Backing != nil; info = info.Backing.Info() {
		names = append(names, filepath.Clean(info.FullBackingFile))
	}
	return names
}
