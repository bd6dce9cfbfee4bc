// Package convert is the streaming conversion engine behind `diskimg
// convert`, `compare` and `measure`.
//
// Convert walks the source's extent map, reads only the ranges that hold
// data, finds zero runs in them and hands the blocks to a format.Writer:
// several workers read, zero-check and Encode; one goroutine Writes, in
// guest order. Memory is a fixed set of buffers whatever the image size.
package convert

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/diskimg/diskimg/format"
)

const (
	// DefaultSparseSize is qemu-img's default -S: a 4 KiB run of zeros
	// becomes a hole.
	DefaultSparseSize = 4 << 10
	// MaxSparseSize is the largest -S qemu-img accepts.
	MaxSparseSize = 16 << 20
	// NoSparse as Options.SparseSize is qemu-img's -S 0: no zero detection,
	// every byte is written as data (a fully allocated output).
	NoSparse = -1

	// chunkSize is the engine's read unit. The in-flight buffers
	// (2×workers) then fit in the CPU's L2 cache, so data read is still
	// cached when it is written: 128 KiB beat 1 MiB by about 1.5x in
	// BenchmarkEngineVsCopy (DISKIMG_BENCH_CHUNK).
	chunkSize = 128 << 10
	// maxBufferBytes caps the memory held in in-flight buffers.
	maxBufferBytes = 128 << 20
	// streamHole is the most of a zero or unallocated range one job
	// covers when the output is a stream, where the writer writes the
	// zeros: progress moves and an interrupt is seen between jobs, not
	// after a terabyte of zeros.
	streamHole = 64 << 20
)

// Options tune a conversion.
type Options struct {
	// Workers is the number of goroutines that read and encode (-m); 0
	// means runtime.NumCPU().
	Workers int
	// SparseSize is -S: an aligned run of this many zero bytes inside a
	// data range is not written as data. 0 means DefaultSparseSize;
	// NoSparse turns detection off and makes the output fully allocated
	// (note: qemu-img's "-S 0" is NoSparse here). A multiple of 512 up to
	// MaxSparseSize.
	SparseSize int64
	// WriterOptions are the -o options.
	WriterOptions map[string]string
	// Name is the output's final file name (Output.Name), which some
	// writers record (a VMDK descriptor names its extent); "" for none.
	Name string
	// Compress is -c.
	Compress bool
	// Checksum asks for the SHA-256 of the bytes written to dst, computed
	// as they are written. Holes are hashed as zeros, so the cost grows
	// with the output's length, not its data. Writers are asked to write
	// front to back (format.WriteOptions.FrontToBack); one that cannot
	// (compressed qcow2, whose header is written last) is hashed by
	// reading the finished output back once.
	Checksum bool
	// Progress, when set, is called from one goroutine as the output
	// advances: done of total guest bytes (total is the virtual size).
	Progress func(done, total int64)
	// ChunkSize overrides the read unit (rounded up to the zero-detection
	// unit); 0 means 128 KiB. For tests and tuning.
	ChunkSize int64
	// InFlight is the number of buffers in flight; 0 means 2×Workers.
	InFlight int
}

// Result reports what a conversion did.
type Result struct {
	// Size is the virtual size converted.
	Size int64
	// BytesRead is how many bytes were read from the source.
	BytesRead int64
	// BytesWritten is how many bytes went to the destination, including
	// the zeros written for holes on a stream.
	BytesWritten int64
	// DataBytes are guest bytes written as data.
	DataBytes int64
	// ZeroBytes are guest bytes read but found zero, written as holes.
	ZeroBytes int64
	// SkippedBytes are guest bytes the source map says are zero or
	// unallocated: never read.
	SkippedBytes int64
	// SHA256 is the digest of the written stream when Options.Checksum.
	SHA256 []byte
}

