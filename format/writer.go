package format

// The writer contract.
//
// A conversion has three parties: a source Image, the engine (package
// convert) and a Writer for the output format. The engine plans the
// conversion from the source's extent map, reads the data ranges with
// several workers, finds zero runs in them and hands the Writer a sequence
// of Blocks that covers the virtual disk exactly once, in increasing guest
// offset order:
//
//	New(dst, WriteOptions{Size, Layout, Options, Compress})  once, before any byte
//	BlockSize()                                             once, after New
//	Encode(b)    for Data blocks, concurrently from several goroutines
//	Write(b)     for every block, from one goroutine, in guest order
//	Close()      once, after the last Write, on success only
//
// The Layout in WriteOptions tells the Writer up front which guest ranges
// may receive Data blocks, so it can place its tables (L1/L2, grain
// directory, BAT) before any data and stream to a destination that cannot
// seek. On such a destination a block the Layout called Data may still
// arrive as Zero (the engine found it all zero); a writer whose tables are
// already written stores it as data zeros. On a seekable destination a
// writer allocates lazily and leaves such blocks unallocated. A writer
// whose output would then differ between the two destinations implements
// DataScanner: the engine first reads the data once to tell it which
// blocks hold data, so a pipe gets the same bytes as a file.

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// Target is the destination of a Writer. It is at least an io.Writer (a
// pipe, standard output). A regular file also implements RandomTarget; use
// Seekable to find out, never a bare type assertion: an *os.File for a pipe
// has the methods but its Seek fails.
type Target interface {
	io.Writer
}

// RandomTarget is a Target that can seek, write at offsets and set its
// length: a regular file.
type RandomTarget interface {
	io.Writer
	io.WriterAt
	io.Seeker
	Truncate(size int64) error
}

// Seekable returns t as a RandomTarget when it really can seek.
func Seekable(t Target) (RandomTarget, bool) {
	r, ok := t.(RandomTarget)
	if !ok {
		return nil, false
	}
	if _, err := r.Seek(0, io.SeekCurrent); err != nil {
		return nil, false
	}
	return r, true
}

// Layout walks the source's guest ranges in order, calling fn for each
// with Start, Length and Status set (Depth 0, Offset -1). Adjacent ranges
// of one status are merged. A Layout may be walked any number of times; it
// is cheap (metadata only) and holds no per-range memory.
type Layout func(fn func(Extent) error) error

// LayoutOf returns the layout of img from its extent map. Every Data range
// of the image, whatever layer holds it, is Data in the layout.
func LayoutOf(img Image) Layout {
	return func(fn func(Extent) error) error {
		m := merger{fn: fn}
		if err := Walk(img, 0, m.add); err != nil {
			return err
		}
		return m.flush()
	}
}

// LayoutOfExtents returns a layout over a fixed list of extents, which must
// cover [0, size) in order; for tests and synthetic sources.
func LayoutOfExtents(list []Extent) Layout {
	return func(fn func(Extent) error) error {
		m := merger{fn: fn}
		for _, e := range list {
			if err := m.add(e); err != nil {
				return err
			}
		}
		return m.flush()
	}
}

// AllData returns the layout of a disk of size bytes that is all Data: a
// fully allocated conversion (qemu-img's -S 0).
func AllData(size int64) Layout {
	return func(fn func(Extent) error) error {
		if size <= 0 {
			return nil
		}
		return fn(Extent{Length: size, Status: Data, Offset: -1})
	}
}

// merger joins adjacent extents of one status, dropping depth and offset.
type merger struct {
	fn  func(Extent) error
	cur Extent
}

func (m *merger) add(e Extent) error {
	if e.Length <= 0 {
		return nil
	}
	if m.cur.Length > 0 && m.cur.Status == e.Status && m.cur.End() == e.Start {
		m.cur.Length += e.Length
		return nil
	}
	if err := m.flush(); err != nil {
		return err
	}
	m.cur = Extent{Start: e.Start, Length: e.Length, Status: e.Status, Offset: -1}
	return nil
}

func (m *merger) flush() error {
	if m.cur.Length == 0 {
		return nil
	}
	e := m.cur
	m.cur = Extent{}
	return m.fn(e)
}

