package remote

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
	"time"
)

const (
	// MinPartSize is the smallest part: S3's minimum is 5 MiB, and fewer,
	// larger requests upload faster.
	MinPartSize = 8 << 20
	// MaxParts is S3's limit on the parts of one upload.
	MaxParts = 10000
	// maxPartSize is S3's limit on one part.
	maxPartSize = 5 << 30
	// partBudget bounds the part buffers (the one being filled and those
	// in flight) when the part size allows two or more.
	partBudget = 160 << 20
	// maxInFlight bounds the parts uploaded at once.
	maxInFlight = 4
	// SHA256Key is the user metadata key (x-amz-meta-sha256) that holds
	// the hex SHA-256 of an uploaded object.
	SHA256Key = "sha256"
)

// Upload is an object being written by a multipart upload: a
// format.Target that cannot seek, so writers stream to it as to a pipe.
// Parts are uploaded in parallel, each with its MD5 for the server to
// check; memory is the part buffers, at most max(2, partBudget/PartSize)
// of them. The object appears only on Commit; Abort (or any failure)
// aborts the multipart upload so no part remains stored.
type Upload struct {
	st          store
	bucket, key string
	name        string
	partSize    int64
	sha         hash.Hash
	written     int64

	ctx    context.Context
	cancel context.CancelFunc
	free   chan []byte // part buffers not in use
	buf    []byte      // the part being filled
	wg     sync.WaitGroup

	mu    sync.Mutex
	id    string   // the multipart upload, "" before the first part
	etags []string // by part number - 1
	md5s  []byte   // the parts' MD5s, concatenated, for the final ETag
	err   error    // the first failure
	done  bool
}

// PartSize returns the part size for an output of at most size bytes: it
// fits in MaxParts parts (with room to spare), and is a whole MiB.
func PartSize(size int64) int64 {
	ps := max(MinPartSize, (size+MaxParts*9/10-1)/(MaxParts*9/10))
	return min((ps+1<<20-1)>>20<<20, maxPartSize)
}

