package inspect

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf16"
)

// Reading directories and small files of a FAT volume: enough to find the
// boot loaders on an EFI System partition and the kernels on a FAT /boot.

// Directory entry fields.
const (
	fatEntAttr     = 11
	fatEntNTRes    = 12 // 0x08: base name in lower case, 0x10: extension
	fatEntLFNSum   = 13 // checksum of the short name, in long-name entries
	fatEntClusHi   = 20 // u16, FAT32
	fatEntClusLo   = 26 // u16
	fatEntSize     = 28 // u32
	fatAttrDir     = 0x10
	fatLFNLast     = 0x40 // in the sequence byte of the last long-name entry
	fatLFNSeqMask  = 0x1f
	fatNTLowerBase = 0x08
	fatNTLowerExt  = 0x10
	fatDeleted     = 0xe5
	// fatMaxDir bounds the bytes read for one directory.
	fatMaxDir = 1 << 20
	// fatEOC and above end a cluster chain (after masking to the width).
	fatEOC12, fatEOC16, fatEOC32 = 0xff8, 0xfff8, 0x0ffffff8
)

// fatEntry is one file or directory.
type fatEntry struct {
	name  string
	dir   bool
	clus  int64
	size  int64
	valid bool // false for the root directory of FAT12/16, which has no cluster
}

// next returns the FAT entry for cluster c.
func (v *fatVol) next(c int64) (int64, error) {
	switch v.bits {
	case 12:
		b, err := v.d.read(v.fatOff+c*3/2, 2)
		if err != nil {
			return 0, err
		}
		n := int64(le.Uint16(b))
		if c&1 == 1 {
			n >>= 4
		}
		return n & 0xfff, nil
	case 16:
		b, err := v.d.read(v.fatOff+c*2, 2)
		if err != nil {
			return 0, err
		}
		return int64(le.Uint16(b)), nil
	}
	b, err := v.d.read(v.fatOff+c*4, 4)
	if err != nil {
		return 0, err
	}
	return int64(le.Uint32(b) & 0x0fffffff), nil
}

// chain reads up to max bytes of the cluster chain starting at c.
func (v *fatVol) chain(c, max int64) ([]byte, error) {
	eoc := map[int64]int64{12: fatEOC12, 16: fatEOC16, 32: fatEOC32}[v.bits]
	var out []byte
	for int64(len(out)) < max {
		if c < 2 || c >= v.clusters+2 {
			if c >= eoc {
				break
			}
			return nil, fmt.Errorf("cluster %d is outside the volume", c)
		}
		b, err := v.d.read(v.dataOff+(c-2)*v.cs, int(min(v.cs, max-int64(len(out)))))
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
		if c, err = v.next(c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dirData reads the directory e (the root when !e.valid).
func (v *fatVol) dirData(e fatEntry) ([]byte, error) {
	if !e.valid {
		if v.rootClus == 0 {
			return v.d.read(v.rootOff, int(min(v.rootLen, fatMaxDir)))
		}
		e.clus = v.rootClus
	}
	return v.chain(e.clus, fatMaxDir)
}

// entries lists directory e, with long names where they are intact.
func (v *fatVol) entries(e fatEntry) ([]fatEntry, error) {
	data, err := v.dirData(e)
	if err != nil {
		return nil, err
	}
	var out []fatEntry
	var lfn []uint16
	var lfnSum byte
	for i := 0; i+fatDirEntSize <= len(data); i += fatDirEntSize {
		d := data[i : i+fatDirEntSize]
		if d[0] == 0 {
			break
		}
		if d[0] == fatDeleted {
			lfn = nil
			continue
		}
		if d[fatEntAttr]&fatAttrLongName == fatAttrLongName {
			seq := int(d[0] & fatLFNSeqMask)
			if d[0]&fatLFNLast != 0 {
				lfn, lfnSum = make([]uint16, seq*13), d[fatEntLFNSum]
			}
			if seq == 0 || seq*13 > len(lfn) || d[fatEntLFNSum] != lfnSum {
				lfn = nil
				continue
			}
			part := lfn[(seq-1)*13:]
			for j, off := range [13]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
				part[j] = le.Uint16(d[off:])
			}
			continue
		}
		if d[fatEntAttr]&fatAttrVolumeID != 0 {
			lfn = nil
			continue
		}
		name := fatShortName(d)
		if lfn != nil && fatShortSum(d[:11]) == lfnSum {
			u := lfn
			for k, c := range u {
				if c == 0 {
					u = u[:k]
					break
				}
			}
			name = string(utf16.Decode(u))
		}
		lfn = nil
		if name == "." || name == ".." {
			continue
		}
		clus := int64(le.Uint16(d[fatEntClusLo:]))
		if v.bits == 32 {
			clus |= int64(le.Uint16(d[fatEntClusHi:])) << 16
		}
		out = append(out, fatEntry{name: name, dir: d[fatEntAttr]&fatAttrDir != 0, clus: clus, size: int64(le.Uint32(d[fatEntSize:])), valid: true})
	}
	return out, nil
}

// fatShortName decodes an 8.3 name, lower-casing the parts Windows NT
// marks as lower case.
func fatShortName(d []byte) string {
	base, ext := strings.TrimRight(string(d[:8]), " "), strings.TrimRight(string(d[8:11]), " ")
	if base != "" && base[0] == 0x05 {
		base = "\xe5" + base[1:]
	}
	if d[fatEntNTRes]&fatNTLowerBase != 0 {
		base = strings.ToLower(base)
	}
	if d[fatEntNTRes]&fatNTLowerExt != 0 {
		ext = strings.ToLower(ext)
	}
	name := base
	if ext != "" {
		name += "." + ext
	}
	return strings.ToValidUTF8(name, "?")
}

func fatShortSum(name []byte) byte {
	var s byte
	for _, c := range name {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

// open resolves a / or \ separated path, case-insensitively as FAT does.
func (v *fatVol) open(p string) (fatEntry, error) {
	cur := fatEntry{dir: true}
	for _, c := range strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == '\\' }) {
		if !cur.dir {
			return fatEntry{}, errors.New("not a directory")
		}
		list, err := v.entries(cur)
		if err != nil {
			return fatEntry{}, err
		}
		found := false
		for _, e := range list {
			if strings.EqualFold(e.name, c) {
				cur, found = e, true
				break
			}
		}
		if !found {
			return fatEntry{}, errNotFound
		}
	}
	return cur, nil
}

// The fileTree methods, so a FAT /boot reads like an ext one.

func (v *fatVol) readDir(p string, max int) ([]string, error) {
	e, err := v.open(p)
	if err != nil {
		return nil, err
	}
	if !e.dir {
		return nil, errors.New("not a directory")
	}
	list, err := v.entries(e)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range list {
		if len(names) == max {
			break
		}
		names = append(names, e.name)
	}
	return names, nil
}

func (v *fatVol) readPath(p string, max int64) ([]byte, error) {
	e, err := v.open(p)
	if err != nil {
		return nil, err
	}
	if e.dir {
		return nil, fmt.Errorf("%s is a directory", path.Clean(p))
	}
	if e.size == 0 {
		return []byte{}, nil
	}
	b, err := v.chain(e.clus, min(e.size, max))
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (v *fatVol) exists(p string) bool {
	_, err := v.open(p)
	return err == nil
}