// Check validates the options and the writer options for converting src
// to w, before any output exists. Convert calls it too.
func Check(src format.Image, w *format.WriterFormat, opts Options) error {
	if _, err := sparseSize(opts.SparseSize); err != nil {
		return err
	}
	if opts.Workers < 0 || opts.Workers > 1024 {
		return fmt.Errorf("invalid number of workers %d", opts.Workers)
	}
	return w.Validate(format.WriteOptions{Size: src.Size(), Options: opts.WriterOptions, Compress: opts.Compress})
}

func sparseSize(s int64) (int64, error) {
	switch {
	case s == 0:
		return DefaultSparseSize, nil
	case s == NoSparse:
		return 0, nil
	case s < 0 || s%512 != 0 || s > MaxSparseSize:
		return 0, fmt.Errorf("invalid sparse size %d: valid sizes are multiples of 512 up to %d, or 0 to write every byte", s, MaxSparseSize)
	}
	return s, nil
}

// job is one unit of work: a chunk of a data range to read, or a range
// of zeros or unallocated space that needs no reading.
type job struct {
	start, length int64
	status        format.Status
	fill          bool   // a non-data range written as data zeros (NoSparse)
	buf           []byte // owned by the job while in flight; nil for non-data
	blocks        []format.Block
	err           error
	done          chan struct{}
}

// Convert converts src into the format w on dst. dst should be new and
// empty (see CreateOutput). On error the output is incomplete and must be
// discarded; the Writer's Close has not been called.
func Convert(ctx context.Context, src format.Image, w *format.WriterFormat, dst format.Target, opts Options) (*Result, error) {
	if err := Check(src, w, opts); err != nil {
		return nil, err
	}
	sparse, _ := sparseSize(opts.SparseSize)
	size := src.Size()
	srcLayout := format.LayoutOf(src)
	wo := format.WriteOptions{Size: size, Layout: srcLayout, Options: opts.WriterOptions, Compress: opts.Compress, FrontToBack: opts.Checksum, Name: opts.Name}
	if sparse == 0 {
		wo.Layout = format.AllData(size)
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}

	out, tgt := newCountingTarget(dst, opts.Checksum)
	defer out.wb.stop()
	wr, err := w.New(tgt, wo)
	if err != nil {
		return nil, err
	}
	bs := wr.BlockSize()
	if bs <= 0 || bs > format.MaxBlockSize {
		return nil, fmt.Errorf("%s writer: block size %d out of range (1 to %d)", w.Name, bs, format.MaxBlockSize)
	}
	unit := bs // zero-detection unit: -S rounded up to whole blocks
	if sparse > 0 {
		unit = (max(sparse, bs) + bs - 1) / bs * bs
	}
	chunk := opts.ChunkSize
	if chunk <= 0 {
		chunk = chunkSize
	}
	chunk = (max(chunk, unit) + unit - 1) / unit * unit
	inflight := opts.InFlight
	if inflight <= 0 {
		inflight = 2 * workers
	}
	inflight = max(2, min(inflight, int(maxBufferBytes/chunk)))

	e := &engine{src: src, w: wr, size: size, unit: unit, chunk: chunk, sparse: sparse > 0, inflight: inflight, workers: workers}
	if out.rt == nil {
		e.holeChunk = max(bs, streamHole/bs*bs)
	}
	plan := srcLayout.Align(size, bs)
	res := &Result{Size: size}
	if ds, ok := wr.(format.DataScanner); ok && sparse > 0 && ds.NeedsDataScan() {
		// A first pass finds the blocks that hold data, so the writer's
		// up-front tables leave the zero ones out as a file's would.
		if err := e.pass(ctx, plan, false, ds, &Result{}, nil); err != nil {
			return res, err
		}
	}
	err = e.pass(ctx, plan, sparse == 0, nil, res, opts.Progress)
	if err == nil {
		// A source written to during the run gave a mix of two versions.
		err = format.Unchanged(src)
	}
	if err == nil {
		if err = wr.Close(); err != nil {
			err = fmt.Errorf("%s writer: %w", w.Name, err)
		}
	}
	res.BytesWritten = out.written
	if err != nil {
		return res, err
	}
	if opts.Checksum {
		sum, err := out.sum()
		if err != nil {
			// The writer patched earlier bytes (tables written last): hash
			// the finished file in one more pass, if it can be read back.
			if sum, err = hashFile(dst); err != nil {
				return res, err
			}
		}
		res.SHA256 = sum
	}
	return res, nil
}

