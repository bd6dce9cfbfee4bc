package inspecttest

import (
	"encoding/binary"
	"strings"
	"unicode/utf16"
)

// A registry hive (regf) writer, laid out as Windows lays hives out: a
// 4 KiB base block, then 4 KiB-aligned hive bins of cells with negative
// (allocated) sizes.

// Value types.
const (
	RegSZ       = 1
	RegExpandSZ = 2
	RegDWORD    = 4
)

// Layout constants of the regf format.
const (
	regfBaseSize = 4096
	regfRootCell = 0x24
	regfBinsSize = 0x28
	regfNoCell   = 0xffffffff
	nkFlags      = 0x02
	nkSubkeys    = 0x14
	nkSubkeyList = 0x1c
	nkValues     = 0x24
	nkValueList  = 0x28
	nkNameLen    = 0x48
	nkName       = 0x4c
	nkCompName   = 0x0020
	vkNameLen    = 0x02
	vkDataSize   = 0x04
	vkDataOff    = 0x08
	vkType       = 0x0c
	vkFlags      = 0x10
	vkName       = 0x14
	vkCompName   = 0x0001
	vkInline     = 0x80000000
)

// Key is a registry key: its values and subkeys.
type Key struct {
	Name  string
	UTF16 bool   // store the name as UTF-16LE instead of Latin-1
	List  string // subkey list kind: lh (default), lf, li or ri (of two li lists)
	// Values and Subkeys are written in order.
	Values  []Value
	Subkeys []*Key
}

// Value is a registry value.
type Value struct {
	Name string
	Type uint32
	Data []byte
}

// String encodes s as a REG_SZ's data: UTF-16LE with a terminating NUL.
func String(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

// DWORD encodes v as a REG_DWORD's data.
func DWORD(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// Sub returns k's subkey name, adding it when missing.
func (k *Key) Sub(name string) *Key {
	for _, s := range k.Subkeys {
		if strings.EqualFold(s.Name, name) {
			return s
		}
	}
	s := &Key{Name: name}
	k.Subkeys = append(k.Subkeys, s)
	return s
}

// Path returns the key at a \-separated path under k, adding missing keys.
func (k *Key) Path(p string) *Key {
	for _, c := range strings.Split(p, `\`) {
		k = k.Sub(c)
	}
	return k
}

// Set adds a value to k.
func (k *Key) Set(name string, typ uint32, data []byte) *Key {
	k.Values = append(k.Values, Value{name, typ, data})
	return k
}

// lhHash is the hash an lh list stores for a name.
func lhHash(name string) uint32 {
	var h uint32
	for _, c := range strings.ToUpper(name) {
		h = h*37 + uint32(c)
	}
	return h
}

// Hive encodes root as a regf file.
func Hive(root *Key) []byte {
	bins := make([]byte, 32) // one hbin header, filled in at the end
	alloc := func(data []byte) uint32 {
		off := uint32(len(bins))
		size := (len(data) + 4 + 7) &^ 7
		cell := make([]byte, size)
		binary.LittleEndian.PutUint32(cell, uint32(-int32(size)))
		copy(cell[4:], data)
		bins = append(bins, cell...)
		return off
	}
	var write func(k *Key) uint32
	write = func(k *Key) uint32 {
		var kids []uint32
		for _, s := range k.Subkeys {
			kids = append(kids, write(s))
		}
		var listOff uint32 = regfNoCell
		if len(kids) > 0 {
			mk := func(kind string, subs []*Key, offs []uint32) uint32 {
				b := append([]byte(kind), 0, 0)
				binary.LittleEndian.PutUint16(b[2:], uint16(len(offs)))
				for i, o := range offs {
					b = binary.LittleEndian.AppendUint32(b, o)
					switch kind {
					case "lh":
						b = binary.LittleEndian.AppendUint32(b, lhHash(subs[i].Name))
					case "lf":
						b = append(b, []byte((subs[i].Name + "\x00\x00\x00\x00")[:4])...)
					}
				}
				return alloc(b)
			}
			switch k.List {
			case "ri":
				h := len(kids) / 2
				listOff = mk("ri", nil, []uint32{mk("li", nil, kids[:h]), mk("li", nil, kids[h:])})
			case "":
				listOff = mk("lh", k.Subkeys, kids)
			default:
				listOff = mk(k.List, k.Subkeys, kids)
			}
		}
		var vals []uint32
		for _, v := range k.Values {
			vk := make([]byte, vkName)
			copy(vk, "vk")
			binary.LittleEndian.PutUint16(vk[vkNameLen:], uint16(len(v.Name)))
			binary.LittleEndian.PutUint32(vk[vkType:], v.Type)
			binary.LittleEndian.PutUint16(vk[vkFlags:], vkCompName)
			if len(v.Data) <= 4 {
				binary.LittleEndian.PutUint32(vk[vkDataSize:], uint32(len(v.Data))|vkInline)
				copy(vk[vkDataOff:], v.Data)
			} else {
				binary.LittleEndian.PutUint32(vk[vkDataSize:], uint32(len(v.Data)))
				binary.LittleEndian.PutUint32(vk[vkDataOff:], alloc(v.Data))
			}
			vals = append(vals, alloc(append(vk, v.Name...)))
		}
		nk := make([]byte, nkName)
		copy(nk, "nk")
		name := []byte(k.Name)
		if k.UTF16 {
			name = String(k.Name)
			name = name[:len(name)-2]
		} else {
			binary.LittleEndian.PutUint16(nk[nkFlags:], nkCompName)
		}
		binary.LittleEndian.PutUint32(nk[nkSubkeys:], uint32(len(kids)))
		binary.LittleEndian.PutUint32(nk[nkSubkeyList:], listOff)
		binary.LittleEndian.PutUint32(nk[nkValues:], uint32(len(vals)))
		binary.LittleEndian.PutUint32(nk[nkValueList:], regfNoCell)
		if len(vals) > 0 {
			var vl []byte
			for _, o := range vals {
				vl = binary.LittleEndian.AppendUint32(vl, o)
			}
			binary.LittleEndian.PutUint32(nk[nkValueList:], alloc(vl))
		}
		binary.LittleEndian.PutUint16(nk[nkNameLen:], uint16(len(name)))
		return alloc(append(nk, name...))
	}
	rootOff := write(root)
	// Pad the bin to 4 KiB with one free cell.
	if pad := (4096 - len(bins)%4096) % 4096; pad > 0 {
		free := make([]byte, pad)
		binary.LittleEndian.PutUint32(free, uint32(pad))
		bins = append(bins, free...)
	}
	copy(bins, "hbin")
	binary.LittleEndian.PutUint32(bins[8:], uint32(len(bins)))
	base := make([]byte, regfBaseSize)
	copy(base, "regf")
	binary.LittleEndian.PutUint32(base[4:], 1)
	binary.LittleEndian.PutUint32(base[8:], 1)
	binary.LittleEndian.PutUint32(base[0x14:], 1) // version 1.5
	binary.LittleEndian.PutUint32(base[0x18:], 5)
	binary.LittleEndian.PutUint32(base[0x20:], 1)
	binary.LittleEndian.PutUint32(base[regfRootCell:], rootOff)
	binary.LittleEndian.PutUint32(base[regfBinsSize:], uint32(len(bins)))
	var sum uint32
	for i := 0; i < 0x1fc; i += 4 {
		sum ^= binary.LittleEndian.Uint32(base[i:])
	}
	binary.LittleEndian.PutUint32(base[0x1fc:], sum)
	return append(base, bins...)
}
