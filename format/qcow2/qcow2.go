// Package qcow2 reads and writes QEMU copy-on-write version 2 and 3
// images (docs/interop/qcow2.txt in the qemu tree). Every header field and
// table entry is validated before use; the backing file is the chain's
// (format.Layer). Why this is not go-qcow2reader: see the README,
// "Dependencies".
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/diskimg/diskimg/format"
)

// Name is qemu's name for the format.
const Name = "qcow2"

// Priority orders qcow2 among the probed formats; its magic is unambiguous.
const Priority = 10

// Header layout (all fields big-endian).
const (
	magic = "QFI\xfb" // bytes 0-3

	offVersion           = 4
	offBackingFileOffset = 8
	offBackingFileSize   = 16
	offClusterBits       = 20
	offSize              = 24
	offCryptMethod       = 32
	offL1Size            = 36
	offL1TableOffset     = 40
	offIncompatible      = 72
	offCompatible        = 80
	offAutoclear         = 88
	offRefcountOrder     = 96
	offHeaderLength      = 100
	offCompressionType   = 104 // present when header_length > 104

	headerLenV2    = 72  // version 2 headers end after snapshots_offset
	minHeaderLenV3 = 104 // version 3 headers include header_length
)

// Limits from the spec and qemu's implementation.
const (
	minClusterBits      = 9  // 512-byte clusters
	maxClusterBits      = 21 // qemu opens clusters up to 2 MiB
	minClusterBitsExtL2 = 14 // subclusters need clusters of 16 KiB or more
	maxBackingNameLen   = 1023
	maxL1Bytes          = 32 << 20 // qemu's QCOW_MAX_L1_SIZE
	maxRefcountOrder    = 6        // refcount_bits 64
	v2RefcountOrder     = 4        // version 2 always has 16-bit refcounts
)

// crypt_method values.
const (
	cryptNone = 0
	cryptAES  = 1
	cryptLUKS = 2
)

// incompatible_features bits.
const (
	incDirty      = 1 << 0
	incCorrupt    = 1 << 1
	incDataFile   = 1 << 2
	incCompress   = 1 << 3
	incExtendedL2 = 1 << 4
	incKnown      = incDirty | incCorrupt | incDataFile | incCompress | incExtendedL2
)

// compatible_features and autoclear_features bits.
const (
	compatLazyRefcounts = 1 << 0
	autoclearBitmaps    = 1 << 0
	autoclearRawData    = 1 << 1
)

// Bitmaps extension and bitmap directory layout.
const (
	bitmapsExtLen     = 24 // nb_bitmaps (4), reserved (4), directory size (8), offset (8)
	maxBitmaps        = 65535
	bitmapEntryLen    = 24 // fixed part of a directory entry
	maxBitmapNameLen  = 1023
	bitmapFlagInUse   = 1 << 0
	bitmapFlagAuto    = 1 << 1
	maxGranularityBit = 31 // qemu accepts 9..31
)

// compression_type values.
const (
	compressZlib = 0 // raw deflate, no zlib header
	compressZstd = 1
)

// Header extension types; each extension is type (4), length (4), data
// padded to a multiple of 8.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extDataFile      = 0x44415441
	extBitmaps       = 0x23852875
	extHeaderLen     = 8
	featureNameLen   = 48 // type (1), bit (1), name (46)
)

// Table entry layout.
const (
	offsetMask     = 0x00fffffffffffe00 // bits 9-55: host offset of an L2 table or cluster
	l2Compressed   = 1 << 62
	l2Copied       = 1 << 63 // refcount is one; with a data file, marks host offset 0 as allocated
	l2ZeroFlag     = 1       // standard cluster reads as zeros
	subclusters    = 32      // per cluster with extended L2 entries
	compressedUnit = 512     // compressed sizes count 512-byte sectors
)

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.Opens(Open)})
}

// Probe reports whether f starts with the qcow2 magic. Version 1 shares
// the magic and belongs to the qcow reader; any other version is ours, so
// an unsupported one gets a clear error rather than a raw fallback.
func Probe(f format.File) bool {
	var b [8]byte
	n, _ := f.ReadAt(b[:], 0)
	return n == 8 && string(b[:4]) == magic && binary.BigEndian.Uint32(b[4:]) != 1
}