// Create starts writing the object name (s3://bucket/key). sizeHint is an
// upper bound of the bytes to be written, which sets the part size. An
// existing object is refused unless force. When ctx ends, the parts in
// flight stop and Write and Commit fail; Abort still aborts the upload.
func Create(ctx context.Context, name string, o Options, sizeHint int64, force bool) (*Upload, error) {
	loc, err := parseLocation(name)
	if err != nil {
		return nil, err
	}
	if !loc.s3 {
		return nil, fmt.Errorf("%s: only s3://bucket/key can be written", name)
	}
	if loc.key == "" || strings.HasSuffix(loc.key, "/") {
		return nil, fmt.Errorf("%s: no object key", name)
	}
	st, err := newStore(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return createUpload(ctx, st, loc, sizeHint, force)
}

func createUpload(ctx context.Context, st store, loc location, sizeHint int64, force bool) (*Upload, error) {
	m, err := st.head(ctx, loc.bucket, loc.key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", loc.raw, err)
	}
	if m.exists && !force {
		return nil, fmt.Errorf("%s already exists (use --force to overwrite it)", loc.raw)
	}
	ps := PartSize(sizeHint)
	buffers := max(2, min(maxInFlight+1, int(partBudget/ps)))
	u := &Upload{st: st, bucket: loc.bucket, key: loc.key, name: loc.raw, partSize: ps, sha: sha256.New(), free: make(chan []byte, buffers)}
	u.ctx, u.cancel = context.WithCancel(ctx)
	for range buffers {
		u.free <- nil // allocated on first use
	}
	return u, nil
}

// Name returns the object's URL.
func (u *Upload) Name() string { return u.name }

// PartSize returns the size of every part but the last.
func (u *Upload) PartSize() int64 { return u.partSize }

// Write buffers p into parts and starts each full part's upload.
func (u *Upload) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		if err := u.failed(); err != nil {
			return done, err
		}
		if u.buf == nil {
			select {
			case b := <-u.free:
				if b == nil {
					b = make([]byte, 0, u.partSize)
				}
				u.buf = b[:0]
			case <-u.ctx.Done():
				return done, u.failedOr(u.ctx.Err())
			}
		}
		n := copy(u.buf[len(u.buf):cap(u.buf)], p[done:])
		u.buf = u.buf[:len(u.buf)+n]
		u.sha.Write(p[done : done+n])
		done += n
		u.written += int64(n)
		if len(u.buf) == cap(u.buf) {
			if err := u.sendPart(); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

func (u *Upload) failed() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done && u.err == nil {
		return errors.New("upload already committed or aborted")
	}
	return u.err
}

func (u *Upload) failedOr(err error) error {
	if e := u.failed(); e != nil {
		return e
	}
	return err
}

// fail records the first failure and stops the other parts.
func (u *Upload) fail(err error) {
	u.mu.Lock()
	if u.err == nil {
		u.err = err
	}
	u.mu.Unlock()
	u.cancel()
}

// sendPart starts the upload of the filled buffer as the next part.
func (u *Upload) sendPart() error {
	buf := u.buf
	u.buf = nil
	u.mu.Lock()
	if len(u.etags) == MaxParts {
		u.mu.Unlock()
		err := fmt.Errorf("%s: output larger than its size estimate (%d parts of %d bytes)", u.name, MaxParts, u.partSize)
		u.fail(err)
		return err
	}
	id := u.id
	u.mu.Unlock()
	if id == "" {
		err := retry(u.ctx, stallTimeout, func(ctx context.Context, _ func()) error {
			var err error
			id, err = u.st.createMultipart(ctx, u.bucket, u.key, nil)
			return err
		})
		if err != nil {
			err = fmt.Errorf("%s: starting the upload: %w", u.name, err)
			u.fail(err)
			return err
		}
	}
	sum := md5.Sum(buf)
	u.mu.Lock()
	u.id = id
	u.etags = append(u.etags, "")
	u.md5s = append(u.md5s, sum[:]...)
	num := len(u.etags)
	u.mu.Unlock()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		var etag string
		err := retry(u.ctx, stallTimeout, func(ctx context.Context, kick func()) error {
			var err error
			etag, err = u.st.uploadPart(ctx, u.bucket, u.key, id, num, bodyOf(buf, kick), int64(len(buf)), sum[:])
			return err
		})
		if err != nil {
			u.fail(fmt.Errorf("%s: part %d: %w", u.name, num, err))
			return
		}
		u.mu.Lock()
		u.etags[num-1] = etag
		u.mu.Unlock()
		u.free <- buf
	}()
	return nil
}

// Commit uploads the rest, completes the upload and stores the SHA-256 of
// the object in its metadata (x-amz-meta-sha256), which it returns. A
// multipart object gets it by a server-side copy onto itself, as S3 takes
// metadata only when an upload starts. On failure nothing is left.
func (u *Upload) Commit() ([]byte, error) {
	if err := u.failed(); err != nil {
		u.Abort()
		return nil, err
	}
	sum := u.sha.Sum(nil)
	meta := map[string]string{SHA256Key: hex.EncodeToString(sum)}
	if u.id == "" {
		// One part: a single PUT carries the metadata.
		data, h := u.buf, md5.Sum(u.buf)
		err := retry(u.ctx, stallTimeout, func(ctx context.Context, kick func()) error {
			return u.st.putObject(ctx, u.bucket, u.key, bodyOf(data, kick), int64(len(data)), h[:], meta)
		})
		u.finish()
		u.cancel()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", u.name, err)
		}
		return sum, nil
	}
	if len(u.buf) > 0 {
		if err := u.sendPart(); err != nil {
			u.Abort()
			return nil, err
		}
	}
	u.wg.Wait()
	if err := u.failed(); err != nil {
		u.Abort()
		return nil, err
	}
	var etag string
	err := retry(u.ctx, longTimeout, func(ctx context.Context, _ func()) error {
		var err error
		etag, err = u.st.completeMultipart(ctx, u.bucket, u.key, u.id, u.etags)
		return err
	})
	if err != nil {
		u.Abort()
		return nil, fmt.Errorf("%s: completing the upload: %w", u.name, err)
	}
	u.finish()
	defer u.cancel()
	// The object's ETag is the MD5 of the parts' MD5s: a check that the
	// server assembled the parts it acknowledged, in order.
	whole := md5.Sum(u.md5s)
	want := fmt.Sprintf("%x-%d", whole, len(u.etags))
	if got := strings.Trim(etag, `"`); strings.Contains(got, "-") && got != want {
		u.remove()
		return nil, fmt.Errorf("%s: the stored object's ETag %s is not the parts' %s; object removed", u.name, got, want)
	}
	err = retry(u.ctx, longTimeout, func(ctx context.Context, _ func()) error {
		return u.st.replaceMeta(ctx, u.bucket, u.key, u.written, meta)
	})
	if err != nil {
		u.remove()
		return nil, fmt.Errorf("%s: storing the SHA-256 in the object's metadata: %w; object removed", u.name, err)
	}
	return sum, nil
}