// Align returns l on a grid of unit bytes for a disk of size bytes: a unit
// that holds any Data is Data as a whole, so Data ranges grow outward to
// unit boundaries; a unit holding only Zero and Unallocated ranges is
// Unallocated when all of it is, else Zero. Every range starts on a unit
// boundary and ends on one or at size. The engine sends a Writer Data
// blocks only inside l.Align(size, w.BlockSize()), so writers use the same
// call to lay out their tables.
func (l Layout) Align(size, unit int64) Layout {
	if unit <= 1 {
		return l
	}
	return func(fn func(Extent) error) error {
		m := merger{fn: fn}
		var done int64                                            // guest bytes emitted so far: a unit boundary or size
		var acc Status                                            // strongest status seen in the unit at done
		var accSet bool                                           // whether part of that unit has been seen
		stronger := func(a, b Status) Status { return max(a, b) } // Data > Zero > Unallocated
		err := l(func(e Extent) error {
			s, t := e.Start, min(e.End(), size)
			if s != done && !accSet || s < done {
				return fmt.Errorf("layout range [%d,+%d) out of order at %d", e.Start, e.Length, done)
			}
			for s < t {
				ue := min(done+unit, size)
				if s == done && !accSet && t >= ue {
					// Whole units of one status in a single step.
					end := t
					if t != size {
						end = done + (t-done)/unit*unit
					}
					if err := m.add(Extent{Start: done, Length: end - done, Status: e.Status}); err != nil {
						return err
					}
					done, s = end, end
					continue
				}
				// Part of the unit at done.
				if accSet {
					acc = stronger(acc, e.Status)
				} else {
					acc, accSet = e.Status, true
				}
				if t < ue {
					return nil
				}
				if err := m.add(Extent{Start: done, Length: ue - done, Status: acc}); err != nil {
					return err
				}
				accSet = false
				done, s = ue, ue
			}
			return nil
		})
		if err != nil {
			return err
		}
		if accSet {
			// A layout that stops short of size: close the last unit.
			if err := m.add(Extent{Start: done, Length: min(done+unit, size) - done, Status: acc}); err != nil {
				return err
			}
		}
		return m.flush()
	}
}

// Block is a run of guest bytes the engine hands a Writer. Blocks start on
// a multiple of the writer's BlockSize and their Length is a multiple of
// it, except the last block of the disk, which ends at the virtual size.
type Block struct {
	Start  int64
	Length int64
	// Status is Data when Data holds the bytes; Zero for ranges the source
	// stores as zeros or the engine found all zero; Unallocated for ranges
	// the source does not store. Zero and Unallocated blocks read as zeros
	// and may be arbitrarily long (a terabyte).
	Status Status
	// Data holds Length bytes for a Data block, nil otherwise. The engine
	// owns it: it is valid from Encode until Write returns and is reused
	// afterwards. Encode may modify it in place.
	Data []byte
	// Encoded is the Writer's own result of Encode (a compressed cluster, a
	// checksum), handed back to it in Write. The engine never reads it.
	Encoded any
}

// End returns the guest offset just past the block.
func (b *Block) End() int64 { return b.Start + b.Length }

// MaxBlockSize bounds a Writer's BlockSize, and so the engine's buffers. A
// format whose allocation unit is larger (a 32 MiB VHDX block) reports a
// smaller BlockSize and handles partly written units itself.
const MaxBlockSize = 16 << 20

// Writer writes one image to a Target. See the contract at the top of this
// file.
//
// Writing front to back (every byte at the lowest offset not yet written,
// holes skipped by seeking forward and never filled later) keeps the
// engine's --checksum a single pass and is the only way to stream to a
// pipe; a writer that patches earlier bytes (a header written last) works
// on a file but cannot give a streamed checksum.
type Writer interface {
	// BlockSize is the writer's allocation unit in bytes (a cluster, a
	// grain, a BAT block; 1 for raw), at most MaxBlockSize. Zero detection,
	// and the rounding of the Layout into Data blocks, happen on this
	// grid.
	BlockSize() int64
	// Encode prepares a Data block: compression, checksums. It must be safe
	// to call from several goroutines at once, on different blocks, and
	// while Write runs for earlier blocks. It may set b.Encoded and may
	// modify b.Data. It writes nothing to the Target.
	Encode(b *Block) error
	// Write writes a block's bytes (or notes a hole) to the Target. Calls
	// come from one goroutine in increasing Start order and cover the disk
	// exactly once. Data blocks have been through Encode.
	Write(b *Block) error
	// Close writes trailing tables and footers and flushes. It does not
	// close the Target. After an error the engine calls neither Write nor
	// Close; the output is discarded.
	Close() error
}

