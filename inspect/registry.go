package inspect

import (
	"errors"
	"fmt"
	"strings"
)

// A read-only Windows registry hive (regf) reader: enough to walk key
// paths and read string and DWORD values, reading cells on demand.

// Base block and hive bins.
const (
	regfMagic      = "regf"
	regfRootCell   = 0x24 // u32 root key cell, relative to the hive bins
	regfBinsSize   = 0x28 // u32 length of the hive bins data
	regfBaseSize   = 4096 // the hive bins start after the base block
	regfNoCell     = 0xffffffff
	regfMaxCell    = 1 << 20 // larger cells are not read
	regfMaxSubkeys = 1 << 14 // subkey list entries visited per lookup
	regfMaxName    = 1024    // longer key and value names are not matched
	regfMaxValues  = 1 << 14 // value list entries visited per lookup
	regfMaxDepth   = 4       // nesting of ri index roots

	// Key node (nk), offsets from the start of the cell data.
	nkMagic      = "nk"
	nkFlags      = 0x02 // u16
	nkSubkeys    = 0x14 // u32 number of stable subkeys
	nkSubkeyList = 0x1c // u32 stable subkeys list cell
	nkValues     = 0x24 // u32 number of values
	nkValueList  = 0x28 // u32 values list cell
	nkNameLen    = 0x48 // u16
	nkName       = 0x4c
	nkCompName   = 0x0020 // the name is Latin-1, not UTF-16LE

	// Subkey lists: lf and lh hold (cell, hash) pairs, li cells only, ri
	// cells of other lists.
	listCount = 0x02 // u16
	listItems = 0x04

	// Value key (vk).
	vkMagic    = "vk"
	vkNameLen  = 0x02 // u16
	vkDataSize = 0x04 // u32; the top bit means data is in vkDataOff
	vkDataOff  = 0x08 // u32 data cell
	vkType     = 0x0c // u32
	vkFlags    = 0x10 // u16
	vkName     = 0x14
	vkCompName = 0x0001
	vkInline   = 0x80000000

	regSZ       = 1
	regExpandSZ = 2
	regDWORD    = 4
)

// hive reads cells through read, an accessor of the hive file's bytes.
type hive struct {
	read func(off int64, n int) ([]byte, error)
	size int64 // hive bins bytes
	root uint32
}

func openHive(read func(off int64, n int) ([]byte, error), fileSize int64) (*hive, error) {
	if fileSize < regfBaseSize {
		return nil, fmt.Errorf("hive of %d bytes is shorter than its base block", fileSize)
	}
	b, err := read(0, regfBaseSize)
	if err != nil {
		return nil, err
	}
	if string(b[:4]) != regfMagic {
		return nil, errors.New("no regf signature")
	}
	h := &hive{read: read, root: le.Uint32(b[regfRootCell:])}
	h.size = int64(le.Uint32(b[regfBinsSize:]))
	if h.size > fileSize-regfBaseSize {
		return nil, fmt.Errorf("hive bins data size %d exceeds the %d-byte file", h.size, fileSize)
	}
	return h, nil
}

// cell returns the data of the allocated cell at off.
func (h *hive) cell(off uint32) ([]byte, error) { return h.cellN(off, regfMaxCell) }

// cellN returns up to limit bytes of the data of the allocated cell at
// off: key and value cells are read only as far as a name can reach.
func (h *hive) cellN(off uint32, limit int64) ([]byte, error) {
	if int64(off)+4 > h.size {
		return nil, fmt.Errorf("cell offset %#x is outside the %d-byte hive bins", off, h.size)
	}
	sb, err := h.read(regfBaseSize+int64(off), 4)
	if err != nil {
		return nil, err
	}
	sz := -int64(int32(le.Uint32(sb)))
	if sz <= 0 {
		return nil, fmt.Errorf("cell at %#x is not allocated", off)
	}
	if sz < 8 || sz > regfMaxCell || sz > h.size-int64(off) {
		return nil, fmt.Errorf("cell at %#x has invalid size %d", off, sz)
	}
	return h.read(regfBaseSize+int64(off)+4, int(min(sz-4, limit)))
}

// key returns the key node cell at off.
func (h *hive) key(off uint32) ([]byte, error) {
	b, err := h.cellN(off, nkName+regfMaxName)
	if err != nil {
		return nil, err
	}
	if len(b) < nkName || string(b[:2]) != nkMagic {
		return nil, fmt.Errorf("cell at %#x is not a key node", off)
	}
	return b, nil
}