// hashFile hashes a finished output that can be read back.
func hashFile(dst format.Target) ([]byte, error) {
	rt, ok := format.Seekable(dst)
	ra, isReader := dst.(io.ReaderAt)
	if !ok || !isReader {
		return nil, errors.New("checksum: the output was not written front to back and cannot be read back")
	}
	size, err := rt.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(ra, 0, size)); err != nil {
		return nil, fmt.Errorf("checksum: reading the output back: %w", err)
	}
	return h.Sum(nil), nil
}

type engine struct {
	src         format.Image
	w           format.Writer
	size        int64
	unit, chunk int64
	sparse      bool
	inflight    int // buffers per pass
	workers     int
	holeChunk   int64 // on a stream, the most of a non-data range per job; 0 for no limit

	// Per pass.
	ctx     context.Context
	scan    format.DataScanner // set in a data-scan pass: no Encode, no Write
	buffers int                // buffers still to allocate, on demand
	free    chan []byte        // buffers written out, for reuse
	work    chan *job
	order   chan *job
}

// pass runs the plan through the workers once: reading, zero detection
// and Encode in parallel, then in order Write (or, with scan set, only
// MarkData for the data blocks found).
func (e *engine) pass(ctx context.Context, plan format.Layout, fill bool, scan format.DataScanner, res *Result, progress func(done, total int64)) error {
	e.scan = scan
	e.buffers = e.inflight
	e.free = make(chan []byte, e.inflight)
	e.work = make(chan *job, e.inflight)
	e.order = make(chan *job, e.inflight)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	e.ctx = ctx

	var wg sync.WaitGroup
	wg.Add(1 + e.workers)
	go func() {
		defer wg.Done()
		defer close(e.order)
		defer close(e.work)
		if err := e.produce(plan, fill); err != nil {
			cancel(err)
		}
	}()
	for range e.workers {
		go func() {
			defer wg.Done()
			e.worker()
		}()
	}
	err := e.consume(res, progress)
	if err != nil {
		cancel(err)
	}
	wg.Wait()
	return err
}

// produce turns the plan into jobs, in order: each data range in chunks
// on the chunk grid, each other range as one job.
func (e *engine) produce(plan format.Layout, fill bool) error {
	send := func(ch chan *job, j *job) error {
		select {
		case ch <- j:
			return nil
		case <-e.ctx.Done():
			return context.Cause(e.ctx)
		}
	}
	var next int64
	err := plan(func(x format.Extent) error {
		if x.Start != next {
			return fmt.Errorf("extent map gap at %d (next range starts at %d)", next, x.Start)
		}
		next = x.End()
		if x.Status != format.Data && !fill {
			for off := x.Start; off < x.End(); {
				end := x.End()
				if e.holeChunk > 0 {
					end = min((off/e.holeChunk+1)*e.holeChunk, end)
				}
				if err := send(e.order, &job{start: off, length: end - off, status: x.Status, done: closed}); err != nil {
					return err
				}
				off = end
			}
			return nil
		}
		for off := x.Start; off < x.End(); {
			end := min((off/e.chunk+1)*e.chunk, x.End())
			buf, err := e.buffer()
			if err != nil {
				return err
			}
			j := &job{start: off, length: end - off, status: format.Data, fill: x.Status != format.Data,
				buf: buf[:end-off], done: make(chan struct{})}
			if err := send(e.order, j); err != nil {
				return err
			}
			if err := send(e.work, j); err != nil {
				return err
			}
			off = end
		}
		return nil
	})
	if err == nil && next != e.size {
		err = fmt.Errorf("extent map ends at %d, virtual size is %d", next, e.size)
	}
	return err
}

