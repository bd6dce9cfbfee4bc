package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/diskimg/diskimg/format"
)

const (
	// BlockSize is the unit of a range request and of the cache.
	BlockSize = 2 << 20
	// DefaultCacheBytes bounds the cached and prefetched blocks.
	DefaultCacheBytes = 64 << 20
	// MaxCacheBytes is the largest cache Options.CacheBytes may ask for.
	MaxCacheBytes = 192 << 20
	// readAhead is how many blocks past a sequential read are fetched
	// before they are asked for.
	readAhead = 8
	// fetchers is how many range requests run at once.
	fetchers = 8
	// maxAttempts bounds the tries of one request.
	maxAttempts = 8
)

// retryBase is the first retry's delay; each next one doubles, up to
// retryMax. stallTimeout is how long a read may make no progress. Tests
// shorten them.
var (
	retryBase, retryMax = 200 * time.Millisecond, 5 * time.Second
	stallTimeout        = time.Minute
	// longTimeout bounds a request that makes the store work on the
	// whole object (completing an upload, copying it).
	longTimeout = 30 * time.Minute
)

// ErrChanged is returned when the object changed while it was being read.
var ErrChanged = errors.New("the source changed while it was being read")

// objectInfo identifies one version of an object.
type objectInfo struct {
	size         int64 // -1 when unknown (a stream)
	etag         string
	lastModified string
	ranges       bool   // the server answers range requests
	sha256       string // the object's x-amz-meta-sha256, if any
}

// sameVersion reports whether a response describes the version v.
func (v objectInfo) sameVersion(etag, lastModified string) bool {
	return (v.etag == "" || etag == "" || etag == v.etag) &&
		(v.lastModified == "" || lastModified == "" || lastModified == v.lastModified)
}

// backend fetches bytes of one object.
type backend interface {
	// probe describes the object. When the server cannot send ranges it
	// returns the whole object as body, to be spooled.
	probe(ctx context.Context) (info objectInfo, body io.ReadCloser, err error)
	// get returns bytes [off, off+n) of version v, or all of it for n < 0;
	// ErrChanged when the object is no longer v.
	get(ctx context.Context, off, n int64, v objectInfo) (io.ReadCloser, error)
	// relative returns the backend of ref next to this object.
	relative(ref string, allowOutside bool) (backend, string, error)
}

// File is a remote object opened for reading: a format.File.
type File struct {
	name  string
	b     backend
	info  objectInfo
	spool *os.File // the whole object, when the server cannot send ranges
	opts  Options
	c     *cache
}

// Open opens the object at name (https://…, http://…, s3://bucket/key).
func Open(ctx context.Context, name string, o Options) (*File, error) {
	loc, err := parseLocation(name)
	if err != nil {
		return nil, err
	}
	b, err := newBackend(ctx, loc, o)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f, err := openBackend(ctx, name, b, o)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return f, nil
}

func newBackend(ctx context.Context, loc location, o Options) (backend, error) {
	if loc.s3 {
		st, err := newStore(ctx, o)
		if err != nil {
			return nil, err
		}
		return &s3Backend{st: st, bucket: loc.bucket, key: loc.key}, nil
	}
	return &httpBackend{c: http.DefaultClient, u: loc.url}, nil
}