// Specific is qemu-img 7.2's "format-specific" data for qcow2, fields in
// qemu's order.
type Specific struct {
	Compat          string   `json:"compat"`
	CompressionType string   `json:"compression-type"`
	LazyRefcounts   *bool    `json:"lazy-refcounts,omitempty"`
	Bitmaps         []Bitmap `json:"bitmaps,omitempty"`
	RefcountBits    int      `json:"refcount-bits"`
	DataFile        string   `json:"data-file,omitempty"`
	DataFileRaw     *bool    `json:"data-file-raw,omitempty"`
	Corrupt         *bool    `json:"corrupt,omitempty"`
	ExtendedL2      *bool    `json:"extended-l2,omitempty"`
}

// Bitmap is one persistent dirty bitmap, as qemu-img info lists it.
type Bitmap struct {
	Flags       []string `json:"flags"` // "in-use", "auto"
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
}

// headerV2 is the version 2 header, the first 72 bytes of every image;
// headerV3 the 32 bytes version 3 adds after it. binary.Read decodes them.
type headerV2 struct {
	Magic                 [4]byte
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
}

type headerV3 struct {
	IncompatibleFeatures uint64
	CompatibleFeatures   uint64
	AutoclearFeatures    uint64
	RefcountOrder        uint32
	HeaderLength         uint32
}

// Image is an open qcow2 image: this file's layer of a backing chain.
type Image struct {
	format.Base
	data      format.File // holds guest clusters: File, or the external data file
	dataClose io.Closer   // the external data file, closed with the image
	backing   *format.Backing

	clusterBits uint
	clusterSize int64
	extL2       bool
	l2Entries   int64 // entries per L2 table
	entrySize   int64 // bytes per L2 entry
	hasDataFile bool
	compression byte
	l1          []uint64
	l1Offset    int64
	snapshots   []snapshot

	mu     sync.Mutex
	l2     l2Cache
	zcache zCache
	// prealloc is whether qemu would count the image as preallocated.
	prealloc struct {
		once sync.Once
		yes  bool
	}
}

func errorf(field string, off int64, reason string, args ...any) error {
	return format.Errorf(Name, field, off, reason, args...)
}

// Open opens f as a qcow2 image; its external data file comes from o,
// under o's policy. The backing file is the chain's (format.Layer).
func Open(f format.File, o *format.Opener) (*Image, error) {
	if !Probe(f) {
		return nil, fmt.Errorf("qcow2: no %q magic: %w", magic, format.ErrWrongType)
	}
	if o == nil {
		o = format.NewOpener(format.Policy{Untrusted: true})
	}
	img, err := parse(f)
	if err != nil {
		return nil, err
	}
	if err := img.openDataFile(o); err != nil {
		return nil, err
	}
	return img, nil
}

