package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/remote"
)

// Stdout is the output name that means standard output.
const Stdout = "-"

// OutputOptions say how an output file may be created.
type OutputOptions struct {
	// Force allows replacing an existing file (--force).
	Force bool
	// Sources are the files the conversion reads (the image, its extents
	// and backing files; see SourceFiles): the output may never be one of
	// them, even with Force.
	Sources []string
	// Cache is the output's cache mode (-t).
	Cache Cache
	// InPlace writes into the existing regular file or block device at
	// the path (-n): no temporary file and no rename, so an interrupted
	// run leaves it partly written. The target keeps its size, which must
	// be at least Size (the image's), and its bytes past the image.
	InPlace bool
	// TargetIsZero says, in place, that the target reads as zeros already
	// (--target-is-zero): the ranges the image has as zeros are not
	// written. Without it they are zeroed (holes punched in a file,
	// BLKZEROOUT on a block device).
	TargetIsZero bool
	// Size is the image's size, for InPlace.
	Size int64
	// Remote says how to reach an s3:// output, SizeHint bounds its
	// length (it sets the upload's part size), and Context, when it ends,
	// stops the upload (Abort then removes what was sent).
	Remote   remote.Options
	SizeHint int64
	Context  context.Context
}

// Output is a destination being written. A new file has no name until
// Commit gives it its own (see pending.go); Abort, or a crash, leaves the
// directory as it was. An object (s3://bucket/key) is a multipart upload
// that Commit completes and Abort aborts.
//
// Usage:
//
//	out, err := CreateOutput(path, opts)
//	defer out.Abort() // no-op after Commit
//	_, err = Convert(ctx, img, w, out.Target, ...)
//	if err == nil { err = out.Commit() }
type Output struct {
	// Target is what the writer writes to: an *os.File for a regular file,
	// a non-seekable writer for standard output.
	Target  format.Target
	f       *os.File
	fo      *fileOut            // f with O_DIRECT or in place; nil otherwise
	final   string              // where the file goes on Commit
	pf      *format.PendingFile // the new file; nil for standard output and in place
	force   bool
	mode    os.FileMode // mode of the file replaced, 0 for none
	noFlush bool        // -t unsafe: no fsync
	inPlace bool
	done    bool
	up      *remote.Upload // an object being uploaded
	// SHA256 is an uploaded object's digest, set by Commit.
	SHA256 []byte
}

// stream hides every method but Write, so writers treat standard output
// as a pipe even when it is redirected to a file.
type stream struct{ w io.Writer }

func (s stream) Write(p []byte) (int, error) { return s.w.Write(p) }

// redirectedTo is the regular file standard output is redirected to, if
// any, so a VMDK streamed into "> disk.vmdk" names disk.vmdk in its
// descriptor; "" for a pipe, a terminal or a device.
func redirectedTo(f *os.File) string {
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	var p string
	if raw, err := f.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { p, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)) })
	}
	if !filepath.IsAbs(p) {
		return ""
	}
	return p
}