// DataScanner is a Writer whose tables precede the data on a destination
// that cannot seek, and which would otherwise have to allocate every block
// the Layout calls Data, zero or not. The engine reads the data once
// before the first Write and tells it which blocks will really carry data,
// so a pipe gets the same compact image as a file.
type DataScanner interface {
	Writer
	// NeedsDataScan reports whether the writer wants the scan (typically:
	// the destination cannot seek). The engine calls it at most once,
	// after New, and only when it detects zeros. A writer that answers
	// true decides its allocation from the MarkData calls alone.
	NeedsDataScan() bool
	// MarkData notes that [start, start+length), on the BlockSize grid,
	// will arrive as a Data block. Calls come from one goroutine, in
	// increasing order, all before the first Write.
	MarkData(start, length int64)
}

// WriteOptions are what a Writer is created with.
type WriteOptions struct {
	// Size is the virtual disk size in bytes.
	Size int64
	// Layout is the source's map: which ranges will carry data. Never nil
	// when the engine creates the writer; nil in Measure when there is no
	// source image (qemu-img measure --size).
	Layout Layout
	// Options are the -o options, by qemu-img's names, already validated.
	Options map[string]string
	// Compress is -c.
	Compress bool
	// FrontToBack asks a writer on a seekable destination to write it
	// strictly front to back as on a pipe (tables first, from the data
	// scan; holes by seeking forward are fine, going back is not), so the
	// engine can hash the output as it is written (--checksum) without
	// reading it back. Writers that always write front to back ignore it.
	FrontToBack bool
	// Name is the output's final file name, "" for a pipe or when unknown:
	// a writer that records its own name (a VMDK descriptor names its
	// extent file) takes it from here, never from the target, which may
	// be a temporary file.
	Name string
}

// Measurement is qemu-img measure's answer: file bytes needed for the
// converted image, and for the image fully allocated.
type Measurement struct {
	Required       int64 `json:"required"`
	FullyAllocated int64 `json:"fully-allocated"`
}

// OptionSpec describes one -o option a writer accepts.
type OptionSpec struct {
	// Name is qemu-img's name for the option.
	Name string
	// Help is a one-line description for `diskimg convert -o help`.
	Help string
	// Validate checks a value; nil accepts any value.
	Validate func(value string) error
}

// WriterFormat describes one output format to the writer registry.
type WriterFormat struct {
	// Name is qemu's name for the format.
	Name string
	// Aliases are other accepted names ("vhd" for vpc).
	Aliases []string
	// Options are the -o options the writer accepts.
	Options []OptionSpec
	// Compress reports whether -c is supported.
	Compress bool
	// MaxSize is the largest virtual size the format holds; 0 for no limit
	// beyond MaxVirtualSize.
	MaxSize int64
	// Check validates a combination of options (beyond each option's own
	// Validate) and the size; nil when there is nothing more to check.
	Check func(o WriteOptions) error
	// New creates a writer on dst. It may write headers at once. It must
	// document whether it supports a non-seekable dst; all built-in writers
	// do.
	New func(dst Target, o WriteOptions) (Writer, error)
	// Measure answers qemu-img measure for a conversion with these
	// options; nil when the format cannot tell.
	Measure func(o WriteOptions) (Measurement, error)
}

var writers = registry[*WriterFormat]{order: func(a, b *WriterFormat) int { return cmp.Compare(a.Name, b.Name) }}

// RegisterWriter adds an output format; each writer package calls it from
// init.
func RegisterWriter(w *WriterFormat) { writers.add(w) }