// parse validates the header and loads the L1 table.
func parse(f format.File) (*Image, error) {
	fileSize := f.Size()
	var fixed [minHeaderLenV3]byte
	hdr := fixed[:headerLenV2]
	if err := format.ReadFull(f, hdr, 0, Name, "header"); err != nil {
		return nil, err
	}
	var v2 headerV2
	if err := binary.Read(bytes.NewReader(hdr), binary.BigEndian, &v2); err != nil {
		return nil, errorf("header", 0, "%v", err)
	}
	if v2.Version != 2 && v2.Version != 3 {
		return nil, errorf("version", offVersion, "unsupported version %d (want 2 or 3)", v2.Version)
	}
	if v2.ClusterBits < minClusterBits || v2.ClusterBits > maxClusterBits {
		return nil, errorf("cluster_bits", offClusterBits, "%d is outside %d..%d", v2.ClusterBits, minClusterBits, maxClusterBits)
	}
	img := &Image{
		Base:        format.Base{File: f},
		data:        f,
		clusterBits: uint(v2.ClusterBits),
		clusterSize: 1 << v2.ClusterBits,
		entrySize:   8,
	}
	if v2.Size > format.MaxVirtualSize {
		return nil, errorf("size", offSize, "virtual size %d exceeds the %d-byte limit", v2.Size, int64(format.MaxVirtualSize))
	}
	img.Meta.VirtualSize = int64(v2.Size)

	v3 := headerV3{RefcountOrder: v2RefcountOrder, HeaderLength: headerLenV2}
	if v2.Version == 3 {
		hdr = fixed[:]
		if err := format.ReadFull(f, hdr, 0, Name, "header"); err != nil {
			return nil, err
		}
		if err := binary.Read(bytes.NewReader(hdr[headerLenV2:]), binary.BigEndian, &v3); err != nil {
			return nil, errorf("header", headerLenV2, "%v", err)
		}
		switch {
		case v3.HeaderLength < minHeaderLenV3 || v3.HeaderLength%8 != 0:
			return nil, errorf("header_length", offHeaderLength, "%d is not a multiple of 8 of at least %d", v3.HeaderLength, minHeaderLenV3)
		case int64(v3.HeaderLength) > img.clusterSize:
			return nil, errorf("header_length", offHeaderLength, "%d exceeds the cluster size %d", v3.HeaderLength, img.clusterSize)
		}
		if v3.RefcountOrder > maxRefcountOrder {
			return nil, errorf("refcount_order", offRefcountOrder, "%d exceeds %d", v3.RefcountOrder, maxRefcountOrder)
		}
	}
	inc := uint64(v3.IncompatibleFeatures)

	// The header extensions and the backing file name live in the first
	// cluster; extensions end where the backing file name starts.
	extEndOff := img.clusterSize
	if v2.BackingFileOffset != 0 && v2.BackingFileOffset < uint64(extEndOff) {
		extEndOff = int64(v2.BackingFileOffset)
	}
	exts, err := readExtensions(f, int64(v3.HeaderLength), min(extEndOff, fileSize))
	if err != nil {
		return nil, err
	}
	if unknown := inc &^ incKnown; unknown != 0 {
		return nil, errorf("incompatible_features", offIncompatible, "unsupported feature bits %#x%s", unknown, exts.featureNames(unknown))
	}

	switch v2.CryptMethod {
	case cryptNone:
	case cryptAES, cryptLUKS:
		img.Meta.Encrypted = true
	default:
		return nil, errorf("crypt_method", offCryptMethod, "unknown encryption method %d", v2.CryptMethod)
	}

	if v3.HeaderLength > offCompressionType {
		var b [1]byte
		if err := format.ReadFull(f, b[:], offCompressionType, Name, "compression_type"); err != nil {
			return nil, err
		}
		img.compression = b[0]
	}
	switch {
	case img.compression != compressZlib && img.compression != compressZstd:
		return nil, errorf("compression_type", offCompressionType, "unknown compression type %d", img.compression)
	case img.compression != compressZlib && inc&incCompress == 0:
		return nil, errorf("compression_type", offCompressionType, "compression type %d without the compression type feature bit", img.compression)
	case img.compression == compressZlib && inc&incCompress != 0:
		return nil, errorf("incompatible_features", offIncompatible, "compression type feature bit set with zlib compression")
	}

	if inc&incExtendedL2 != 0 {
		if v2.ClusterBits < minClusterBitsExtL2 {
			return nil, errorf("cluster_bits", offClusterBits, "extended L2 entries need clusters of at least %d bytes, have %d", 1<<minClusterBitsExtL2, img.clusterSize)
		}
		img.extL2 = true
		img.entrySize = 16
	}
	img.l2Entries = img.clusterSize / img.entrySize

	if inc&incDataFile != 0 {
		if exts.dataFile == "" {
			return nil, errorf("incompatible_features", offIncompatible, "external data file bit set but the image names no data file")
		}
		img.hasDataFile = true
	}

	// Backing file name.
	if v2.BackingFileOffset != 0 && v2.BackingFileSize != 0 {
		switch {
		case v2.BackingFileSize > maxBackingNameLen:
			return nil, errorf("backing_file_size", offBackingFileSize, "%d exceeds %d", v2.BackingFileSize, maxBackingNameLen)
		case v2.BackingFileOffset > uint64(img.clusterSize) || uint64(v2.BackingFileSize) > uint64(img.clusterSize)-v2.BackingFileOffset:
			return nil, errorf("backing_file_offset", offBackingFileOffset, "backing file name at %d (%d bytes) is outside the first cluster", v2.BackingFileOffset, v2.BackingFileSize)
		}
		name := make([]byte, v2.BackingFileSize)
		if err := format.ReadFull(f, name, int64(v2.BackingFileOffset), Name, "backing_file_offset"); err != nil {
			return nil, err
		}
		img.backing = &format.Backing{Names: []string{string(name)}, Format: exts.backingFormat}
	}

	// L1 table: it must cover the virtual size, and qemu refuses more
	// than 32 MiB of it.
	l1Cover := img.l2Entries * img.clusterSize
	need := (img.Size() + l1Cover - 1) / l1Cover
	switch {
	case int64(v2.L1Size)*8 > maxL1Bytes:
		return nil, errorf("l1_size", offL1Size, "%d entries exceed qemu's %d-byte L1 table limit", v2.L1Size, maxL1Bytes)
	case int64(v2.L1Size) < need:
		return nil, errorf("l1_size", offL1Size, "%d entries cannot map a virtual size of %d bytes (need %d)", v2.L1Size, img.Size(), need)
	}
	if need > 0 {
		img.l1Offset = int64(v2.L1TableOffset)
		if v2.L1TableOffset == 0 || v2.L1TableOffset&uint64(img.clusterSize-1) != 0 || v2.L1TableOffset > uint64(fileSize) {
			return nil, errorf("l1_table_offset", offL1TableOffset, "offset %d is zero, not cluster-aligned or past the end of the file", v2.L1TableOffset)
		}
		if err := format.CheckTable(Name, "l1_table_offset", img.l1Offset, need*8, fileSize); err != nil {
			return nil, err
		}
		raw := make([]byte, need*8)
		if err := format.ReadFull(f, raw, img.l1Offset, Name, "l1_table_offset"); err != nil {
			return nil, err
		}
		img.l1 = make([]uint64, need)
		for i := range img.l1 {
			img.l1[i] = binary.BigEndian.Uint64(raw[i*8:])
		}
	}

	if img.snapshots, err = readSnapshots(f, v2.NbSnapshots, v2.SnapshotsOffset, img.clusterSize); err != nil {
		return nil, err
	}
	for _, s := range img.snapshots {
		img.Meta.Snapshots = append(img.Meta.Snapshots, s.info)
	}

	img.l2.max = max(2, int(l2CacheBytes/img.clusterSize))
	img.Meta.Format = Name
	img.Meta.ClusterSize = img.clusterSize
	img.Meta.Dirty = inc&incDirty != 0
	spec := img.specific(v2.Version, v3, exts)
	// qemu ignores the bitmaps extension unless the autoclear bit vouches
	// for it.
	if exts.bitmaps != nil && uint64(v3.AutoclearFeatures)&autoclearBitmaps != 0 {
		if spec.Bitmaps, err = readBitmaps(f, exts.bitmaps, exts.bitmapsOff); err != nil {
			return nil, err
		}
	}
	img.Meta.Specific = spec
	return img, nil
}