// CreateOutput prepares the output at path ("-" for standard output). It
// refuses an existing file without Force, and a path that is one of the
// sources (also through symlinks or hard links) in any case. Nothing is
// created under path until Commit.
func CreateOutput(path string, o OutputOptions) (*Output, error) {
	if o.InPlace {
		if path == Stdout || remote.IsURL(path) {
			return nil, errors.New("-n writes into an existing file or block device, not standard output or an object")
		}
		return openInPlace(path, o)
	}
	if path == Stdout {
		if err := notSource(os.Stdout.Stat, "standard output", o.Sources); err != nil {
			return nil, err
		}
		return &Output{Target: stream{os.Stdout}}, nil
	}
	if path == "" {
		return nil, errors.New("empty output file name")
	}
	if remote.IsURL(path) {
		for _, s := range o.Sources {
			if s == path {
				return nil, fmt.Errorf("output %s is the same object as input %s", path, s)
			}
		}
		ctx := o.Context
		if ctx == nil {
			ctx = context.Background()
		}
		up, err := remote.Create(ctx, path, o.Remote, o.SizeHint, o.Force)
		if err != nil {
			return nil, err
		}
		return &Output{Target: up, up: up, final: path}, nil
	}
	final := path
	out := &Output{force: o.Force, noFlush: o.Cache.NoFlush}
	fi, statErr := os.Stat(path)
	_, lstatErr := os.Lstat(path)
	switch {
	case statErr == nil:
		if err := notSource(func() (os.FileInfo, error) { return fi, nil }, path, o.Sources); err != nil {
			return nil, err
		}
		if !o.Force {
			return nil, fmt.Errorf("%s already exists (use --force to overwrite it)", path)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file; write to - and redirect instead", path)
		}
		// Replace the file a symlink points to, not the symlink.
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			return nil, err
		}
		final, out.mode = real, fi.Mode().Perm()
	case lstatErr == nil:
		// A dangling symlink.
		if !o.Force {
			return nil, fmt.Errorf("%s already exists as a dangling symlink (use --force to replace it)", path)
		}
	case !errors.Is(statErr, os.ErrNotExist):
		return nil, statErr
	}
	out.final = final
	pf, err := format.CreatePending(final, path, syncFlag(o.Cache))
	if err != nil {
		return nil, err
	}
	out.pf, out.f, out.Target = pf, pf.File, pf.File
	if o.Cache.Direct {
		out.fo = &fileOut{f: pf.File}
		out.fo.direct, _ = openDirect(pf.Path(), os.O_WRONLY|syncFlag(o.Cache)) // refused: the page cache
		out.Target = out.fo
	}
	return out, nil
}

// syncFile flushes a finished output; tests count the calls.
var syncFile = (*os.File).Sync

func syncFlag(c Cache) int {
	if c.Sync {
		return syscall.O_DSYNC
	}
	return 0
}

// openInPlace opens the existing target of convert -n.
func openInPlace(path string, o OutputOptions) (*Output, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	block := fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	if !fi.Mode().IsRegular() && !block {
		return nil, fmt.Errorf("%s is not a regular file or a block device", path)
	}
	if err := notSource(func() (os.FileInfo, error) { return fi, nil }, path, o.Sources); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|syncFlag(o.Cache), 0)
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if block {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, err
		}
	}
	if size < o.Size {
		f.Close()
		return nil, fmt.Errorf("%s: output file is smaller than input file (%d < %d bytes)", path, size, o.Size)
	}
	fo := &fileOut{f: f, inPlace: true, zeroGaps: !o.TargetIsZero, block: block, size: size}
	if o.Cache.Direct {
		fo.direct, _ = openDirect(path, os.O_WRONLY|syncFlag(o.Cache))
	}
	return &Output{Target: fo, f: f, fo: fo, final: path, inPlace: true, noFlush: o.Cache.NoFlush}, nil
}

// notSource refuses an output that is one of the sources.
func notSource(stat func() (os.FileInfo, error), name string, sources []string) error {
	fi, err := stat()
	if err != nil {
		return nil // nothing there, nothing to clash with
	}
	for _, s := range sources {
		sfi, err := os.Stat(s)
		if err == nil && os.SameFile(fi, sfi) {
			if s == stdinPath() {
				s = "(standard input)"
			}
			return fmt.Errorf("output %s is the same file as input %s", name, s)
		}
	}
	return nil
}

// Commit makes the output durable and visible under its name: fsync, then
// the name (without Force a link that fails if the name was taken
// meanwhile; with Force a rename over it), then fsync of the directory.
func (o *Output) Commit() error {
	if o.done {
		return errors.New("output already committed or aborted")
	}
	if o.up != nil {
		o.done = true
		sum, err := o.up.Commit()
		o.SHA256 = sum
		return err
	}
	if o.f == nil { // standard output
		o.done = true
		return nil
	}
	fail := func(err error) error {
		o.Abort()
		return err
	}
	if o.mode != 0 {
		if err := o.f.Chmod(o.mode); err != nil {
			return fail(err)
		}
	}
	if !o.noFlush {
		if err := syncFile(o.f); err != nil {
			return fail(fmt.Errorf("syncing output %s: %w", o.shown(), format.ErrnoOf(err)))
		}
	}
	if o.pf != nil {
		if err := o.pf.Commit(o.force, o.noFlush); err != nil {
			return fail(err)
		}
	}
	o.done = true
	if err := o.closeFile(); err != nil {
		return fmt.Errorf("closing output %s: %w", o.shown(), format.ErrnoOf(err))
	}
	return nil
}

