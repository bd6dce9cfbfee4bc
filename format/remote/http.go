package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// httpBackend reads an object from a web server.
type httpBackend struct {
	c *http.Client
	u *url.URL
}

func (h *httpBackend) request(ctx context.Context, rng string, v objectInfo) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.u.String(), nil)
	if err != nil {
		return nil, err
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	// Ask the server to refuse a changed object; the answer's validators
	// are compared too, for servers that ignore the conditions.
	switch {
	case v.etag != "" && !strings.HasPrefix(v.etag, "W/"):
		req.Header.Set("If-Match", v.etag)
	case v.lastModified != "":
		req.Header.Set("If-Unmodified-Since", v.lastModified)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusPreconditionFailed:
		resp.Body.Close()
		return nil, ErrChanged
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent:
		if !v.sameVersion(resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")) {
			resp.Body.Close()
			return nil, ErrChanged
		}
		return resp, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && rng == "bytes=0-0":
		return resp, nil // an empty object
	}
	resp.Body.Close()
	return nil, httpStatus(resp)
}

// httpStatus turns an unexpected answer into an error that says what to do.
func httpStatus(resp *http.Response) error {
	msg := fmt.Sprintf("server answered %s", resp.Status)
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		msg += " (access denied: the URL needs credentials or a valid signature)"
	case http.StatusNotFound:
		msg += " (no such file)"
	}
	return &statusError{status: resp.StatusCode, msg: msg}
}

func (h *httpBackend) probe(ctx context.Context) (objectInfo, io.ReadCloser, error) {
	resp, err := h.request(ctx, "bytes=0-0", objectInfo{})
	if err != nil {
		return objectInfo{}, nil, err
	}
	info := objectInfo{etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		defer resp.Body.Close()
		start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != 0 || end != 0 {
			return objectInfo{}, nil, fmt.Errorf("bad Content-Range %q in the answer to a range request", resp.Header.Get("Content-Range"))
		}
		if total < 0 {
			return objectInfo{}, nil, fmt.Errorf("the server does not say how long the file is (Content-Range %q)", resp.Header.Get("Content-Range"))
		}
		info.size, info.ranges = total, true
		return info, nil, nil
	case http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		if _, _, total, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil && total == 0 {
			info.size, info.ranges = 0, true
			return info, nil, nil
		}
		return objectInfo{}, nil, fmt.Errorf("server answered %s to a request for the first byte", resp.Status)
	}
	// 200: the whole file, so the server cannot send ranges.
	info.size = resp.ContentLength // -1 when not announced
	return info, resp.Body, nil
}

func (h *httpBackend) get(ctx context.Context, off, n int64, v objectInfo) (io.ReadCloser, error) {
	if n < 0 {
		resp, err := h.request(ctx, "", v)
		if err != nil {
			return nil, err
		}
		return resp.Body, nil
	}
	rng := fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	resp, err := h.request(ctx, rng, v)
	if err != nil {
		return nil, err
	}
	start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
	if resp.StatusCode != http.StatusPartialContent || err != nil || start != off || end != off+n-1 || total != v.size {
		resp.Body.Close()
		if total >= 0 && total != v.size {
			return nil, fmt.Errorf("%w (its length is now %d, was %d)", ErrChanged, total, v.size)
		}
		return nil, fmt.Errorf("server answered %s, Content-Range %q to a request for %s", resp.Status, resp.Header.Get("Content-Range"), rng)
	}
	return resp.Body, nil
}

func (h *httpBackend) relative(ref string, allowOutside bool) (backend, string, error) {
	loc, err := location{url: h.u}.relative(ref, allowOutside)
	if err != nil {
		return nil, "", err
	}
	// A file found beside the image stays on its server, redirects too.
	c := *h.c
	host := h.u.Host
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Host != host || len(via) >= 10 {
			return fmt.Errorf("%s redirects to %s, off the image's server", loc.raw, req.URL.Redacted())
		}
		return nil
	}
	return &httpBackend{c: &c, u: loc.url}, loc.raw, nil
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*",
// given as -1) and "bytes */TOTAL" (START and END -1).
func parseContentRange(s string) (start, end, total int64, err error) {
	bad := func() (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return bad()
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return bad()
	}
	total = -1
	if tot != "*" {
		if total, err = parseUint(tot); err != nil {
			return bad()
		}
	}
	if rng == "*" {
		if total < 0 {
			return bad()
		}
		return -1, -1, total, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	if start, err = parseUint(a); err != nil {
		return bad()
	}
	if end, err = parseUint(b); err != nil || end < start || (total >= 0 && end >= total) {
		return bad()
	}
	return start, end, total, nil
}

// parseUint accepts decimal digits only (no sign, no spaces).
func parseUint(s string) (int64, error) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, fmt.Errorf("not a number: %q", s)
	}
	return strconv.ParseInt(s, 10, 64)
}