func (img *Image) specific(version uint32, v3 headerV3, exts *extensions) *Specific {
	s := &Specific{Compat: "0.10", CompressionType: "zlib", RefcountBits: 1 << v3.RefcountOrder}
	if img.compression == compressZstd {
		s.CompressionType = "zstd"
	}
	if version == 2 {
		return s
	}
	inc := uint64(v3.IncompatibleFeatures)
	flag := func(b bool) *bool { return &b }
	s.Compat = "1.1"
	s.LazyRefcounts = flag(uint64(v3.CompatibleFeatures)&compatLazyRefcounts != 0)
	if img.hasDataFile {
		s.DataFile = exts.dataFile
		s.DataFileRaw = flag(uint64(v3.AutoclearFeatures)&autoclearRawData != 0)
	}
	s.Corrupt = flag(inc&incCorrupt != 0)
	s.ExtendedL2 = flag(inc&incExtendedL2 != 0)
	return s
}

// extensions holds what the header extensions say.
type extensions struct {
	backingFormat string
	dataFile      string
	names         []byte // feature name table entries
	bitmaps       []byte // bitmaps extension data
	bitmapsOff    int64
}

// readExtensions walks the header extension area [start, end).
func readExtensions(f format.File, start, end int64) (*extensions, error) {
	x := &extensions{}
	if end <= start {
		return x, nil
	}
	area := make([]byte, end-start)
	if err := format.ReadFull(f, area, start, Name, "header extensions"); err != nil {
		return nil, err
	}
	// Each extension takes at least 8 bytes, so the loop is bounded by the
	// area, itself at most one cluster.
	for pos := int64(0); pos+extHeaderLen <= int64(len(area)); {
		typ := binary.BigEndian.Uint32(area[pos:])
		length := int64(binary.BigEndian.Uint32(area[pos+4:]))
		if typ == extEnd {
			break
		}
		pos += extHeaderLen
		if length > int64(len(area))-pos {
			return nil, errorf("header extension length", start+pos-4, "extension %#x of %d bytes overruns the header extension area", typ, length)
		}
		data := area[pos : pos+length]
		switch typ {
		case extBackingFormat:
			x.backingFormat = string(data)
		case extDataFile:
			x.dataFile = string(data)
		case extFeatureNames:
			x.names = data
		case extBitmaps:
			x.bitmaps, x.bitmapsOff = data, start+pos
		}
		pos += (length + 7) &^ 7
	}
	return x, nil
}