// Size returns the length of the object at name without reading it; -1
// when its server does not say.
func Size(ctx context.Context, name string, o Options) (int64, error) {
	loc, err := parseLocation(name)
	if err != nil {
		return 0, err
	}
	b, err := newBackend(ctx, loc, o)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	var info objectInfo
	err = retry(ctx, o.stallTime(), func(ctx context.Context, _ func()) error {
		var body io.ReadCloser
		var err error
		if info, body, err = b.probe(ctx); body != nil {
			body.Close()
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return info.size, nil
}

func openBackend(ctx context.Context, name string, b backend, o Options) (*File, error) {
	if o.CacheBytes == 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.CacheBytes < BlockSize || o.CacheBytes > MaxCacheBytes {
		return nil, fmt.Errorf("cache size %d out of range (%d to %d)", o.CacheBytes, BlockSize, MaxCacheBytes)
	}
	f := &File{name: name, b: b, opts: o}
	if err := retry(ctx, o.stallTime(), func(ctx context.Context, _ func()) error {
		var body io.ReadCloser
		var err error
		if f.info, body, err = b.probe(ctx); body != nil {
			body.Close() // spooled by a request of its own
		}
		return err
	}); err != nil {
		return nil, err
	}
	if f.info.size > format.MaxVirtualSize {
		return nil, fmt.Errorf("object of %d bytes is larger than any image (%d)", f.info.size, int64(format.MaxVirtualSize))
	}
	if !f.info.ranges {
		if err := f.spoolAll(ctx); err != nil {
			return nil, err
		}
		return f, nil
	}
	f.c = newCache(f, int(o.CacheBytes/BlockSize))
	return f, nil
}

// spoolAll copies the whole object into a file with no name (format.SpoolTemp),
// starting again after a transient failure.
func (f *File) spoolAll(ctx context.Context) error {
	return retry(ctx, f.opts.stallTime(), func(ctx context.Context, kick func()) error {
		body, err := f.b.get(ctx, 0, -1, f.info)
		if err != nil {
			return err
		}
		defer body.Close()
		sf, size, err := format.SpoolTemp(ctx, f.opts.SpoolDir, kicker{body, kick})
		if err != nil {
			return fmt.Errorf("copying the object (its server sends no ranges): %w", err)
		}
		if f.info.size >= 0 && size != f.info.size {
			sf.Close()
			return fmt.Errorf("%w: %d bytes received, %d announced", io.ErrUnexpectedEOF, size, f.info.size)
		}
		f.info.size, f.spool = size, sf
		return nil
	})
}

// Size returns the object's length.
func (f *File) Size() int64 { return f.info.size }

// SHA256 returns the hex SHA-256 stored in the object's metadata by an
// upload (x-amz-meta-sha256), "" when there is none.
func (f *File) SHA256() string { return f.info.sha256 }

// Name returns the URL the object was opened by.
func (f *File) Name() string { return f.name }

// ReadAt reads from the cache, fetching the blocks it lacks.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if f.spool != nil {
		return f.spool.ReadAt(p, off)
	}
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", f.name, off)
	}
	if off >= f.info.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.info.size-off))
	done := 0
	for done < n {
		at := off + int64(done)
		b, err := f.c.get(at / BlockSize)
		if err != nil {
			return done, fmt.Errorf("%s: reading at %d: %w", f.name, at, err)
		}
		done += copy(p[done:n], b.data[at%BlockSize:b.n])
		f.c.release(b)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Close stops the fetches and frees the cache or spool file.
func (f *File) Close() error {
	if f.spool != nil {
		return f.spool.Close()
	}
	if f.c != nil {
		f.c.close()
	}
	return nil
}

// OpenRelative opens ref, a file the image names, next to this object
// (format.RelativeFile): a remote image never names a local file.
func (f *File) OpenRelative(ref string, allowOutside bool) (format.ReadCloserFile, error) {
	b, name, err := f.b.relative(ref, allowOutside)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	g, err := openBackend(ctx, name, b, f.opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return g, nil
}

// readRange fills p with the object's bytes at off, resuming after a
// transient failure where the data stopped.
func (f *File) readRange(ctx context.Context, p []byte, off int64) error {
	got := 0
	return retry(ctx, f.opts.stallTime(), func(ctx context.Context, kick func()) error {
		body, err := f.b.get(ctx, off+int64(got), int64(len(p)-got), f.info)
		if err != nil {
			return err
		}
		defer body.Close()
		n, err := io.ReadFull(kicker{body, kick}, p[got:])
		got += n
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	})
}

// errStalled is an attempt that made no progress for its stall time.
var errStalled = errors.New("no progress")

// retry runs op until it succeeds, fails for good, or maxAttempts tries
// failed, waiting longer between tries. An attempt that goes stall
// without calling kick (0: no limit) is cancelled and counts as a
// transient failure, so a connection that stops moving cannot hang a run.
func retry(ctx context.Context, stall time.Duration, op func(ctx context.Context, kick func()) error) error {
	delay := retryBase
	for attempt := 1; ; attempt++ {
		err := attemptOnce(ctx, stall, op)
		if err == nil || !transient(err) || attempt == maxAttempts || ctx.Err() != nil {
			if err != nil && attempt > 1 && transient(err) {
				err = fmt.Errorf("%w (after %d tries)", err, attempt)
			}
			return err
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, retryMax)
	}
}

func attemptOnce(ctx context.Context, stall time.Duration, op func(ctx context.Context, kick func()) error) error {
	if stall <= 0 {
		return op(ctx, func() {})
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t := time.AfterFunc(stall, func() { cancel(errStalled) })
	defer t.Stop()
	err := op(actx, func() { t.Reset(stall) })
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errStalled) {
		return fmt.Errorf("%w for %s: %v", errStalled, stall, err)
	}
	return err
}

// kicker is a reader that tells retry's stall timer about each read.
type kicker struct {
	r    io.Reader
	kick func()
}

func (k kicker) Read(p []byte) (int, error) {
	n, err := k.r.Read(p)
	if n > 0 {
		k.kick()
	}
	return n, err
}

// statusError is an HTTP status a server answered with.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

// transient reports errors worth another try: a server error, throttling,
// a connection reset or cut short, a time-out.
func transient(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.status >= 500 || se.status == 429 || se.status == 408
	}
	if errors.Is(err, errStalled) {
		return true
	}
	if errors.Is(err, ErrChanged) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	return storeTransient(err)
}
