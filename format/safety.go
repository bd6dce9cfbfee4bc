package format

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Finding kinds.
const (
	// FindingReference: the image names another file (backing file,
	// extent, parent, data file); the finding says whether policy lets it
	// be opened.
	FindingReference = "reference"
	// FindingConfusion: the file could be read as more than one format,
	// or a raw image holds another format's header.
	FindingConfusion = "format-confusion"
	// FindingSize: sizes a header claims that do not fit the file.
	FindingSize = "size"
)

// Finding is one thing an operator should know before trusting an image
// from a stranger.
type Finding struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func (f Finding) String() string { return f.Kind + ": " + f.Message }

// Signatures searched for inside raw images (the header magic of each
// non-raw format at its fixed offset).
var signatures = []struct {
	name string
	off  int64
	sig  string
}{
	{"qcow2", 0, "QFI\xfb"},
	{"vmdk", 0, "KDMV"},
	{"vmdk (COWD)", 0, "COWD"},
	{"vmdk descriptor", 0, "# Disk DescriptorFile"},
	{"vpc", 0, "conectix"},
	{"vhdx", 0, "vhdxfile"},
	{"qed", 0, "QED\x00"},
	{"vdi", vdiSignatureOff, vdiSignature},
	{"parallels", 0, "WithoutFreeSpace\x02\x00\x00\x00"},
	{"parallels", 0, "WithouFreSpacExt\x02\x00\x00\x00"},
	{"bochs", 0, "Bochs Virtual HD Image\x00"},
	{"cloop", 0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop "},
}

// Partition table layout (MBR and GPT), to find partition starts.
const (
	sectorLen       = 512
	mbrEntries      = 446 // four 16-byte entries
	mbrEntryLen     = 16
	mbrTypeOff      = 4 // partition type
	mbrStartOff     = 8 // first LBA, little-endian 32 bits
	mbrSigOff       = 510
	mbrSig          = "\x55\xaa"
	mbrTypeGPT      = 0xee // protective MBR entry
	gptSig          = "EFI PART"
	gptEntriesLBA   = 72 // u64: LBA of the partition entry array
	gptNumEntries   = 80 // u32
	gptEntrySize    = 84 // u32
	gptEntryFirst   = 32 // u64 first LBA, after the 16-byte type GUID
	maxGPTEntries   = 1024
	minGPTEntrySize = 128
	maxGPTEntrySize = 4096

	vdiSignatureOff = 0x40
	vdiSignature    = "\x7f\x10\xda\xbe" // 0xbeda107f little-endian
	sigReadLen      = 96                 // covers every signature above
)

// Ratio above which a virtual size is reported as out of proportion to
// the file: an empty 1 TiB qcow2 is a few hundred KiB, well below it.
const absurdRatio = 1 << 24

// Findings lists the safety findings about the image at path, opened as
// img (nil when it could not be opened) under policy p: every other file
// the image and its backing chain refer to and whether p lets it be
// opened (and, under Untrusted, whether the default policy would), format
// confusion, and sizes out of proportion to the file. It opens no file but
// path itself; resolving a reference may stat files, never open them.
func Findings(path string, img Image, p Policy) []Finding {
	var out []Finding
	add := func(kind, msg string, args ...any) {
		out = append(out, Finding{kind, fmt.Sprintf(msg, args...)})
	}
	top, topImg := "", img
	if img != nil {
		top = img.Info().Format
	}
	name := path
	for depth := 0; img != nil && depth <= MaxChainDepth; depth++ {
		info := img.Info()
		for _, r := range references(info) {
			what := fmt.Sprintf("%s refers to %s %q", name, r.kind, r.ref)
			if _, err := p.Resolve(name, r.ref); err == nil {
				add(FindingReference, "%s: allowed by policy", what)
				continue
			} else if !p.Untrusted {
				add(FindingReference, "%s: refused: %v", what, err)
				continue
			} else {
				what += ": refused: " + err.Error()
			}
			if resolved, err := (Policy{}).Resolve(name, r.ref); err != nil {
				add(FindingReference, "%s; the default policy refuses it too: %v", what, err)
			} else {
				add(FindingReference, "%s; the default policy would open %s", what, resolved)
			}
		}
		if info.Backing == nil {
			break
		}
		name, img = info.FullBackingFile, info.Backing
	}

	f, err := OpenFile(path)
	if err != nil {
		add(FindingConfusion, "%s: not examined: %v", path, err)
		return out
	}
	defer f.Close()
	out = append(out, Confusion(f, top)...)
	return append(out, SizeFindings(topImg, f.Size())...)
}

// Confusion reports format confusion in f, opened as format (qemu's name;
// "" when it was not opened): more than one format's probe matching it, a
// format diskimg does not read, and, for a raw image, another format's
// signature at its start or at the start of one of its MBR or GPT
// partitions (the pattern of CVE-2024-32498: a raw disk carrying a qcow2
// header in a partition).
func Confusion(f File, format string) []Finding {
	var out []Finding
	add := func(msg string, args ...any) {
		out = append(out, Finding{FindingConfusion, fmt.Sprintf(msg, args...)})
	}
	var matched, unread []string
	for _, ft := range Recognised() {
		if ft.Name != "raw" && ft.Probe(f) {
			matched = append(matched, ft.Name)
			if ft.Unread {
				unread = append(unread, ft.Name)
			}
		}
	}
	if len(matched) > 1 && !family(matched) {
		add("the file matches the signatures of several formats: %s", strings.Join(matched, ", "))
	}
	start := signatureAt(f, 0)
	for _, name := range unread {
		switch {
		case format == "":
			add("the file is a %s image, a format diskimg does not read", name)
		case format == "raw" && start != name:
			add("opened as raw, but it is a %s image, a format diskimg does not read", name)
		}
	}
	if format == "raw" || format == "" && len(matched) == 0 {
		if start != "" {
			add("opened as raw, but it starts with a %s header", start)
		}
		if f.Size() >= sectorLen {
			var foot [8]byte
			if n, _ := f.ReadAt(foot[:], f.Size()/sectorLen*sectorLen-sectorLen); n == 8 && string(foot[:]) == "conectix" {
				add("opened as raw, but its last sector is a vpc (VHD) footer")
			}
		}
		for _, start := range partitionStarts(f) {
			if start == 0 {
				continue
			}
			if s := signatureAt(f, start); s != "" {
				add("opened as raw, but the partition at byte %d starts with a %s header (a guest could make a converter read it as an image)", start, s)
			}
		}
	}
	return out
}

// family reports formats whose probes legitimately overlap: variants
// sharing a signature.
func family(names []string) bool {
	sort.Strings(names)
	key := strings.Join(names, ",")
	return key == "vpc,zvhd" || key == "vpc,zvhd2"
}

// signatureAt names the format whose signature f has at off, or "".
func signatureAt(f File, off int64) string {
	var b [sigReadLen]byte
	n, _ := f.ReadAt(b[:], off)
	for _, s := range signatures {
		if s.off+int64(len(s.sig)) <= int64(n) && string(b[s.off:s.off+int64(len(s.sig))]) == s.sig {
			return s.name
		}
	}
	return ""
}

// partitionStarts returns the byte offsets of the partitions an MBR or
// GPT in f's first sectors describes, within the file.
func partitionStarts(f File) []int64 {
	var mbr [sectorLen]byte
	if n, _ := f.ReadAt(mbr[:], 0); n != sectorLen || string(mbr[mbrSigOff:]) != mbrSig {
		return nil
	}
	le := binary.LittleEndian
	var starts []int64
	gpt := false
	for i := 0; i < 4; i++ {
		e := mbr[mbrEntries+i*mbrEntryLen:]
		if e[mbrTypeOff] == mbrTypeGPT {
			gpt = true
			continue
		}
		if e[mbrTypeOff] == 0 {
			continue
		}
		if start := int64(le.Uint32(e[mbrStartOff:])) * sectorLen; start > 0 && start < f.Size() {
			starts = append(starts, start)
		}
	}
	if !gpt {
		return starts
	}
	var h [sectorLen]byte
	if n, _ := f.ReadAt(h[:], sectorLen); n != sectorLen || string(h[:8]) != gptSig {
		return starts
	}
	entriesLBA := le.Uint64(h[gptEntriesLBA:])
	num := int64(le.Uint32(h[gptNumEntries:]))
	size := int64(le.Uint32(h[gptEntrySize:]))
	if num > maxGPTEntries || size < minGPTEntrySize || size > maxGPTEntrySize || entriesLBA > uint64(f.Size()/sectorLen) {
		return starts
	}
	arr := make([]byte, num*size)
	n, _ := f.ReadAt(arr, int64(entriesLBA)*sectorLen)
	for i := int64(0); (i+1)*size <= int64(n); i++ {
		e := arr[i*size:]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first := le.Uint64(e[gptEntryFirst:])
		if first > 0 && first < uint64(f.Size()/sectorLen) {
			starts = append(starts, int64(first)*sectorLen)
		}
	}
	return starts
}

// reference is another file an image names.
type reference struct{ kind, ref string }

func references(info *Info) []reference {
	var refs []reference
	if info.BackingFile != "" {
		refs = append(refs, reference{"backing file", info.BackingFile})
	}
	for _, e := range info.ExtentFiles {
		refs = append(refs, reference{"extent file", e})
	}
	// The data file lives in the format's specific data ("data-file").
	if info.Specific != nil {
		if js, err := json.Marshal(info.Specific); err == nil {
			var m map[string]any
			if json.Unmarshal(js, &m) == nil {
				if s, ok := m["data-file"].(string); ok && s != "" {
					refs = append(refs, reference{"external data file", s})
				}
			}
		}
	}
	return refs
}

// SizeFindings reports a virtual size out of all proportion to the file
// holding it: harmless to read, but a converter writing raw or fixed
// output would fill a disk from a tiny upload.
func SizeFindings(img Image, fileSize int64) []Finding {
	if img == nil {
		return nil
	}
	size := img.Size()
	if fileSize <= 0 {
		fileSize = 1
	}
	if size/fileSize > absurdRatio {
		return []Finding{{FindingSize, fmt.Sprintf("virtual size %d bytes is %d times the file's %d bytes", size, size/fileSize, fileSize)}}
	}
	return nil
}