func (o *Output) closeFile() error {
	f, fo := o.f, o.fo
	o.f, o.fo = nil, nil
	if fo != nil {
		return fo.close()
	}
	return f.Close()
}

// Abort discards the output: the temporary file is closed and removed. It
// does nothing after Commit and may be called more than once.
func (o *Output) Abort() error {
	if o.done {
		return nil
	}
	o.done = true
	if o.up != nil {
		return o.up.Abort()
	}
	if o.f != nil {
		o.closeFile()
	}
	if o.pf != nil {
		return o.pf.Discard()
	}
	return nil
}

// Uploaded reports whether the output is an object in a bucket.
func (o *Output) Uploaded() bool { return o.up != nil }

// ReadBack opens the output for reading before Commit (for --verify),
// named as the user named it; nil for standard output.
func (o *Output) ReadBack() (format.File, error) {
	var path string
	switch {
	case o.inPlace:
		path = o.final
	case o.pf != nil:
		path = o.pf.Path()
	default:
		return nil, errors.New("the output cannot be read back")
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reading back %s: %w", o.shown(), err)
	}
	f := os.NewFile(uintptr(fd), o.shown())
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading back %s: %w", o.shown(), format.ErrnoOf(err))
	}
	return &readBack{File: f, size: size}, nil
}

// readBack is an output reopened for reading.
type readBack struct {
	*os.File
	size int64
}

func (r *readBack) Size() int64 { return r.size }

// shown is the output's path as the user gave it.
func (o *Output) shown() string {
	if o.pf != nil {
		return o.pf.File.Name()
	}
	return o.final
}

// Name returns the output's final file name, for a writer that records it
// (format.WriteOptions.Name): the path, or the file standard output is
// redirected to; "" for a pipe.
func (o *Output) Name() string {
	if o.pf != nil || o.inPlace {
		return o.final
	}
	return redirectedTo(os.Stdout)
}

// SourceFiles lists the host files an image opened from path reads: the
// image itself, its extent files and its backing chain; for Stdin, the
// file open as standard input. Pass them as OutputOptions.Sources.
func SourceFiles(path string, img format.Image) []string {
	if path == Stdin {
		// A redirected file must not be the output either.
		return []string{stdinPath()}
	}
	files := []string{path}
	for img != nil {
		info := img.Info()
		for _, f := range info.ExtentFiles {
			if !filepath.IsAbs(f) {
				f = filepath.Join(filepath.Dir(path), f)
			}
			files = append(files, f)
		}
		if info.Backing == nil || info.FullBackingFile == "" {
			break
		}
		path, img = info.FullBackingFile, info.Backing
		files = append(files, path)
	}
	return files
}

// File converts the image at src (format srcFormat, "" to probe; opened
// under the default policy) to a new file dst in format dstFormat, which
// appears under its name only when complete.
func File(ctx context.Context, src, srcFormat, dst, dstFormat string, opts Options) error {
	in, err := format.Open(src, srcFormat, format.Policy{})
	if err != nil {
		return err
	}
	defer in.Close()
	w, err := format.LookupWriter(dstFormat)
	if err != nil {
		return err
	}
	if err := Check(in, w, opts); err != nil {
		return err
	}
	out, err := CreateOutput(dst, OutputOptions{Sources: SourceFiles(src, in)})
	if err != nil {
		return err
	}
	defer out.Abort()
	opts.Name = out.Name()
	if _, err := Convert(ctx, in, w, out.Target, opts); err != nil {
		return err
	}
	return out.Commit()
}