// buffer returns a free chunk buffer, allocating one while fewer than the
// limit exist (so an empty disk allocates none), else waiting for one.
func (e *engine) buffer() ([]byte, error) {
	select {
	case buf := <-e.free:
		return buf, nil
	default:
	}
	if e.buffers > 0 {
		e.buffers--
		return make([]byte, e.chunk), nil
	}
	select {
	case buf := <-e.free:
		return buf, nil
	case <-e.ctx.Done():
		return nil, context.Cause(e.ctx)
	}
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (e *engine) worker() {
	for {
		var j *job
		var ok bool
		select {
		case j, ok = <-e.work:
			if !ok {
				return
			}
		case <-e.ctx.Done():
			return
		}
		j.err = e.process(j)
		close(j.done)
	}
}

// process reads a chunk, splits it into data and zero blocks and encodes
// the data blocks.
func (e *engine) process(j *job) error {
	if j.fill {
		clear(j.buf)
	} else {
		n, err := e.src.ReadAt(j.buf, j.start)
		if n < len(j.buf) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return sourceError(j.start+int64(n), err)
		}
	}
	j.blocks = j.blocks[:0]
	add := func(start, end int64, st format.Status) {
		if n := len(j.blocks); n > 0 && j.blocks[n-1].Status == st {
			j.blocks[n-1].Length = end - j.blocks[n-1].Start
			return
		}
		j.blocks = append(j.blocks, format.Block{Start: start, Length: end - start, Status: st})
	}
	if !e.sparse || j.fill {
		add(j.start, j.start+j.length, format.Data)
	} else {
		end := j.start + j.length
		for off := j.start; off < end; {
			ue := min((off/e.unit+1)*e.unit, end)
			st := format.Data
			if format.IsZero(j.buf[off-j.start : ue-j.start]) {
				st = format.Zero
			}
			add(off, ue, st)
			off = ue
		}
	}
	for i := range j.blocks {
		b := &j.blocks[i]
		if b.Status != format.Data || e.scan != nil {
			continue
		}
		b.Data = j.buf[b.Start-j.start : b.End()-j.start]
		if err := e.w.Encode(b); err != nil {
			return err
		}
	}
	return nil
}

// sourceError describes a failed read of the source at guest offset off:
// "input/output error at offset N" for a plain read error, or the
// driver's own error (which names the structure and its file offset).
func sourceError(off int64, err error) error {
	var re *format.ReadError
	var fe *format.FormatError
	if errors.As(err, &re) || errors.As(err, &fe) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("reading source at offset %d: %w", off, err)
	}
	return fmt.Errorf("reading source: %w", &format.ReadError{Offset: off, Err: err})
}

// consume writes the jobs in order as they complete.
func (e *engine) consume(res *Result, progress func(done, total int64)) error {
	for j := range e.order {
		select {
		case <-j.done:
		case <-e.ctx.Done():
			return context.Cause(e.ctx)
		}
		if j.err != nil {
			return j.err
		}
		if e.scan != nil {
			// Only data jobs have blocks and a buffer.
			for i := range j.blocks {
				if b := &j.blocks[i]; b.Status == format.Data {
					e.scan.MarkData(b.Start, b.Length)
				}
			}
			if j.buf != nil {
				e.free <- j.buf[:cap(j.buf)]
			}
			continue
		}
		if j.buf == nil {
			res.SkippedBytes += j.length
			b := format.Block{Start: j.start, Length: j.length, Status: j.status}
			if err := e.w.Write(&b); err != nil {
				return err
			}
		} else {
			if !j.fill {
				res.BytesRead += j.length
			}
			for i := range j.blocks {
				b := &j.blocks[i]
				if b.Status == format.Data {
					res.DataBytes += b.Length
				} else {
					res.ZeroBytes += b.Length
				}
				if err := e.w.Write(b); err != nil {
					return err
				}
				b.Data, b.Encoded = nil, nil
			}
			e.free <- j.buf[:cap(j.buf)]
		}
		if progress != nil {
			progress(j.start+j.length, e.size)
		}
	}
	return context.Cause(e.ctx)
}