// regName decodes a key or value name: Latin-1 when comp, else UTF-16LE.
func regName(b []byte, comp bool) string {
	if !comp {
		return utf16le(append(append([]byte(nil), b...), 0, 0))
	}
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

func keyName(nk []byte) (string, bool) {
	n := int(le.Uint16(nk[nkNameLen:]))
	if nkName+n > len(nk) {
		return "", false
	}
	return regName(nk[nkName:nkName+n], le.Uint16(nk[nkFlags:])&nkCompName != 0), true
}

// subkey finds the child of key node nk named name (case-insensitively).
func (h *hive) subkey(nk []byte, name string) ([]byte, error) {
	if le.Uint32(nk[nkSubkeys:]) == 0 {
		return nil, errNotFound
	}
	budget := regfMaxSubkeys
	return h.searchList(le.Uint32(nk[nkSubkeyList:]), name, 0, &budget)
}

func (h *hive) searchList(off uint32, name string, depth int, budget *int) ([]byte, error) {
	if depth > regfMaxDepth {
		return nil, errors.New("subkey index roots nest too deeply")
	}
	l, err := h.cell(off)
	if err != nil {
		return nil, err
	}
	if len(l) < listItems {
		return nil, fmt.Errorf("subkey list at %#x is truncated", off)
	}
	n := int(le.Uint16(l[listCount:]))
	stride := 8
	switch string(l[:2]) {
	case "lf", "lh":
	case "li", "ri":
		stride = 4
	default:
		return nil, fmt.Errorf("cell at %#x is not a subkey list", off)
	}
	if listItems+n*stride > len(l) {
		return nil, fmt.Errorf("subkey list at %#x claims %d entries", off, n)
	}
	kind := string(l[:2])
	hash, hint := lhHash(name), lfHint(name)
	for i := 0; i < n; i++ {
		if *budget--; *budget < 0 {
			return nil, errors.New("too many subkeys")
		}
		e := l[listItems+i*stride:]
		c := le.Uint32(e)
		// lh and lf entries carry a hash or the name's first characters:
		// only the matching keys are read.
		if kind == "lh" && le.Uint32(e[4:]) != hash || kind == "lf" && !strings.EqualFold(string(e[4:4+len(hint)]), hint) {
			continue
		}
		if kind == "ri" {
			k, err := h.searchList(c, name, depth+1, budget)
			if err == nil || !errors.Is(err, errNotFound) {
				return k, err
			}
			continue
		}
		k, err := h.key(c)
		if err != nil {
			return nil, err
		}
		if kn, ok := keyName(k); ok && strings.EqualFold(kn, name) {
			return k, nil
		}
	}
	return nil, errNotFound
}

// lhHash is the hash an lh list stores for a key name: each character,
// upper-cased, folded in as hash*37 + c.
func lhHash(name string) uint32 {
	var h uint32
	for _, c := range strings.ToUpper(name) {
		h = h*37 + uint32(c)
	}
	return h
}

// lfHint is what an lf list stores for a key name: its first four
// characters (shorter names are padded with NULs).
func lfHint(name string) string {
	if len(name) >= 4 {
		return name[:4]
	}
	return name + strings.Repeat("\x00", 4-len(name))
}

// openKey walks a \-separated path from the root key.
func (h *hive) openKey(p string) ([]byte, error) {
	k, err := h.key(h.root)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	return h.subkeyPath(k, p)
}

// subkeyPath walks a \-separated path from key node nk.
func (h *hive) subkeyPath(nk []byte, p string) ([]byte, error) {
	k := nk
	for _, c := range strings.Split(p, `\`) {
		var err error
		if k, err = h.subkey(k, c); err != nil {
			return nil, fmt.Errorf("%s: %w", c, err)
		}
	}
	return k, nil
}

// value returns the type and data of value name of key node nk.
func (h *hive) value(nk []byte, name string) (uint32, []byte, error) {
	n := int64(le.Uint32(nk[nkValues:]))
	if n == 0 {
		return 0, nil, errNotFound
	}
	if n > regfMaxValues {
		return 0, nil, fmt.Errorf("key has %d values", n)
	}
	list, err := h.cell(le.Uint32(nk[nkValueList:]))
	if err != nil {
		return 0, nil, err
	}
	if n*4 > int64(len(list)) {
		return 0, nil, fmt.Errorf("value list of %d bytes is too short for %d values", len(list), n)
	}
	for i := int64(0); i < n; i++ {
		vk, err := h.cellN(le.Uint32(list[i*4:]), vkName+regfMaxName)
		if err != nil {
			return 0, nil, err
		}
		if len(vk) < vkName || string(vk[:2]) != vkMagic {
			return 0, nil, errors.New("value list entry is not a value key")
		}
		nl := int(le.Uint16(vk[vkNameLen:]))
		if vkName+nl > len(vk) {
			continue // past its cell, or longer than any name looked for
		}
		if !strings.EqualFold(regName(vk[vkName:vkName+nl], le.Uint16(vk[vkFlags:])&vkCompName != 0), name) {
			continue
		}
		typ, size := le.Uint32(vk[vkType:]), le.Uint32(vk[vkDataSize:])
		if size&vkInline != 0 {
			size &^= vkInline
			if size > 4 {
				return 0, nil, fmt.Errorf("value %s: inline data size %d is larger than 4", name, size)
			}
			return typ, append([]byte(nil), vk[vkDataOff:vkDataOff+size]...), nil
		}
		d, err := h.cell(le.Uint32(vk[vkDataOff:]))
		if err != nil {
			return 0, nil, fmt.Errorf("value %s: %w", name, err)
		}
		if int64(size) > int64(len(d)) {
			return 0, nil, fmt.Errorf("value %s: data size %d is larger than its %d-byte cell", name, size, len(d))
		}
		return typ, d[:size], nil
	}
	return 0, nil, errNotFound
}

// stringValue reads a REG_SZ or REG_EXPAND_SZ value.
func (h *hive) stringValue(nk []byte, name string) (string, error) {
	typ, d, err := h.value(nk, name)
	if err != nil {
		return "", err
	}
	if typ != regSZ && typ != regExpandSZ {
		return "", fmt.Errorf("value %s has type %d, not a string", name, typ)
	}
	return strings.TrimSpace(utf16le(append(append([]byte(nil), d...), 0, 0))), nil
}

// dwordValue reads a REG_DWORD value.
func (h *hive) dwordValue(nk []byte, name string) (uint32, error) {
	typ, d, err := h.value(nk, name)
	if err != nil {
		return 0, err
	}
	if typ != regDWORD || len(d) != 4 {
		return 0, fmt.Errorf("value %s is not a DWORD", name)
	}
	return le.Uint32(d), nil
}
