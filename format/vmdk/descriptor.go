package vmdk

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// descriptor is the parsed text of a descriptor: its key = value fields
// (CID, parentCID, createType, parentFileNameHint, ddb.*) and extent lines.
type descriptor struct {
	fields     map[string]string
	createType string
	extents    []extentLine
}

// extentLine is one line of the extent description:
//
//	RW <sectors> <type> "<file>" [<offset in sectors>]
type extentLine struct {
	access  string
	sectors int64
	typ     string
	file    string
	offset  int64
}

// maxExtentSectors bounds one extent line's size (the virtual size limit).
const maxExtentSectors = format.MaxVirtualSize / sectorSize

// parseDescriptor parses descriptor text. The text ends at its first NUL
// (an embedded descriptor is padded with zeros).
func parseDescriptor(text []byte) (*descriptor, error) {
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	d := &descriptor{fields: map[string]string{}}
	for n, raw := range strings.Split(string(text), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "RW ") {
			k = strings.TrimSpace(k)
			v = strings.TrimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if _, dup := d.fields[k]; !dup {
				d.fields[k] = v
			}
			continue
		}
		l, ok, err := parseExtentLine(line)
		if err != nil {
			return nil, format.Errorf(Name, "extent description", -1, "line %d %q: %v", n+1, clipText(line), err)
		}
		if !ok {
			continue
		}
		if len(d.extents) >= maxExtents {
			return nil, format.Errorf(Name, "extent description", -1, "more than %d extents", maxExtents)
		}
		d.extents = append(d.extents, l)
	}
	d.createType = d.fields["createType"]
	return d, nil
}

// parseExtentLine parses an extent line. Lines qemu would not take as an
// extent of the disk (other access modes, unknown types such as ZERO) are
// skipped with ok false, as qemu skips them.
func parseExtentLine(line string) (l extentLine, ok bool, err error) {
	fs := strings.Fields(line)
	if len(fs) < 4 || fs[0] != "RW" {
		return l, false, nil
	}
	l.access = fs[0]
	l.sectors, err = strconv.ParseInt(fs[1], 10, 64)
	if err != nil {
		return l, false, nil // not an extent line at all
	}
	l.typ = fs[2]
	// The file name is quoted and may contain spaces.
	i := strings.IndexByte(line, '"')
	j := -1
	if i >= 0 {
		j = strings.IndexByte(line[i+1:], '"')
	}
	if i < 0 || j < 0 {
		return l, false, nil
	}
	l.file = line[i+1 : i+1+j]
	rest := strings.Fields(line[i+1+j+1:])
	l.offset = -1
	if len(rest) > 0 {
		l.offset, err = strconv.ParseInt(rest[0], 10, 64)
		if err != nil {
			return l, false, errorString("extent offset is not a number")
		}
	}
	switch l.typ {
	case "FLAT":
		if l.offset < 0 {
			return l, false, errorString("a FLAT extent needs a non-negative offset")
		}
	case "VMFS":
		if len(rest) > 0 {
			return l, false, errorString("a VMFS extent takes no offset")
		}
		l.offset = 0
	default:
		if len(rest) > 0 {
			return l, false, errorString("only FLAT extents take an offset")
		}
	}
	switch l.typ {
	case "FLAT", "VMFS", "SPARSE", "VMFSSPARSE", "SESPARSE":
	default:
		return l, false, nil
	}
	if l.sectors <= 0 {
		return l, false, nil
	}
	if l.sectors > maxExtentSectors || l.offset > maxExtentSectors {
		return l, false, errorString("extent size or offset too large")
	}
	if l.file == "" {
		return l, false, errorString("empty extent file name")
	}
	return l, true, nil
}

// hexField returns a field holding a 32-bit hexadecimal number (CID).
func (d *descriptor) hexField(key string) (uint32, bool) {
	v, ok := d.fields[key]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(v), "0x"), 16, 32)
	return uint32(n), err == nil
}

func clipText(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

type errorString string

func (e errorString) Error() string { return string(e) }