// countingTarget counts the bytes written and, when asked, hashes them in
// file order. Writes that go back over hashed bytes, or ahead of a gap
// later filled, break the stream hash; sum then reports an error.
type countingTarget struct {
	dst     format.Target
	rt      format.RandomTarget
	h       hashState
	written int64
	pos     int64      // current file position, for Write
	wb      *writeback // on a file: early writeback
}

type hashState struct {
	on     bool
	sha    interface{ io.Writer }
	get    func() []byte
	hashed int64 // bytes [0, hashed) are in the hash
	broken string
}

func newCountingTarget(dst format.Target, checksum bool) (*countingTarget, format.Target) {
	c := &countingTarget{dst: dst}
	if checksum {
		h := sha256.New()
		c.h = hashState{on: true, sha: h, get: func() []byte { return h.Sum(nil) }}
	}
	if rt, ok := format.Seekable(dst); ok {
		c.rt = rt
		if f, ok := dst.(format.FileDescriptor); ok {
			c.wb = newWriteback(f.Fd())
			return c, &fileTarget{seekTarget: &seekTarget{streamTarget{c}}, fd: f}
		}
		return c, &seekTarget{streamTarget{c}}
	}
	return c, &streamTarget{c}
}

// note records that p was written at off.
func (c *countingTarget) note(p []byte, off int64) {
	c.written += int64(len(p))
	c.wb.wrote(len(p))
	if !c.h.on || c.h.broken != "" {
		return
	}
	switch {
	case off < c.h.hashed:
		c.h.broken = fmt.Sprintf("the writer rewrote offset %d", off)
		return
	case off > c.h.hashed:
		// The gap was skipped (a hole) and nothing can be written into it
		// later without breaking the hash: it is zeros.
		format.WriteZeros(c.h.sha, off-c.h.hashed)
	}
	c.h.sha.Write(p)
	c.h.hashed = off + int64(len(p))
}

func (c *countingTarget) sum() ([]byte, error) {
	if c.h.broken != "" {
		return nil, fmt.Errorf("checksum: the output was not written front to back (%s)", c.h.broken)
	}
	return c.h.get(), nil
}

// streamTarget is a counting Target that cannot seek.
type streamTarget struct{ *countingTarget }

func (s *streamTarget) Write(p []byte) (int, error) {
	n, err := s.dst.Write(p)
	s.note(p[:n], s.pos)
	s.pos += int64(n)
	return n, err
}

// seekTarget is a counting RandomTarget.
type seekTarget struct{ streamTarget }

func (s *seekTarget) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.rt.WriteAt(p, off)
	s.note(p[:n], off)
	return n, err
}

func (s *seekTarget) Seek(off int64, whence int) (int64, error) {
	pos, err := s.rt.Seek(off, whence)
	if err == nil {
		s.pos = pos
	}
	return pos, err
}

func (s *seekTarget) Truncate(size int64) error {
	if err := s.rt.Truncate(size); err != nil {
		return err
	}
	if s.h.on && s.h.broken == "" {
		if size < s.h.hashed {
			s.h.broken = fmt.Sprintf("the output was truncated to %d", size)
		} else {
			format.WriteZeros(s.h.sha, size-s.h.hashed)
			s.h.hashed = size
		}
	}
	return nil
}

// fileTarget is a seekTarget that also exposes the file descriptor (for
// fallocate and the like).
type fileTarget struct {
	*seekTarget
	fd format.FileDescriptor
}

// Fd returns the destination's file descriptor.
func (f *fileTarget) Fd() uintptr { return f.fd.Fd() }
