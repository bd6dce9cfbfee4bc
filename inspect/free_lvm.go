package inspect

import (
	"cmp"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strconv"
	"strings"
)

// LVM2 physical volumes: the physical extents no logical volume's
// segment uses are free, from the VG metadata in the PV's metadata areas.
// A linear logical volume, whose extents no other volume refers to, is
// read as a device of its own, and the free space of its filesystem is
// left out too.

const (
	lvmLabelSector    = 8  // u64 sector the label says it is in
	lvmLabelCRC       = 16 // u32 over the rest of the label sector
	lvmLabelCRCStart  = 20
	lvmInitialCRC     = 0xf597a6cf
	lvmMDAVersion     = 20 // u32, 1
	lvmMDAStart       = 24 // u64, the area's own offset
	lvmMDASize        = 32 // u64
	lvmRawLocns       = 40 // {offset, size u64; checksum, flags u32}
	lvmRawLocnIgnored = 1
	lvmMaxDepth       = 16
	lvmMaxAreas       = 4
)

// lvmCRC is LVM's calc_crc: CRC-32 (IEEE) with no final inversion.
func lvmCRC(c uint32, p []byte) uint32 { return ^crc32.Update(^c, crc32.IEEETable, p) }

// lvmAreas reads the PV header's data area and metadata area lists, which
// start at p in label sector l; each ends with a zero pair.
func lvmAreas(l []byte, p int) (data, meta []span) {
	for list := 0; list < 2; list++ {
		for ; p+16 <= sectorSize; p += 16 {
			o, n := le.Uint64(l[p:]), le.Uint64(l[p+8:])
			if o == 0 && n == 0 {
				p += 16
				break
			}
			s := span{start: int64(min(o, 1<<62)), end: int64(min(o, 1<<62) + min(n, 1<<62))}
			if list == 0 {
				data = append(data, s)
			} else {
				meta = append(meta, s)
			}
		}
	}
	return data, meta
}

// lvmPV is what a PV's label and metadata say about it.
type lvmPV struct {
	uuid    string // without dashes
	data    []span
	mdas    []span
	vg      *lvmNode
	pvName  string // the PV's key in physical_volumes ("pv0")
	extent  int64  // bytes
	peStart int64  // bytes
	peCount int64
}

func readLVMPV(d dev) (*lvmPV, error) {
	l, s, err := lvmLabel(d)
	if err != nil || l == nil {
		return nil, errors.Join(err, errors.New("no LVM2 label"))
	}
	if le.Uint64(l[lvmLabelSector:]) != uint64(s) || le.Uint32(l[lvmLabelCRC:]) != lvmCRC(lvmInitialCRC, l[lvmLabelCRCStart:]) {
		return nil, errors.New("LVM2 label checksum mismatch")
	}
	off := int(le.Uint32(l[lvmLabelOffsetXL:]))
	if off < 32 || off+lvmPVUUIDLen+8 > sectorSize {
		return nil, fmt.Errorf("LVM2 label: offset_xl %d is invalid", off)
	}
	pv := &lvmPV{uuid: string(l[off : off+lvmPVUUIDLen])}
	pv.data, pv.mdas = lvmAreas(l, off+lvmPVUUIDLen+8)
	return pv, pv.readMetadata(d)
}

// readMetadata parses the VG metadata of every metadata area; all must
// agree (the same sequence number), or the PV is not read.
func (pv *lvmPV) readMetadata(d dev) error {
	if len(pv.mdas) == 0 || len(pv.mdas) > lvmMaxAreas || len(pv.data) != 1 {
		return fmt.Errorf("%d metadata and %d data areas", len(pv.mdas), len(pv.data))
	}
	seqno := ""
	for _, m := range pv.mdas {
		text, err := lvmText(d, m)
		if err != nil {
			return err
		}
		root, err := parseLVMNodes(lvmTokens(text))
		if err != nil {
			return err
		}
		var vg *lvmNode
		for _, n := range root.subs {
			if n.sub("physical_volumes") != nil {
				vg = n
				break
			}
		}
		if vg == nil {
			return errors.New("metadata names no volume group")
		}
		if s := vg.val("seqno"); pv.vg != nil && s != seqno {
			return errors.New("metadata areas disagree")
		}
		pv.vg, seqno = vg, vg.val("seqno")
	}
	ext, err := pv.vg.num("extent_size")
	if err != nil || ext < 1 || ext > 1<<32 {
		return fmt.Errorf("extent_size: %v", err)
	}
	pv.extent = ext * sectorSize
	for _, n := range pv.vg.sub("physical_volumes").subs {
		if strings.ReplaceAll(n.val("id"), "-", "") != pv.uuid {
			continue
		}
		start, err1 := n.num("pe_start")
		count, err2 := n.num("pe_count")
		if err := errors.Join(err1, err2); err != nil || start < 0 || count < 0 || start > 1<<52 || count > 1<<40 {
			return fmt.Errorf("physical volume %s: pe_start or pe_count: %v", n.name, err)
		}
		pv.pvName, pv.peStart, pv.peCount = n.name, start*sectorSize, count
	}
	if pv.pvName == "" {
		return errors.New("the metadata does not list this physical volume")
	}
	if pv.peStart != pv.data[0].start {
		return fmt.Errorf("pe_start %d differs from the data area at %d", pv.peStart, pv.data[0].start)
	}
	return nil
}

