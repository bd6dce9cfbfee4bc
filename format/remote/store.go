package remote

import (
	"context"
	"fmt"
	"io"
	"time"
)

// store is the part of an S3 client this package uses; s3client.go
// implements it with the chosen client library.
type store interface {
	head(ctx context.Context, bucket, key string) (objectMeta, error)
	// getRange returns bytes [off, off+n) of the object if its ETag is
	// still etag; n < 0 reads to the end.
	getRange(ctx context.Context, bucket, key string, off, n int64, etag string) (io.ReadCloser, error)
	putObject(ctx context.Context, bucket, key string, body io.ReadSeeker, size int64, md5 []byte, meta map[string]string) error
	createMultipart(ctx context.Context, bucket, key string, meta map[string]string) (string, error)
	// uploadPart sends part number num (from 1) with its MD5, which the
	// server checks, and returns the part's ETag.
	uploadPart(ctx context.Context, bucket, key, id string, num int, body io.ReadSeeker, size int64, md5 []byte) (string, error)
	completeMultipart(ctx context.Context, bucket, key, id string, etags []string) (string, error)
	abortMultipart(ctx context.Context, bucket, key, id string) error
	// listMultipart lists the uploads open under prefix, by upload ID.
	listMultipart(ctx context.Context, bucket, prefix string) ([]string, error)
	// replaceMeta copies the object onto itself with new user metadata
	// (server side, in parts when it is large).
	replaceMeta(ctx context.Context, bucket, key string, size int64, meta map[string]string) error
	remove(ctx context.Context, bucket, key string) error
}

// objectMeta describes an object.
type objectMeta struct {
	size         int64
	etag         string
	lastModified time.Time
	meta         map[string]string // user metadata, lower-case keys
	exists       bool
}

// s3Backend reads an object through a store.
type s3Backend struct {
	st          store
	bucket, key string
}

func (s *s3Backend) probe(ctx context.Context) (objectInfo, io.ReadCloser, error) {
	m, err := s.st.head(ctx, s.bucket, s.key)
	if err != nil {
		return objectInfo{}, nil, err
	}
	if !m.exists {
		return objectInfo{}, nil, &statusError{status: 404, msg: "no such object"}
	}
	return objectInfo{size: m.size, etag: m.etag, lastModified: m.lastModified.UTC().Format(time.RFC1123), ranges: true, sha256: m.meta[SHA256Key]}, nil, nil
}

func (s *s3Backend) get(ctx context.Context, off, n int64, v objectInfo) (io.ReadCloser, error) {
	return s.st.getRange(ctx, s.bucket, s.key, off, n, v.etag)
}

func (s *s3Backend) relative(ref string, allowOutside bool) (backend, string, error) {
	loc, err := location{s3: true, bucket: s.bucket, key: s.key}.relative(ref, allowOutside)
	if err != nil {
		return nil, "", err
	}
	return &s3Backend{st: s.st, bucket: loc.bucket, key: loc.key}, loc.raw, nil
}

// accessDenied says what to check when the store refuses the credentials.
func accessDenied(code, msg string) error {
	return &statusError{status: 403, msg: fmt.Sprintf("access denied (%s: %s); check the credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / --profile and the shared credentials file", code, msg)}
}