// Creates adapts a writer package's NewWriter to WriterFormat.New.
func Creates[W Writer](newWriter func(Target, WriteOptions) (W, error)) func(Target, WriteOptions) (Writer, error) {
	return func(dst Target, o WriteOptions) (Writer, error) {
		w, err := newWriter(dst, o)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return w, nil
	}
}

// WriterFormats returns the registered output formats, sorted by name.
func WriterFormats() []*WriterFormat { return writers.all() }

// LookupWriter finds an output format by name or alias.
func LookupWriter(name string) (*WriterFormat, error) {
	var names []string
	for _, w := range WriterFormats() {
		if named(name, w.Name, w.Aliases) {
			return w, nil
		}
		names = append(names, w.Name)
	}
	return nil, fmt.Errorf("unknown output format %q (known: %s)", name, strings.Join(names, ", "))
}

// Validate checks o against the format before any byte is written:
// unknown options (the error lists the valid ones), bad values, -c where
// it is unsupported, and the size.
func (w *WriterFormat) Validate(o WriteOptions) error {
	specs := map[string]*OptionSpec{}
	var names []string
	for i := range w.Options {
		specs[w.Options[i].Name] = &w.Options[i]
		names = append(names, w.Options[i].Name)
	}
	keys := make([]string, 0, len(o.Options))
	for k := range o.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s, ok := specs[k]
		if !ok {
			valid := "none"
			if len(names) > 0 {
				valid = strings.Join(names, ", ")
			}
			return fmt.Errorf("%s: unknown option %q (valid options: %s)", w.Name, k, valid)
		}
		if s.Validate != nil {
			if err := s.Validate(o.Options[k]); err != nil {
				return fmt.Errorf("%s: option %s=%s: %w", w.Name, k, o.Options[k], err)
			}
		}
	}
	if o.Compress && !w.Compress {
		return fmt.Errorf("%s: compression (-c) is not supported by this format", w.Name)
	}
	max := w.MaxSize
	if max == 0 {
		max = MaxVirtualSize
	}
	if o.Size < 0 || o.Size > max {
		return fmt.Errorf("%s: virtual size %d is out of range (0 to %d bytes)", w.Name, o.Size, max)
	}
	if w.Check != nil {
		return w.Check(o)
	}
	return nil
}

// ParseSize reads a size in qemu's syntax: a number with an optional
// suffix B, K, M, G, T, P or E (powers of 1024); a fraction needs a suffix
// above B.
func ParseSize(s string) (int64, error) {
	num, mul := s, float64(1)
	if n := len(s); n > 0 {
		if i := strings.IndexByte("bkmgtpe", s[n-1]|0x20); i >= 0 && s[n-1] >= 'A' {
			num, mul = s[:n-1], float64(uint64(1)<<(10*i))
		}
	}
	if num == "" || num[0] == '+' || num[0] == '-' {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	if strings.Contains(num, ".") {
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || mul == 1 || f*mul >= 1<<63 {
			return 0, fmt.Errorf("invalid size %q", s)
		}
		return int64(f * mul), nil
	}
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil || float64(v)*mul >= 1<<63 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return int64(v) * int64(mul), nil
}

// ParseOptions splits a qemu-img style -o string "a=1,b=2" into a map. As
// in qemu, ",," is a literal comma inside a value. A bare name means "on".
// Repeated -o flags are joined with "," before parsing.
func ParseOptions(s string) (map[string]string, error) {
	m := map[string]string{}
	if s == "" {
		return m, nil
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("empty option in %q", s)
		}
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			v = "on"
		}
		if k == "" {
			return nil, fmt.Errorf("option without a name in %q", s)
		}
		m[k] = v
	}
	return m, nil
}

// OneOf returns a Validate function accepting exactly the given values.
func OneOf(values ...string) func(string) error {
	return func(v string) error {
		for _, x := range values {
			if v == x {
				return nil
			}
		}
		return fmt.Errorf("must be one of %s", strings.Join(values, ", "))
	}
}

// ErrNotSeekable is returned by writers that need a seekable Target for a
// particular option.
var ErrNotSeekable = errors.New("destination cannot seek")