// lvmText returns the current metadata text of the metadata area m,
// checking the area header's and the text's checksums.
func lvmText(d dev, m span) (string, error) {
	h, err := d.read(m.start, lvmMDAHeaderSize)
	if err != nil {
		return "", err
	}
	size := m.end - m.start
	switch {
	case string(h[4:20]) != lvmMDAMagic || le.Uint32(h[lvmMDAVersion:]) != 1:
		return "", fmt.Errorf("metadata area at %d has no header", m.start)
	case le.Uint32(h) != lvmCRC(lvmInitialCRC, h[4:]):
		return "", fmt.Errorf("metadata area at %d: header checksum mismatch", m.start)
	case int64(le.Uint64(h[lvmMDAStart:])) != m.start || int64(le.Uint64(h[lvmMDASize:])) != size || size <= lvmMDAHeaderSize:
		return "", fmt.Errorf("metadata area at %d: header names another area", m.start)
	}
	off, n := le.Uint64(h[lvmRawLocns:]), le.Uint64(h[lvmRawLocns+8:])
	sum, flags := le.Uint32(h[lvmRawLocns+16:]), le.Uint32(h[lvmRawLocns+20:])
	if flags&lvmRawLocnIgnored != 0 || n == 0 || n > lvmMaxMetadata || off < lvmMDAHeaderSize || off >= uint64(size) {
		return "", fmt.Errorf("metadata area at %d holds no current metadata", m.start)
	}
	// The text is a ring after the header: it may wrap to its start.
	first := min(int64(n), size-int64(off))
	a, err := d.read(m.start+int64(off), int(first))
	if err != nil {
		return "", err
	}
	if rest := int64(n) - first; rest > 0 {
		if rest > size-lvmMDAHeaderSize {
			return "", errors.New("metadata larger than its area")
		}
		b, err := d.read(m.start+lvmMDAHeaderSize, int(rest))
		if err != nil {
			return "", err
		}
		a = append(a, b...)
	}
	if lvmCRC(lvmInitialCRC, a) != sum {
		return "", fmt.Errorf("metadata area at %d: text checksum mismatch", m.start)
	}
	return string(a), nil
}

// lvmNode is a section of LVM text metadata.
type lvmNode struct {
	name string
	keys []string
	vals [][]string // a value, or a list's items
	subs []*lvmNode
}

func (n *lvmNode) sub(name string) *lvmNode {
	for _, s := range n.subs {
		if s.name == name {
			return s
		}
	}
	return nil
}

// val returns the value of key, "" when absent or a list.
func (n *lvmNode) val(key string) string {
	if i := slices.Index(n.keys, key); i >= 0 && len(n.vals[i]) == 1 {
		return n.vals[i][0]
	}
	return ""
}

func (n *lvmNode) num(key string) (int64, error) {
	v, err := strconv.ParseInt(n.val(key), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %q is not a number", n.name, key, n.val(key))
	}
	return v, nil
}

// parseLVMNodes parses the tokens of LVM metadata into its sections.
func parseLVMNodes(toks []string) (*lvmNode, error) {
	p := &lvmParser{toks: toks}
	root, err := p.section("", 0)
	if err == nil && p.i < len(toks) {
		err = errors.New("unbalanced braces")
	}
	return root, err
}

type lvmParser struct {
	toks []string
	i    int
}

var errLVMSyntax = errors.New("LVM metadata syntax error")

func (p *lvmParser) next() (string, error) {
	if p.i >= len(p.toks) {
		return "", errLVMSyntax
	}
	p.i++
	return p.toks[p.i-1], nil
}

func (p *lvmParser) section(name string, depth int) (*lvmNode, error) {
	if depth > lvmMaxDepth {
		return nil, errors.New("LVM metadata nests too deep")
	}
	n := &lvmNode{name: name}
	for p.i < len(p.toks) {
		t, _ := p.next()
		if t == "}" {
			if depth == 0 {
				return nil, errLVMSyntax
			}
			return n, nil
		}
		op, err := p.next()
		if err != nil {
			return nil, err
		}
		switch op {
		case "{":
			s, err := p.section(t, depth+1)
			if err != nil {
				return nil, err
			}
			n.subs = append(n.subs, s)
		case "=":
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			n.keys, n.vals = append(n.keys, t), append(n.vals, v)
		default:
			return nil, errLVMSyntax
		}
	}
	if depth > 0 {
		return nil, errLVMSyntax
	}
	return n, nil
}

