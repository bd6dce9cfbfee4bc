// Package remote reads disk images from object storage and web servers
// and writes them to object storage, with no local copy: a source
// (https://, http://, s3://bucket/key) is a format.File read by HTTP range
// requests through a bounded block cache, and a destination
// (s3://bucket/key) is a format.Target that streams a multipart upload.
//
// Endpoints and credentials come the standard way: the AWS environment
// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL), the shared config and
// credentials files, and Options for --endpoint (Huawei OBS or any
// S3-compatible store), --profile and path-style addressing.
package remote

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"
)

// Options say how to reach the object store.
type Options struct {
	// Endpoint is the S3 endpoint URL (https://obs.REGION.myhuaweicloud.com,
	// http://127.0.0.1:8333); "" uses AWS_ENDPOINT_URL or AWS itself.
	Endpoint string
	// PathStyle addresses buckets as ENDPOINT/BUCKET/KEY instead of
	// BUCKET.ENDPOINT/KEY.
	PathStyle bool
	// Profile names the shared config profile; "" uses AWS_PROFILE or
	// "default".
	Profile string
	// Region overrides the configured region.
	Region string
	// SpoolDir is where a source whose server cannot send ranges is copied
	// ("" for the system temp dir).
	SpoolDir string
	// CacheBytes bounds the source block cache; 0 means DefaultCacheBytes.
	CacheBytes int64
	// stall is how long a read may make no progress; 0 means
	// stallTimeout. Tests shorten it.
	stall time.Duration
}

func (o Options) stallTime() time.Duration {
	if o.stall > 0 {
		return o.stall
	}
	return stallTimeout
}

// IsURL reports whether name is a remote location this package opens.
func IsURL(name string) bool {
	for _, p := range []string{"http://", "https://", "s3://"} {
		if len(name) > len(p) && strings.EqualFold(name[:len(p)], p) {
			return true
		}
	}
	return false
}

// location is a parsed remote name.
type location struct {
	raw    string
	s3     bool
	bucket string   // s3
	key    string   // s3
	url    *url.URL // http(s)
}

func parseLocation(name string) (location, error) {
	if !IsURL(name) {
		return location{}, fmt.Errorf("%q is not an http://, https:// or s3:// URL", name)
	}
	if strings.EqualFold(name[:5], "s3://") {
		rest := name[5:]
		bucket, key, _ := strings.Cut(rest, "/")
		if bucket == "" {
			return location{}, fmt.Errorf("%s: no bucket", name)
		}
		return location{raw: name, s3: true, bucket: bucket, key: key}, nil
	}
	u, err := url.Parse(name)
	if err != nil {
		return location{}, err
	}
	if u.Host == "" {
		return location{}, fmt.Errorf("%s: no host", name)
	}
	u.Fragment = ""
	return location{raw: name, url: u}, nil
}

// errOutside is returned for a reference that leaves the image's prefix.
var errOutside = errors.New("outside the image's directory")

// relative resolves ref, stored in the image at l, to a location beside
// it: a key under the same prefix of the same bucket, or a path under the
// same directory of the same server. allowOutside lets it climb out of
// the directory (".." or a path from the root), but never to another
// bucket or host, and never to a local file.
func (l location) relative(ref string, allowOutside bool) (location, error) {
	if strings.ContainsAny(ref, "\\?#") || strings.ContainsRune(ref, 0) {
		return location{}, fmt.Errorf("%q: not a plain file name", ref)
	}
	abs := strings.HasPrefix(ref, "/")
	climbs := false
	for _, part := range strings.Split(ref, "/") {
		if part == ".." {
			climbs = true
		}
	}
	if (abs || climbs) && !allowOutside {
		return location{}, fmt.Errorf("%q: %w (use --allow-backing-outside to follow it within the same %s)", ref, errOutside, l.scope())
	}
	if l.s3 {
		var key string
		if abs {
			key = path.Clean(ref)
		} else {
			key = path.Join("/", path.Dir("/"+l.key), ref)
		}
		key = strings.TrimPrefix(key, "/")
		if key == "" || strings.HasSuffix(ref, "/") {
			return location{}, fmt.Errorf("%q: names no object", ref)
		}
		return location{raw: "s3://" + l.bucket + "/" + key, s3: true, bucket: l.bucket, key: key}, nil
	}
	u := *l.url
	u.RawQuery, u.RawPath, u.Fragment = "", "", ""
	if abs {
		u.Path = path.Clean(ref)
	} else {
		u.Path = path.Join("/", path.Dir("/"+strings.TrimPrefix(l.url.Path, "/")), ref)
	}
	if strings.HasSuffix(u.Path, "/") {
		return location{}, fmt.Errorf("%q: names no file", ref)
	}
	return location{raw: u.String(), url: &u}, nil
}

func (l location) scope() string {
	if l.s3 {
		return "bucket"
	}
	return "server"
}