// readBitmaps lists the bitmap directory named by the bitmaps extension
// ext, found at file offset extOff.
func readBitmaps(f format.File, ext []byte, extOff int64) ([]Bitmap, error) {
	if len(ext) < bitmapsExtLen {
		return nil, errorf("bitmaps extension", extOff, "%d bytes, want %d", len(ext), bitmapsExtLen)
	}
	be := binary.BigEndian
	n := int64(be.Uint32(ext))
	dirSize := be.Uint64(ext[8:])
	dirOff := be.Uint64(ext[16:])
	if n == 0 || n > maxBitmaps {
		return nil, errorf("nb_bitmaps", extOff, "%d bitmaps (want 1..%d)", n, maxBitmaps)
	}
	if dirSize > format.MaxTableBytes || dirOff > uint64(f.Size()) {
		return nil, errorf("bitmap_directory_offset", extOff+16, "directory of %d bytes at %d is outside the file", dirSize, dirOff)
	}
	if err := format.CheckTable(Name, "bitmap_directory_offset", int64(dirOff), int64(dirSize), f.Size()); err != nil {
		return nil, err
	}
	dir := make([]byte, dirSize)
	if err := format.ReadFull(f, dir, int64(dirOff), Name, "bitmap_directory_offset"); err != nil {
		return nil, err
	}
	list := make([]Bitmap, 0, min(n, int64(len(dir))/bitmapEntryLen))
	pos := 0
	for i := int64(0); i < n; i++ {
		entryOff := int64(dirOff) + int64(pos)
		if len(dir)-pos < bitmapEntryLen {
			return nil, errorf("bitmap directory entry", entryOff, "bitmap %d does not fit in the %d-byte directory", i, dirSize)
		}
		e := dir[pos:]
		flags := be.Uint32(e[12:])
		granBits := e[17]
		nameLen := int(be.Uint16(e[18:]))
		extra := int64(be.Uint32(e[20:]))
		total := int64(bitmapEntryLen) + extra + int64(nameLen)
		switch {
		case nameLen == 0 || nameLen > maxBitmapNameLen:
			return nil, errorf("bitmap directory entry", entryOff, "name of %d bytes", nameLen)
		case total > int64(len(dir)-pos):
			return nil, errorf("bitmap directory entry", entryOff, "entry of %d bytes overruns the directory", total)
		case granBits > maxGranularityBit:
			return nil, errorf("bitmap directory entry", entryOff, "granularity_bits %d", granBits)
		}
		b := Bitmap{Flags: []string{}, Granularity: 1 << granBits,
			Name: string(e[int64(bitmapEntryLen)+extra : total])}
		if flags&bitmapFlagInUse != 0 {
			b.Flags = append(b.Flags, "in-use")
		}
		if flags&bitmapFlagAuto != 0 {
			b.Flags = append(b.Flags, "auto")
		}
		list = append(list, b)
		pos += int((total + 7) &^ 7)
		if pos > len(dir) {
			pos = len(dir)
		}
	}
	return list, nil
}

// featureNames names the incompatible bits in mask from the feature name
// table, as qemu does in its error message.
func (x *extensions) featureNames(mask uint64) string {
	var names []string
	for i := 0; i+featureNameLen <= len(x.names); i += featureNameLen {
		e := x.names[i : i+featureNameLen]
		if e[0] == 0 && e[1] < 64 && mask&(1<<e[1]) != 0 {
			names = append(names, fmt.Sprintf("%q", strings.TrimRight(string(e[2:]), "\x00")))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

// openDataFile opens the external data file.
func (img *Image) openDataFile(o *format.Opener) error {
	if !img.hasDataFile {
		return nil
	}
	name := img.Meta.Specific.(*Specific).DataFile
	df, err := o.OpenRelated(img.File.Name(), name)
	if err != nil {
		return fmt.Errorf("qcow2: external data file %q: %w", name, err)
	}
	img.data, img.dataClose = df, df
	return nil
}

// Backing names the backing file; nil when there is none.
func (img *Image) Backing() *format.Backing { return img.backing }

// Close closes the image and its data file.
func (img *Image) Close() error {
	var err error
	if img.dataClose != nil {
		err = img.dataClose.Close()
		img.dataClose = nil
	}
	img.mu.Lock()
	if img.zcache.zstd != nil {
		img.zcache.zstd.Close()
		img.zcache.zstd = nil
	}
	img.mu.Unlock()
	return errors.Join(err, img.Base.Close())
}