func (p *lvmParser) value() ([]string, error) {
	t, err := p.next()
	if err != nil || t != "[" {
		return []string{t}, err
	}
	var items []string
	for {
		t, err := p.next()
		switch {
		case err != nil:
			return nil, err
		case t == "]":
			return items, nil
		case t == ",":
		case t == "{" || t == "}" || t == "=" || t == "[":
			return nil, errLVMSyntax
		default:
			items = append(items, t)
		}
	}
}

// lvmSeg maps a logical volume's extents [le, le+count) to the PV's
// extents from pe.
type lvmSeg struct{ le, pe, count int64 }

// lvmLV is a logical volume and, when it is linear on this PV, its map.
type lvmLV struct {
	name   string
	segs   []lvmSeg
	linear bool
}

// usage returns the PV extents each logical volume uses and the volumes
// that could be read as devices. It fails when the PV's name shows up
// anywhere it cannot be understood.
func (pv *lvmPV) usage() (used []span, lvs []lvmLV, err error) {
	lvsNode := pv.vg.sub("logical_volumes")
	if lvsNode == nil {
		return nil, nil, nil
	}
	referenced := map[string]bool{}
	for _, lv := range lvsNode.subs {
		walkLVM(lv, func(v string) { referenced[v] = true })
	}
	for _, lvn := range lvsNode.subs {
		lv := lvmLV{name: lvn.name, linear: !referenced[lvn.name] && len(lvn.subs) > 0}
		mentions, understood := 0, 0
		walkLVM(lvn, func(v string) {
			if v == pv.pvName {
				mentions++
			}
		})
		for _, seg := range lvn.subs {
			areas, err := pv.segmentAreas(lvn.name, seg)
			if err != nil {
				return nil, nil, err
			}
			understood += len(areas)
			used = append(used, areas...)
			start, _ := seg.num("start_extent")
			stripes, _ := seg.num("stripe_count")
			if len(areas) == 1 && seg.val("type") == "striped" && stripes == 1 {
				lv.segs = append(lv.segs, lvmSeg{le: start, pe: areas[0].start, count: areas[0].end - areas[0].start})
			} else {
				lv.linear = false
			}
		}
		if mentions != understood {
			return nil, nil, fmt.Errorf("LV %s names %s where it is not understood", lvn.name, pv.pvName)
		}
		lvs = append(lvs, lv)
	}
	slices.SortFunc(used, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(used); i++ {
		if used[i].start < used[i-1].end {
			// Two volumes claim one extent: read neither as a device.
			for k := range lvs {
				lvs[k].linear = false
			}
		}
	}
	return used, lvs, nil
}

// segmentAreas returns the PV extents a segment of LV lv uses: each list
// item naming this PV is followed by its first extent.
func (pv *lvmPV) segmentAreas(lv string, seg *lvmNode) ([]span, error) {
	count, err1 := seg.num("extent_count")
	start, err2 := seg.num("start_extent")
	if err := errors.Join(err1, err2); err != nil || count < 1 || count > 1<<40 || start < 0 || start > 1<<40 {
		return nil, fmt.Errorf("LV %s %s: extent_count or start_extent: %v", lv, seg.name, err)
	}
	stripes, _ := seg.num("stripe_count")
	var out []span
	for k, key := range seg.keys {
		list := seg.vals[k]
		for i, item := range list {
			if item != pv.pvName {
				continue
			}
			var pe int64 = -1
			if i+1 < len(list) && len(list) > 1 {
				pe, _ = strconv.ParseInt(list[i+1], 10, 64)
			}
			if pe < 0 || pe > pv.peCount {
				return nil, fmt.Errorf("LV %s %s: %s names %s without a valid extent", lv, seg.name, key, pv.pvName)
			}
			area := count
			if key == "stripes" && stripes > 0 && count%stripes == 0 {
				area = count / stripes
			}
			out = append(out, span{start: pe, end: pe + area})
		}
	}
	return out, nil
}

// walkLVM calls fn with every value in n and its subsections.
func walkLVM(n *lvmNode, fn func(string)) {
	for _, v := range n.vals {
		for _, s := range v {
			fn(s)
		}
	}
	for _, s := range n.subs {
		walkLVM(s, fn)
	}
}

// lvmFreeSpans reports the PV (its unused extents) and each logical
// volume on it, with the free space of those read as devices.
func lvmFreeSpans(d dev, v volume, e SparsifiedFS, force bool, limit int, out *[]SparsifiedFS) ([][]span, error) {
	pv, err := readLVMPV(d)
	if err != nil {
		if isImageErr(err) {
			return nil, err
		}
		e.Kept = "unsure: " + err.Error()
		*out = append(*out, e)
		return [][]span{nil}, nil
	}
	used, lvs, err := pv.usage()
	if err != nil {
		e.Kept = "unsure: " + err.Error()
		*out = append(*out, e)
		return [][]span{nil}, nil
	}
	l := &freeList{limit: limit, window: d.size}
	next := int64(0)
	for _, u := range append(used, span{start: pv.peCount, end: pv.peCount}) {
		if u.start > next {
			if err := l.add(pv.peStart+next*pv.extent, pv.peStart+u.start*pv.extent); err != nil {
				return nil, err
			}
		}
		next = max(next, u.end)
	}
	l.protect(append([]span{{end: pv.peStart}}, pv.mdas...))
	*out = append(*out, e)
	found := [][]span{clipSpans(l.spans, v.win.start, v.others)}
	for _, lv := range lvs {
		le := SparsifiedFS{Where: fmt.Sprintf("%s, LV %s/%s", v.where, pv.vg.name, lv.name)}
		if !lv.linear {
			le.Kept = "not a linear volume on this PV: copied whole"
			*out = append(*out, le)
			found = append(found, nil)
			continue
		}
		spans, err := pv.lvFree(d, lv, &le, force, limit)
		if err != nil {
			return nil, err
		}
		*out = append(*out, le)
		found = append(found, clipSpans(spans, v.win.start, v.others))
	}
	return found, nil
}

// lvFree reads a linear LV as a device and returns its filesystem's free
// ranges in offsets of the PV.
func (pv *lvmPV) lvFree(d dev, lv lvmLV, e *SparsifiedFS, force bool, limit int) ([]span, error) {
	r := &lvReader{d: d, pv: pv, segs: lv.segs}
	for _, s := range lv.segs {
		r.size = max(r.size, (s.le+s.count)*pv.extent)
	}
	e.Size = r.size
	if len(lv.segs) > 0 {
		e.Start = d.base + pv.peStart + lv.segs[0].pe*pv.extent
	}
	ld := dev{r: r, size: r.size, budget: d.budget}
	fs, err := detect(ld, e.Where, &Report{})
	if err != nil {
		return nil, err
	}
	if fs == nil {
		e.Kept = "no filesystem recognised"
		return nil, nil
	}
	e.Type = fs.Type
	if fs.Type == "LVM2_member" {
		e.Kept = "nested LVM: copied whole"
		return nil, nil
	}
	spans, kept, err := runParser(ld, fs.Type, force, limit)
	if err != nil || kept != "" {
		e.Kept = kept
		return nil, err
	}
	var out []span
	for _, s := range spans {
		out = append(out, r.toPV(s)...)
	}
	slices.SortFunc(out, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	return out, nil
}

// lvReader reads a linear logical volume through its segments; holes
// between segments read as an error.
type lvReader struct {
	d    dev
	pv   *lvmPV
	segs []lvmSeg
	size int64
}

// seg returns the segment holding LV offset off.
func (r *lvReader) seg(off int64) (lvmSeg, bool) {
	for _, s := range r.segs {
		if off >= s.le*r.pv.extent && off < (s.le+s.count)*r.pv.extent {
			return s, true
		}
	}
	return lvmSeg{}, false
}

func (r *lvReader) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		s, ok := r.seg(pos)
		if !ok {
			return done, io.ErrUnexpectedEOF
		}
		segEnd := (s.le + s.count) * r.pv.extent
		n := int(min(int64(len(p)-done), segEnd-pos))
		phys := r.pv.peStart + s.pe*r.pv.extent + pos - s.le*r.pv.extent
		if phys+int64(n) > r.d.size {
			return done, io.ErrUnexpectedEOF
		}
		m, err := r.d.r.ReadAt(p[done:done+n], r.d.base+phys)
		done += m
		if m < n {
			return done, err
		}
	}
	return done, nil
}

// toPV maps a range of the LV to ranges of the PV.
func (r *lvReader) toPV(s span) []span {
	var out []span
	for _, g := range r.segs {
		lo, hi := max(s.start, g.le*r.pv.extent), min(s.end, (g.le+g.count)*r.pv.extent)
		if lo < hi {
			base := r.pv.peStart + g.pe*r.pv.extent - g.le*r.pv.extent
			out = append(out, span{start: base + lo, end: base + hi})
		}
	}
	return out
}