// bodyOf is a part's body for a request: seekable, for the SDK's own
// retries, and telling retry's stall timer about every read. It has no
// WriteTo, so the transport copies through Read as the socket drains.
func bodyOf(data []byte, kick func()) io.ReadSeeker {
	return &kickSeeker{bytes.NewReader(data), kick}
}

type kickSeeker struct {
	r    *bytes.Reader
	kick func()
}

func (k *kickSeeker) Read(p []byte) (int, error) {
	n, err := k.r.Read(p)
	if n > 0 {
		k.kick()
	}
	return n, err
}

func (k *kickSeeker) Seek(off int64, whence int) (int64, error) { return k.r.Seek(off, whence) }

// finish marks the upload done (Abort has nothing left to abort) and
// frees its buffers.
func (u *Upload) finish() {
	u.mu.Lock()
	u.done = true
	u.mu.Unlock()
	u.buf = nil
}

func (u *Upload) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u.st.remove(ctx, u.bucket, u.key)
}

// Abort stops the parts in flight and aborts the multipart upload, so
// the store keeps none of its parts. It does nothing after Commit or
// another Abort.
func (u *Upload) Abort() error {
	u.mu.Lock()
	if u.done {
		u.mu.Unlock()
		return nil
	}
	u.done = true
	id := u.id
	u.mu.Unlock()
	u.cancel()
	u.wg.Wait()
	u.buf = nil
	if id == "" {
		return nil
	}
	// The caller's context may be what was cancelled: abort on a fresh one.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := retry(ctx, stallTimeout, func(ctx context.Context, _ func()) error { return u.st.abortMultipart(ctx, u.bucket, u.key, id) })
	if err != nil {
		return fmt.Errorf("%s: aborting the upload %s: %w (a lifecycle rule that aborts incomplete multipart uploads removes its parts)", u.name, id, err)
	}
	return nil
}

// OpenUploads lists the IDs of the multipart uploads still open under
// name (s3://bucket/prefix): what a run killed before it could abort
// leaves behind.
func OpenUploads(ctx context.Context, name string, o Options) ([]string, error) {
	loc, err := parseLocation(name)
	if err != nil {
		return nil, err
	}
	if !loc.s3 {
		return nil, fmt.Errorf("%s: not an s3:// URL", name)
	}
	st, err := newStore(ctx, o)
	if err != nil {
		return nil, err
	}
	return st.listMultipart(ctx, loc.bucket, loc.key)
}

// Remove deletes the object name (s3://bucket/key).
func Remove(ctx context.Context, name string, o Options) error {
	loc, err := parseLocation(name)
	if err != nil {
		return err
	}
	if !loc.s3 {
		return fmt.Errorf("%s: not an s3:// URL", name)
	}
	st, err := newStore(ctx, o)
	if err != nil {
		return err
	}
	return st.remove(ctx, loc.bucket, loc.key)
}
